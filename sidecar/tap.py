"""The tap: the last requests this sidecar forwarded outbound, for a "top" view of its traffic.

Every outbound request, however it ends (answered, failed, reset by its caller, refused by a
circuit breaker or a rate limit), is kept when it ends as one tuple in a ring of the last
:data:`TAP_SIZE`, numbered by a sequence that only grows. A reader polls with the last number
it saw (``since(after)``) and gets what came after it, oldest first, and how many of those the
ring no longer holds — like Linkerd's ``tap`` and Envoy's access log, but pulled, not
streamed. Every request kept came from this sidecar's own service; ``/tap`` says which.

A restarted sidecar numbers from 1 again, so a reader's ``after`` may name a request of the
previous run. Every answer carries the tap's ``boot``, random and made once per process: a
reader keeps it with ``next``, and when an answer's ``boot`` is not the one it kept, the
sidecar restarted — the answer's requests follow a number of the previous run, and the reader
starts over with ``after`` 0. (An ``after`` beyond the newest number is from a previous run
too, and the tap reads it as 0 itself; one the new run has already passed only ``boot`` can
tell.)

A path is kept without its query (``?`` and after): a query can carry a secret (a token, an
e-mail address), and ``/tap`` is served without authentication on the admin port.

Recording is on every request's path, so it is a tuple appended to a ``deque``: no dict, no
formatting, no lock (one event loop). Dicts are built only when someone reads.
"""

from __future__ import annotations

import itertools
import secrets
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

TAP_SIZE = 512
"""Requests the tap holds: five seconds at 100 requests a second, so a page that polls every
second misses none; also the largest ``limit`` a reader may ask for."""

DEFAULT_LIMIT = 100
"""Requests a read returns when it names no ``limit``: the newest, if more came."""

BOOT_BYTES = 8
"""Random bytes in a boot id: two runs of a sidecar never share one (64 bits)."""

_Tapped = tuple[int, float, str, str, str, str, int | str, float, int, int]
"""One request as kept: seq, at, cluster, authority, method, path, status, latency (seconds),
retries, hedges."""


@dataclass(frozen=True, slots=True, kw_only=True)
class TapPage:
    """What a read returns: the requests after a sequence number, oldest first.

    ``dropped`` counts the requests after that number that are not in ``requests``: gone from
    the ring, or older than the newest ``limit``.
    """

    boot: str  # this process's: a reader that sees a new one starts over (``after`` 0)
    next: int  # pass as ``after`` next time: the newest sequence number given out so far
    dropped: int
    requests: list[dict[str, Any]]


class Tap:
    """A ring of the last :data:`TAP_SIZE` finished outbound requests.

    Args:
        wall: the wall clock whose time (Unix seconds) each request is stamped with when it
            ends; for display only, durations come from the sidecar's own clock.
        boot: this process's boot id, which every page carries (tests name one); by default
            :data:`BOOT_BYTES` random bytes in hex, made now.
    """

    def __init__(self, *, wall: Callable[[], float] = time.time,
                 boot: str | None = None) -> None:
        self._ring: deque[_Tapped] = deque(maxlen=TAP_SIZE)
        self._wall = wall
        self._seq = 0  # the last number given out; the first request is 1
        self.boot = secrets.token_hex(BOOT_BYTES) if boot is None else boot

    def record(self, cluster: str, authority: str, method: str, path: str,
               status: int | str, latency: float, retries: int, hedges: int) -> None:
        """Keep a request that ended with ``status`` (or ``RESET``) after ``latency`` seconds;
        of its ``path``, only what comes before a query (``?``)."""
        query = path.find("?")
        if query >= 0:
            path = path[:query]
        self._seq += 1
        self._ring.append((self._seq, self._wall(), cluster, authority, method, path, status,
                           latency, retries, hedges))

    def add(self, row: Mapping[str, Any]) -> None:
        """Keep a request another tap kept (a row of its page: a worker's), numbered here."""
        self._seq += 1
        self._ring.append((self._seq, row["at"], row["cluster"], row["authority"],
                           row["method"], row["path"], row["status"],
                           row["latency_ms"] / 1000, row["retries"], row["hedges"]))

    def lost(self, requests: int) -> None:
        """Number ``requests`` that ended but are not held (lost from another tap's ring
        before they were read): a reader's ``dropped`` counts them."""
        self._seq += requests

    def since(self, after: int = 0, limit: int = DEFAULT_LIMIT) -> TapPage:
        """The requests numbered after ``after`` (0: every one held), at most the newest
        ``limit`` of them.

        An ``after`` beyond the newest number given out was given out before this sidecar
        restarted (it numbers from 1 again), so the answer starts from 0, as a first read
        does. One the new run has passed already is read as it is: the page's ``boot``, not
        the one the reader kept, tells it to read again from 0.

        Raises:
            ValueError: ``after`` is negative, or ``limit`` is not within 1..``TAP_SIZE``.
        """
        if after < 0:
            raise ValueError(f"after {after}: must not be negative (0 or none: from the start)")
        if not 1 <= limit <= TAP_SIZE:
            raise ValueError(f"limit {limit}: must be within 1..{TAP_SIZE}")
        if after > self._seq:
            after = 0
        newer = self._seq - after  # requests after ``after``, held or not
        start = max(len(self._ring) - newer, len(self._ring) - limit, 0)
        requests = [_plain(tapped) for tapped in itertools.islice(self._ring, start, None)]
        return TapPage(boot=self.boot, next=self._seq, dropped=newer - len(requests),
                       requests=requests)


def _plain(tapped: _Tapped) -> dict[str, Any]:
    seq, at, cluster, authority, method, path, status, latency, retries, hedges = tapped
    return {"seq": seq, "at": round(at, 3), "cluster": cluster, "authority": authority,
            "method": method, "path": path, "status": status,
            "latency_ms": round(latency * 1000, 3), "retries": retries, "hedges": hedges}

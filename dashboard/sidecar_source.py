"""Golden metrics from the sidecars' own ``/metrics``, when no Prometheus scrapes them.

Each round scrapes every sidecar whose admin endpoint is published, all at once, and keeps
each sidecar's scrapes for the longest window (five minutes). A window's numbers for one
sidecar are the difference between its newest scrape and the newest one at or before the
window's start (:mod:`dashboard.golden`: Prometheus' ``increase()``); a service's or an edge's
are its sidecars' added up:

- counts (requests, failures, histogram buckets) add up, and the success rate and percentiles
  are taken of the sum;
- rates add up too, each sidecar's own count over its own span: a replica that started a
  minute ago has a minute of scrapes where the others have five, and dividing the sum of the
  counts by a mean span would be wrong for all of them.

This is one request per sidecar per round — two a second: right for the demo's dozen sidecars,
wrong for a thousand, which is what :mod:`dashboard.prometheus` is for.
"""

from __future__ import annotations

import asyncio
import bisect
from collections import defaultdict, deque
from collections.abc import Callable, Mapping
from dataclasses import asdict
from typing import Any

import aiohttp

from dashboard.golden import (
    ClusterCounts,
    Scrape,
    attempts_shown,
    connections_shown,
    golden,
    increase,
    merge,
    parse,
)
from mesh.clock import Clock

# A window's part of one sidecar: its counts' increase and the seconds it spans.
Part = tuple[ClusterCounts, float]


class SidecarSource:
    """The sidecars' scrapes, and the golden metrics of any window up to ``longest``."""

    def __init__(self, *, longest: float, clock: Clock) -> None:
        self.longest, self.clock = longest, clock
        self._scrapes: dict[str, deque[Scrape]] = {}  # admin address → scrapes, oldest first

    async def scrape(self, http: aiohttp.ClientSession, sidecars: list[dict[str, Any]]) -> None:
        """Scrape every sidecar of ``sidecars`` that has an ``admin`` address, setting its
        ``error`` to the problem met (or ``None``); forget the sidecars no longer listed."""
        scraped = [s for s in sidecars if s["admin"]]
        problems = await asyncio.gather(*(self._scrape(http, s["admin"]) for s in scraped))
        for sidecar, problem in zip(scraped, problems, strict=True):
            sidecar["error"] = problem
        for admin in self._scrapes.keys() - {s["admin"] for s in scraped}:
            del self._scrapes[admin]

    async def _scrape(self, http: aiohttp.ClientSession, admin: str) -> str | None:
        try:
            async with http.get(f"http://{admin}/metrics") as response:
                text = await response.text()
                if response.status != 200:
                    return f"GET http://{admin}/metrics: HTTP {response.status}"
            scrape = parse(text, self.clock.now())
        except (aiohttp.ClientError, TimeoutError, ValueError) as error:
            return f"GET http://{admin}/metrics: {error!r}"
        kept = self._scrapes.setdefault(admin, deque())
        kept.append(scrape)
        # Keep the newest scrape at or before the longest window's start, so it is covered.
        while len(kept) > 2 and kept[1].at <= scrape.at - self.longest:
            kept.popleft()
        return None

    def _span(self, admin: str, window: float) -> tuple[Scrape, Scrape] | None:
        """The scrapes a window is measured between: the newest one at or before its start
        (the oldest kept, while the sidecar has been scraped for less than the window) and
        the newest; ``None`` with fewer than two."""
        kept = self._scrapes.get(admin)
        if not kept or len(kept) < 2:
            return None
        last = kept[-1]
        times = [s.at for s in kept]
        first = max(0, bisect.bisect_right(times, last.at - window) - 1)
        return (kept[first], last) if first < len(kept) - 1 else None

    def _fresh(self, sidecars: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [s for s in sidecars if s["admin"] in self._scrapes and not s["error"]]

    def edges(self, sidecars: list[dict[str, Any]], window: float) -> list[dict[str, Any]]:
        """Per (source service, destination cluster), the golden metrics over ``window``, its
        attempts' success, and its open connections now."""
        parts: dict[tuple[str, str], list[Part]] = {}
        tries: dict[tuple[str, str], list[ClusterCounts]] = {}
        opened: dict[tuple[str, str], defaultdict[str, float]] = {}
        for sidecar in self._fresh(sidecars):
            newest = self._scrapes[sidecar["admin"]][-1]
            for (direction, cluster, tls), count in newest.connections.items():
                if direction == "outbound":
                    opened.setdefault((sidecar["service"], cluster), defaultdict(float))[tls] += \
                        count
            span = self._span(sidecar["admin"], window)
            grown = _grown(span, lambda s: s.clusters)
            attempts = _grown(span, lambda s: s.attempts)
            for cluster, counts in newest.clusters.items():
                if counts.total == 0:
                    continue  # never called: not an edge
                key = (sidecar["service"], cluster)
                parts.setdefault(key, [])
                tries.setdefault(key, [])
                if span is not None and cluster in grown:
                    parts[key].append((grown[cluster], span[1].at - span[0].at))
                if cluster in attempts:
                    tries[key].append(attempts[cluster])
        return [{"source": source, "destination": cluster, **shown(seen),
                 **attempts_shown(merge(tries[source, cluster])),
                 **connections_shown(opened.get((source, cluster), {}))}
                for (source, cluster), seen in sorted(parts.items())]

    def services(self, sidecars: list[dict[str, Any]], window: float) -> list[dict[str, Any]]:
        """Per service, what its sidecars answered inbound over ``window``, and their open
        inbound connections now."""
        parts: dict[str, list[Part]] = {}
        opened: dict[str, defaultdict[str, float]] = {}
        for sidecar in self._fresh(sidecars):
            service, newest = sidecar["service"], self._scrapes[sidecar["admin"]][-1]
            parts.setdefault(service, [])
            tally = opened.setdefault(service, defaultdict(float))
            for (direction, _, tls), count in newest.connections.items():
                if direction == "inbound":
                    tally[tls] += count
            span = self._span(sidecar["admin"], window)
            if span is not None:
                parts[service].append((merge(_grown(span, lambda s: s.inbound).values()),
                                       span[1].at - span[0].at))
        return [{"service": service, **shown(seen), **connections_shown(opened[service])}
                for service, seen in sorted(parts.items())]


def _grown(span: tuple[Scrape, Scrape] | None,
           of: Callable[[Scrape], Mapping[str, ClusterCounts]]) -> dict[str, ClusterCounts]:
    return increase(*span, of=of) if span is not None else {}


def shown(parts: list[Part]) -> dict[str, Any]:
    """The golden metrics of several sidecars' increases, each over its own span (see the
    module docstring), rounded as the page shows them."""
    metrics = asdict(golden(merge(counts for counts, _ in parts), 1.0))
    metrics["rps"] = sum(counts.total / seconds for counts, seconds in parts if seconds > 0)
    return {k: None if v is None else round(v, 3) for k, v in metrics.items()}

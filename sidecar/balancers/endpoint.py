"""One upstream endpoint as every balancer sees it: where it is, how much to send it, how loaded.

A balancer chooses among endpoints by reading the same few facts: the endpoint's address and
weight (from discovery), whether it may take calls (``healthy`` from discovery, ``ejected`` from
outlier detection), how many calls it has in flight (``active``, the least-request signal), and
a latency estimate (the peak-EWMA signal). The sidecar calls ``start()`` when it sends a call to
the endpoint and ``finish(latency, ok)`` when the call ends; nothing else changes the counts.

The latency estimate is Finagle's and Linkerd's *peak-sensitive EWMA* (``peak_ewma.py`` picks
with it). A response slower than the estimate replaces it at once, so one slow response is
enough to steer traffic away; a faster one pulls it down gradually, weighted by the time since
the last response: ``w = exp(-elapsed / decay)``, ``estimate = estimate * w + rtt * (1 - w)``,
where ``estimate`` is the value as decayed to now (below) — as in Finagle and tower, whose reads
decay the estimate before a response is compared with it and blended in.
A new endpoint starts from ``default_rtt`` rather than zero, so it is not flooded before anyone
has measured it. Every endpoint keeps both signals whatever the cluster's balancer, so the
admin page can show why a pick happened (in Istio issue 47804 least request silently lost its
signal and nobody could see it).

Two choices of ours, said where they matter:

- *The estimate decays while idle, and reading it changes nothing.* While no response arrives
  the estimate a balancer reads falls toward zero (``estimate * exp(-idle / decay)``), so an
  endpoint avoided for being slow is tried again and can show that it recovered. Finagle and
  tower get this by recording a 0 s observation on every read, so how often loads are read
  changes the estimate; we compute the decayed value without storing it, so reading a load (for
  a pick, or for the admin page) never changes a later decision.
- *A failure never makes an endpoint look faster.* Envoy warns that hosts which fail fast look
  fast to a latency balancer. A failed call's latency may raise the estimate (a slow failure is
  still slow) but never lowers it, and it stops the idle decay, so an endpoint that keeps
  failing quickly keeps the estimate it had.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from mesh.clock import Clock

DEFAULT_DECAY = 10.0
"""Seconds for the latency estimate to forget (Finagle, Linkerd, Envoy's contrib: all 10 s)."""

DEFAULT_RTT = 0.030
"""A new endpoint's latency estimate: Linkerd's 30 ms (Envoy's contrib policy uses 10 ms)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class EndpointSpec:
    """An endpoint as discovery describes it: its address, its weight, whether it takes calls."""

    address: str  # "host:port" of the endpoint's sidecar (its inbound mTLS listener)
    weight: int = 1  # relative share of calls; at least 1
    healthy: bool = True  # False while the instance is not ready or is draining

    def __post_init__(self) -> None:
        if not self.address:
            raise ValueError("endpoint address: must not be empty")
        if self.weight < 1:
            raise ValueError(f"endpoint {self.address} weight {self.weight}: must be at least 1")


class EndpointState:
    """The runtime state of one endpoint, shared by the balancer, the admin page and the sidecar.

    (The control plane's ``Endpoint`` message describes an endpoint; the balancer keeps it as
    an ``EndpointSpec``, and this object is what it knows of it at run time.)

    ``healthy`` and ``weight`` follow discovery (``Balancer.set_endpoints``); ``ejected`` is
    set by whoever applies outlier detection's decisions. ``active`` and the latency estimate
    change only through ``start`` and ``finish``.
    """

    __slots__ = (
        "_clock",
        "_decay",
        "_estimate",
        "_stamp",
        "active",
        "added_at",
        "address",
        "ejected",
        "healthy",
        "weight",
    )

    def __init__(self, address: str, *, clock: Clock, weight: int = 1, healthy: bool = True,
                 decay: float = DEFAULT_DECAY, default_rtt: float = DEFAULT_RTT) -> None:
        if decay <= 0 or default_rtt <= 0:
            raise ValueError(f"endpoint {address}: decay ({decay}) and default_rtt "
                             f"({default_rtt}) must be positive")
        self.address = address
        self.weight = weight
        self.healthy = healthy
        self.ejected = False
        self.active = 0  # calls sent and not yet finished
        self._clock = clock
        self._decay = decay
        self.added_at = clock.now()  # slow start measures an endpoint's age from here
        self._estimate = default_rtt  # seconds, as of the last response (or creation)
        self._stamp = self.added_at  # when ``_estimate`` was last set

    @property
    def available(self) -> bool:
        """True when a balancer may pick it: healthy and not ejected."""
        return self.healthy and not self.ejected

    def start(self) -> None:
        """A call was sent to this endpoint."""
        self.active += 1

    def finish(self, latency: float, ok: bool) -> None:
        """A call sent with ``start()`` ended after ``latency`` seconds, successfully or not.

        Raises:
            RuntimeError: more calls finished than started (a bookkeeping bug in the caller).
        """
        if self.active == 0:
            raise RuntimeError(f"endpoint {self.address}: finish() without a matching start()")
        self.active -= 1
        now = self._clock.now()
        if ok:
            # Decay first: a response is compared with the estimate as it stands now (what
            # ``latency_estimate`` shows), not as it stood at the last response, or a fast
            # answer after a quiet spell would pull the estimate *up* toward a stale peak.
            w = math.exp(-(now - self._stamp) / self._decay)
            current = self._estimate * w
            if latency > current:
                self._estimate = latency  # peak-sensitive: a slower response counts at once
            else:
                self._estimate = current * w + latency * (1.0 - w)
        elif latency > self._estimate:
            self._estimate = latency  # a slow failure is still slow
        self._stamp = now  # a failure holds the last measured estimate: no idle decay

    def latency_estimate(self) -> float:
        """The peak-EWMA latency in seconds, decayed toward zero for the time since a response."""
        idle = self._clock.now() - self._stamp
        return self._estimate * math.exp(-idle / self._decay)

    def __repr__(self) -> str:
        state = "available" if self.available else "ejected" if self.ejected else "unhealthy"
        return (f"EndpointState({self.address!r}, weight={self.weight}, {state}, "
                f"active={self.active}, latency={self.latency_estimate() * 1000:.1f}ms)")

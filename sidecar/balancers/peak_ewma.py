"""Peak EWMA: prefer endpoints that answer fast and have little in flight (Finagle, Linkerd).

Least request sees only how many calls wait at an endpoint, not how long each takes; a replica
ten times slower than its peers still gets a fair share until its queue builds up. Peak EWMA
weighs the queue by latency: each endpoint's load is ``latency_estimate * (active + 1)``, where
the estimate is a peak-sensitive exponentially weighted moving average of its response times
(kept on the endpoint, see ``endpoint.py``): it jumps up at once to any slower response and
decays toward faster ones over ``decay`` seconds. Each pick draws two distinct endpoints at
random and takes the one with the lower load (power of two choices), so a slow endpoint is
rarely chosen and an idle fast one is chosen at once.

Cold endpoints start from ``default_rtt`` (Linkerd: 30 ms), never zero, so a new endpoint is
not flooded before it has answered anything. While an endpoint gets no responses its estimate
decays toward zero, so one avoided for being slow is tried again and can show it recovered.
Envoy's warning applies: an endpoint that fails fast looks fast. Here a failed call never
lowers an endpoint's estimate; pair this balancer with outlier detection all the same.

This is Linkerd2's default balancer (tower's ``PeakEwma``) and Finagle's ``Balancers.p2cPeakEwma``;
Envoy has it as a contrib policy. Like them it ignores endpoint weights.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from mesh.clock import Clock
from sidecar.balancers.base import Balancer, Costs
from sidecar.balancers.endpoint import DEFAULT_DECAY, DEFAULT_RTT, EndpointSpec, EndpointState


@dataclass(frozen=True, slots=True, kw_only=True)
class PeakEwmaConfig:
    """Linkerd's and Finagle's settings for the latency estimate."""

    decay: float = DEFAULT_DECAY  # seconds for the estimate to forget a peak (10 s)
    default_rtt: float = DEFAULT_RTT  # a new endpoint's estimate in seconds (30 ms)

    def __post_init__(self) -> None:
        if self.decay <= 0:
            raise ValueError(f"peak EWMA decay {self.decay}: must be positive seconds")
        if self.default_rtt <= 0:
            raise ValueError(f"peak EWMA default_rtt {self.default_rtt}: must be positive "
                             f"seconds (a zero estimate floods a new endpoint)")


def load(endpoint: EndpointState) -> float:
    """Peak EWMA's load: the latency estimate times the calls in flight, plus this one."""
    return endpoint.latency_estimate() * (endpoint.active + 1)


class PeakEwmaBalancer(Balancer):
    """Power of two choices on ``latency_estimate * (active + 1)``."""

    def __init__(self, config: PeakEwmaConfig | None = None, *, clock: Clock,
                 rng: random.Random) -> None:
        super().__init__(clock=clock, rng=rng)
        self._config = config or PeakEwmaConfig()

    def _choose(self, candidates: Sequence[EndpointState], available: Sequence[EndpointState],
                key: int | None) -> EndpointState:
        if len(candidates) == 1:
            return candidates[0]
        first, second = self._rng.sample(candidates, 2)
        return second if load(second) < load(first) else first

    def costs(self) -> Costs:
        """Each endpoint's :func:`load`, in milliseconds (``ms``)."""
        return Costs(unit="ms", by_address={address: load(endpoint) * 1000
                                            for address, endpoint in self._endpoints.items()})

    def _new_endpoint(self, spec: EndpointSpec) -> EndpointState:
        return EndpointState(spec.address, clock=self._clock, weight=spec.weight,
                             healthy=spec.healthy, decay=self._config.decay,
                             default_rtt=self._config.default_rtt)

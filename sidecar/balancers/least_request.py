"""Least request: send each call where the fewest calls are in flight (Envoy's default balancer).

In-flight calls are the cheapest load signal a proxy has: an endpoint that is slow, or busy
with expensive calls, accumulates them. Asking every endpoint would herd all callers onto the
same one, so Envoy samples: draw ``choice_count`` endpoints (default 2) at random and take the
one with the fewest active calls — *power of two choices* (Mitzenmacher), which keeps the
busiest endpoint's queue exponentially shorter than random picks do.

With unequal weights (or endpoints still in slow start), Envoy uses the earliest-deadline-first
schedule (``edf.py``) with an effective weight ``weight / (active + 1) ** active_request_bias``,
computed when an endpoint is scheduled again. A bias of 1 divides the weight by the load; 0
ignores the load (plain weighted round robin); larger values avoid busy endpoints harder.

Where we differ on purpose: Envoy draws its samples with replacement, so with two endpoints the
busier one is still chosen a quarter of the time (when both draws hit it). We draw distinct
endpoints, as Finagle and Linkerd do: a sample never compares an endpoint with itself, and with
``choice_count`` at least the number of endpoints the pick is simply the least loaded.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from mesh.clock import Clock
from sidecar.balancers.base import Balancer, Costs
from sidecar.balancers.edf import EdfSchedule
from sidecar.balancers.endpoint import EndpointSpec, EndpointState
from sidecar.balancers.slow_start import SlowStart

DEFAULT_CHOICE_COUNT = 2
"""Endpoints sampled per pick: power of *two* choices (Envoy's default)."""

DEFAULT_ACTIVE_REQUEST_BIAS = 1.0
"""Divide the weight by the load, exactly (Envoy's default); 0 ignores the load."""

@dataclass(frozen=True, slots=True, kw_only=True)
class LeastRequestConfig:
    """Envoy's ``LeastRequestLbConfig``."""

    choice_count: int = DEFAULT_CHOICE_COUNT  # endpoints sampled per pick; at least 2
    active_request_bias: float = DEFAULT_ACTIVE_REQUEST_BIAS  # exponent of (active + 1); >= 0
    slow_start_config: SlowStart | None = None  # ramp new endpoints' weights up; None: no ramp

    def __post_init__(self) -> None:
        if self.choice_count < 2:
            raise ValueError(f"least request choice_count {self.choice_count}: must be at least 2")
        if not 0 <= self.active_request_bias < math.inf:  # NaN too; infinity zeroes weights
            raise ValueError(f"least request active_request_bias {self.active_request_bias}: "
                             f"must be a number of 0 or more")


class LeastRequestBalancer(Balancer):
    """Power of two choices on active calls; weighted EDF when weights differ."""

    def __init__(self, config: LeastRequestConfig | None = None, *, clock: Clock,
                 rng: random.Random) -> None:
        super().__init__(clock=clock, rng=rng)
        self._config = config or LeastRequestConfig()
        self._schedule = EdfSchedule(rng)

    def _choose(self, candidates: Sequence[EndpointState], available: Sequence[EndpointState],
                key: int | None) -> EndpointState:
        if len(available) == 1:  # no choice to make (a cluster of one: bench/sidecar_pair.py)
            return available[0]
        if self._weighted(available):
            return self._schedule.pick(candidates, available, self._effective_weight)
        sample = self._rng.sample(candidates, min(self._config.choice_count, len(candidates)))
        return min(sample, key=lambda e: e.active)  # ties: the first drawn, itself random

    def costs(self) -> Costs:
        """What a pick compares, for every endpoint: the calls in flight (``requests``); with
        weights (EDF), the inverse of the effective weight, ``(active + 1) **
        active_request_bias / weight`` (``load/weight``; with the default bias, the calls in
        flight and this one per unit of weight)."""
        endpoints = self._endpoints.items()
        available = [e for e in self._endpoints.values() if e.available]
        if available and self._weighted(available):  # decided once for all of them
            return Costs(unit="load/weight",
                         by_address={a: 1 / self._effective_weight(e) for a, e in endpoints})
        return Costs(unit="requests", by_address={a: float(e.active) for a, e in endpoints})

    def _weighted(self, available: Sequence[EndpointState]) -> bool:
        """Envoy's switch: EDF unless every weight is equal and no endpoint is ramping up."""
        if any(e.weight != available[0].weight for e in available):
            return True
        slow_start, now = self._config.slow_start_config, self._clock.now()
        return slow_start is not None and any(slow_start.ramping(e, now) for e in available)

    def _effective_weight(self, endpoint: EndpointState) -> float:
        slow_start = self._config.slow_start_config
        weight = (float(endpoint.weight) if slow_start is None
                  else slow_start.weight(endpoint, self._clock.now()))
        return weight / math.pow(endpoint.active + 1, self._config.active_request_bias)

    def set_endpoints(self, specs: Iterable[EndpointSpec]) -> None:
        super().set_endpoints(specs)
        self._schedule.invalidate()

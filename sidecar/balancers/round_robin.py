"""Weighted round robin, smooth: each endpoint in turn, in proportion to its weight (Envoy).

Round robin ignores load and latency: it is the right choice when endpoints are alike and calls
cost the same, and the baseline the load-aware balancers are measured against (a slow replica
gets its full share, so the client's tail latency follows the slow one). Weights are honoured
by an earliest-deadline-first schedule (``edf.py``), as in Envoy, so an endpoint of weight 3
gets three calls spread among the others rather than three in a row; with equal weights it is
plain rotation. With a ``slow_start_config`` a new endpoint's weight ramps up over a window
(``slow_start.py``).
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from mesh.clock import Clock
from sidecar.balancers.base import Balancer
from sidecar.balancers.edf import EdfSchedule
from sidecar.balancers.endpoint import EndpointSpec, EndpointState
from sidecar.balancers.slow_start import SlowStart


@dataclass(frozen=True, slots=True, kw_only=True)
class RoundRobinConfig:
    """Envoy's ``RoundRobinLbConfig``."""

    slow_start_config: SlowStart | None = None  # ramp new endpoints' weights up; None: no ramp


class RoundRobinBalancer(Balancer):
    """Smooth weighted round robin over the available endpoints."""

    def __init__(self, config: RoundRobinConfig | None = None, *, clock: Clock,
                 rng: random.Random) -> None:
        super().__init__(clock=clock, rng=rng)
        self._slow_start = (config or RoundRobinConfig()).slow_start_config
        self._schedule = EdfSchedule(rng)

    def _choose(self, candidates: Sequence[EndpointState], available: Sequence[EndpointState],
                key: int | None) -> EndpointState:
        return self._schedule.pick(candidates, available, self._weight)

    def _weight(self, endpoint: EndpointState) -> float:
        if self._slow_start is None:
            return float(endpoint.weight)
        return self._slow_start.weight(endpoint, self._clock.now())

    def set_endpoints(self, specs: Iterable[EndpointSpec]) -> None:
        super().set_endpoints(specs)
        self._schedule.invalidate()

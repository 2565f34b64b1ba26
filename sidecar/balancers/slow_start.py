"""Slow start: a new endpoint's weight ramps up over a window instead of jumping to full.

An instance that just became ready often is not ready for its full share: caches are cold, a JIT
has not warmed up, connection pools are empty. Without a ramp it gets a proportional share at
once and can fall over (Linkerd issue 9652). Envoy's slow start (round robin and least request)
scales the weight of an endpoint younger than ``window``:

    weight * max(min_weight_percent / 100, time_factor ** (1 / aggression))
    time_factor = max(age_seconds, 1) / window

``aggression`` 1 ramps linearly; larger values ramp faster early. The floor keeps the weight from
reaching zero (it must be above 0 here), so the earliest-deadline-first schedule still gives
the endpoint a finite turn.
Endpoints that arrive together ramp together, so slow start only helps an endpoint joining a
cluster that already has others (a scale-up, a replaced instance), as Envoy's docs say.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from sidecar.balancers.endpoint import EndpointState


@dataclass(frozen=True, slots=True, kw_only=True)
class SlowStart:
    """Envoy's ``slow_start_config``: how long and how fast a new endpoint's weight ramps up."""

    window: float  # seconds after joining during which the weight is scaled down
    aggression: float = 1.0  # 1: linear ramp; 2: square root (faster early); Envoy's default 1
    min_weight_percent: float = 10.0  # the floor, in percent of the weight (Envoy: 10 %)

    def __post_init__(self) -> None:
        if self.window <= 0:
            raise ValueError(f"slow start window {self.window}: must be positive seconds")
        if self.aggression <= 0:
            raise ValueError(f"slow start aggression {self.aggression}: must be positive")
        if not 0 < self.min_weight_percent <= 100:
            raise ValueError(f"slow start min_weight_percent {self.min_weight_percent}: "
                             f"must be above 0 and at most 100")

    def ramping(self, endpoint: EndpointState, now: float) -> bool:
        """True while ``endpoint`` is younger than the window."""
        return now - endpoint.added_at < self.window

    def weight(self, endpoint: EndpointState, now: float) -> float:
        """``endpoint``'s weight scaled for its age (its full weight once out of the window)."""
        age = now - endpoint.added_at
        if age >= self.window:
            return float(endpoint.weight)
        time_factor = max(age, 1.0) / self.window
        return endpoint.weight * max(self.min_weight_percent / 100,
                                     math.pow(time_factor, 1 / self.aggression))

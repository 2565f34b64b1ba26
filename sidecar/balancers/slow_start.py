"""Slow start: a new endpoint's weight ramps up over a window instead of jumping to full.

An instance that just became ready often is not ready for its full share: caches are cold, a JIT
has not warmed up, connection pools are empty. Without a ramp it gets a proportional share at
once and can fall over (Linkerd issue 9652). Envoy's slow start (round robin and least request)
scales the weight of an endpoint younger than ``slow_start_window``:

    weight * max(min_weight_percent / 100, time_factor ** (1 / aggression))
    time_factor = max(age_seconds, 1) / slow_start_window

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

DEFAULT_AGGRESSION = 1.0
"""A linear ramp (Envoy's default); 2 ramps as a square root, faster early."""

DEFAULT_MIN_WEIGHT_PERCENT = 10.0
"""Where the ramp starts, in percent of the full weight (Envoy's default)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SlowStart:
    """Envoy's ``slow_start_config``: how long and how fast a new endpoint's weight ramps up."""

    slow_start_window: float  # seconds after joining during which the weight is scaled down
    aggression: float = DEFAULT_AGGRESSION  # 1: linear ramp; above 1 faster early
    min_weight_percent: float = DEFAULT_MIN_WEIGHT_PERCENT  # the floor, in percent of the weight

    def __post_init__(self) -> None:
        if not self.slow_start_window > 0:
            raise ValueError(f"slow start slow_start_window {self.slow_start_window}: must be "
                             f"positive seconds")
        if not self.aggression > 0:  # NaN too
            raise ValueError(f"slow start aggression {self.aggression}: must be positive")
        if not 0 < self.min_weight_percent <= 100:
            raise ValueError(f"slow start min_weight_percent {self.min_weight_percent}: "
                             f"must be above 0 and at most 100")

    def ramping(self, endpoint: EndpointState, now: float) -> bool:
        """True while ``endpoint`` is younger than the window."""
        return now - endpoint.added_at < self.slow_start_window

    def weight(self, endpoint: EndpointState, now: float) -> float:
        """``endpoint``'s weight scaled for its age (its full weight once out of the window)."""
        age = now - endpoint.added_at
        if age >= self.slow_start_window:
            return float(endpoint.weight)
        time_factor = max(age, 1.0) / self.slow_start_window
        return endpoint.weight * max(self.min_weight_percent / 100,
                                     math.pow(time_factor, 1 / self.aggression))

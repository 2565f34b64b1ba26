"""SlowStart: Envoy's ramp, ``weight * max(floor, (max(age, 1) / window) ** (1 / aggression))``."""

from __future__ import annotations

import pytest

from mesh.clock import FakeClock
from sidecar.balancers import EndpointState, SlowStart


def weight_at(age: float, slow_start: SlowStart, weight: int = 10) -> float:
    clock = FakeClock()
    endpoint = EndpointState("a:1", clock=clock, weight=weight)
    clock.advance(age)
    return slow_start.weight(endpoint, clock.now())


@pytest.mark.parametrize(("age", "expected"), [
    (0.0, 1.0),  # the floor: 10 % of 10 (time factor 1/100 is lower)
    (10.0, 1.0),  # 10 / 100 = 10 %
    (50.0, 5.0),  # linear with aggression 1
    (99.0, 9.9),
    (100.0, 10.0),  # out of the window: the full weight
    (500.0, 10.0),
])
def test_linear_ramp_with_a_floor(age: float, expected: float) -> None:
    assert weight_at(age, SlowStart(slow_start_window=100.0)) == pytest.approx(expected)


def test_aggression_ramps_faster_early() -> None:
    slow_start = SlowStart(slow_start_window=100.0, aggression=2.0)
    assert weight_at(25.0, slow_start) == pytest.approx(10 * 0.25 ** 0.5)  # 5, not 2.5


def test_the_age_counts_as_at_least_one_second() -> None:
    slow_start = SlowStart(slow_start_window=4.0, min_weight_percent=1.0)
    assert weight_at(0.0, slow_start) == pytest.approx(10 * 1 / 4)


def test_ramping_only_inside_the_window() -> None:
    slow_start = SlowStart(slow_start_window=30.0)
    clock = FakeClock()
    endpoint = EndpointState("a:1", clock=clock)
    assert slow_start.ramping(endpoint, clock.now())
    clock.advance(30.0)
    assert not slow_start.ramping(endpoint, clock.now())


@pytest.mark.parametrize(("window", "aggression", "floor", "message"), [
    (0.0, 1.0, 10.0, "window"),
    (10.0, 0.0, 10.0, "aggression"),
    (10.0, 1.0, 0.0, "min_weight_percent"),
    (10.0, 1.0, 101.0, "min_weight_percent"),
])
def test_rejects_nonsense(window: float, aggression: float, floor: float, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SlowStart(slow_start_window=window, aggression=aggression, min_weight_percent=floor)

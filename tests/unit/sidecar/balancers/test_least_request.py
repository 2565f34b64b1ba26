"""LeastRequestBalancer: power of two choices on calls in flight; Envoy's weighted EDF form."""

from __future__ import annotations

import random

import pytest

from mesh.clock import FakeClock
from sidecar.balancers import LeastRequestBalancer, LeastRequestConfig, SlowStart
from tests.unit.sidecar.balancers.helpers import count_picks, serve, specs


def make(config: LeastRequestConfig | None = None, *addresses: str,
         **weights: int) -> LeastRequestBalancer:
    balancer = LeastRequestBalancer(config, clock=FakeClock(), rng=random.Random(17))
    balancer.set_endpoints(specs(*(addresses or ("a", "b", "c", "d")), **weights))
    return balancer


def busy(balancer: LeastRequestBalancer, address: str, calls: int) -> None:
    for _ in range(calls):
        balancer.endpoints[address].start()


def test_idle_endpoints_share_evenly() -> None:
    counts = count_picks(make(), 20_000)
    assert all(n / 20_000 == pytest.approx(0.25, abs=0.02) for n in counts.values())


def test_two_choices_never_pick_the_busiest() -> None:
    balancer = make()
    busy(balancer, "a", 10)
    busy(balancer, "b", 3)
    busy(balancer, "c", 3)
    counts = count_picks(balancer, 10_000)
    assert "a" not in counts  # always compared with someone less busy: distinct draws
    # d (idle) wins whenever it is drawn: 3 of the 6 pairs; b and c share the rest
    assert counts["d"] / 10_000 == pytest.approx(0.5, abs=0.02)


def test_two_endpoints_always_give_the_less_busy_one() -> None:
    balancer = make(None, "a", "b")
    busy(balancer, "a", 1)
    assert count_picks(balancer, 1000) == {"b": 1000}  # Envoy's draws with replacement: ~25 % a


def test_choice_count_of_all_endpoints_is_a_full_scan() -> None:
    balancer = make(LeastRequestConfig(choice_count=4))
    for address, calls in (("a", 4), ("b", 2), ("c", 1), ("d", 3)):
        busy(balancer, address, calls)
    assert count_picks(balancer, 500) == {"c": 500}


def test_a_slow_replica_gets_a_small_share() -> None:
    clock = FakeClock()
    balancer = LeastRequestBalancer(clock=clock, rng=random.Random(17))
    balancer.set_endpoints(specs("fast1", "fast2", "slow"))
    latency = {"fast1": 0.010, "fast2": 0.010, "slow": 0.100}
    counts = serve(balancer, clock, latency, calls=10_000, gap=0.002)  # 500 calls/s
    assert counts["slow"] / 10_000 < 0.15  # ~7 %; round robin would give it a third


def test_unequal_weights_use_edf_and_are_honoured() -> None:
    counts = count_picks(make(None, "a", "b", a=3), 4000)
    assert counts == {"a": 3000, "b": 1000}


def test_active_request_bias_divides_the_weight_by_the_load() -> None:
    balancer = make(None, "a", "b", a=2)
    busy(balancer, "a", 3)  # effective weight 2 / (3 + 1) = 0.5 against b's 1 / 1
    counts = count_picks(balancer, 3000)
    assert counts["b"] / counts["a"] == pytest.approx(2.0, rel=0.01)


def test_bias_zero_is_weighted_round_robin() -> None:
    balancer = make(LeastRequestConfig(active_request_bias=0.0), "a", "b", a=2)
    busy(balancer, "a", 3)
    assert count_picks(balancer, 3000) == {"a": 2000, "b": 1000}


def slow_starting(clock: FakeClock) -> LeastRequestBalancer:
    """Endpoints a and b with a slow start window of 100 s, past it by now."""
    config = LeastRequestConfig(slow_start_config=SlowStart(slow_start_window=100.0))
    balancer = LeastRequestBalancer(config, clock=clock, rng=random.Random(17))
    balancer.set_endpoints(specs("a", "b"))
    clock.advance(200.0)
    return balancer


def test_a_new_endpoint_in_slow_start_switches_to_weighted_picks() -> None:
    clock = FakeClock()
    balancer = slow_starting(clock)
    balancer.set_endpoints(specs("a", "b", "new"))
    assert count_picks(balancer, 2100)["new"] == pytest.approx(100, abs=2)  # 0.1 of 2.1
    clock.advance(100.0)  # out of the window: equal weights, power of two choices again
    assert count_picks(balancer, 12_000)["new"] / 12_000 == pytest.approx(1 / 3, abs=0.03)


def test_costs_are_calls_in_flight_until_an_endpoint_ramps_up_then_load_per_weight() -> None:
    clock = FakeClock()
    balancer = slow_starting(clock)
    busy(balancer, "a", 3)
    costs = balancer.costs()
    assert (costs.unit, dict(costs.by_address)) == ("requests", {"a": 3.0, "b": 0.0})

    balancer.set_endpoints(specs("a", "b", "new"))  # new's weight starts at a tenth of 1
    costs = balancer.costs()
    assert costs.unit == "load/weight"
    assert dict(costs.by_address) == {"a": 4.0, "b": 1.0, "new": pytest.approx(10.0)}
    clock.advance(100.0)  # out of the window
    assert balancer.costs().unit == "requests"


@pytest.mark.parametrize(("choices", "bias", "message"), [
    (1, 1.0, "choice_count"),
    (2, -0.5, "active_request_bias"),
    (2, float("nan"), "active_request_bias"),
    (2, float("inf"), "active_request_bias"),
])
def test_rejects_nonsense(choices: int, bias: float, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LeastRequestConfig(choice_count=choices, active_request_bias=bias)

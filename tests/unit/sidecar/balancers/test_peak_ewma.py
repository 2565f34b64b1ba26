"""PeakEwmaBalancer: two random choices on latency x (in flight + 1); slow endpoints avoided."""

from __future__ import annotations

import random

import pytest

from mesh.clock import FakeClock
from sidecar.balancers import PeakEwmaBalancer, PeakEwmaConfig
from sidecar.balancers.peak_ewma import load
from tests.unit.sidecar.balancers.helpers import count_picks, serve, specs


def make(clock: FakeClock, *addresses: str,
         config: PeakEwmaConfig | None = None) -> PeakEwmaBalancer:
    balancer = PeakEwmaBalancer(config, clock=clock, rng=random.Random(23))
    balancer.set_endpoints(specs(*addresses))
    return balancer


def answer(balancer: PeakEwmaBalancer, address: str, latency: float) -> None:
    endpoint = balancer.endpoints[address]
    endpoint.start()
    endpoint.finish(latency, ok=True)


def test_load_is_latency_times_calls_in_flight_plus_one() -> None:
    balancer = make(FakeClock(), "a", config=PeakEwmaConfig(default_rtt=0.020))
    endpoint = balancer.endpoints["a"]
    endpoint.start()
    endpoint.start()
    assert load(endpoint) == pytest.approx(0.020 * 3)


def test_of_two_endpoints_the_lower_load_always_wins() -> None:
    balancer = make(FakeClock(), "a", "b")
    answer(balancer, "a", 0.050)
    answer(balancer, "b", 0.010)
    assert count_picks(balancer, 200) == {"b": 200}
    for _ in range(5):
        balancer.endpoints["b"].start()  # 10 ms x 6 in flight > 50 ms x 1
    assert count_picks(balancer, 200) == {"a": 200}


def test_a_slow_replica_is_avoided() -> None:
    clock = FakeClock()
    balancer = make(clock, "fast1", "fast2", "slow")
    latency = {"fast1": 0.010, "fast2": 0.010, "slow": 0.100}
    counts = serve(balancer, clock, latency, calls=20_000, gap=0.002)  # 40 s at 500 calls/s
    assert counts["slow"] / 20_000 < 0.02  # least request gives it ~7 %, round robin 33 %


def test_a_recovered_replica_wins_its_share_back_as_the_peak_decays() -> None:
    clock = FakeClock()
    balancer = make(clock, "fast1", "fast2", "slow")
    latency = {"fast1": 0.010, "fast2": 0.010, "slow": 0.100}
    serve(balancer, clock, latency, calls=10_000, gap=0.002)  # 20 s slow
    latency["slow"] = 0.010  # it recovers, but only a pick can find that out
    early = serve(balancer, clock, latency, calls=2_500, gap=0.002)  # the next 5 s
    serve(balancer, clock, latency, calls=12_500, gap=0.002)  # 25 s more: three decays in all
    late = serve(balancer, clock, latency, calls=15_000, gap=0.002)  # the 30 s after
    assert early["slow"] / 2_500 < 0.15  # still avoided at first: its peak is remembered
    assert late["slow"] / 15_000 > 0.25  # near its third again (ties go to the measured)
    assert balancer.endpoints["slow"].latency_estimate() == pytest.approx(0.010, rel=0.05)


def test_a_new_endpoint_is_not_flooded_before_it_answers() -> None:
    clock = FakeClock()
    balancer = make(clock, "old", config=PeakEwmaConfig(default_rtt=0.030))
    clock.advance(30.0)
    answer(balancer, "old", 0.010)  # ~11 ms: its cold 30 ms is three decays old
    balancer.set_endpoints(specs("old", "new"))
    assert balancer.endpoints["new"].latency_estimate() == 0.030  # not zero
    assert count_picks(balancer, 100) == {"old": 100}  # idle and measured fast: preferred
    for _ in range(3):
        balancer.endpoints["old"].start()  # 11 ms x 4 > 30 ms x 1
    assert count_picks(balancer, 100) == {"new": 100}


def test_settings_reach_the_endpoints() -> None:
    clock = FakeClock()
    balancer = make(clock, "a", config=PeakEwmaConfig(decay=1.0, default_rtt=0.200))
    clock.advance(1.0)
    assert balancer.endpoints["a"].latency_estimate() == pytest.approx(0.200 * 0.36788, rel=1e-4)


@pytest.mark.parametrize(("decay", "rtt", "message"), [
    (0.0, 0.03, "decay"),
    (10.0, 0.0, "default_rtt"),
])
def test_rejects_nonsense(decay: float, rtt: float, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PeakEwmaConfig(decay=decay, default_rtt=rtt)

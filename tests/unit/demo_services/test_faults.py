"""Fault knobs decide on a fake clock with a seeded RNG: the same seed, the same misbehaviour."""

from __future__ import annotations

import random
import statistics

import pytest

from demo_services.faults import MAX_DELAY, Distribution, Faults, FaultSettings
from mesh.clock import FakeClock


def faults(seed: int = 1) -> tuple[Faults, FakeClock]:
    clock = FakeClock()
    return Faults(clock=clock, rng=random.Random(seed)), clock


def test_no_knobs_no_faults() -> None:
    f, _ = faults()
    verdicts = [f.decide() for _ in range(100)]
    assert all(v.delay == 0 and not v.fail for v in verdicts)
    assert f.counters.calls == 100 and f.counters.failed == 0


def test_fixed_latency_and_error_rate() -> None:
    f, _ = faults()
    f.set(FaultSettings(latency=0.05, error_rate=0.25))
    verdicts = [f.decide() for _ in range(4000)]
    assert {v.delay for v in verdicts} == {0.05}
    failed = sum(v.fail for v in verdicts)
    assert 850 < failed < 1150  # 25 % of 4000, seeded
    assert all(v.reason == "error_rate" for v in verdicts if v.fail)


def test_lognormal_has_the_median_it_was_given_and_a_long_tail() -> None:
    f, _ = faults()
    f.set(FaultSettings(latency=0.02, distribution=Distribution.LOGNORMAL, sigma=1.0))
    delays = sorted(f.decide().delay for _ in range(20000))
    assert statistics.median(delays) == pytest.approx(0.02, rel=0.05)
    p99 = delays[int(0.99 * len(delays))]
    assert 0.15 < p99 < 0.25  # exp(2.326) ≈ 10.2 × the median


def test_pareto_never_below_its_minimum_and_heavy_tailed() -> None:
    f, _ = faults()
    f.set(FaultSettings(latency=0.005, distribution=Distribution.PARETO, alpha=1.5))
    delays = sorted(f.decide().delay for _ in range(20000))
    assert delays[0] >= 0.005
    assert statistics.median(delays) == pytest.approx(0.005 * 2 ** (1 / 1.5), rel=0.05)
    assert delays[-1] > 50 * delays[len(delays) // 2]  # a tail no normal curve has
    assert delays[-1] <= MAX_DELAY


def test_same_seed_same_delays() -> None:
    settings = FaultSettings(latency=0.01, distribution=Distribution.PARETO, error_rate=0.3)
    runs = []
    for _ in range(2):
        f, _ = faults(seed=42)
        f.set(settings)
        runs.append([f.decide() for _ in range(50)])
    assert runs[0] == runs[1]


def test_a_brownout_slows_and_fails_until_it_ends() -> None:
    f, clock = faults()
    f.start_brownout(10.0, latency=0.2, error_rate=1.0)
    during = f.decide()
    assert during.delay == pytest.approx(0.2) and during.fail and during.reason == "brownout"
    assert f.to_json()["brownout"]["remaining_s"] == 10.0
    clock.advance(9.9)
    assert f.decide().fail
    clock.advance(0.1)
    after = f.decide()
    assert after.delay == 0 and not after.fail
    assert f.to_json()["brownout"] is None
    assert f.counters.by_reason == {"brownout": 2}


def test_clear_ends_everything() -> None:
    f, _ = faults()
    f.set(FaultSettings(latency=1.0, error_rate=1.0))
    f.start_brownout(5.0)
    f.clear()
    v = f.decide()
    assert v.delay == 0 and not v.fail


def test_admin_json_changes_only_the_fields_given() -> None:
    base = FaultSettings(latency=0.05, error_rate=0.1)
    changed = FaultSettings.from_json({"distribution": "lognormal", "sigma": 0.5}, base)
    assert changed == FaultSettings(latency=0.05, error_rate=0.1,
                                    distribution=Distribution.LOGNORMAL, sigma=0.5)
    assert FaultSettings.from_json(changed.to_json()) == changed


@pytest.mark.parametrize(("data", "message"), [
    ({"error_rate": 1.5}, "error_rate 1.5: must be within 0..1"),
    ({"latency_ms": -3}, "latency -0.003s"),
    ({"distribution": "gaussian"}, "'gaussian' is not a valid Distribution"),
    ({"latency": 5}, r"unknown fault field\(s\) \['latency'\]"),
    ({"sigma": "wide"}, "could not convert"),
])
def test_bad_knobs_are_refused_by_name(data: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FaultSettings.from_json(data)


def test_brownout_needs_a_positive_duration() -> None:
    f, _ = faults()
    with pytest.raises(ValueError, match="brownout seconds 0"):
        f.start_brownout(0)

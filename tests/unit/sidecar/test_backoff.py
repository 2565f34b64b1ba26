"""Backoff: AWS's decorrelated and full jitter, within their bounds, reproducible with a seed."""

from __future__ import annotations

import itertools
import random
import statistics

import pytest

from sidecar.backoff import Backoff, Jitter


def first(backoff: Backoff, n: int, seed: int = 1) -> list[float]:
    return list(itertools.islice(backoff.delays(random.Random(seed)), n))


def test_defaults_are_envoys() -> None:
    backoff = Backoff()
    assert (backoff.base_interval, backoff.cap, backoff.jitter) == (0.025, 0.25,
                                                                    Jitter.DECORRELATED)
    assert Backoff(base_interval=0.1).cap == pytest.approx(1.0)  # ten times the base
    assert Backoff(base_interval=0.1, max_interval=0.3).cap == 0.3


@pytest.mark.parametrize("seed", range(20))
def test_decorrelated_delays_stay_within_base_cap_and_three_times_the_last(seed: int) -> None:
    backoff = Backoff(base_interval=0.010, max_interval=1.0)
    delays = first(backoff, 200, seed)
    previous = backoff.base_interval
    for delay in delays:
        assert backoff.base_interval <= delay <= backoff.cap
        assert delay <= 3 * previous
        previous = delay


def test_decorrelated_delays_grow_toward_the_cap() -> None:
    backoff = Backoff(base_interval=0.010, max_interval=1.0)
    runs = [first(backoff, 30, seed) for seed in range(200)]
    assert statistics.fmean(run[0] for run in runs) == pytest.approx(0.020, rel=0.1)  # U(b, 3b)
    assert statistics.fmean(run[-1] for run in runs) > 0.4  # ~0.55: a draw may fall back low


@pytest.mark.parametrize("seed", range(20))
def test_full_jitter_draws_below_the_doubling_ceiling(seed: int) -> None:
    backoff = Backoff(base_interval=0.010, max_interval=0.5, jitter=Jitter.FULL)
    for n, delay in enumerate(first(backoff, 2000, seed)):  # long enough to overflow 2 ** n
        assert 0 <= delay <= min(backoff.cap, 0.010 * 2 ** min(n, 60))


def test_full_jitter_spreads_over_the_whole_range() -> None:
    backoff = Backoff(base_interval=0.010, max_interval=0.160, jitter=Jitter.FULL)
    capped = [d for seed in range(50) for d in first(backoff, 40, seed)[10:]]  # past the cap
    assert statistics.fmean(capped) == pytest.approx(0.080, rel=0.1)
    assert min(capped) < 0.005 and max(capped) > 0.155


def test_each_sequence_starts_over_and_a_seed_repeats_it() -> None:
    backoff = Backoff()
    assert first(backoff, 10, seed=4) == first(backoff, 10, seed=4)
    rng = random.Random(4)
    one, two = backoff.delays(rng), backoff.delays(rng)
    assert next(one) <= 3 * backoff.base_interval and next(two) <= 3 * backoff.base_interval


@pytest.mark.parametrize(("base", "cap", "message"), [
    (0.0, None, "base_interval"),
    (0.1, 0.05, "max_interval"),
])
def test_rejects_nonsense(base: float, cap: float | None, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Backoff(base_interval=base, max_interval=cap)

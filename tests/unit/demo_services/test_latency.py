"""Nearest-rank percentiles: every number reported is a latency some request really had."""

from __future__ import annotations

import random

import pytest

from demo_services.latency import Recorder, percentile


def test_nearest_rank_on_a_hundred_samples() -> None:
    samples = [float(n) for n in range(1, 101)]
    assert percentile(samples, 50) == 50.0
    assert percentile(samples, 90) == 90.0
    assert percentile(samples, 99) == 99.0
    assert percentile(samples, 100) == 100.0
    assert percentile(samples, 0) == 1.0


def test_small_samples_round_up_to_a_real_sample() -> None:
    assert percentile([1.0, 2.0, 3.0], 50) == 2.0
    assert percentile([1.0, 2.0, 3.0], 99) == 3.0  # never an interpolated 2.98
    assert percentile([7.0], 99) == 7.0


def test_percentile_refuses_no_samples_and_bad_ranks() -> None:
    with pytest.raises(ValueError, match="no samples"):
        percentile([], 50)
    with pytest.raises(ValueError, match="percentile 101"):
        percentile([1.0], 101)


def test_recorder_sorts_when_asked_and_counts_outcomes() -> None:
    rng = random.Random(7)
    values = [rng.random() for _ in range(1000)]
    recorder = Recorder()
    for i, v in enumerate(values):
        recorder.record(v, "201" if i % 10 else "503", ok=bool(i % 10))
    ordered = sorted(values)
    assert recorder.count == 1000
    assert recorder.percentile(50) == ordered[499]
    assert recorder.percentile(99) == ordered[989]
    assert recorder.max == ordered[-1]
    assert recorder.outcomes == {"201": 900, "503": 100}
    assert recorder.failures == 100
    assert recorder.error_rate == pytest.approx(0.1)
    recorder.record(2.0, "201", ok=True)  # a new sample after a read is sorted in too
    assert recorder.max == 2.0

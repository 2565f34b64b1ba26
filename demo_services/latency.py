"""Latency samples and what a person reads from them: percentiles, the maximum, outcomes.

Percentiles are *nearest rank* (the smallest sample with at least p % of the samples at or
below it), so every number reported is a latency a real request had — never an interpolation
between two. Every sample is kept: a demo's load is thousands of requests, and exact tails are
the point (a histogram's buckets would round the p99 to a bucket edge).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field


def percentile(ordered: list[float], p: float) -> float:
    """The nearest-rank ``p``-th percentile of ``ordered`` (sorted ascending, not empty).

    Raises:
        ValueError: ``ordered`` is empty or ``p`` is outside 0..100.
    """
    if not ordered:
        raise ValueError("percentile of no samples")
    if not 0 <= p <= 100:
        raise ValueError(f"percentile {p}: must be within 0..100")
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass(slots=True)
class Recorder:
    """Every request's latency (seconds) and outcome (an HTTP status, a gRPC code, an error)."""

    outcomes: Counter[str] = field(default_factory=Counter)
    failures: int = 0
    _latencies: list[float] = field(default_factory=list)
    _sorted: bool = True

    def record(self, latency: float, outcome: str, ok: bool) -> None:
        self._latencies.append(latency)
        self._sorted = False
        self.outcomes[outcome] += 1
        if not ok:
            self.failures += 1

    @property
    def count(self) -> int:
        return len(self._latencies)

    @property
    def latencies(self) -> list[float]:
        """Every latency, sorted ascending (sorted when asked, not on every record)."""
        if not self._sorted:
            self._latencies.sort()
            self._sorted = True
        return self._latencies

    def percentile(self, p: float) -> float:
        return percentile(self.latencies, p)

    @property
    def max(self) -> float:
        return self.latencies[-1]

    @property
    def error_rate(self) -> float:
        return self.failures / self.count if self.count else 0.0

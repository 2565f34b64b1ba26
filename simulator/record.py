"""What the callers saw: every answer, and the figures a report reads from them.

A record keeps each answer's start time, latency, status and attempt count in flat lists
(a million answers fit easily), and computes percentiles by sorting, exactly: no sketch, so
two runs with the same seed give the same figures to the last digit.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

from simulator.sidecar import Answer


def percentile(ordered: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``ordered`` (sorted), nearest rank; 0 for none."""
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


@dataclass(slots=True)
class Record:
    started: list[float] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)
    attempts: list[int] = field(default_factory=list)

    def add(self, answer: Answer) -> None:
        self.started.append(answer.started)
        self.latencies.append(answer.latency)
        self.statuses.append(answer.status)
        self.attempts.append(answer.attempts)

    def __len__(self) -> int:
        return len(self.statuses)

    def success(self, since: float = 0.0, until: float = float("inf")) -> float:
        """The share of calls started in [since, until) answered below 500 (0..1)."""
        chosen = [s for t, s in zip(self.started, self.statuses, strict=True)
                  if since <= t < until]
        return sum(1 for s in chosen if s < 500) / len(chosen) if chosen else 1.0

    def latency(self, q: float, *, ok_only: bool = False) -> float:
        """A latency percentile in seconds, of every call (or of the successful ones)."""
        values = [v for v, s in zip(self.latencies, self.statuses, strict=True)
                  if s < 500] if ok_only else list(self.latencies)
        return percentile(sorted(values), q)

    def status_counts(self) -> dict[int, int]:
        return dict(sorted(Counter(self.statuses).items()))

    def attempts_per_call(self) -> float:
        return sum(self.attempts) / len(self.attempts) if self.attempts else 0.0

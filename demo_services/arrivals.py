"""Open-loop arrivals: when each request of a load test is due, whatever the server does.

A *closed-loop* load generator sends the next request when the previous one returns. When the
server stalls for a second, it simply stops sending — and records one slow request where users
would have seen a second's worth of them. That is *coordinated omission* (Gil Tene): the
generator coordinates with the server and omits exactly the samples that matter.

Open loop fixes the schedule in advance: request ``n`` is due at ``start + n / rate``. The
generator sends it then, even if a hundred others are still waiting, and measures its latency
from that *due time*, not from when it actually went out: a generator that fell behind (a busy
event loop, a full connection pool) adds its own lateness to the latency instead of hiding it
(wrk2 and Gatling's open models do the same).

Pure: the schedule is arithmetic on the times given; the load generator does the waiting.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True, slots=True, kw_only=True)
class Schedule:
    """``rate`` requests per second from ``start``, for ``duration`` seconds or ``count`` requests.

    With both, whichever ends first; with neither, it is an error.
    """

    rate: float
    start: float
    duration: float | None = None
    count: int | None = None

    def __post_init__(self) -> None:
        if not self.rate > 0:
            raise ValueError(f"load rate {self.rate}/s: must be positive")
        if self.duration is None and self.count is None:
            raise ValueError("a load needs a duration or a count of requests")
        if self.duration is not None and not self.duration > 0:
            raise ValueError(f"load duration {self.duration}s: must be positive")
        if self.count is not None and self.count < 1:
            raise ValueError(f"load count {self.count}: must be at least 1")

    @property
    def total(self) -> int:
        """How many requests the schedule holds."""
        by_time = math.inf if self.duration is None else math.ceil(self.duration * self.rate
                                                                   - 1e-9)
        return int(min(by_time, math.inf if self.count is None else self.count))

    def due(self, n: int) -> float:
        """When request ``n`` (0-based) is due."""
        return self.start + n / self.rate

    def due_by(self, now: float) -> int:
        """How many requests are due at ``now`` (so those numbered below it should be sent)."""
        if now < self.start:
            return 0
        return min(self.total, math.floor((now - self.start) * self.rate + 1e-9) + 1)

    @property
    def end(self) -> float:
        """When the last request is due."""
        return self.due(self.total - 1)

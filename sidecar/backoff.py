"""Backoff: how long to wait before trying again, growing and randomised (AWS's jitter).

Retrying at once hits a struggling upstream while it is still struggling; retrying after a fixed
delay makes every client that failed together retry together, in waves. Exponential backoff
spreads retries over growing delays, and *jitter* randomises them so the waves dissolve. Both
forms here come from the AWS Architecture Blog ("Exponential Backoff And Jitter", 2015), with
``base = base_interval`` and ``cap = max_interval``:

- *decorrelated* (the default, the course's "standard"):
  ``sleep = min(cap, uniform(base, previous_sleep * 3))``, the first ``previous_sleep = base``.
  Each delay is within ``[base, cap]`` and at most three times the one before.
- *full*: ``sleep = uniform(0, min(cap, base * 2 ** n))`` for the n-th retry, counting from 0.
  Envoy's retry back-off is a full jitter too: retry N waits up to ``(2^N - 1) * base``.

Both finish a batch of contending clients with far fewer calls than un-jittered backoff (AWS's
simulation). Defaults are Envoy's: 25 ms base, a cap of ten times the base. The retry policy
and the discovery client's reconnects both take their delays from here.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum


class Jitter(Enum):
    """How a delay is randomised (AWS's names)."""

    DECORRELATED = "decorrelated"  # min(cap, uniform(base, 3 x previous)): never below base
    FULL = "full"  # uniform(0, min(cap, base x 2^n)): may be close to zero


@dataclass(frozen=True, slots=True, kw_only=True)
class Backoff:
    """How delays between attempts grow: a base, a cap and a jitter."""

    base_interval: float = 0.025  # seconds; Envoy's 25 ms
    max_interval: float | None = None  # seconds; None: ten times base_interval (Envoy)
    jitter: Jitter = Jitter.DECORRELATED

    def __post_init__(self) -> None:
        if self.base_interval <= 0:
            raise ValueError(f"backoff base_interval {self.base_interval}: must be positive "
                             f"seconds")
        if self.max_interval is not None and self.max_interval < self.base_interval:
            raise ValueError(f"backoff max_interval {self.max_interval}: must be at least "
                             f"base_interval ({self.base_interval})")

    @property
    def cap(self) -> float:
        """The longest delay in seconds."""
        return 10 * self.base_interval if self.max_interval is None else self.max_interval

    def delays(self, rng: random.Random) -> Iterator[float]:
        """The delays in seconds before the first retry, the second, and so on, without end.

        Each call starts a fresh sequence; keep one iterator per request (or per connection
        being re-established) and start a new one after a success.
        """
        if self.jitter is Jitter.FULL:
            return self._full(rng)
        return self._decorrelated(rng)

    def _decorrelated(self, rng: random.Random) -> Iterator[float]:
        sleep = self.base_interval
        while True:
            sleep = min(self.cap, rng.uniform(self.base_interval, sleep * 3))
            yield sleep

    def _full(self, rng: random.Random) -> Iterator[float]:
        ceiling = self.base_interval  # min(cap, base * 2 ** n), doubled without overflowing
        while True:
            yield rng.uniform(0.0, min(self.cap, ceiling))
            ceiling = min(self.cap, ceiling * 2)

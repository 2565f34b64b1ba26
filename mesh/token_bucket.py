"""A token bucket: at most ``burst`` events at once, refilled at ``rate`` per second.

Used where the mesh must bound how often a peer may make it do something, such as how many
streams a peer may reset (HTTP/2 "Rapid Reset"). Pure: it reads an injected clock.
"""

from __future__ import annotations

from mesh.clock import Clock


class TokenBucket:
    """``take()`` succeeds while tokens remain; tokens refill continuously up to ``burst``."""

    __slots__ = ("_burst", "_clock", "_rate", "_stamp", "_tokens")

    def __init__(self, *, burst: int, rate: float, clock: Clock) -> None:
        if burst < 1 or rate <= 0:
            raise ValueError(f"token bucket needs burst >= 1 and rate > 0, got {burst}, {rate}")
        self._burst = float(burst)
        self._rate = rate
        self._clock = clock
        self._tokens = float(burst)
        self._stamp = clock.now()

    def take(self) -> bool:
        """Spend one token; False when the bucket is empty (the caller is over its rate)."""
        now = self._clock.now()
        self._tokens = min(self._burst, self._tokens + (now - self._stamp) * self._rate)
        self._stamp = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True

    @property
    def tokens(self) -> float:
        """Tokens left as of the last ``take`` (for metrics and tests)."""
        return self._tokens

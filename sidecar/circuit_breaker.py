"""Circuit breakers: per-cluster caps on concurrency that fail fast instead of queueing (Envoy).

When an upstream slows down, calls pile up: connections, requests waiting for a connection,
requests in flight, retries. Past some point the waiting is the outage — memory grows, every
call times out, and the caller cannot tell. Envoy's circuit breakers cap each of these per
cluster. A call that would exceed a cap is refused at once, so the sidecar answers 503 (gRPC
UNAVAILABLE) immediately with a header naming the limit (Envoy sets
``x-envoy-overloaded: true``), and the caller learns of the overload in microseconds.

Despite the name these are not Hystrix's open / half-open / closed state machine: nothing
"opens" after failures and no timer closes it. They are counters checked on every call;
reacting to failing endpoints is outlier detection's job (``outlier.py``).

    limit                  counts                                         Envoy's default
    max_pending_requests   requests waiting for a connection or stream    1024
    max_requests           requests in flight                             1024
    max_retries            retries in flight (including their backoff)   3

``try_acquire`` returns a ``Permit`` to ``release()`` when the thing it counts ends, or an
``Overflow`` naming the limit that tripped; code deep in a call that meets an overflow raises
``Overloaded`` to end the call with it. Envoy keeps a set of limits per priority; the mesh has
one priority. Envoy's ``max_connections`` is left out: over HTTP/2 the pool opens a connection
per ``max_streams_per_connection`` requests, so ``max_requests`` bounds connections already.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

DEFAULT_MAX_PENDING_REQUESTS = 1024
"""Requests waiting for a connection (Envoy's default)."""

DEFAULT_MAX_REQUESTS = 1024
"""Requests in flight (Envoy's default)."""

DEFAULT_MAX_RETRIES = 3
"""Retries in flight (Envoy's default): few, since each one is load a failing upstream pays."""


class Limit(Enum):
    """What a permit counts; the value is the name of its limit in the configuration."""

    PENDING_REQUESTS = "max_pending_requests"
    REQUESTS = "max_requests"
    RETRIES = "max_retries"


@dataclass(frozen=True, slots=True, kw_only=True)
class CircuitBreakerConfig:
    """Envoy's ``CircuitBreakers.Thresholds``, with its defaults."""

    max_pending_requests: int = DEFAULT_MAX_PENDING_REQUESTS
    max_requests: int = DEFAULT_MAX_REQUESTS
    max_retries: int = DEFAULT_MAX_RETRIES

    def __post_init__(self) -> None:
        for limit in Limit:
            if self.maximum(limit) < 0:
                raise ValueError(f"circuit breaker {limit.value} {self.maximum(limit)}: must "
                                 f"not be negative")

    def maximum(self, limit: Limit) -> int:
        """The configured value of ``limit``."""
        value: int = getattr(self, limit.value)
        return value


@dataclass(frozen=True, slots=True, kw_only=True)
class Overflow:
    """A limit tripped: answer 503 / UNAVAILABLE now, naming ``limit`` (e.g. in a header)."""

    limit: Limit  # ``limit.value`` is its name, e.g. "max_pending_requests"
    maximum: int  # its configured value


class Overloaded(Exception):
    """A limit tripped in the middle of a call: answer it with ``overflow`` (503, limit named)."""

    def __init__(self, overflow: Overflow) -> None:
        super().__init__(f"{overflow.limit.value} ({overflow.maximum}) reached")
        self.overflow = overflow


class Permit:
    """One unit of a limit, held until ``release()`` (which may be called more than once)."""

    __slots__ = ("_breaker", "_limit", "_released")

    def __init__(self, breaker: CircuitBreaker, limit: Limit) -> None:
        self._breaker = breaker
        self._limit = limit
        self._released = False

    def release(self) -> None:
        """Give the unit back; later calls do nothing, so it is safe in every cleanup path."""
        if not self._released:
            self._released = True
            self._breaker._release(self._limit)


class CircuitBreaker:
    """The four counters of one cluster, each capped by its limit."""

    def __init__(self, config: CircuitBreakerConfig | None = None) -> None:
        self.config = config or CircuitBreakerConfig()  # replace to change limits live
        self._active = dict.fromkeys(Limit, 0)

    def try_acquire(self, limit: Limit) -> Permit | Overflow:
        """A permit for one more of ``limit``'s kind, or the overflow if it is at its cap."""
        maximum = self.config.maximum(limit)
        if self._active[limit] >= maximum:
            return Overflow(limit=limit, maximum=maximum)
        self._active[limit] += 1
        return Permit(self, limit)

    def active(self, limit: Limit) -> int:
        """How many permits of ``limit``'s kind are held now (for metrics and /clusters)."""
        return self._active[limit]

    def _release(self, limit: Limit) -> None:
        self._active[limit] -= 1

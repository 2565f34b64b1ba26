"""Local rate limiting: a token bucket per route, or per inbound listener, in the sidecar itself.

A retry budget bounds what *callers* add; a local rate limit bounds what a route or a service
*accepts*, so that a burst past what it can serve is refused at once, cheaply, instead of
queueing until every call times out. Envoy's ``local_ratelimit`` filter: a bucket of
``max_tokens``, refilled with ``tokens_per_fill`` every ``fill_interval``; each request takes a
token, and a request that finds none is answered 429 (gRPC: RESOURCE_EXHAUSTED) with
``x-mesh-ratelimited: <where>`` so that the caller — and whoever reads the logs — can tell a
limit from an overloaded service. "Local" because each sidecar counts alone: ten replicas
behind a limit of 100/s accept 1,000/s (a global limit needs a shared counter, Envoy's
``ratelimit`` service).

Envoy refills the bucket in steps, once per ``fill_interval``; :class:`mesh.token_bucket`
refills it continuously at the same average rate, which spreads a refill over the interval
instead of admitting its burst at the interval's start. Pure: it reads an injected clock.
"""

from __future__ import annotations

from dataclasses import dataclass

from mesh.clock import Clock
from mesh.proto.config_pb2 import LocalRateLimit
from mesh.token_bucket import TokenBucket

RATE_LIMITED_HEADER = "x-mesh-ratelimited"  # its value says which limit: route or inbound
DEFAULT_TOKENS_PER_FILL = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class RateLimitSettings:
    """A bucket's size and refill (from :class:`LocalRateLimit`)."""

    max_tokens: int
    tokens_per_fill: int = DEFAULT_TOKENS_PER_FILL
    fill_interval: float  # seconds

    def __post_init__(self) -> None:
        if self.max_tokens < 1 or self.tokens_per_fill < 1 or self.fill_interval <= 0:
            raise ValueError(f"a local rate limit needs max_tokens >= 1, tokens_per_fill >= 1 "
                             f"and a positive fill_interval, not {self.max_tokens}, "
                             f"{self.tokens_per_fill}, {self.fill_interval}s")

    @property
    def rate(self) -> float:
        """Tokens per second, on average."""
        return self.tokens_per_fill / self.fill_interval


class RateLimiter:
    """One bucket: :meth:`admit` says whether a request may go on."""

    def __init__(self, settings: RateLimitSettings, clock: Clock, *, name: str) -> None:
        self.settings = settings
        self.name = name  # what x-mesh-ratelimited says: "route shop/2", "inbound"
        self._bucket = TokenBucket(burst=settings.max_tokens, rate=settings.rate, clock=clock)
        self.limited = 0  # requests refused so far

    def admit(self) -> bool:
        """Take a token; False (and counted) when there is none."""
        if self._bucket.take():
            return True
        self.limited += 1
        return False


def rate_limit_settings_from(message: LocalRateLimit) -> RateLimitSettings:
    """The settings a policy's ``rate_limit`` says.

    Raises:
        ValueError: a bucket that admits nothing (no tokens, no interval).
    """
    tokens_per_fill = message.tokens_per_fill if message.HasField("tokens_per_fill") \
        else DEFAULT_TOKENS_PER_FILL
    return RateLimitSettings(max_tokens=message.max_tokens, tokens_per_fill=tokens_per_fill,
                             fill_interval=message.fill_interval.ToTimedelta().total_seconds())

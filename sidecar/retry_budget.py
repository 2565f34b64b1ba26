"""Retry budgets: retries may add only a fraction to the load, however many calls fail.

A fixed ``num_retries`` multiplies load exactly when an upstream can least afford it: with a
failure probability ``p`` and up to ``n`` retries the upstream sees ``1 + p + … + p^n`` times the
offered load — 1.875× in a 50 % brownout with three retries, 4× in an outage, 64× through three
layers that each retry three times. A budget caps retries at a share of the traffic instead, so
a healthy upstream's occasional failure is retried and a failing one is not buried.

Two budgets, one interface (``Budget``); a request's ``RetryState`` calls it:

- ``RateBudget``, by rate (Finagle's ``RetryBudget``, Linkerd's ``retryBudget``, tower's
  ``TpsBudget``; the default). Every request deposits ``1000`` into a token bucket; a retry
  withdraws ``floor(1000 / retry_ratio)`` (5000 for 20 %), so five requests pay for one retry.
  A reserve of ``min_retries_per_second * ttl * withdrawal`` lets a quiet client retry at all.
  Deposits and withdrawals are kept for ``ttl`` as 10 slots of ``ttl / 10``; a retry is
  allowed iff the ten past slots + the current slot + the reserve hold at least one withdrawal.
  So over any window retries stay below ``retry_ratio`` of requests plus
  ``min_retries_per_second`` per second. Defaults: 20 %, 10 per second, 10 s.
- ``ConcurrencyBudget``, by concurrency (Envoy's circuit-breaker ``retry_budget``): retries in
  progress may not exceed ``budget_percent`` (20 %) of requests in progress, though
  ``min_retry_concurrency`` (3) are always allowed. It needs no clock, but it only bounds
  retries at one moment, not over time.

Both count a retry from the moment it is decided, before its backoff delay: Envoy counted
retries only once they were sent, so every request that failed at the same moment passed the
check before any of them counted, and the budget overshot (Envoy issue 30205).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Protocol

from mesh.clock import Clock
from mesh.proto.bounds import MAX_RETRY_BUDGET_TTL, MIN_RETRY_BUDGET_TTL

DEPOSIT = 1000
"""What one request puts into a ``RateBudget`` (Finagle's scale, so ratios stay integral)."""

SLOTS = 10
"""How many slots the window is kept in (Finagle's ``WindowedAdder``)."""

DEFAULT_RETRY_RATIO = 0.2
"""Retries may add 20 % to the requests (Finagle, Linkerd; Envoy's ``budget_percent`` 20)."""

DEFAULT_MIN_RETRIES_PER_SECOND = 10
"""The rate budget's floor, so a quiet client may retry at all (Finagle, Linkerd)."""

DEFAULT_TTL = 10.0
"""Seconds a request or retry counts in the rate budget (Finagle, Linkerd)."""

DEFAULT_MIN_RETRY_CONCURRENCY = 3
"""Retries in progress the concurrency budget always allows (Envoy)."""


class Budget(Protocol):
    """What a request's retry state asks of a budget, in this order."""

    def deposit(self) -> None:
        """A request (not a retry) started."""

    def try_withdraw(self) -> bool:
        """A retry was decided: True if it may go, and it then counts against the budget."""

    def retry_ended(self) -> None:
        """A retry allowed by ``try_withdraw`` ended (answered, failed, or abandoned)."""

    def request_ended(self) -> None:
        """A request that deposited has ended, however it ended."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RateBudgetConfig:
    """Finagle's and Linkerd's retry budget settings."""

    retry_ratio: float = DEFAULT_RETRY_RATIO  # retries per request, on top of the floor; 0..1000
    min_retries_per_second: int = DEFAULT_MIN_RETRIES_PER_SECOND  # the floor, for quiet clients
    ttl: float = DEFAULT_TTL  # seconds a deposit or withdrawal counts; 1..60

    def __post_init__(self) -> None:
        if not 0 <= self.retry_ratio <= 1000:
            raise ValueError(f"retry budget retry_ratio {self.retry_ratio}: must be within "
                             f"0..1000")
        if self.min_retries_per_second < 0:
            raise ValueError(f"retry budget min_retries_per_second "
                             f"{self.min_retries_per_second}: must not be negative")
        if not MIN_RETRY_BUDGET_TTL <= self.ttl <= MAX_RETRY_BUDGET_TTL:
            raise ValueError(f"retry budget ttl {self.ttl}: must be within "
                             f"{MIN_RETRY_BUDGET_TTL:g}..{MAX_RETRY_BUDGET_TTL:g} seconds")


class RateBudget:
    """Finagle's token bucket over a sliding window of ``SLOTS`` slots; one per cluster."""

    __slots__ = ("_clock", "_current", "_deposit", "_origin", "_past", "_reserve",
                 "_slot", "_ttl", "config", "withdrawal")

    def __init__(self, config: RateBudgetConfig | None = None, *, clock: Clock) -> None:
        self.config = config = config or RateBudgetConfig()
        if config.retry_ratio == 0:
            self._deposit, self.withdrawal = 0, 1  # only the reserve pays for retries
        else:
            self._deposit, self.withdrawal = DEPOSIT, math.floor(DEPOSIT / config.retry_ratio)
        self._reserve = math.floor(config.min_retries_per_second * config.ttl) * self.withdrawal
        self._ttl = config.ttl
        self._clock = clock
        self._origin = clock.now()
        self._slot = 0  # the current slot's number, counted from ``_origin``
        self._current = 0  # tokens added (deposits) and taken (retries) in the current slot
        self._past: deque[int] = deque([0] * SLOTS, maxlen=SLOTS)  # the ten slots before it

    def deposit(self) -> None:
        self._roll()
        self._current += self._deposit

    def try_withdraw(self) -> bool:
        if self.balance() < self.withdrawal:
            return False
        self._current -= self.withdrawal
        return True

    def retry_ended(self) -> None:
        """Nothing to do: a rate budget forgets by time, not when calls end."""

    def request_ended(self) -> None:
        """Nothing to do: a rate budget forgets by time, not when calls end."""

    def balance(self) -> int:
        """Tokens available now: the window's deposits less its withdrawals, plus the reserve."""
        self._roll()
        return sum(self._past) + self._current + self._reserve

    def retries_allowed(self) -> int:
        """How many retries the budget would allow now, one after another (0 if none)."""
        return max(0, self.balance() // self.withdrawal)

    def _roll(self) -> None:
        """Move to the slot ``now`` falls in; slots that passed without calls are empty."""
        slot = math.floor((self._clock.now() - self._origin) * SLOTS / self._ttl)
        passed = slot - self._slot
        if passed <= 0:
            return
        self._past.append(self._current)
        self._past.extend([0] * min(passed - 1, SLOTS))
        self._current = 0
        self._slot = slot


@dataclass(frozen=True, slots=True, kw_only=True)
class ConcurrencyBudgetConfig:
    """Envoy's ``CircuitBreakers.Thresholds.RetryBudget``."""

    # retries in progress, in percent of requests in progress (the same 20 %)
    budget_percent: float = 100 * DEFAULT_RETRY_RATIO
    min_retry_concurrency: int = DEFAULT_MIN_RETRY_CONCURRENCY  # retries always allowed

    def __post_init__(self) -> None:
        if not 0 <= self.budget_percent <= 100:
            raise ValueError(f"retry budget budget_percent {self.budget_percent}: must be "
                             f"within 0..100")
        if self.min_retry_concurrency < 0:
            raise ValueError(f"retry budget min_retry_concurrency "
                             f"{self.min_retry_concurrency}: must not be negative")


class ConcurrencyBudget:
    """Envoy's budget: ``active retries < max(min_retry_concurrency, percent × active requests)``.

    A request counts from ``deposit`` to ``request_ended``, waiting for a connection included
    (Envoy counts active and pending requests); a retry from ``try_withdraw`` to
    ``retry_ended``, its backoff included.
    """

    __slots__ = ("active_requests", "active_retries", "config")

    def __init__(self, config: ConcurrencyBudgetConfig | None = None) -> None:
        self.config = config or ConcurrencyBudgetConfig()
        self.active_requests = 0
        self.active_retries = 0

    def deposit(self) -> None:
        self.active_requests += 1

    def try_withdraw(self) -> bool:
        if self.active_retries >= self.limit():
            return False
        self.active_retries += 1
        return True

    def retry_ended(self) -> None:
        if self.active_retries == 0:
            raise RuntimeError("retry budget: retry_ended() without a retry in progress")
        self.active_retries -= 1

    def request_ended(self) -> None:
        if self.active_requests == 0:
            raise RuntimeError("retry budget: request_ended() without a request in progress")
        self.active_requests -= 1

    def limit(self) -> int:
        """How many retries may be in progress now."""
        share = math.floor(self.config.budget_percent * self.active_requests / 100)
        return max(self.config.min_retry_concurrency, share)

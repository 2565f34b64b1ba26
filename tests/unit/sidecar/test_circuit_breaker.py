"""CircuitBreaker: four per-cluster limits that refuse at once, and permits that give back."""

from __future__ import annotations

import pytest

from sidecar.circuit_breaker import (
    CircuitBreaker,
    CircuitBreakerConfig,
    Limit,
    Overflow,
    Overloaded,
    Permit,
)


def test_defaults_are_envoys() -> None:
    config = CircuitBreakerConfig()
    assert [config.maximum(limit) for limit in Limit] == [1024, 1024, 3]


def test_permits_up_to_the_limit_then_an_overflow_naming_it() -> None:
    breaker = CircuitBreaker()
    permits = [breaker.try_acquire(Limit.RETRIES) for _ in range(3)]
    assert all(isinstance(p, Permit) for p in permits)
    overflow = breaker.try_acquire(Limit.RETRIES)
    assert overflow == Overflow(limit=Limit.RETRIES, maximum=3)
    assert isinstance(overflow, Overflow) and overflow.limit.value == "max_retries"
    assert breaker.active(Limit.RETRIES) == 3


def test_a_release_makes_room_again_and_only_once() -> None:
    breaker = CircuitBreaker(CircuitBreakerConfig(max_requests=1))
    permit = breaker.try_acquire(Limit.REQUESTS)
    assert isinstance(permit, Permit)
    assert isinstance(breaker.try_acquire(Limit.REQUESTS), Overflow)
    permit.release()
    permit.release()  # a second release in another cleanup path changes nothing
    assert breaker.active(Limit.REQUESTS) == 0
    assert isinstance(breaker.try_acquire(Limit.REQUESTS), Permit)
    assert isinstance(breaker.try_acquire(Limit.REQUESTS), Overflow)


def test_limits_are_independent() -> None:
    breaker = CircuitBreaker(CircuitBreakerConfig(max_pending_requests=0))
    overflow = breaker.try_acquire(Limit.PENDING_REQUESTS)
    assert isinstance(overflow, Overflow) and overflow.limit.value == "max_pending_requests"
    assert isinstance(breaker.try_acquire(Limit.RETRIES), Permit)
    assert isinstance(breaker.try_acquire(Limit.REQUESTS), Permit)


def test_new_limits_apply_at_once_and_counts_carry_over() -> None:
    breaker = CircuitBreaker()
    for _ in range(5):
        breaker.try_acquire(Limit.REQUESTS)
    breaker.config = CircuitBreakerConfig(max_requests=5)
    assert isinstance(breaker.try_acquire(Limit.REQUESTS), Overflow)


def test_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="max_requests -1"):
        CircuitBreakerConfig(max_requests=-1)


def test_an_overflow_met_mid_call_is_raised_naming_the_limit() -> None:
    breaker = CircuitBreaker(CircuitBreakerConfig(max_pending_requests=0))
    overflow = breaker.try_acquire(Limit.PENDING_REQUESTS)
    assert isinstance(overflow, Overflow)
    error = Overloaded(overflow)
    assert error.overflow is overflow
    assert str(error) == "max_pending_requests (0) reached"

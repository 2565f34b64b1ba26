"""Retry budgets: Finagle's arithmetic at its boundaries, Envoy's concurrency form, and the
course's point in numbers (retries without a budget amplify load; with one they cannot)."""

from __future__ import annotations

import random

import pytest

from mesh.clock import FakeClock
from sidecar.outcome import Outcome
from sidecar.retry import RetryOn, RetrySettings, RetryState, Stop
from sidecar.retry_budget import (
    Budget,
    ConcurrencyBudget,
    ConcurrencyBudgetConfig,
    RateBudget,
    RateBudgetConfig,
)


def budget(clock: FakeClock, ratio: float = 0.2, floor: int = 10, ttl: float = 10.0) -> RateBudget:
    return RateBudget(RateBudgetConfig(retry_ratio=ratio, min_retries_per_second=floor, ttl=ttl),
                       clock=clock)


def retries_allowed(b: Budget) -> int:
    allowed = 0
    while b.try_withdraw():
        allowed += 1
    return allowed


# -- RateBudget: the arithmetic -----------------------------------------------------------------


@pytest.mark.parametrize(("ratio", "withdrawal"), [
    (0.2, 5000), (0.1, 10_000), (0.3, 3333), (0.7, 1428), (1.0, 1000), (2.0, 500), (0.0, 1),
])
def test_a_retry_costs_floor_1000_over_the_ratio(ratio: float, withdrawal: int) -> None:
    assert budget(FakeClock(), ratio=ratio).withdrawal == withdrawal


def test_with_no_traffic_the_reserve_allows_exactly_floor_times_ttl_retries() -> None:
    b = budget(FakeClock())  # 10 per second for 10 s: a reserve of 100 retries
    assert b.balance() == 10 * 10 * 5000
    assert retries_allowed(b) == 100


def test_every_five_requests_pay_for_one_retry_at_20_percent() -> None:
    b = budget(FakeClock(), floor=0)
    for _ in range(4):
        b.deposit()
    assert not b.try_withdraw()  # 4000 < 5000
    b.deposit()
    assert b.try_withdraw()  # 5000: exactly one
    assert not b.try_withdraw()
    for _ in range(50):
        b.deposit()
    assert retries_allowed(b) == 10


def test_deposits_and_reserve_add_up() -> None:
    b = budget(FakeClock())
    for _ in range(25):
        b.deposit()
    assert retries_allowed(b) == 100 + 5


def test_a_ratio_that_does_not_divide_1000_rounds_the_cost_down() -> None:
    b = budget(FakeClock(), ratio=0.3, floor=0)  # a retry costs 3333
    for _ in range(3):
        b.deposit()
    assert not b.try_withdraw()  # 3000 < 3333
    b.deposit()
    assert b.try_withdraw()  # 4000 >= 3333, 667 left
    for _ in range(2):
        b.deposit()
    assert not b.try_withdraw()  # 2667
    b.deposit()
    assert b.try_withdraw()  # 3667


def test_a_zero_ratio_leaves_only_the_reserve() -> None:
    b = budget(FakeClock(), ratio=0.0, floor=2, ttl=1.0)
    for _ in range(100):
        b.deposit()  # worth nothing
    assert retries_allowed(b) == 2


# -- RateBudget: the sliding window -------------------------------------------------------------


def test_deposits_count_for_the_current_slot_and_ten_past_ones() -> None:
    clock = FakeClock()
    b = budget(clock, floor=0)  # ttl 10 s: slots of 1 s
    for _ in range(5):
        b.deposit()
    clock.advance(10.999)  # slot 10: slot 0 is the oldest of the ten past slots
    assert b.balance() == 5000
    clock.advance(0.001)  # slot 11: slot 0 slid out
    assert b.balance() == 0
    assert not b.try_withdraw()


def test_spent_retries_slide_out_and_the_reserve_comes_back() -> None:
    clock = FakeClock()
    b = budget(clock)
    assert retries_allowed(b) == 100
    clock.advance(5.0)
    assert not b.try_withdraw()  # still within the window
    clock.advance(6.0)
    assert retries_allowed(b) == 100


def test_slots_expire_one_by_one() -> None:
    clock = FakeClock()
    b = budget(clock, ratio=0.5, floor=0, ttl=1.0)  # slots of 100 ms; a retry costs 2000
    b.deposit()
    clock.advance(0.3)
    b.deposit()
    clock.advance(0.85)  # t = 1.15 s: slot 11, the first deposit slid out, the second not
    b.deposit()
    assert b.try_withdraw()  # the second and third deposits
    assert not b.try_withdraw()


def test_a_long_silence_empties_the_window() -> None:
    clock = FakeClock()
    b = budget(clock, floor=0)
    for _ in range(100):
        b.deposit()
    clock.advance(3600.0)
    assert b.balance() == 0


@pytest.mark.parametrize(("ratio", "floor", "ttl", "message"), [
    (-0.1, 10, 10.0, "retry_ratio"),
    (1000.5, 10, 10.0, "retry_ratio"),
    (0.2, -1, 10.0, "min_retries_per_second"),
    (0.2, 10, 0.5, "ttl"),
    (0.2, 10, 61.0, "ttl"),
])
def test_rejects_nonsense(ratio: float, floor: int, ttl: float, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RateBudgetConfig(retry_ratio=ratio, min_retries_per_second=floor, ttl=ttl)


# -- ConcurrencyBudget -------------------------------------------------------------------------


def test_min_retry_concurrency_is_always_allowed() -> None:
    b = ConcurrencyBudget()
    b.deposit()
    assert retries_allowed(b) == 3
    b.retry_ended()
    assert b.try_withdraw()


def test_retries_in_progress_stay_under_20_percent_of_requests() -> None:
    b = ConcurrencyBudget()
    for _ in range(24):
        b.deposit()
    assert b.limit() == 4  # floor(20 % of 24) = 4 > 3
    assert retries_allowed(b) == 4
    for _ in range(4):
        b.deposit()  # 28 requests: 5
    assert b.try_withdraw() and not b.try_withdraw()
    for _ in range(20):
        b.request_ended()  # 8 requests: back to the minimum of 3, 5 retries still running
    assert not b.try_withdraw()
    for _ in range(3):
        b.retry_ended()  # 2 running
    assert b.try_withdraw() and not b.try_withdraw()


def test_unmatched_ends_are_bugs() -> None:
    b = ConcurrencyBudget(ConcurrencyBudgetConfig(budget_percent=50.0, min_retry_concurrency=0))
    with pytest.raises(RuntimeError, match="retry_ended"):
        b.retry_ended()
    with pytest.raises(RuntimeError, match="request_ended"):
        b.request_ended()
    assert not b.try_withdraw()  # no requests, no minimum: nothing


@pytest.mark.parametrize(("percent", "minimum"), [(-1.0, 3), (101.0, 3), (20.0, -1)])
def test_concurrency_budget_rejects_nonsense(percent: float, minimum: int) -> None:
    with pytest.raises(ValueError, match="retry budget"):
        ConcurrencyBudgetConfig(budget_percent=percent, min_retry_concurrency=minimum)


# -- the course's point, in numbers ------------------------------------------------------------


def amplification(make_budget: type[RateBudget] | None, config: RateBudgetConfig | None = None,
                  *, failure_probability: float = 0.5, num_retries: int = 3,
                  requests: int = 10_000, seconds: float = 100.0) -> float:
    """Attempts the upstream sees per request, with the real RetryState and budget.

    Requests arrive evenly over ``seconds``; each attempt fails (503) with the given probability.
    Retries go out at once in simulated time: backoff delays (25-250 ms) are small next to the
    budget's 10 s window.
    """
    clock, rng = FakeClock(), random.Random(2015)
    b = None if make_budget is None else make_budget(config, clock=clock)
    policy = RetrySettings(retry_on=frozenset({RetryOn.SERVER_ERROR}), num_retries=num_retries)
    attempts = 0
    for _ in range(requests):
        state = RetryState(policy, method="GET", deadline=clock.now() + 15.0, clock=clock,
                           rng=rng, budget=b)
        decision = None
        while not isinstance(decision, Stop):
            state.begin_attempt("backend:15006")
            attempts += 1
            failed = rng.random() < failure_probability
            decision = state.decide(Outcome(status=503 if failed else 200))
        state.close()
        clock.advance(seconds / requests)
    return attempts / requests


def test_retry_storm_amplification_without_and_with_a_budget() -> None:
    unbudgeted = amplification(None)
    budgeted = amplification(RateBudget, RateBudgetConfig(min_retries_per_second=0))
    with_floor = amplification(RateBudget, RateBudgetConfig())
    print(f"\n50 % failures, num_retries 3, 10,000 requests over 100 s: the upstream sees "
          f"{unbudgeted:.3f}x without a budget (1 + p + p^2 + p^3 = 1.875), "
          f"{budgeted:.3f}x with a 20 % budget, "
          f"{with_floor:.3f}x with its default floor of 10 retries/s added (+0.1x at 100 req/s)")
    assert unbudgeted == pytest.approx(1.875, abs=0.03)
    assert 1.15 <= budgeted <= 1.25
    assert budgeted < with_floor <= 1.2 + 0.1 + 0.01

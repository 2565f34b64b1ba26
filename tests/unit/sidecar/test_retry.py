"""RetrySettings and RetryState: which outcomes are retried, how often, when, and why not."""

from __future__ import annotations

import random

import pytest

from mesh.clock import FakeClock
from mesh.grpc.status import StatusCode
from sidecar.backoff import Backoff
from sidecar.balancers import RoundRobinBalancer
from sidecar.balancers.endpoint import EndpointSpec
from sidecar.circuit_breaker import CircuitBreaker, CircuitBreakerConfig, Limit, Permit
from sidecar.outcome import Failure, Outcome
from sidecar.retry import (
    Phase,
    Retry,
    RetryOn,
    RetrySettings,
    RetryState,
    Stop,
    StopReason,
)
from sidecar.retry_budget import (
    ConcurrencyBudget,
    ConcurrencyBudgetConfig,
    RateBudget,
    RateBudgetConfig,
)

OUTCOMES = {
    "connect-failure": Outcome(failure=Failure.CONNECT_FAILURE),
    "refused-stream": Outcome(failure=Failure.REFUSED_STREAM),
    "reset": Outcome(failure=Failure.RESET),
    "timeout": Outcome(failure=Failure.TIMEOUT),
    **{str(code): Outcome(status=code) for code in (200, 404, 409, 429, 500, 501, 502, 503, 504)},
    **{f"grpc-{code.name.lower()}": Outcome(status=200, grpc_status=code) for code in (
        StatusCode.OK, StatusCode.NOT_FOUND, StatusCode.CANCELLED, StatusCode.DEADLINE_EXCEEDED,
        StatusCode.INTERNAL, StatusCode.RESOURCE_EXHAUSTED, StatusCode.UNAVAILABLE)},
}
NO_RESPONSE = {"connect-failure", "refused-stream", "reset", "timeout"}


@pytest.mark.parametrize(("condition", "retried"), [
    ("connect-failure", {"connect-failure"}),
    ("refused-stream", {"refused-stream"}),
    ("reset", {"connect-failure", "refused-stream", "reset"}),  # Envoy: a timeout is not a reset
    ("5xx", NO_RESPONSE | {"500", "501", "502", "503", "504"}),
    ("gateway-error", NO_RESPONSE | {"502", "503", "504"}),
    ("retriable-status-codes", {"409", "429"}),
    ("cancelled", {"grpc-cancelled"}),
    ("deadline-exceeded", {"grpc-deadline_exceeded"}),
    ("internal", {"grpc-internal"}),
    ("resource-exhausted", {"grpc-resource_exhausted"}),
    ("unavailable", {"grpc-unavailable"}),
])
def test_each_condition_retries_exactly_its_outcomes(condition: str, retried: set[str]) -> None:
    policy = RetrySettings(retry_on=frozenset({RetryOn.parse(condition)}),
                         retriable_status_codes=frozenset({409, 429}))
    assert {name for name, outcome in OUTCOMES.items() if policy.retriable(outcome)} == retried


def test_no_conditions_retry_nothing() -> None:
    assert not any(RetrySettings().retriable(outcome) for outcome in OUTCOMES.values())


def test_an_unknown_condition_is_named_in_the_error() -> None:
    with pytest.raises(ValueError, match=r"retry_on '5XX': unknown condition \(want one of .*5xx"):
        RetryOn.parse("5XX")


# -- RetryState ---------------------------------------------------------------------------------

EVERYTHING = frozenset(RetryOn)


def state(policy: RetrySettings | None = None, *, clock: FakeClock | None = None,
          method: str = "GET", grpc: bool = False, timeout: float = 15.0,
          budget: RateBudget | ConcurrencyBudget | None = None,
          breaker: CircuitBreaker | None = None) -> RetryState:
    clock = clock or FakeClock()
    return RetryState(policy or RetrySettings(retry_on=EVERYTHING, num_retries=3), method=method,
                      grpc=grpc, deadline=clock.now() + timeout, clock=clock,
                      rng=random.Random(9), budget=budget, breaker=breaker)


def attempt(s: RetryState, outcome: Outcome, address: str = "a:1") -> Retry | Stop:
    s.begin_attempt(address)
    return s.decide(outcome)


def test_a_success_ends_the_request() -> None:
    s = state()
    assert attempt(s, Outcome(status=200)) == Stop(reason=StopReason.NOT_RETRIABLE)
    assert (s.attempt, s.phase) == (1, Phase.STOPPED)


def test_attempts_are_numbered_for_x_mesh_attempt_until_retries_run_out() -> None:
    s = state()
    numbers = []
    for _ in range(3):
        decision = attempt(s, Outcome(status=503))
        assert isinstance(decision, Retry)
        numbers.append(decision.attempt)
    assert numbers == [2, 3, 4]
    assert attempt(s, Outcome(status=503)) == Stop(reason=StopReason.RETRIES_EXHAUSTED)
    assert s.attempt == 4  # one try and three retries


def test_no_retries_means_one_attempt() -> None:
    s = state(RetrySettings(retry_on=EVERYTHING, num_retries=0))
    assert attempt(s, Outcome(status=503)) == Stop(reason=StopReason.RETRIES_EXHAUSTED)


def test_delays_come_from_the_backoff() -> None:
    s = state(RetrySettings(retry_on=EVERYTHING, num_retries=50))
    for _ in range(50):
        decision = attempt(s, Outcome(failure=Failure.RESET))
        assert isinstance(decision, Retry)
        assert 0.025 <= decision.delay <= 0.250


@pytest.mark.parametrize(("method", "grpc", "failure", "retried"), [
    ("GET", False, None, True),
    ("PUT", False, None, True),
    ("DELETE", False, None, True),
    ("POST", False, None, False),  # a 503 from a POST: it may have had effects
    ("PATCH", False, Failure.RESET, False),
    ("POST", False, Failure.CONNECT_FAILURE, True),  # never sent
    ("POST", False, Failure.REFUSED_STREAM, True),  # never processed
    ("POST", True, None, True),  # a gRPC call
])
def test_only_idempotent_or_unprocessed_requests_are_retried(
        method: str, grpc: bool, failure: Failure | None, retried: bool) -> None:
    outcome = Outcome(failure=failure) if failure else Outcome(status=503)
    decision = attempt(state(method=method, grpc=grpc), outcome)
    assert isinstance(decision, Retry) == retried
    if not retried:
        assert decision == Stop(reason=StopReason.NON_IDEMPOTENT)


def test_a_route_may_allow_retrying_non_idempotent_methods() -> None:
    policy = RetrySettings(retry_on=EVERYTHING, retry_non_idempotent=True)
    assert isinstance(attempt(state(policy, method="POST"), Outcome(status=503)), Retry)


def test_a_retry_never_starts_after_the_deadline() -> None:
    fixed = Backoff(base_interval=0.1, max_interval=0.1)  # every delay is exactly 100 ms
    policy = RetrySettings(retry_on=EVERYTHING, num_retries=3, backoff=fixed)
    clock = FakeClock()
    s = state(policy, clock=clock, timeout=1.0)
    s.begin_attempt("a:1")
    clock.advance(0.8999)
    assert s.decide(Outcome(status=503)) == Retry(delay=0.1, attempt=2)  # starts at 0.9999
    s.begin_attempt("b:1")
    clock.advance(0.0001)
    assert s.decide(Outcome(status=503)) == Stop(reason=StopReason.DEADLINE)  # would start at 1.0


def test_each_attempt_gets_its_per_try_timeout_but_never_beyond_the_deadline() -> None:
    clock = FakeClock()
    s = state(RetrySettings(retry_on=EVERYTHING, per_try_timeout=0.4), clock=clock, timeout=1.0)
    assert s.begin_attempt("a:1") == pytest.approx(0.4)
    clock.advance(0.4)
    assert isinstance(s.decide(Outcome(failure=Failure.TIMEOUT)), Retry)
    clock.advance(0.3)
    assert s.begin_attempt("b:1") == pytest.approx(1.0)  # 0.7 + 0.4 is past the deadline
    assert state(timeout=2.0).begin_attempt(None) == 2.0  # no per-try timeout: the deadline


def test_a_retry_is_charged_to_the_budget_the_moment_it_is_decided() -> None:
    clock = FakeClock()
    b = RateBudget(RateBudgetConfig(min_retries_per_second=1, ttl=1.0), clock=clock)
    first, second = state(clock=clock, budget=b), state(clock=clock, budget=b)
    assert isinstance(attempt(first, Outcome(status=503)), Retry)  # the reserve's one retry
    # first is still in its backoff, yet second already finds the budget spent (Envoy 30205)
    assert attempt(second, Outcome(status=503)) == Stop(reason=StopReason.BUDGET_EXHAUSTED)


def test_a_retry_the_deadline_forbids_costs_no_budget() -> None:
    clock = FakeClock()
    b = RateBudget(RateBudgetConfig(min_retries_per_second=1, ttl=1.0), clock=clock)
    balance = b.balance()
    s = state(clock=clock, budget=b, timeout=0.001)
    assert attempt(s, Outcome(status=503)) == Stop(reason=StopReason.DEADLINE)
    assert b.balance() == balance + 1000  # the request's deposit, no withdrawal


E503 = Outcome(status=503)


def test_only_a_retry_that_goes_out_is_charged_to_the_budget() -> None:
    # Five requests deposit exactly one retry's tokens (20 %, no floor). A retry refused by
    # the breaker or for its body is refused before the budget is asked, so the balance is as
    # it was, and the next retry that does go out finds its tokens there.
    clock = FakeClock()
    b = RateBudget(RateBudgetConfig(min_retries_per_second=0), clock=clock)
    breaker = CircuitBreaker(CircuitBreakerConfig(max_retries=1))
    requests = [state(clock=clock, budget=b, breaker=breaker) for _ in range(5)]
    assert b.balance() == b.withdrawal
    elsewhere = breaker.try_acquire(Limit.RETRIES)  # another request's retry is in flight
    assert isinstance(elsewhere, Permit)
    assert attempt(requests[0], E503) == Stop(reason=StopReason.CIRCUIT_BREAKER)
    assert b.balance() == b.withdrawal
    elsewhere.release()
    requests[1].begin_attempt("a:1")
    assert requests[1].decide(E503, replayable=False) == Stop(reason=StopReason.BODY_TOO_LARGE)
    assert b.balance() == b.withdrawal
    assert isinstance(attempt(requests[2], E503), Retry)
    assert b.balance() == 0
    requests[2].close()  # its retry is over: the breaker's permit is back, the tokens are not
    assert attempt(requests[3], E503) == Stop(reason=StopReason.BUDGET_EXHAUSTED)


def test_a_retry_the_budget_refuses_gives_back_its_breaker_permit() -> None:
    breaker = CircuitBreaker()
    s = state(budget=ConcurrencyBudget(ConcurrencyBudgetConfig(min_retry_concurrency=0)),
              breaker=breaker)
    assert attempt(s, E503) == Stop(reason=StopReason.BUDGET_EXHAUSTED)
    assert breaker.active(Limit.RETRIES) == 0


def test_a_retry_holds_its_breaker_permit_until_its_outcome_is_decided() -> None:
    breaker = CircuitBreaker(CircuitBreakerConfig(max_retries=1))
    s, other = state(breaker=breaker), state(breaker=breaker)
    assert isinstance(attempt(s, E503), Retry)
    assert breaker.active(Limit.RETRIES) == 1  # in its backoff, and while it is tried
    assert attempt(other, E503) == Stop(reason=StopReason.CIRCUIT_BREAKER)
    assert isinstance(attempt(s, E503), Retry)  # the retry's outcome: another retry takes over
    assert breaker.active(Limit.RETRIES) == 1
    s.close()
    assert breaker.active(Limit.RETRIES) == 0


def test_the_gates_are_asked_in_the_order_of_stop_reason() -> None:
    # Every gate closed, then opened one by one in StopReason's order: each opening moves the
    # refusal on to the next gate. So a refusal nothing could have avoided (a success, a POST's
    # 503) never shows as the breaker's or the budget's, and the budget is asked last of all.
    def decide(opened: int) -> Retry | Stop:
        s = state(RetrySettings(retry_on=frozenset({RetryOn.SERVER_ERROR}),
                                num_retries=1 if opened > 2 else 0),
                  method="GET" if opened > 1 else "POST",
                  timeout=15.0 if opened > 4 else 0.0001,
                  breaker=CircuitBreaker(CircuitBreakerConfig(max_retries=int(opened > 5))),
                  budget=ConcurrencyBudget(ConcurrencyBudgetConfig(
                      min_retry_concurrency=int(opened > 6))))
        s.begin_attempt("a:1")
        return s.decide(E503 if opened > 0 else Outcome(status=200), replayable=opened > 3)

    assert [decide(opened) for opened in range(7)] == [Stop(reason=r) for r in StopReason]
    assert isinstance(decide(7), Retry)


def test_a_concurrency_budget_counts_a_retry_until_its_attempt_ends() -> None:
    b = ConcurrencyBudget()
    s = state(budget=b)
    assert (b.active_requests, b.active_retries) == (1, 0)
    assert isinstance(attempt(s, Outcome(status=503)), Retry)
    assert b.active_retries == 1  # during the backoff too
    s.begin_attempt("b:1")
    assert b.active_retries == 1
    assert isinstance(s.decide(Outcome(status=200)), Stop)
    assert b.active_retries == 0
    s.close()
    s.close()  # idempotent
    assert (b.active_requests, b.active_retries) == (0, 0)


def test_a_request_abandoned_in_its_backoff_releases_its_retry() -> None:
    b = ConcurrencyBudget()
    s = state(budget=b)
    attempt(s, Outcome(status=503))
    s.close()
    assert (b.active_requests, b.active_retries, s.phase) == (0, 0, Phase.CLOSED)


def test_a_retry_goes_to_an_endpoint_not_yet_tried() -> None:
    balancer = RoundRobinBalancer(clock=FakeClock(), rng=random.Random(2))
    balancer.set_endpoints([EndpointSpec(address=a) for a in ("a:1", "b:1", "c:1")])
    s = state()
    seen = []
    decision: Retry | Stop | None = None
    while not isinstance(decision, Stop):
        endpoint = balancer.pick(avoid=s.tried)
        assert endpoint is not None
        seen.append(endpoint.address)
        decision = attempt(s, Outcome(failure=Failure.REFUSED_STREAM), endpoint.address)
    assert sorted(seen[:3]) == ["a:1", "b:1", "c:1"]  # then, all tried, any of them
    assert s.tried == frozenset(seen)


def test_calls_out_of_order_are_bugs() -> None:
    s = state()
    with pytest.raises(RuntimeError, match=r"decide\(\) in phase ready"):
        s.decide(Outcome(status=503))
    s.begin_attempt("a:1")
    with pytest.raises(RuntimeError, match=r"begin_attempt\(\) in phase attempting"):
        s.begin_attempt("a:1")
    s.decide(Outcome(status=200))
    with pytest.raises(RuntimeError, match="phase stopped"):
        s.begin_attempt("a:1")


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"num_retries": -1}, "num_retries"),
    ({"per_try_timeout": 0.0}, "per_try_timeout"),
    ({"retriable_status_codes": frozenset({600})}, "retriable_status_codes"),
])
def test_policy_rejects_nonsense(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RetrySettings(**kwargs)  # type: ignore[arg-type]

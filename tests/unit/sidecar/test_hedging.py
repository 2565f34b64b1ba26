"""Hedging: the retry state's hedge gates, and hedged calls through the outbound path.

The first half plays ``RetryState`` on a fake clock: a hedge passes the retry's gates in their
order, holds its own charge until its attempt is decided, and an outcome while others are in
flight is a ``Wait`` unless it is a final response. The second half plays calls through
``Outbound.handle`` against scripted upstreams (``scripted.py``) with a short hedging delay on
the event loop's clock: which attempt wins, which stream is reset, what was counted, and that
every endpoint slot, breaker permit and budget withdrawal is back at the end.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest
from google.protobuf.json_format import ParseDict

from mesh.clock import FakeClock
from mesh.grpc import StatusCode
from mesh.http2 import ErrorCode
from mesh.proto.config_pb2 import ClusterLoadAssignment
from mesh.proto.resources import ENDPOINTS
from sidecar.circuit_breaker import CircuitBreaker, CircuitBreakerConfig, Limit
from sidecar.outbound import REPLAY_LIMIT
from sidecar.outcome import Failure, Outcome
from sidecar.retry import (
    Hedge,
    Phase,
    Retry,
    RetryOn,
    RetrySettings,
    RetryState,
    Stop,
    StopReason,
    Wait,
)
from sidecar.retry_budget import (
    ConcurrencyBudget,
    ConcurrencyBudgetConfig,
    RateBudget,
    RateBudgetConfig,
)
from tests.unit.sidecar.scripted import Answer, Caller, Hang, Reset, Upstreams
from tests.unit.sidecar.test_outbound import GET, GRPC, PUT, Mesh, mesh

E503, OK = Outcome(status=503), Outcome(status=200)
HEDGING = RetrySettings(retry_on=frozenset({RetryOn.SERVER_ERROR}), num_retries=2,
                        hedging_delay=0.05)


def state(policy: RetrySettings = HEDGING, *, method: str = "GET", timeout: float = 15.0,
          clock: FakeClock | None = None, budget: RateBudget | ConcurrencyBudget | None = None,
          breaker: CircuitBreaker | None = None) -> RetryState:
    clock = clock or FakeClock()
    return RetryState(policy, method=method, deadline=clock.now() + timeout, clock=clock,
                      rng=random.Random(3), budget=budget, breaker=breaker)


def two_in_flight(s: RetryState) -> RetryState:
    """``s`` with its first attempt and a hedge beside it in flight (numbers 1 and 2)."""
    s.begin_attempt("a:1")
    assert s.hedge() == Hedge(attempt=2)
    s.begin_attempt("b:1")
    return s


# -- RetryState: hedge() and decide() with attempts in flight -----------------------------------

def test_a_hedge_is_numbered_and_held_until_its_own_attempt_is_decided() -> None:
    breaker = CircuitBreaker()
    s = state(breaker=breaker)
    s.begin_attempt("a:1")
    assert s.hedge() == Hedge(attempt=2)
    assert s.phase is Phase.READY
    s.begin_attempt("b:1")
    assert (s.in_flight, breaker.active(Limit.RETRIES)) == (2, 1)
    assert s.decide(E503, attempt=1) == Wait()  # the hedge may still answer
    assert breaker.active(Limit.RETRIES) == 1  # the first held nothing: the hedge holds on
    assert s.decide(OK, attempt=2) == Stop(reason=StopReason.NOT_RETRIABLE)
    assert (s.phase, s.in_flight, breaker.active(Limit.RETRIES)) == (Phase.STOPPED, 0, 0)


def test_a_final_response_stops_the_others_and_hands_back_their_charges() -> None:
    b = ConcurrencyBudget()
    s = two_in_flight(state(budget=b))
    assert b.active_retries == 1
    assert s.decide(Outcome(status=404), attempt=1) == Stop(reason=StopReason.NOT_RETRIABLE)
    assert (s.in_flight, b.active_retries) == (0, 0)  # the hedge is to be closed
    s.close()
    assert (b.active_requests, b.active_retries) == (0, 0)


def test_a_failure_while_others_are_in_flight_is_a_wait_whatever_retry_on_says() -> None:
    s = two_in_flight(state(RetrySettings(hedging_delay=0.05, num_retries=1)))  # all fatal
    assert s.decide(Outcome(failure=Failure.RESET), attempt=2) == Wait()
    # The last one in flight decides as without hedging: here no retry_on, so it is the answer.
    assert s.decide(Outcome(failure=Failure.RESET), attempt=1) == \
        Stop(reason=StopReason.NOT_RETRIABLE)


def test_the_last_attempt_in_flight_is_retried_with_backoff() -> None:
    s = two_in_flight(state())
    assert s.decide(E503, attempt=1) == Wait()
    decision = s.decide(E503, attempt=2)
    assert isinstance(decision, Retry) and decision.attempt == 3 and decision.delay > 0
    s.begin_attempt("c:1")
    assert s.decide(E503) == Stop(reason=StopReason.RETRIES_EXHAUSTED)  # 1 try + 2 more


def test_hedges_and_retries_share_num_retries() -> None:
    s = two_in_flight(state(RetrySettings(hedging_delay=0.05, num_retries=1)))
    assert s.hedge() == Stop(reason=StopReason.RETRIES_EXHAUSTED)
    assert s.phase is Phase.ATTEMPTING  # the two in flight go on


def test_the_hedge_gates_are_the_retry_gates_in_the_order_of_stop_reason() -> None:
    # As for a retry (test_retry.py), every gate closed and opened one by one; a hedge has no
    # outcome to judge (so no NOT_RETRIABLE) and no backoff (the deadline is "not yet past").
    def hedge(opened: int) -> Hedge | Stop:
        clock = FakeClock()
        s = state(RetrySettings(hedging_delay=0.05, num_retries=1 if opened > 1 else 0),
                  method="GET" if opened > 0 else "POST", clock=clock,
                  timeout=15.0 if opened > 3 else 0.01,
                  breaker=CircuitBreaker(CircuitBreakerConfig(max_retries=int(opened > 4))),
                  budget=ConcurrencyBudget(ConcurrencyBudgetConfig(
                      min_retry_concurrency=int(opened > 5))))
        s.begin_attempt("a:1")
        clock.advance(0.01)
        return s.hedge(replayable=opened > 2)

    assert [hedge(opened) for opened in range(6)] == \
        [Stop(reason=r) for r in list(StopReason)[1:]]
    assert hedge(6) == Hedge(attempt=2)


def test_a_hedge_is_never_exempt_from_idempotency() -> None:
    # A retry after a connect failure may resend a POST (never processed); a hedge goes while
    # the first try may be at work, so only retry_non_idempotent lets a POST be hedged.
    s = state(method="POST")
    s.begin_attempt("a:1")
    assert s.hedge() == Stop(reason=StopReason.NON_IDEMPOTENT)
    s = state(RetrySettings(hedging_delay=0.05, retry_non_idempotent=True), method="POST")
    s.begin_attempt("a:1")
    assert s.hedge() == Hedge(attempt=2)


def test_a_hedge_refused_by_the_budget_costs_nothing() -> None:
    clock = FakeClock()
    b = RateBudget(RateBudgetConfig(min_retries_per_second=0), clock=clock)
    breaker = CircuitBreaker()
    s = state(clock=clock, budget=b, breaker=breaker)
    balance = b.balance()  # one request's deposit: less than a withdrawal
    s.begin_attempt("a:1")
    assert s.hedge() == Stop(reason=StopReason.BUDGET_EXHAUSTED)
    assert (b.balance(), breaker.active(Limit.RETRIES)) == (balance, 0)


def test_an_unsent_hedge_is_abandoned_and_releases_its_charge() -> None:
    breaker = CircuitBreaker()
    s = two_in_flight(state(breaker=breaker))
    s.abandon(2)
    assert (s.in_flight, breaker.active(Limit.RETRIES)) == (1, 0)
    with pytest.raises(RuntimeError, match="another attempt in flight"):
        s.abandon(1)  # the last one is decided, not abandoned


def test_hedging_calls_out_of_order_are_bugs() -> None:
    s = state()
    with pytest.raises(RuntimeError, match=r"hedge\(\) in phase ready"):
        s.hedge()
    s.begin_attempt("a:1")
    s.hedge()
    with pytest.raises(RuntimeError, match=r"decide\(\) in phase ready"):
        s.decide(OK, attempt=1)  # a hedge was decided: it must begin first
    s.begin_attempt("b:1")
    with pytest.raises(RuntimeError, match="without an attempt number, with 2 attempts"):
        s.decide(OK)
    with pytest.raises(RuntimeError, match=r"decide\(attempt=3\), which is not in flight"):
        s.decide(OK, attempt=3)


def test_policy_rejects_a_hedging_delay_of_zero() -> None:
    with pytest.raises(ValueError, match=r"hedging_delay 0\.0: must be positive"):
        RetrySettings(hedging_delay=0.0)


# -- through the outbound path ------------------------------------------------------------------

DELAY = 0.05  # seconds: the hedging delay of these calls
HEDGE: dict[str, Any] = {"retry_on": ["5xx", "unavailable"], "num_retries": 2,
                         "hedging_delay": f"{DELAY}s",
                         "backoff": {"base_interval": "0.001s", "max_interval": "0.002s"}}


def hedged(monkeypatch: pytest.MonkeyPatch, upstreams: Upstreams, *, endpoints: int = 2,
           **cluster: Any) -> Mesh:
    """``mesh`` with ``endpoints`` endpoints and the hedging retry policy (unless given)."""
    m = mesh(monkeypatch, upstreams, **{"retry_policy": HEDGE, **cluster})
    m.outbound.config.apply(ENDPOINTS, [ParseDict({"cluster_name": "orders", "endpoints": [
        {"address": f"10.0.0.{n}", "port": 15006} for n in range(1, endpoints + 1)]},
        ClusterLoadAssignment())])
    return m


async def timed(m: Mesh, caller: Caller) -> float:
    loop = asyncio.get_running_loop()
    started = loop.time()
    await m.outbound.handle(caller)
    return loop.time() - started


async def test_hedge_won_the_second_answers_first_and_the_first_is_reset(
        monkeypatch: pytest.MonkeyPatch) -> None:
    m = hedged(monkeypatch, Upstreams(Hang(), Answer(200, body=(b"fast",))))
    caller = Caller(GET)
    elapsed = await timed(m, caller)
    assert (caller.status, caller.received) == ("200", b"fast")
    first, hedge = m.upstreams.streams
    assert (first.attempt, hedge.attempt) == ("1", "2")
    assert first.address != hedge.address  # another endpoint
    assert first.reset_code == ErrorCode.CANCEL and hedge.reset_code is None
    assert DELAY <= elapsed < 10 * DELAY
    # The winner is settled with its answer; the loser only tells the balancer it was cut.
    assert m.recorded == [(hedge.address, Outcome(status=200))]
    assert m.metric("mesh_sidecar_hedges_total") == 1
    assert m.metric("mesh_sidecar_retries_total") == 0  # a hedge is not a retry
    m.assert_released()


async def test_hedge_lost_the_first_answers_while_the_hedge_is_in_flight(
        monkeypatch: pytest.MonkeyPatch) -> None:
    m = hedged(monkeypatch, Upstreams(Answer(200, body=(b"first",), delay=3 * DELAY), Hang()))
    caller = Caller(GET)
    await m.outbound.handle(caller)
    assert (caller.status, caller.received) == ("200", b"first")
    first, hedge = m.upstreams.streams
    assert hedge.reset_code == ErrorCode.CANCEL and first.reset_code is None
    assert m.recorded == [(first.address, Outcome(status=200))]
    assert m.metric("mesh_sidecar_hedges_total") == 1
    m.assert_released()


async def test_a_hedge_replays_the_request_body(monkeypatch: pytest.MonkeyPatch) -> None:
    m = hedged(monkeypatch, Upstreams(Hang(), Answer(200)))
    caller = Caller(PUT, body=[b"item ", b"one"])
    await m.outbound.handle(caller)
    assert caller.status == "200"
    assert [(s.sent, s.request_ended) for s in m.upstreams.streams] == [(b"item one", True)] * 2
    m.assert_released()


async def test_a_body_too_large_to_replay_is_not_hedged(
        monkeypatch: pytest.MonkeyPatch) -> None:
    m = hedged(monkeypatch, Upstreams(Answer(200, delay=3 * DELAY), Answer(200)))
    caller = Caller(PUT, body=[b"x" * REPLAY_LIMIT, b"y"])
    await m.outbound.handle(caller)
    assert caller.status == "200" and len(m.upstreams.streams) == 1
    assert m.metric("mesh_sidecar_retries_refused_total", reason="body-too-large") == 1
    m.assert_released()


async def test_a_hedge_refused_by_the_budget_opens_no_second_stream(
        monkeypatch: pytest.MonkeyPatch) -> None:
    m = hedged(monkeypatch, Upstreams(Answer(200, delay=3 * DELAY)),
               retry_budget={"min_retries_per_second": 0})
    budget = m.cluster.budget
    assert isinstance(budget, RateBudget)
    before = budget.balance()
    caller = Caller(GET)
    await m.outbound.handle(caller)
    assert caller.status == "200" and len(m.upstreams.streams) == 1
    assert budget.balance() == before + 1000  # the call's deposit, and no withdrawal
    assert m.metric("mesh_sidecar_retries_refused_total", reason="budget-exhausted") == 1
    assert m.metric("mesh_sidecar_hedges_total") == 0
    m.assert_released()


async def test_a_hedge_refused_by_the_max_retries_breaker_opens_no_second_stream(
        monkeypatch: pytest.MonkeyPatch) -> None:
    m = hedged(monkeypatch, Upstreams(Answer(200, delay=3 * DELAY)),
               retry_budget={"kind": "CONCURRENCY"}, circuit_breakers={"max_retries": 0})
    budget = m.cluster.budget
    assert isinstance(budget, ConcurrencyBudget)
    caller = Caller(GET)
    await m.outbound.handle(caller)
    assert caller.status == "200" and len(m.upstreams.streams) == 1
    assert m.metric("mesh_sidecar_retries_refused_total", reason="circuit-breaker") == 1
    assert m.metric("mesh_sidecar_circuit_breaker_overflows_total", limit="max_retries") == 1
    m.assert_released()  # the concurrency budget too: no retry was ever counted


async def test_a_fatal_grpc_status_from_the_hedge_ends_the_call(
        monkeypatch: pytest.MonkeyPatch) -> None:
    invalid = int(StatusCode.INVALID_ARGUMENT)  # not in retry_on: fatal
    m = hedged(monkeypatch, Upstreams(Hang(), Answer(200, grpc=True, grpc_status=invalid)))
    caller = Caller(GRPC)
    await m.outbound.handle(caller)
    assert dict(caller.response or ())["grpc-status"] == str(invalid)
    first, _ = m.upstreams.streams
    assert first.reset_code == ErrorCode.CANCEL
    m.assert_released()


async def test_a_non_fatal_grpc_status_lets_the_others_go_on_and_hedges_again_at_once(
        monkeypatch: pytest.MonkeyPatch) -> None:
    unavailable = int(StatusCode.UNAVAILABLE)  # in retry_on: non-fatal (gRPC's words)
    delay = 0.2  # long enough that "at once" and "another delay later" are told apart
    m = hedged(monkeypatch, Upstreams(Answer(200, grpc=True, grpc_status=0, delay=5 * delay),
                                      Answer(200, grpc=True, grpc_status=unavailable),
                                      Answer(200, grpc=True, grpc_status=0)),
               endpoints=3, retry_policy={**HEDGE, "hedging_delay": f"{delay}s"})
    caller = Caller(GRPC)
    elapsed = await timed(m, caller)
    assert dict(caller.response or ())["grpc-status"] == "0"
    first, second, third = m.upstreams.streams
    assert len({first.address, second.address, third.address}) == 3
    assert first.reset_code == ErrorCode.CANCEL  # the third answered first
    assert elapsed < 1.75 * delay  # the third went with the second's answer, not a delay later
    assert m.metric("mesh_sidecar_hedges_total") == 2
    m.assert_released()


async def test_a_hedge_that_fails_leaves_the_first_to_answer(
        monkeypatch: pytest.MonkeyPatch) -> None:
    m = hedged(monkeypatch, Upstreams(Answer(200, delay=3 * DELAY), Reset()),
               retry_policy={**HEDGE, "retry_on": []})  # even with nothing to retry on
    caller = Caller(GET)
    await m.outbound.handle(caller)
    assert caller.status == "200"
    first, hedge = m.upstreams.streams
    assert m.recorded == [(hedge.address, Outcome(failure=Failure.RESET)),
                          (first.address, Outcome(status=200))]
    m.assert_released()


async def test_envoys_hedge_on_per_try_timeout_keeps_the_first_try(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # The per-try timeout is the hedging delay and no longer cuts the try: the first try,
    # slower than it, still answers first.
    m = hedged(monkeypatch, Upstreams(Answer(200, delay=3 * DELAY), Hang()),
               retry_policy={"retry_on": ["5xx"], "per_try_timeout": f"{DELAY}s",
                             "hedge_on_per_try_timeout": True})
    caller = Caller(GET)
    await m.outbound.handle(caller)
    assert caller.status == "200"
    first, hedge = m.upstreams.streams
    assert first.reset_code is None and hedge.reset_code == ErrorCode.CANCEL
    m.assert_released()


async def test_a_post_is_not_hedged(monkeypatch: pytest.MonkeyPatch) -> None:
    m = hedged(monkeypatch, Upstreams(Answer(200, delay=3 * DELAY)))
    caller = Caller([(":method", "POST"), (":path", "/orders"), (":authority", "orders")])
    await m.outbound.handle(caller)
    assert caller.status == "200" and len(m.upstreams.streams) == 1
    assert m.metric("mesh_sidecar_retries_refused_total", reason="non-idempotent") == 1
    m.assert_released()


async def test_no_hedge_goes_where_the_call_has_been(monkeypatch: pytest.MonkeyPatch) -> None:
    m = hedged(monkeypatch, Upstreams(Answer(200, delay=3 * DELAY)), endpoints=1)
    caller = Caller(GET)
    await m.outbound.handle(caller)
    assert caller.status == "200" and len(m.upstreams.streams) == 1
    assert m.metric("mesh_sidecar_hedges_total") == 0  # and no refusal: nowhere to go
    assert not any(sample.value for metric in m.metrics.retries_refused.collect()
                   for sample in metric.samples)
    m.assert_released()


async def test_the_deadline_mid_race_resets_every_attempt(
        monkeypatch: pytest.MonkeyPatch) -> None:
    m = hedged(monkeypatch, Upstreams(Hang(), Hang()), timeout=f"{3 * DELAY}s")
    caller = Caller(GET)
    await m.outbound.handle(caller)
    assert caller.status == "504"
    assert [s.reset_code for s in m.upstreams.streams] == [ErrorCode.CANCEL] * 2
    m.assert_released()


async def test_a_caller_gone_mid_race_leaves_nothing_behind(
        monkeypatch: pytest.MonkeyPatch) -> None:
    m = hedged(monkeypatch, Upstreams(Hang(), Hang()), retry_budget={"kind": "CONCURRENCY"})
    task = asyncio.create_task(m.outbound.handle(Caller(GET)))
    while len(m.upstreams.streams) < 2:
        await asyncio.sleep(DELAY / 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert [s.reset_code for s in m.upstreams.streams] == [ErrorCode.CANCEL] * 2
    m.assert_released()

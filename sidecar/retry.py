"""Retries: whether a failed attempt is tried again, when, and why not (Envoy's retry policy).

A retry turns a transient failure (a reset connection, a replica restarting, a 503 from an
overloaded instance) into a success the caller never sees — if it is safe and cheap. Safe: the
failure is one the route names in ``retry_on``, and the request has no effects a second copy
would repeat (its method is idempotent, the route allows it anyway, or the upstream never saw
it), and the body can be sent again (it was small enough to keep). Cheap: retries left
(``num_retries``), a backoff delay that ends before the overall deadline, room under the
cluster's ``max_retries`` circuit breaker, and room in the retry budget. ``RetrySettings``
holds a route's settings; ``RetryState`` follows one request through its attempts and answers
each outcome with a ``RetryDecision``: ``Retry`` after a delay, or ``Stop`` with the reason. The
sidecar carries the decision out (sleeps, picks another endpoint with ``avoid=state.tried``,
sends ``x-mesh-attempt: state.attempt``), and asks only while nothing of the response has been
forwarded to the caller.

The gates are asked in the order of ``StopReason``, and the two that count something shared
come last: the circuit breaker (a permit, handed back at once if the budget then refuses), and
last of all the budget. So a ``Retry`` is charged to the budget only once every other gate has
agreed, and the sidecar sends it unless the call ends in its backoff (the caller gave up): a
retry refused for any reason costs the budget nothing.

``retry_on`` conditions, as Envoy's ``x-envoy-retry-on`` reads them:

    connect-failure         no connection could be made (the request was never sent)
    refused-stream          the upstream refused the stream (REFUSED_STREAM, or beyond GOAWAY)
    reset                   a connection or stream failed before a response (the two above
                            included; a per-try timeout is not a reset, as in Envoy)
    5xx                     any 5xx response, or no response at all (per-try timeout included)
    gateway-error           502, 503 or 504, or no response at all (per-try timeout included)
    retriable-status-codes  a status listed in ``retriable_status_codes``
    cancelled, deadline-exceeded, internal, resource-exhausted, unavailable
                            a gRPC response with that ``grpc-status``

Every attempt gets ``per_try_timeout`` but never more than the time left before the overall
deadline, and a retry whose delay would end at or after the deadline is not made. Without a per-try
timeout the first attempt may use the whole deadline, so a timed-out request is never retried
(a common surprise with Envoy and Istio).

Where we differ from Envoy on purpose: Envoy retries any method the policy matches. We retry
only idempotent methods (RFC 9110: GET, HEAD, OPTIONS, TRACE, PUT, DELETE) and gRPC calls (as in
gRPC's own retry design, a retry policy on a gRPC service is its owner's word that its methods
may be retried) unless the route sets ``retry_non_idempotent``; but after a connect failure or a
refused stream, which the upstream never processed (RFC 9113 §8.7), any method may go again.

**Hedging** (gRPC's hedging policy, gRFC A6; Envoy's ``hedge_on_per_try_timeout``) is a retry
that does not wait for the failure: when an attempt has had no response for ``hedging_delay``,
``hedge()`` may start another beside it, and the first response that is not retriable wins.
A hedge passes the same gates as a retry, in the same order, but has no backoff (its delay is
the hedging delay) and no exemption for a request the upstream never saw — the first attempt
is still out, so the method must be idempotent (or gRPC, or ``retry_non_idempotent``): Envoy
hedges any method; we hedge what we would retry. Hedges and retries share ``num_retries``
(gRPC's ``maxAttempts`` is ``num_retries + 1``), the ``max_retries`` breaker and the budget
(gRFC A6: "throttling also applies to hedged RPCs"); each holds its permit and its budget
withdrawal until its own attempt is decided. While other attempts are in flight, an attempt's
outcome is only final if it is a response ``retry_on`` does not name — a success, or a fatal
status (gRPC's non-fatal codes are ``retry_on``'s): a failure or a retriable status is a
``Wait``, and the others go on.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from enum import Enum
from typing import overload

from mesh.clock import Clock
from mesh.grpc.status import StatusCode
from sidecar.backoff import Backoff
from sidecar.circuit_breaker import CircuitBreaker, Limit, Overflow, Permit
from sidecar.outcome import Failure, Outcome
from sidecar.retry_budget import Budget

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
"""Methods whose repetition has the effect of one request (RFC 9110 §9.2.2)."""


class RetryOn(Enum):
    """A condition a route retries on (Envoy's ``x-envoy-retry-on`` names)."""

    CONNECT_FAILURE = "connect-failure"
    REFUSED_STREAM = "refused-stream"
    RESET = "reset"
    SERVER_ERROR = "5xx"
    GATEWAY_ERROR = "gateway-error"
    RETRIABLE_STATUS_CODES = "retriable-status-codes"
    CANCELLED = "cancelled"
    DEADLINE_EXCEEDED = "deadline-exceeded"
    INTERNAL = "internal"
    RESOURCE_EXHAUSTED = "resource-exhausted"
    UNAVAILABLE = "unavailable"

    @classmethod
    def parse(cls, name: str) -> RetryOn:
        """The condition called ``name`` in a policy file.

        Raises:
            ValueError: no condition has that name; the message lists those that do.
        """
        try:
            return cls(name)
        except ValueError:
            known = ", ".join(c.value for c in cls)
            raise ValueError(f"retry_on {name!r}: unknown condition (want one of {known})") \
                from None


_FAILURE_COVERED_BY: dict[Failure, frozenset[RetryOn]] = {  # Envoy's wouldRetryFromReset
    Failure.CONNECT_FAILURE: frozenset({RetryOn.CONNECT_FAILURE, RetryOn.RESET,
                                        RetryOn.SERVER_ERROR, RetryOn.GATEWAY_ERROR}),
    Failure.REFUSED_STREAM: frozenset({RetryOn.REFUSED_STREAM, RetryOn.RESET,
                                       RetryOn.SERVER_ERROR, RetryOn.GATEWAY_ERROR}),
    Failure.RESET: frozenset({RetryOn.RESET, RetryOn.SERVER_ERROR, RetryOn.GATEWAY_ERROR}),
    Failure.TIMEOUT: frozenset({RetryOn.SERVER_ERROR, RetryOn.GATEWAY_ERROR}),
}

_GRPC_CONDITIONS: dict[RetryOn, StatusCode] = {
    RetryOn.CANCELLED: StatusCode.CANCELLED,
    RetryOn.DEADLINE_EXCEEDED: StatusCode.DEADLINE_EXCEEDED,
    RetryOn.INTERNAL: StatusCode.INTERNAL,
    RetryOn.RESOURCE_EXHAUSTED: StatusCode.RESOURCE_EXHAUSTED,
    RetryOn.UNAVAILABLE: StatusCode.UNAVAILABLE,
}

_NEVER_PROCESSED = frozenset({Failure.CONNECT_FAILURE, Failure.REFUSED_STREAM})


DEFAULT_NUM_RETRIES = 1
"""Attempts after the first when a policy retries on something but says not how many (Envoy)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RetrySettings:
    """A route's retry policy, as the sidecar applies it (the ``RetryPolicy`` message's
    values, as Envoy's ``RetryPolicy``); defaults retry nothing."""

    retry_on: frozenset[RetryOn] = frozenset()
    num_retries: int = DEFAULT_NUM_RETRIES  # attempts after the first
    per_try_timeout: float | None = None  # seconds per attempt; None: up to the deadline
    retriable_status_codes: frozenset[int] = frozenset()  # for retriable-status-codes
    retry_non_idempotent: bool = False  # True: retry POST and PATCH as well
    backoff: Backoff = field(default_factory=Backoff)
    # Seconds an attempt waits for its response before a hedge joins it; None: no hedging
    hedging_delay: float | None = None

    def __post_init__(self) -> None:
        if self.num_retries < 0:
            raise ValueError(f"retry num_retries {self.num_retries}: must not be negative")
        for name in ("per_try_timeout", "hedging_delay"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"retry {name} {value}: must be positive seconds")
        for code in sorted(self.retriable_status_codes):
            if not 100 <= code <= 599:
                raise ValueError(f"retry retriable_status_codes {code}: must be within "
                                 f"100..599")

    def retriable(self, outcome: Outcome) -> bool:
        """True when ``retry_on`` names this outcome (whatever the method or budget)."""
        if not self.retry_on:  # the default: every call's outcome is asked about
            return False
        if outcome.failure is not None:
            return not self.retry_on.isdisjoint(_FAILURE_COVERED_BY[outcome.failure])
        status = outcome.status
        assert status is not None  # an Outcome has a status or a failure
        on = self.retry_on
        if RetryOn.SERVER_ERROR in on and 500 <= status <= 599:
            return True
        if RetryOn.GATEWAY_ERROR in on and status in (502, 503, 504):
            return True
        if RetryOn.RETRIABLE_STATUS_CODES in on and status in self.retriable_status_codes:
            return True
        grpc_status = outcome.grpc_status
        return grpc_status is not None and any(
            _GRPC_CONDITIONS.get(condition) == grpc_status for condition in on)


class StopReason(Enum):
    """Why a request gets no further attempt; ``decide`` asks in this order."""

    NOT_RETRIABLE = "not-retriable"  # a success, or a failure retry_on does not name
    NON_IDEMPOTENT = "non-idempotent"  # the method may have had effects already
    RETRIES_EXHAUSTED = "retries-exhausted"  # num_retries retries were made
    BODY_TOO_LARGE = "body-too-large"  # the request body outgrew what is kept to send again
    DEADLINE = "deadline"  # the retry could not start before the overall deadline
    CIRCUIT_BREAKER = "circuit-breaker"  # the cluster's max_retries retries are in flight
    BUDGET_EXHAUSTED = "budget-exhausted"  # the retry budget has no room


@dataclass(frozen=True, slots=True, kw_only=True)
class Retry:
    """Try again after ``delay`` seconds; the next attempt is number ``attempt``."""

    delay: float
    attempt: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Hedge:
    """Start attempt number ``attempt`` now, beside those in flight."""

    attempt: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Wait:
    """This attempt's outcome is not the answer: another attempt in flight may still give it."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Stop:
    """Make no further attempt (``decide``: the last outcome is the answer, and any other
    attempt in flight is to be closed; ``hedge``: those in flight go on alone)."""

    reason: StopReason


RetryDecision = Retry | Wait | Stop
HedgeDecision = Hedge | Stop


@dataclass(slots=True)
class _Charge:
    """What an admitted retry or hedge holds until its attempt is decided: a withdrawal from
    the budget, a permit of the ``max_retries`` breaker."""

    budget: Budget | None
    permit: Permit | None

    def release(self) -> None:
        if self.budget is not None:
            self.budget.retry_ended()
        if self.permit is not None:
            self.permit.release()


class Phase(Enum):
    """Where a request is in its attempts (see ``RetryState``)."""

    READY = "ready"  # created, or a retry or hedge was decided: the next attempt may begin
    ATTEMPTING = "attempting"  # attempts are in flight (one, or with hedges a few)
    STOPPED = "stopped"  # no further attempt; the response is being delivered
    CLOSED = "closed"  # the request is over and its budget released


class RetryState:
    """One request's attempts: counts them, keeps the endpoints tried, decides on each outcome.

    Creating it deposits the request into ``budget``; ``close()`` ends it (call it once the
    response is delivered or the caller gave up, whatever happened; it is idempotent)::

        phase        begin_attempt()   hedge()            decide()                     close()
        READY        ATTEMPTING        -                  -                            CLOSED
        ATTEMPTING   -                 Hedge: READY       Retry: READY (it was the     CLOSED
                                       Stop: ATTEMPTING     last in flight)
                                                          Wait: ATTEMPTING (others
                                                            are in flight)
                                                          Stop: STOPPED
        STOPPED      -                 -                  -                            CLOSED

    Anything marked ``-`` is a bug in the caller and raises ``RuntimeError``. Without hedging
    one attempt at a time is in flight, ``decide()`` never says ``Wait`` and needs no attempt
    number; with hedging each attempt is decided by its number (``decide(attempt=n)``), and a
    ``Stop`` from ``decide()`` means the others in flight are to be closed.

    A ``Retry`` or ``Hedge`` holds a retry in the budget and a ``max_retries`` permit of
    ``breaker`` from the moment it is decided (a retry's backoff included, Envoy issue 30205)
    until its attempt is decided — or the request stops or closes — as Envoy's retry state
    holds its cluster's ``retries`` resource.

    Args:
        policy: the route's retry settings.
        method: the request's HTTP method.
        grpc: True for a gRPC call, which is retried like an idempotent method.
        deadline: when the whole request must be over, as an absolute time on ``clock``.
        budget: the cluster's retry budget; None retries up to ``num_retries`` unchecked.
        breaker: the cluster's circuit breaker, whose ``max_retries`` caps retries in flight;
            None: uncapped.
    """

    def __init__(self, policy: RetrySettings, *, method: str, grpc: bool = False,
                 deadline: float, clock: Clock, rng: random.Random,
                 budget: Budget | None = None, breaker: CircuitBreaker | None = None) -> None:
        self._policy = policy
        self._idempotent = grpc or policy.retry_non_idempotent or method in IDEMPOTENT_METHODS
        self._deadline = deadline
        self._clock = clock
        self._budget = budget
        self._breaker = breaker
        self._delays = policy.backoff.delays(rng)
        self._tried: set[str] = set()
        self._in_flight: set[int] = set()  # attempts begun and not yet decided
        self._charges: dict[int, _Charge] = {}  # by attempt number: what its retry holds
        self.attempt = 0  # attempts begun; the latest has this number (x-mesh-attempt)
        self.phase = Phase.READY
        if budget is not None:
            budget.deposit()

    @property
    def tried(self) -> frozenset[str]:
        """The endpoints attempts went to, for the balancer's ``avoid``."""
        return frozenset(self._tried)

    @property
    def in_flight(self) -> int:
        """How many attempts are out, their outcome not yet decided."""
        return len(self._in_flight)

    def begin_attempt(self, address: str | None) -> float:
        """An attempt starts, to ``address`` (None if no endpoint was available).

        Returns:
            the attempt's deadline: ``per_try_timeout`` from now, but never past the request's.
        """
        self._expect(Phase.READY, "begin_attempt")
        self.phase = Phase.ATTEMPTING
        self.attempt += 1
        self._in_flight.add(self.attempt)
        if address is not None:
            self._tried.add(address)
        if self._policy.per_try_timeout is None:
            return self._deadline
        return min(self._deadline, self._clock.now() + self._policy.per_try_timeout)

    def hedge(self, *, replayable: bool = True) -> HedgeDecision:
        """Whether another attempt may start now, beside those in flight (the hedging delay
        passed with no answer, or one of them ended with a ``Wait``).

        Args:
            replayable: False once the request body has outgrown what the sidecar keeps.
        """
        self._expect(Phase.ATTEMPTING, "hedge")
        admitted = self._admit(idempotent=self._idempotent, replayable=replayable,
                               backoff=False)
        if isinstance(admitted, Stop):
            return admitted
        self.phase = Phase.READY
        return Hedge(attempt=self.attempt + 1)

    @overload
    def decide(self, outcome: Outcome, *, replayable: bool = True) -> Retry | Stop: ...
    @overload
    def decide(self, outcome: Outcome, *, attempt: int,
               replayable: bool = True) -> RetryDecision: ...

    def decide(self, outcome: Outcome, *, attempt: int | None = None,
               replayable: bool = True) -> RetryDecision:
        """Whether the attempt that ended with ``outcome`` is followed by another, and when.

        Args:
            outcome: how the attempt ended.
            attempt: its number; None for the one attempt in flight.
            replayable: False once the request body has outgrown what the sidecar keeps, so
                no second copy of it can be sent.
        """
        self._expect(Phase.ATTEMPTING, "decide")
        if attempt is None:
            if len(self._in_flight) != 1:
                raise RuntimeError(f"retry state: decide() without an attempt number, with "
                                   f"{len(self._in_flight)} attempts in flight")
            attempt = next(iter(self._in_flight))
        if attempt not in self._in_flight:
            raise RuntimeError(f"retry state: decide(attempt={attempt}), which is not in "
                               f"flight")
        self._end(attempt)
        decision = self._judge(outcome, replayable)
        if isinstance(decision, Stop):
            self._release()  # the others in flight are to be closed: they hold nothing now
            self.phase = Phase.STOPPED
        elif isinstance(decision, Retry):
            self.phase = Phase.READY
        return decision

    def abandon(self, attempt: int) -> None:
        """Attempt ``attempt`` was never sent (the pending-requests breaker refused its
        stream) while others are in flight: forget it, and release what it holds."""
        self._expect(Phase.ATTEMPTING, "abandon")
        if attempt not in self._in_flight or len(self._in_flight) == 1:
            raise RuntimeError(f"retry state: abandon(attempt={attempt}) needs it and another "
                               f"attempt in flight")
        self._end(attempt)

    def close(self) -> None:
        """The request is over: release what it holds in the budget and the breaker."""
        if self.phase is Phase.CLOSED:
            return
        self.phase = Phase.CLOSED
        self._release()
        if self._budget is not None:
            self._budget.request_ended()

    def _judge(self, outcome: Outcome, replayable: bool) -> RetryDecision:
        retriable = self._policy.retriable(outcome)
        if self._in_flight and (retriable or outcome.failure is not None):
            return Wait()  # no answer, or one to retry: the others may still answer
        if not retriable:
            return Stop(reason=StopReason.NOT_RETRIABLE)
        idempotent = self._idempotent or outcome.failure in _NEVER_PROCESSED
        admitted = self._admit(idempotent=idempotent, replayable=replayable, backoff=True)
        if isinstance(admitted, Stop):
            return admitted
        return Retry(delay=admitted, attempt=self.attempt + 1)

    def _admit(self, *, idempotent: bool, replayable: bool, backoff: bool) -> float | Stop:
        """The gates one more attempt passes, in ``StopReason``'s order: its delay (from the
        backoff for a retry, none for a hedge) or why not. Once admitted it is charged to the
        breaker and the budget (asked last: nothing else can refuse it then)."""
        if not idempotent:
            return Stop(reason=StopReason.NON_IDEMPOTENT)
        if self.attempt > self._policy.num_retries:
            return Stop(reason=StopReason.RETRIES_EXHAUSTED)
        if not replayable:
            return Stop(reason=StopReason.BODY_TOO_LARGE)
        delay = next(self._delays) if backoff else 0.0
        if self._clock.now() + delay >= self._deadline:
            return Stop(reason=StopReason.DEADLINE)
        permit: Permit | None = None
        if self._breaker is not None:
            acquired = self._breaker.try_acquire(Limit.RETRIES)
            if isinstance(acquired, Overflow):
                return Stop(reason=StopReason.CIRCUIT_BREAKER)
            permit = acquired
        if self._budget is not None and not self._budget.try_withdraw():
            if permit is not None:
                permit.release()
            return Stop(reason=StopReason.BUDGET_EXHAUSTED)
        self._charges[self.attempt + 1] = _Charge(self._budget, permit)
        return delay

    def _end(self, attempt: int) -> None:
        self._in_flight.discard(attempt)
        charge = self._charges.pop(attempt, None)
        if charge is not None:
            charge.release()

    def _release(self) -> None:
        for charge in self._charges.values():
            charge.release()
        self._charges.clear()
        self._in_flight.clear()

    def _expect(self, phase: Phase, action: str) -> None:
        if self.phase is not phase:
            raise RuntimeError(f"retry state: {action}() in phase {self.phase.value}, "
                               f"allowed only in {phase.value}")

"""The outbound path: an app's request → route → cluster → endpoint → a pooled mTLS stream.

Per request, in order (each step can answer locally instead, never hang):

1. **route**: the router picks a cluster from ``:authority``, path and headers (404 /
   UNIMPLEMENTED when nothing matches); the route's local rate limit, if it has one, may
   refuse the call at once (429 / RESOURCE_EXHAUSTED, ``x-mesh-ratelimited``);
2. **deadline**: the route's timeout, capped by the caller's own (``grpc-timeout`` or
   ``x-mesh-timeout-ms``) — every call has a timeout, shorter than its caller's; then the
   route's fault, if it has one: a delay (within the deadline) and an abort, answered here
   with ``x-mesh-fault`` (:mod:`sidecar.fault`);
3. **circuit breaker**: over ``max_requests`` the call is refused at once (503 /
   UNAVAILABLE, ``x-mesh-overloaded`` names the limit);
4. **attempts**: the balancer picks an endpoint (avoiding ones already tried), the pool opens a
   stream on a shared connection (a call that must wait for a new connection is *pending*: over
   ``max_pending_requests`` it is refused like step 3), and the request goes out with the
   *remaining* time as its ``grpc-timeout`` / ``x-mesh-timeout-ms`` and ``x-mesh-attempt``.
   Until response headers arrive, a failure or a retriable status may be retried — if the
   retry policy, the deadline, the ``max_retries`` breaker and the budget agree (the retry
   state asks them all, the budget last) — after a jittered backoff. With a hedging delay, an
   attempt that has no answer by then gets a *hedge* beside it, on an endpoint not tried yet,
   past the same gates; the first final answer wins and the others are reset;
5. **relay**: the response streams back; body bytes flow both ways as they come.

The request body is kept (``replay``) while it is small enough, so a retry or a hedge can send
it again; a larger one makes the call's first attempt its only one. ``_Call`` shows the phases
of a call and ``_Attempt`` those of one attempt, each as a table. However a call ends, it is
counted (``mesh_sidecar_requests``) and kept in the tap of recent calls (``sidecar/tap.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable, Coroutine
from enum import Enum
from typing import Any, cast

from mesh.clock import Clock
from mesh.grpc import StatusCode
from mesh.grpc.deadline import format_timeout
from mesh.grpc.status import code_of
from mesh.http2 import ConnectionClosed, ErrorCode, Headers, StreamRefused, StreamReset
from sidecar import headers as mesh_headers
from sidecar.balancers import EndpointState
from sidecar.circuit_breaker import Limit, Overflow, Overloaded
from sidecar.cluster import UpstreamCluster
from sidecar.config import LiveConfig
from sidecar.fault import FAULT_HEADER, NO_FAULT, FaultDecision, decide
from sidecar.forward import (
    CallTimeout,
    Downstream,
    Replay,
    Upstream,
    end_body,
    local_reply,
    send_request_body,
    send_response,
)
from sidecar.metrics import RESET, SidecarMetrics
from sidecar.outcome import Failure, Outcome, http_status_of, succeeded
from sidecar.pool import ConnectFailure
from sidecar.rate_limit import RATE_LIMITED_HEADER
from sidecar.retry import Hedge, Retry, RetryDecision, RetrySettings, RetryState, Stop, StopReason
from sidecar.router import RouteTarget, header_matches

log = logging.getLogger("sidecar.outbound")

REPLAY_LIMIT = 64 * 1024  # bytes of request body kept for retries (Envoy buffers 1 MiB)


class Outbound:
    """Serves the app-facing listener; :meth:`handle` is the per-request entry point."""

    def __init__(self, config: LiveConfig, metrics: SidecarMetrics, *, clock: Clock,
                 rng: random.Random) -> None:
        self.config = config
        self.metrics = metrics
        self.clock = clock
        self.rng = rng

    async def handle(self, down: Downstream) -> None:
        started = self.clock.now()
        request = down.headers or []
        values = dict(request)
        grpc = mesh_headers.is_grpc(request)
        authority = values.get(":authority", "")
        path = values.get(":path", "/")

        async def answer(cluster: str, status: int, code: StatusCode, message: str,
                         extra: Headers | None = None) -> None:
            await local_reply(down, grpc=grpc, status=status, grpc_status=code,
                              message=message, extra=extra)
            self._done(cluster, status, started, values)

        target = self.config.router.route(authority, path, values, self.rng)
        if target is None:
            return await answer("none", 404, StatusCode.UNIMPLEMENTED,
                                f"no route to {authority}{path}")
        limit = target.rate_limit
        if limit is not None and not limit.admit():
            self.metrics.rate_limited.labels("outbound", limit.name).inc()
            return await answer(target.cluster, 429, StatusCode.RESOURCE_EXHAUSTED,
                                f"{limit.name}: local rate limit", [(RATE_LIMITED_HEADER,
                                                                     limit.name)])
        cluster = self.config.clusters.get(target.cluster)
        if cluster is None:  # the route names a cluster not (yet, or any more) known
            return await answer(target.cluster, 503, StatusCode.UNAVAILABLE,
                                f"no cluster {target.cluster}")
        settings = cluster.settings
        timeout = target.timeout or settings.timeout
        caller = mesh_headers.caller_timeout(values)
        if caller is not None:
            timeout = min(timeout, caller)
        deadline = started + timeout
        if target.fault is not None:
            fault = decide(target.fault, values, self.rng, header_matches)
            try:
                if fault is not NO_FAULT and not await self._inject(fault, target, deadline,
                                                                    answer):
                    return
            except asyncio.CancelledError:  # the caller left during the delay
                self._done(target.cluster, RESET, started, values)
                raise
        policy = target.retry_policy or settings.retry_policy
        permit = cluster.breaker.try_acquire(Limit.REQUESTS)
        if isinstance(permit, Overflow):
            self.metrics.overflows.labels(target.cluster, permit.limit.value).inc()
            return await answer(target.cluster, 503, StatusCode.UNAVAILABLE,
                                f"cluster {target.cluster}: {permit.limit.value} "
                                f"({permit.maximum}) reached",
                                [(mesh_headers.OVERLOADED_HEADER, permit.limit.value)])
        call = _Call(self, down, cluster, policy, grpc, mesh_headers.from_app(request),
                     values.get(":method", "GET"), deadline, key=cluster.hash_key(values))
        status: int | str = RESET  # unless run() returns: the caller reset the stream, which
        try:  # cancels this task
            status = await call.run()
        finally:
            permit.release()
            self._done(target.cluster, status, started, values, call.retries, call.hedges)

    def _done(self, cluster: str, status: int | str, started: float, request: dict[str, str],
              retries: int = 0, hedges: int = 0) -> None:
        """Count a request that ended with ``status`` and keep it in the tap: one tuple
        appended to a ring, all the tap costs a request (``/tap`` makes the dicts)."""
        latency = self.clock.now() - started
        self.metrics.request_done("outbound", cluster, status, latency)
        self.metrics.tap.record(cluster, request.get(":authority", ""),
                                request.get(":method", "GET"), request.get(":path", "/"),
                                status, latency, retries, hedges)

    async def _inject(self, fault: FaultDecision, target: RouteTarget, deadline: float,
                      answer: Callable[[str, int, StatusCode, str, Headers], Awaitable[None]]
                      ) -> bool:
        """Carry out a route's fault; False when it answered the call itself.

        The delay counts against the call's deadline, as a slow upstream would: a delay longer
        than the route's timeout is a timeout (504), which is what it is there to show.
        """
        route = target.route
        if fault.delay:
            self.metrics.faults.labels(route, "delay").inc()
            remaining = deadline - self.clock.now()
            await asyncio.sleep(max(0.0, min(fault.delay, remaining)))
            if fault.delay >= remaining:
                await answer(target.cluster, 504, StatusCode.DEADLINE_EXCEEDED,
                             f"route {route}: deadline exceeded during an injected delay of "
                             f"{fault.delay:g}s", [(FAULT_HEADER, "delay")])
                return False
        if fault.abort is not None:
            self.metrics.faults.labels(route, "abort").inc()
            status, code = fault.abort.reply()
            await answer(target.cluster, status, code, f"route {route}: fault injected (abort)",
                         [(FAULT_HEADER, "abort")])
            return False
        return True


class _Phase(Enum):
    """Where an outbound call is (see ``_Call``)."""

    ATTEMPTING = "attempting"  # attempts sent (one, or a few hedged), response headers awaited
    BACKOFF = "backoff"  # a retry was decided and its delay is running
    RELAYING = "relaying"  # the chosen response is streaming to the caller
    ANSWERING = "answering"  # the sidecar answers the caller itself (503 / 504)
    DONE = "done"  # the caller has its answer or is gone; nothing is held any more


_Racing = dict["asyncio.Task[tuple[Outcome, Headers | None]]", "_Attempt"]
"""The attempts of a hedging race, by the task that runs each."""


class _Call:
    """One outbound request, from its first attempt to the end of its answer.

    A call makes attempts (``_Attempt``) until an outcome is final, then relays that response
    or answers itself: one at a time, or — with a hedging delay — a few at once. ``run()``
    carries it through these phases; ``state`` (the request's ``RetryState``) decides after
    every attempt and on every hedge, and the deadline bounds it all::

        phase       event                                 next       on the way
        ATTEMPTING  no endpoint is available              ANSWERING  503
        ATTEMPTING  max_pending_requests are waiting      ANSWERING  503, x-mesh-overloaded
                                                                     (a hedge: it is dropped)
        ATTEMPTING  the hedging delay passes with no      ATTEMPTING state.hedge(): Hedge, and
                    answer, an endpoint is untried and               an endpoint is untried:
                    the request body is all here                     another attempt there;
                                                                     Stop: no more hedges
        ATTEMPTING  an attempt ends (response headers, a failure, the per-try timeout) and
                    state.decide() says
                      Wait (others are in flight)         ATTEMPTING it is closed; the next
                                                                     hedge is due at once
                      Retry                               BACKOFF    the attempt is closed
                      Stop, with a response               RELAYING   any other is closed
                      Stop, without one                   ANSWERING  the attempt is closed;
                                                                     503 / 504 naming why
        BACKOFF     the delay is over                     ATTEMPTING another endpoint
        RELAYING    the response ends                     DONE       (gRPC: settled by its
                                                                     trailers)
        RELAYING    the upstream fails mid-response       DONE       the caller reset; 502
        RELAYING    the caller resets its stream          DONE       counted as reset
        ANSWERING   the reply is sent                     DONE
        any         the deadline passes                   DONE       ATTEMPTING, BACKOFF: 504;
                                                                     RELAYING gRPC: trailers
                                                                     DEADLINE_EXCEEDED; else
                                                                     the caller reset
        any         the caller is gone (task cancelled)   DONE       nothing more is sent

    Reaching DONE, however it happens, closes every attempt and the retry state (``run``'s
    ``finally``, and ``_race``'s for hedged attempts): nothing a call holds — an endpoint's
    in-flight slot, an upstream stream, the body pump, a retry or hedge in the budget or the
    breaker — outlives it.

    Hedged attempts run as tasks of their own (``_race``), the only per-request tasks beside
    a streamed body's pump, and only on a route that hedges; without a hedging delay the one
    attempt in flight is awaited in place. An attempt that loses the race is closed: its
    stream reset with CANCEL, its endpoint's slot released by ``_Attempt.close``.
    """

    def __init__(self, outbound: Outbound, down: Downstream, cluster: UpstreamCluster,
                 policy: RetrySettings, grpc: bool, request: Headers, method: str,
                 deadline: float, *, key: int | None = None) -> None:
        """``request`` is the caller's, as forwarded (:func:`~sidecar.headers.from_app`);
        ``key`` its hash for a ring-hash cluster (None: a random point)."""
        self.outbound = outbound
        self.clock = outbound.clock
        self.down = down
        self.cluster = cluster
        self.grpc = grpc
        self.request = request
        self.deadline = deadline
        self.key = key
        self.state = RetryState(policy, method=method, grpc=grpc, deadline=deadline,
                                clock=self.clock, rng=outbound.rng, budget=cluster.budget,
                                breaker=cluster.breaker)
        self.replay = Replay(REPLAY_LIMIT)
        self.hedging_delay = policy.hedging_delay
        self.phase = _Phase.ATTEMPTING
        self.current: _Attempt | None = None  # the latest attempt: under way, or relayed
        self.retries = 0  # retries and hedges made, for the tap
        self.hedges = 0

    async def run(self) -> int | str:
        """Carry the call to its end; return the HTTP status the caller got (for metrics)."""
        try:
            with CallTimeout(self.deadline - self.clock.now()):
                return await self._attempts()
        except TimeoutError:
            return await self._deadline_passed()
        finally:
            self.phase = _Phase.DONE
            if self.current is not None:
                self.current.close()
            self.state.close()

    async def _attempts(self) -> int | str:
        name = self.cluster.settings.name
        metrics = self.outbound.metrics
        while True:
            self.phase = _Phase.ATTEMPTING
            attempt = self._begin()
            if attempt is None:
                return await self._answer(503, StatusCode.UNAVAILABLE,
                                          f"cluster {name}: no healthy endpoint")
            self.current = attempt
            try:
                if self.hedging_delay is None:
                    outcome, response = await self._attempt(attempt)
                    decision: RetryDecision = self.state.decide(outcome,
                                                                replayable=self._replayable())
                else:
                    attempt, outcome, response, decision = await self._race(
                        attempt, self.hedging_delay)
                    self.current = attempt
            except Overloaded as overloaded:  # max_pending_requests: answered at once
                attempt.close()
                overflow = overloaded.overflow
                metrics.overflows.labels(name, overflow.limit.value).inc()
                return await self._answer(
                    503, StatusCode.UNAVAILABLE,
                    f"cluster {name}: {overflow.limit.value} ({overflow.maximum}) reached",
                    extra=[(mesh_headers.OVERLOADED_HEADER, overflow.limit.value)])
            if isinstance(decision, Retry):
                metrics.retries.labels(name).inc()
                self.retries += 1
                attempt.close()
                self.phase = _Phase.BACKOFF
                await asyncio.sleep(decision.delay)
                continue
            assert isinstance(decision, Stop)  # a Wait never ends the race
            self._refused(decision)
            if response is None:
                attempt.close()
                return await self._failed(cast(Failure, outcome.failure),
                                          attempt.endpoint.address)
            return await self._relay(attempt, response, outcome)

    def _begin(self) -> _Attempt | None:
        """Pick an endpoint not tried yet if there is one, and begin an attempt on it."""
        endpoint = self.cluster.balancer.pick(self.key, self.state.tried)
        attempt_deadline = self.state.begin_attempt(endpoint.address if endpoint else None)
        if endpoint is None:
            return None
        return _Attempt(self.cluster, endpoint, self.state.attempt, attempt_deadline)

    def _replayable(self) -> bool:
        return not self.replay.overflowed

    def _refused(self, stop: Stop) -> None:
        """Count a retry or hedge that ``stop`` refused (a final outcome is no refusal)."""
        name = self.cluster.settings.name
        metrics = self.outbound.metrics
        if stop.reason is StopReason.CIRCUIT_BREAKER:
            metrics.overflows.labels(name, Limit.RETRIES.value).inc()
        if stop.reason is not StopReason.NOT_RETRIABLE:
            metrics.retries_refused.labels(name, stop.reason.value).inc()

    async def _race(self, first: _Attempt, delay: float
                    ) -> tuple[_Attempt, Outcome, Headers | None, RetryDecision]:
        """Run ``first`` and the hedges that join it until an attempt's outcome is a
        ``Retry`` or a ``Stop``; return that attempt, its outcome, its response headers and
        the decision, the others closed (reset with CANCEL).

        A hedge is asked for ``delay`` seconds after the latest attempt began, or at once when
        an attempt ends with a ``Wait`` (gRPC: a non-fatal status sends the next hedge now).
        Hedging stops, for this race, when every attempt ``num_retries`` allows is out, at
        the first refusal (counted with the retries' refusals, by reason) or when every
        endpoint has been tried; while the request body is still arriving (and is being kept)
        a hedge is put off by another ``delay``.

        Raises:
            Overloaded: the first attempt's stream could not even wait for a connection.
        """
        racing: _Racing = {}
        racing[first.run(self._attempt(first))] = first
        hedge_at: float | None = self.clock.now() + delay
        try:
            while True:
                timeout = None if hedge_at is None else max(0.0, hedge_at - self.clock.now())
                done, _ = await asyncio.wait(racing, timeout=timeout,
                                             return_when=asyncio.FIRST_COMPLETED)
                if not done:
                    hedge_at = self._hedge(racing, delay)
                    continue
                for task in done:
                    attempt = racing.pop(task)
                    try:
                        outcome, response = task.result()
                    except Overloaded as overloaded:
                        attempt.close()
                        if not racing:
                            raise
                        self.state.abandon(attempt.number)  # never sent: the others go on
                        self.outbound.metrics.overflows.labels(
                            self.cluster.settings.name, overloaded.overflow.limit.value).inc()
                        continue
                    decision = self.state.decide(outcome, attempt=attempt.number,
                                                 replayable=self._replayable())
                    if isinstance(decision, Retry | Stop):
                        return attempt, outcome, response, decision
                    attempt.close()  # a Wait: the others may still answer
                    if hedge_at is not None:
                        hedge_at = self.clock.now()
        finally:
            for attempt in racing.values():  # the losers, or all when the call ends here
                attempt.close()

    def _hedge(self, racing: _Racing, delay: float) -> float | None:
        """The hedging delay passed: start a hedge if the gates agree; when to ask again."""
        name = self.cluster.settings.name
        tried = self.state.tried
        if not any(endpoint.available and address not in tried
                   for address, endpoint in self.cluster.balancer.endpoints.items()):
            return None  # a hedge goes only where this call has not been
        if self._replayable() and not self.down.complete:
            return self.clock.now() + delay  # the body is still coming: no copy to send yet
        decision = self.state.hedge(replayable=self._replayable())
        if isinstance(decision, Stop):
            if decision.reason is not StopReason.RETRIES_EXHAUSTED:  # else: all were sent
                self._refused(decision)
            return None
        hedge = self._begin()
        assert hedge is not None and isinstance(decision, Hedge)  # an endpoint was untried
        self.outbound.metrics.hedges.labels(name).inc()
        self.hedges += 1
        racing[hedge.run(self._attempt(hedge))] = hedge
        return self.clock.now() + delay

    async def _attempt(self, attempt: _Attempt) -> tuple[Outcome, Headers | None]:
        """Send the request on ``attempt``; return how it ended, and the response headers.

        Raises:
            Overloaded: a connection was needed and ``max_pending_requests`` wait already.
        """
        attempt_deadline = attempt.deadline
        try:
            headers = self._headers_for_attempt(attempt.number)
            headers_only = (self.down.complete and not self.replay.chunks and
                            not self.down.trailers)
            up = attempt.up = await self.cluster.open_stream(attempt.endpoint.address, headers,
                                                             end_stream=headers_only)
            if not headers_only:
                await self._send_body(attempt, up)
            if attempt_deadline < self.deadline:  # a per-try timeout, shorter than the call's
                async with asyncio.timeout(attempt_deadline - self.clock.now()):
                    response = await up.receive_headers()
            else:  # run()'s timeout is this attempt's too: one timer less per request
                response = await up.receive_headers()
        except ConnectFailure:
            failure = Failure.CONNECT_FAILURE
        except StreamRefused:
            failure = Failure.REFUSED_STREAM
        except (StreamReset, ConnectionClosed):
            failure = Failure.RESET
        except TimeoutError:
            if self.clock.now() >= self.deadline:
                raise  # the whole call's deadline: run() answers it
            failure = Failure.TIMEOUT
        else:
            attempt.answered()
            values = dict(response)
            grpc_status = code_of(values["grpc-status"]) if "grpc-status" in values else None
            outcome = Outcome(status=int(values.get(":status", "502")), grpc_status=grpc_status)
            if not (self.grpc and outcome.status == 200 and grpc_status is None):
                attempt.settle(outcome)  # else the status comes in the trailers: settled then
            return outcome, response
        outcome = Outcome(failure=failure)
        attempt.settle(outcome)
        return outcome, None

    def _headers_for_attempt(self, number: int) -> Headers:
        remaining = max(self.deadline - self.clock.now(), 0.0)
        timeout = (("grpc-timeout", format_timeout(remaining)) if self.grpc
                   else (mesh_headers.TIMEOUT_HEADER, str(max(1, int(remaining * 1000)))))
        return [*self.request, timeout, (mesh_headers.ATTEMPT_HEADER, str(number))]

    async def _send_body(self, attempt: _Attempt, up: Upstream) -> None:
        """Send what the caller sent so far (kept in ``replay``), then the rest as it comes."""
        chunks = self.replay.chunks
        if self.down.complete and not self.down.trailers and chunks:
            for chunk in chunks[:-1]:
                await up.send_data(chunk)
            await up.send_data(chunks[-1], end_stream=True)
            return
        for chunk in chunks:
            await up.send_data(chunk)
        if self.down.complete:
            end_body(self.down, up)
            return
        attempt.pump = asyncio.create_task(self._pump(up))

    async def _pump(self, up: Upstream) -> None:
        # A failure here fails the attempt too; its outcome says what happens next.
        with contextlib.suppress(StreamReset, ConnectionClosed):
            await send_request_body(self.down, up, self.replay)

    async def _relay(self, attempt: _Attempt, response: Headers, outcome: Outcome) -> int | str:
        """Relay the response; return its status, or :data:`RESET` if the caller left.

        For gRPC the status is the HTTP one Envoy maps the final ``grpc-status`` to (an
        UNAVAILABLE in the trailers counts as a 503), the same that outlier detection counts.
        """
        self.phase = _Phase.RELAYING
        up = attempt.up
        assert up is not None  # the response came on it
        try:
            await send_response(up, self.down, response)
        except (StreamReset, ConnectionClosed) as error:
            if self.down.send_closed:  # the caller reset the stream
                return RESET
            attempt.settle(Outcome(failure=Failure.RESET))
            # The upstream failed halfway through its answer: too late for a status of our
            # own, so the caller's stream is reset too (else it would wait for the rest).
            log.warning("cluster %s: %s failed while responding: %s",
                        self.cluster.settings.name, attempt.endpoint.address, error)
            self.down.reset(ErrorCode.INTERNAL_ERROR)
            return 502
        if not attempt.settled:  # a gRPC answer whose status came in its trailers
            trailers = dict(up.trailers or ())
            outcome = Outcome(status=200, grpc_status=code_of(trailers.get("grpc-status")))
            attempt.settle(outcome)
        return http_status_of(outcome)

    async def _answer(self, status: int, grpc_status: StatusCode, message: str, *,
                      extra: Headers | None = None) -> int:
        """Answer the caller ourselves with ``status`` (gRPC: ``grpc_status``) and why."""
        self.phase = _Phase.ANSWERING
        await local_reply(self.down, grpc=self.grpc, status=status, grpc_status=grpc_status,
                          message=message, extra=extra)
        return status

    async def _failed(self, failure: Failure, address: str) -> int:
        name = self.cluster.settings.name
        if failure is Failure.TIMEOUT:
            return await self._answer(504, StatusCode.DEADLINE_EXCEEDED,
                                      f"cluster {name}: {address} did not answer within the "
                                      f"per-try timeout")
        return await self._answer(503, StatusCode.UNAVAILABLE,
                                  f"cluster {name}: upstream {failure.value} ({address}) after "
                                  f"{self.state.attempt} attempt(s)")

    async def _deadline_passed(self) -> int:
        message = f"cluster {self.cluster.settings.name}: deadline exceeded"
        if self.phase in (_Phase.ATTEMPTING, _Phase.BACKOFF):
            await local_reply(self.down, grpc=self.grpc, status=504,
                              grpc_status=StatusCode.DEADLINE_EXCEEDED, message=message)
        elif self.phase is _Phase.RELAYING and self.grpc and not self.down.send_closed:
            self.down.send_trailers([("grpc-status", str(int(StatusCode.DEADLINE_EXCEEDED))),
                                     ("grpc-message", message)])
        else:  # part of an answer is out already: too late for a status of our own
            self.down.reset(ErrorCode.CANCEL)
        return 504


class _Attempt:
    """One attempt: an in-flight slot on an endpoint, the stream to it, the pump feeding it.

    The endpoint hears how the attempt went exactly once, in ``settle``: the balancer through
    ``endpoint.finish`` (its in-flight count and latency estimate), outlier detection through
    ``cluster.record``. ``close`` lets go of the rest. What settles an attempt, with what::

        the attempt ...                              settle(...)         latency up to
        gets response headers (HTTP, or gRPC         their status        the headers
          with the status in them)
        gets gRPC headers, the status to come        -
          then relays the trailers                   their grpc-status   the headers
          then fails mid-response                    RESET               the headers
        fails before a response (connect, refused,   the failure         the failure
          reset, per-try timeout)
        is cut short unsettled (retry, deadline,     None: a failure to  close()
          caller gone, overload, a hedge that        the balancer, not
          answered first)                            outlier detection's

    ``close()`` (idempotent) settles the attempt with None if nothing did, cancels its task (a
    hedged attempt runs in one) and the body pump, and resets the stream with CANCEL: a no-op
    for a stream that ended both ways, and for one whose response ended before the request,
    or that lost a hedging race, how the upstream learns to stop.
    """

    __slots__ = ("cluster", "deadline", "endpoint", "latency", "number", "pump", "settled",
                 "started", "task", "up")

    def __init__(self, cluster: UpstreamCluster, endpoint: EndpointState, number: int,
                 deadline: float) -> None:
        """``number`` is the attempt's (``x-mesh-attempt``), ``deadline`` its per-try one."""
        self.cluster = cluster
        self.endpoint = endpoint
        self.number = number
        self.deadline = deadline
        self.started = cluster.clock.now()
        self.latency: float | None = None  # to the response headers, once they came
        self.up: Upstream | None = None  # the stream, once opened
        self.pump: asyncio.Task[None] | None = None  # sends the rest of a streamed body
        self.task: asyncio.Task[tuple[Outcome, Headers | None]] | None = None  # if hedged
        self.settled = False
        endpoint.start()

    def run(self, sending: Coroutine[Any, Any, tuple[Outcome, Headers | None]]
            ) -> asyncio.Task[tuple[Outcome, Headers | None]]:
        """Run ``sending`` (the attempt's request and wait) as this attempt's task."""
        task = self.task = asyncio.create_task(sending)
        # A task that ends with an error after its race was decided is never asked for it.
        task.add_done_callback(lambda done: done.cancelled() or done.exception())
        return task

    def answered(self) -> None:
        """The response headers came: the latency the balancer will be told."""
        self.latency = self.cluster.clock.now() - self.started

    def settle(self, outcome: Outcome | None) -> None:
        """Tell the endpoint's balancer and outlier detection how the attempt went (None: it
        did not end on its own); only the first call counts."""
        if self.settled:
            return
        self.settled = True
        latency = self.latency
        if latency is None:
            latency = self.cluster.clock.now() - self.started
        self.endpoint.finish(latency, outcome is not None and succeeded(outcome))
        if outcome is not None:
            self.cluster.record(self.endpoint.address, outcome)

    def close(self) -> None:
        """The attempt is over: settle it if nothing did, stop its task and pump, reset the
        stream."""
        self.settle(None)
        for task in (self.task, self.pump):
            if task is not None and not task.done():
                task.cancel()
        if self.up is not None:
            self.up.reset(ErrorCode.CANCEL)

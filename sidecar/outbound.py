"""The outbound path: an app's request → route → cluster → endpoint → a pooled mTLS stream.

Per request, in order (each step can answer locally instead, never hang):

1. **route**: the router picks a cluster from ``:authority``, path and headers (404 /
   UNIMPLEMENTED when nothing matches);
2. **deadline**: the route's timeout, capped by the caller's own (``grpc-timeout`` or
   ``x-mesh-timeout-ms``) — every call has a timeout, shorter than its caller's;
3. **circuit breaker**: over ``max_requests`` the call is refused at once (503 /
   UNAVAILABLE, ``x-mesh-overloaded`` names the limit);
4. **attempts**: the balancer picks an endpoint (avoiding ones already tried), the pool opens a
   stream on a shared connection (a call that must wait for a new connection is *pending*: over
   ``max_pending_requests`` it is refused like step 3), and the request goes out with the
   *remaining* time as its ``grpc-timeout`` / ``x-mesh-timeout-ms`` and ``x-mesh-attempt``.
   Until response headers arrive, a failure or a retriable status may be retried — if the
   retry policy, the budget and the deadline agree — after a jittered backoff;
5. **relay**: the response streams back; body bytes flow both ways as they come.

The request body is kept (``replay``) while it is small enough, so a retry can send it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from typing import cast

from mesh.clock import Clock
from mesh.grpc import StatusCode
from mesh.grpc.deadline import format_timeout
from mesh.grpc.status import code_of
from mesh.http2 import ConnectionClosed, ErrorCode, Headers, StreamRefused, StreamReset
from sidecar import headers as mesh_headers
from sidecar.balancers import EndpointState
from sidecar.circuit_breaker import Limit, Overflow, Overloaded, Permit
from sidecar.cluster import UpstreamCluster
from sidecar.config import LiveConfig
from sidecar.forward import (
    Downstream,
    Replay,
    Upstream,
    end_body,
    local_reply,
    send_request_body,
    send_response,
)
from sidecar.metrics import RESET, SidecarMetrics
from sidecar.outcome import Failure, Outcome, http_status_of
from sidecar.pool import ConnectFailure
from sidecar.retry import Retry, RetrySettings, RetryState, Stop, StopReason

log = logging.getLogger("sidecar.outbound")

REPLAY_LIMIT = 64 * 1024  # bytes of request body kept for retries (Envoy buffers 1 MiB)


def _ok(outcome: Outcome) -> bool:
    """A success for the balancer's latency estimate: below 500, and gRPC OK if gRPC."""
    return outcome.status is not None and outcome.status < 500 and \
        outcome.grpc_status in (None, StatusCode.OK)


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
        target = self.config.router.route(authority, path, values, self.rng)
        if target is None:
            await local_reply(down, grpc=grpc, status=404, grpc_status=StatusCode.UNIMPLEMENTED,
                              message=f"no route to {authority}{path}")
            self.metrics.request_done("outbound", "none", 404, self.clock.now() - started)
            return
        cluster = self.config.clusters.get(target.cluster)
        if cluster is None:  # the route names a cluster not (yet, or any more) known
            await local_reply(down, grpc=grpc, status=503, grpc_status=StatusCode.UNAVAILABLE,
                              message=f"no cluster {target.cluster}")
            self.metrics.request_done("outbound", target.cluster, 503,
                                      self.clock.now() - started)
            return
        settings = cluster.settings
        timeout = target.timeout or settings.timeout
        caller = mesh_headers.caller_timeout(values)
        if caller is not None:
            timeout = min(timeout, caller)
        policy = target.retry_policy or settings.retry_policy
        permit = cluster.breaker.try_acquire(Limit.REQUESTS)
        if isinstance(permit, Overflow):
            self.metrics.overflows.labels(target.cluster, permit.limit.value).inc()
            await local_reply(down, grpc=grpc, status=503, grpc_status=StatusCode.UNAVAILABLE,
                              message=f"cluster {target.cluster}: {permit.limit.value} "
                                      f"({permit.maximum}) reached",
                              extra=[(mesh_headers.OVERLOADED_HEADER, permit.limit.value)])
            self.metrics.request_done("outbound", target.cluster, 503,
                                      self.clock.now() - started)
            return
        call = _Call(self, down, cluster, policy, grpc, mesh_headers.from_app(request),
                     values.get(":method", "GET"), started + timeout,
                     key=cluster.hash_key(values))
        status: int | str = RESET  # unless run() returns: the caller reset the stream, which
        try:  # cancels this task
            status = await call.run()
        finally:
            permit.release()
            call.state.close()
            self.metrics.request_done("outbound", target.cluster, status,
                                      self.clock.now() - started)


class _Call:
    """One outbound request and its attempts."""

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
        self.method = method
        self.deadline = deadline
        self.key = key
        self.state = RetryState(policy, method=method, grpc=grpc, deadline=deadline,
                                clock=self.clock, rng=outbound.rng, budget=cluster.budget)
        self.replay = Replay(REPLAY_LIMIT)
        self.pump: asyncio.Task[None] | None = None
        self.responding = False
        self.relaying: Upstream | None = None  # the stream whose response is being relayed
        # A gRPC answer whose status is still to come in its trailers: its endpoint and latency
        # to the response headers. Outlier detection and the balancer hear of it at the end.
        self.unsettled: tuple[EndpointState, float] | None = None
        # The latest retry's max_retries permit, held from its backoff until the call ends or
        # the next retry takes over: the breaker counts retries in flight, as Envoy's does.
        self.retry_permit: Permit | None = None

    async def run(self) -> int | str:
        """Carry the call to its end; return the HTTP status the caller got (for metrics)."""
        try:
            async with asyncio.timeout(self.deadline - self.clock.now()):
                return await self._attempts()
        except TimeoutError:
            return await self._deadline_passed()
        finally:
            if self.retry_permit is not None:
                self.retry_permit.release()
            if self.pump is not None and not self.pump.done():
                self.pump.cancel()
            if self.relaying is not None:  # cut short (deadline, caller gone): stop upstream
                self.relaying.reset(ErrorCode.CANCEL)
            self._settle(None)

    async def _attempts(self) -> int | str:
        cluster, name = self.cluster, self.cluster.settings.name
        while True:
            endpoint = cluster.balancer.pick(self.key, self.state.tried)
            attempt_deadline = self.state.begin_attempt(endpoint.address if endpoint else None)
            if endpoint is None:
                await local_reply(self.down, grpc=self.grpc, status=503,
                                  grpc_status=StatusCode.UNAVAILABLE,
                                  message=f"cluster {name}: no healthy endpoint")
                return 503
            try:
                up, outcome, response = await self._attempt(endpoint, attempt_deadline)
            except Overloaded as overloaded:  # max_pending_requests: answered at once
                return await self._overloaded(overloaded.overflow)
            if self.unsettled is None:
                cluster.record(endpoint.address, outcome)
            decision = self.state.decide(outcome)
            if isinstance(decision, Retry) and self.replay.overflowed:
                decision = Stop(reason=StopReason.NOT_RETRIABLE)  # the body is gone
            if isinstance(decision, Retry):
                if self.retry_permit is not None:  # the retry before this one is over
                    self.retry_permit.release()
                    self.retry_permit = None
                retry = cluster.breaker.try_acquire(Limit.RETRIES)
                if isinstance(retry, Overflow):
                    self.outbound.metrics.overflows.labels(name, retry.limit.value).inc()
                    decision = Stop(reason=StopReason.CIRCUIT_BREAKER)
                else:
                    self.outbound.metrics.retries.labels(name).inc()
                    if up is not None:
                        up.reset(ErrorCode.CANCEL)
                    self._settle(None)
                    self._stop_pump()
                    self.retry_permit = retry
                    await asyncio.sleep(decision.delay)
                    continue
            if decision.reason not in (StopReason.NOT_RETRIABLE,):
                self.outbound.metrics.retries_refused.labels(name, decision.reason.value).inc()
            if up is not None and response is not None:
                return await self._relay(up, response, endpoint.address, outcome)
            return await self._failed(outcome, endpoint.address)

    async def _relay(self, up: Upstream, response: Headers, address: str,
                     outcome: Outcome) -> int | str:
        """Relay the response; return its status, or :data:`RESET` if the caller left.

        For gRPC the status is the HTTP one Envoy maps the final ``grpc-status`` to (an
        UNAVAILABLE in the trailers counts as a 503), the same that outlier detection counts.
        """
        self.responding = True
        self.relaying = up
        try:
            await send_response(up, self.down, response)
        except (StreamReset, ConnectionClosed) as error:
            if self.down.send_closed:  # the caller reset the stream
                self._settle(None)
                return RESET
            self._settle(Outcome(failure=Failure.RESET))
            # The upstream failed halfway through its answer: too late for a status of our
            # own, so the caller's stream is reset too (else it would wait for the rest).
            log.warning("cluster %s: %s failed while responding: %s",
                        self.cluster.settings.name, address, error)
            self.down.reset(ErrorCode.INTERNAL_ERROR)
            return 502
        self.relaying = None
        self._stop_pump()
        if self.unsettled is not None:
            trailers = dict(up.trailers or ())
            outcome = Outcome(status=200, grpc_status=code_of(trailers.get("grpc-status")))
            self._settle(outcome)
        return http_status_of(outcome)

    def _settle(self, final: Outcome | None) -> None:
        """Report an attempt whose gRPC status came in its trailers (None: it never came)."""
        if self.unsettled is None:
            return
        endpoint, latency = self.unsettled
        self.unsettled = None
        endpoint.finish(latency, final is not None and _ok(final))
        if final is not None:
            self.cluster.record(endpoint.address, final)

    async def _attempt(self, endpoint: EndpointState, attempt_deadline: float
                       ) -> tuple[Upstream | None, Outcome, Headers | None]:
        """One try; returns the upstream stream, how it ended, and the response headers."""
        endpoint.start()
        started = self.clock.now()
        up: Upstream | None = None
        response: Headers | None = None
        outcome: Outcome | None = None
        try:
            headers = self._headers_for_attempt()
            headers_only = (self.down.complete and not self.replay.chunks and
                            not self.down.trailers)
            up = await self.cluster.open_stream(endpoint.address, headers,
                                                end_stream=headers_only)
            if not headers_only:
                await self._send_body(up)
            if attempt_deadline < self.deadline:  # a per-try timeout, shorter than the call's
                async with asyncio.timeout(attempt_deadline - self.clock.now()):
                    response = await up.receive_headers()
            else:  # run()'s timeout is this attempt's too: one timer less per request
                response = await up.receive_headers()
        except ConnectFailure:
            outcome = Outcome(failure=Failure.CONNECT_FAILURE)
        except StreamRefused:
            outcome = Outcome(failure=Failure.REFUSED_STREAM)
        except (StreamReset, ConnectionClosed):
            outcome = Outcome(failure=Failure.RESET)
        except TimeoutError:
            if self.clock.now() < self.deadline:  # else: the whole call's, handled by run()
                outcome = Outcome(failure=Failure.TIMEOUT)
            else:
                raise
        finally:
            if response is None and outcome is None:  # leaving by exception: the deadline
                endpoint.finish(self.clock.now() - started, False)
                if up is not None:
                    up.reset(ErrorCode.CANCEL)
        if response is not None:
            values = dict(response)
            grpc_status = code_of(values["grpc-status"]) if "grpc-status" in values else None
            outcome = Outcome(status=int(values.get(":status", "502")), grpc_status=grpc_status)
        assert outcome is not None
        if self.grpc and outcome.status == 200 and outcome.grpc_status is None:
            # The status comes in the trailers: settled when the response ends (the call
            # counts as in flight on the endpoint until then).
            self.unsettled = (endpoint, self.clock.now() - started)
            return up, outcome, response
        endpoint.finish(self.clock.now() - started, _ok(outcome))
        if response is None and up is not None:
            up.reset(ErrorCode.CANCEL)
        return up, outcome, response

    def _headers_for_attempt(self) -> Headers:
        remaining = max(self.deadline - self.clock.now(), 0.0)
        timeout = (("grpc-timeout", format_timeout(remaining)) if self.grpc
                   else (mesh_headers.TIMEOUT_HEADER, str(max(1, int(remaining * 1000)))))
        return [*self.request, timeout, (mesh_headers.ATTEMPT_HEADER, str(self.state.attempt))]

    async def _send_body(self, up: Upstream) -> None:
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
        self.pump = asyncio.create_task(self._pump(up))

    async def _pump(self, up: Upstream) -> None:
        # A failure here fails the attempt too; the attempt loop decides what happens next.
        with contextlib.suppress(StreamReset, ConnectionClosed):
            await send_request_body(self.down, up, self.replay)

    def _stop_pump(self) -> None:
        if self.pump is not None and not self.pump.done():
            self.pump.cancel()
        self.pump = None

    async def _overloaded(self, overflow: Overflow) -> int:
        name = self.cluster.settings.name
        self.outbound.metrics.overflows.labels(name, overflow.limit.value).inc()
        await local_reply(self.down, grpc=self.grpc, status=503,
                          grpc_status=StatusCode.UNAVAILABLE,
                          message=f"cluster {name}: {overflow.limit.value} ({overflow.maximum}) "
                                  f"reached",
                          extra=[(mesh_headers.OVERLOADED_HEADER, overflow.limit.value)])
        return 503

    async def _failed(self, outcome: Outcome, address: str) -> int:
        name = self.cluster.settings.name
        if outcome.status is not None:  # unreachable: a response is always relayed
            return outcome.status
        failure = cast(Failure, outcome.failure)
        if failure is Failure.TIMEOUT:
            await local_reply(self.down, grpc=self.grpc, status=504,
                              grpc_status=StatusCode.DEADLINE_EXCEEDED,
                              message=f"cluster {name}: {address} did not answer within the "
                                      f"per-try timeout")
            return 504
        await local_reply(self.down, grpc=self.grpc, status=503,
                          grpc_status=StatusCode.UNAVAILABLE,
                          message=f"cluster {name}: upstream {failure.value} ({address}) after "
                                  f"{self.state.attempt} attempt(s)")
        return 503

    async def _deadline_passed(self) -> int:
        name = self.cluster.settings.name
        message = f"cluster {name}: deadline exceeded"
        if not self.responding:
            await local_reply(self.down, grpc=self.grpc, status=504,
                              grpc_status=StatusCode.DEADLINE_EXCEEDED, message=message)
        elif self.grpc and not self.down.send_closed:
            self.down.send_trailers([("grpc-status", str(int(StatusCode.DEADLINE_EXCEEDED))),
                                     ("grpc-message", message)])
        else:
            self.down.reset(ErrorCode.CANCEL)
        return 504

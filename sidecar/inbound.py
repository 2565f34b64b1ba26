"""The inbound path: a peer sidecar's mTLS request → authorization → the local app.

Per request:

1. **who**: the caller's SPIFFE ID, proved by its client certificate in the mTLS handshake
   (the listener accepts no connection without one), read once per connection (:class:`Caller`);
2. **may they**: the service's authorization policy decides (403 / PERMISSION_DENIED); then
   its ``inbound_rate_limit``, if it has one (429 / RESOURCE_EXHAUSTED, ``x-mesh-ratelimited``):
   after authorization, so a caller that may not call cannot spend the others' tokens;
3. **headers**: ``x-forwarded-client-cert`` is set from the verified identity, and whatever the
   caller sent as ``x-forwarded-client-cert`` or ``x-forwarded-for`` is dropped;
4. **deadline**: the caller's remaining time (``grpc-timeout`` / ``x-mesh-timeout-ms``) bounds
   the app's answer too (504 / DEADLINE_EXCEEDED, and the app's stream is cancelled);
5. **relay** to the app over h2c or HTTP/1.1, as the service declares: the sidecar's
   ``--app-protocol`` if given, else the ``app_protocol`` of the configuration's cluster named
   after this service, else h2c.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from dataclasses import dataclass
from typing import Protocol

from mesh.clock import Clock
from mesh.grpc import StatusCode
from mesh.grpc.status import code_of
from mesh.http2 import ConnectionClosed, ErrorCode, Headers, Http2Connection, Stream, StreamReset
from mesh.http2.stream import StreamOwner
from mesh.identity import SpiffeId
from mesh.proto.config_pb2 import Cluster
from mesh.tls import peer_spiffe_id
from sidecar import headers as mesh_headers
from sidecar.config import LiveConfig
from sidecar.forward import CallTimeout, Upstream, local_reply, send_request_body, send_response
from sidecar.metrics import MTLS, PLAINTEXT, RESET, SidecarMetrics
from sidecar.outcome import Outcome, http_status_of
from sidecar.pool import ConnectFailure
from sidecar.rate_limit import RATE_LIMITED_HEADER, RateLimiter

log = logging.getLogger("sidecar.inbound")


class App(Protocol):
    """The local app, as a source of upstream streams (an h2c pool, or HTTP/1.1)."""

    async def open_stream(self, headers: Headers, *, end_stream: bool = False) -> Upstream: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class Caller:
    """What the mTLS handshake proved about a connection's peer: the same for every request
    on it, so it is worked out once per connection (decoding the certificate and hashing it
    for every request took 6 % of sidecar B's time in ``bench/sidecar_pair.py``)."""

    principal: str | None  # the peer's SPIFFE principal, for the authorization policy
    client_cert: Headers  # the x-forwarded-client-cert header its requests carry to the app


class Inbound:
    """Serves the mTLS listener; :meth:`handle` is the per-request entry point."""

    def __init__(self, config: LiveConfig, metrics: SidecarMetrics, *, h2c: App, http1: App,
                 protocol: int | None, own_id: SpiffeId, clock: Clock) -> None:
        """``h2c`` and ``http1`` reach the same app; ``protocol`` (a ``Cluster.Protocol``)
        says which to use, or None: as the configuration declares."""
        self.config = config
        self.metrics = metrics
        self.h2c = h2c
        self.http1 = http1
        self.protocol = protocol
        self.own_id = str(own_id)
        self.clock = clock
        self._callers: weakref.WeakKeyDictionary[StreamOwner, Caller] = \
            weakref.WeakKeyDictionary()
        self._bucket: RateLimiter | None = None  # see _limiter

    def app(self) -> App:
        """The app, spoken to as told, else as the service's cluster declares, else h2c."""
        protocol = self.protocol
        if protocol is None:
            cluster = self.config.clusters.get(self.config.service)
            protocol = cluster.settings.app_protocol if cluster is not None else Cluster.GRPC
        return self.http1 if protocol == Cluster.HTTP1 else self.h2c

    def _limiter(self) -> RateLimiter | None:
        """The bucket of the service's ``inbound_rate_limit``; kept while its settings are."""
        cluster = self.config.clusters.get(self.config.service)
        settings = cluster.settings.inbound_rate_limit if cluster is not None else None
        if settings is None:
            self._bucket = None
        elif self._bucket is None or self._bucket.settings != settings:
            self._bucket = RateLimiter(settings, self.clock, name=f"inbound {self.config.service}")
        return self._bucket

    async def handle(self, down: Stream) -> None:
        started = self.clock.now()
        status: int | str = RESET  # unless _serve returns: the caller reset the stream, which
        try:  # cancels this task
            status = await self._serve(down)
        finally:
            self.metrics.request_done("inbound", self.config.service, status,
                                      self.clock.now() - started)

    def caller(self, connection: StreamOwner) -> Caller:
        """Who is at the other end of ``connection``, worked out on its first request.

        Raises:
            ValueError: the peer certificate's SPIFFE ID is malformed.
        """
        caller = self._callers.get(connection)
        if caller is None:
            ssl_object = connection.ssl_object
            identity = peer_spiffe_id(ssl_object) if ssl_object is not None else None
            client_cert = mesh_headers.xfcc(self.own_id,
                                            mesh_headers.peer_certificate_der(ssl_object),
                                            str(identity) if identity else None)
            caller = self._callers[connection] = Caller(
                principal=identity.principal if identity is not None else None,
                client_cert=[(mesh_headers.XFCC, client_cert)])
            self._count_open(connection, MTLS if identity is not None else PLAINTEXT)
        return caller

    def _count_open(self, connection: StreamOwner, tls: str) -> None:
        """Count ``connection`` in ``mesh_sidecar_connections_open`` until it closes.

        From its first request on, where the sidecar first meets it: a connection closed
        before it sent any is not counted (the listener accepts in ``mesh/http2``).
        """
        if isinstance(connection, Http2Connection):  # a test's stand-in is not
            gauge = self.metrics.connections_open.labels("inbound", self.config.service, tls)
            gauge.inc()
            connection.closed.add_done_callback(lambda _: gauge.dec())

    async def _serve(self, down: Stream) -> int | str:
        request = down.headers or []
        values = dict(request)
        grpc = mesh_headers.is_grpc(request)
        path = values.get(":path", "/")
        caller = self.caller(down.connection)
        principal = caller.principal
        verdict = self.config.authorizer.check(principal, path)
        if not verdict.allowed:
            self.metrics.denied.labels(principal or "none").inc()
            log.warning("denied %s %s: %s", values.get(":method"), path, verdict.reason)
            await local_reply(down, grpc=grpc, status=403,
                              grpc_status=StatusCode.PERMISSION_DENIED, message=verdict.reason)
            return 403
        limiter = self._limiter()
        if limiter is not None and not limiter.admit():
            self.metrics.rate_limited.labels("inbound", limiter.name).inc()
            await local_reply(down, grpc=grpc, status=429,
                              grpc_status=StatusCode.RESOURCE_EXHAUSTED,
                              message=f"{limiter.name}: local rate limit",
                              extra=[(RATE_LIMITED_HEADER, limiter.name)])
            return 429
        forwarded = mesh_headers.from_peer(request, client_cert=caller.client_cert)
        timeout = mesh_headers.caller_timeout(values)
        up: Upstream | None = None
        pump: asyncio.Task[None] | None = None
        responding = finished = False
        try:
            with CallTimeout(timeout):
                up = await self.app().open_stream(
                    forwarded, end_stream=down.complete and not down.trailers)
                if not (down.complete and not down.trailers):
                    pump = asyncio.create_task(_pump(down, up))
                response = await up.receive_headers()
                responding = True
                await send_response(up, down, response)
                finished = True
                return final_status(response, up.trailers, grpc=grpc)
        except TimeoutError:
            if responding:  # too late for a status of our own
                down.reset(ErrorCode.CANCEL)
                return 504
            await local_reply(down, grpc=grpc, status=504,
                              grpc_status=StatusCode.DEADLINE_EXCEEDED,
                              message=f"{self.config.service}: the app did not answer within "
                                      f"the caller's deadline")
            return 504
        except (ConnectFailure, StreamReset, ConnectionClosed, OSError) as error:
            if down.send_closed:  # the caller reset the stream while we relayed
                return RESET
            log.warning("app of %s failed: %s", self.config.service, error)
            if responding:
                down.reset(ErrorCode.INTERNAL_ERROR)
                return 502
            await local_reply(down, grpc=grpc, status=503, grpc_status=StatusCode.UNAVAILABLE,
                              message=f"{self.config.service}: the app is unavailable: {error}")
            return 503
        finally:
            if pump is not None and not pump.done():
                pump.cancel()
            # Not answered in full (deadline, failure, or the caller reset the stream, which
            # cancels this task): the app must stop working on it too.
            if up is not None and not finished:
                up.reset(ErrorCode.CANCEL)


def final_status(response: Headers, trailers: Headers | None, *, grpc: bool) -> int:
    """The status a relayed answer is counted as: for gRPC, the HTTP status Envoy maps its
    ``grpc-status`` to (in the trailers, or in a trailers-only answer's headers) — the same
    the outbound side counts — else the HTTP status."""
    values = dict(response)
    status = int(values.get(":status", "200"))
    if not grpc or status != 200:
        return status
    grpc_status = dict(trailers).get("grpc-status") if trailers else values.get("grpc-status")
    return http_status_of(Outcome(status=status, grpc_status=code_of(grpc_status)))


async def _pump(down: Stream, up: Upstream) -> None:
    with contextlib.suppress(StreamReset, ConnectionClosed):
        await send_request_body(down, up, None)

"""The control plane assembled: identity, registry, policy and discovery behind gRPC + mTLS.

    gRPC (TLS; handshakes run by :mod:`controlplane.listener`, which logs each one refused)
        /mesh.v1.Identity/SignCertificate          join token, or the current certificate
                                                   (renewal) → new certificate
        /mesh.v1.Registry/Register|Heartbeat|Deregister         mesh certificate required
        /mesh.v1.AggregatedDiscoveryService/StreamResources     mesh certificate required
        /envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources
                                                   the same, in Envoy's xDS v3 (proxyless
                                                   gRPC: controlplane/xds/)
    HTTP (operator API, loopback by default, operator token required): :mod:`controlplane.api`

The listener makes client certificates *optional*, for one reason only: a new sidecar has no
certificate yet and trades a join token for its first. Every other call is refused with
UNAUTHENTICATED unless the caller proved a mesh SPIFFE ID with a certificate of the mesh CA
(a certificate of another CA, or an expired one, fails the handshake itself). Each refusal is
logged with the peer's address and counted in ``mesh_controlplane_refused`` by call and reason.

Every change to the policy or the registry builds one new snapshot (lazily, on the first
stream that asks) and wakes every discovery stream. The xDS dialect translates the same
clusters, endpoints and routes (:mod:`controlplane.xds.translate`); what gRPC cannot apply of
a policy is logged once per snapshot and shown in the operator API's status.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

from google.protobuf.message import Message

from certs.pki import issue_workload, load_ca, write_workload
from controlplane.discovery import DiscoveryServer
from controlplane.errors import AuthenticationError, ControlPlaneError, IdentityError
from controlplane.identity import CertificateIssuer, JoinTokens
from controlplane.listener import TlsListener
from controlplane.metrics import ControlPlaneMetrics
from controlplane.operator import TOKEN_FILE, OperatorToken
from controlplane.policy import PolicyStore
from controlplane.registry import Registry
from controlplane.snapshot import Snapshot, build
from controlplane.store import Store, StoreUnavailable
from controlplane.store.memory import MemoryStore
from controlplane.xds.proxyless import InboundRegistrations
from controlplane.xds.resources import ADS_METHOD, XDS_V3, parse_request
from controlplane.xds.translate import Unsupported, XdsSnapshot, translate
from mesh.clock import SYSTEM_CLOCK, Clock
from mesh.grpc import Cardinality, Context, GrpcServer, StatusCode
from mesh.http2 import Server
from mesh.identity import SpiffeId, control_plane_id
from mesh.proto.config_pb2 import Endpoint
from mesh.proto.discovery_pb2 import DiscoveryRequest
from mesh.proto.registry_pb2 import (
    DeregisterRequest,
    DeregisterResponse,
    HeartbeatRequest,
    HeartbeatResponse,
    RegisterRequest,
    RegisterResponse,
    SignCertificateRequest,
    SignCertificateResponse,
)
from mesh.tls import peer_spiffe_id, server_context

log = logging.getLogger("controlplane")

T = TypeVar("T")



def caller_identity(context: Context) -> SpiffeId | None:
    """The SPIFFE ID the caller proved with its client certificate, if it presented one.

    Raises:
        ValueError: the certificate (of the mesh CA) holds no valid mesh SPIFFE ID.
    """
    return peer_spiffe_id(context.ssl_object) if context.ssl_object is not None else None


def caller_address(context: Context) -> str:
    """The address the caller connected from (what a registration must name)."""
    peer = context.peer
    return str(peer[0]) if isinstance(peer, tuple) else str(peer)


def caller_peer(context: Context) -> str:
    """``address:port`` of the caller's connection, for logs and status."""
    peer = context.peer
    return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)


class ControlPlane:
    """Owns the state; :meth:`start` serves it."""

    def __init__(self, pki_dir: Path, *, clock: Clock = SYSTEM_CLOCK, lease_ttl: float = 10.0,
                 cert_validity: timedelta = timedelta(hours=1), token_ttl: float = 600.0,
                 policy_path: Path | None = None,
                 operator_token_file: Path | None = None, store: Store | None = None) -> None:
        """``store``: where the state shared by replicas lives (the join tokens, for now);
        default: in this process's memory.

        Raises:
            OperatorCredentialError: the operator token file cannot be used.
        """
        self.pki_dir = pki_dir
        self.ca = load_ca(pki_dir)
        self.trust_domain = self.ca.trust_domain
        self.clock = clock
        self.metrics = ControlPlaneMetrics()
        self.operator_token_file = operator_token_file or pki_dir / TOKEN_FILE
        self.operator = OperatorToken.load_or_create(self.operator_token_file)
        self.store = store or MemoryStore(clock, trust_domain=self.trust_domain)
        self.tokens = JoinTokens(self.store, clock, ttl=token_ttl)
        self.issuer = CertificateIssuer(self.ca, validity=cert_validity)
        self.policy = PolicyStore(on_reject=lambda _: self.metrics.policy_rejections.inc())
        self.policy_path = policy_path
        if policy_path is not None:
            self.policy.load_path(policy_path)
        self.registry = Registry(clock, trust_domain=self.trust_domain, lease_ttl=lease_ttl,
                                 grants=lambda: self.policy.current[1].registration)
        self.discovery = DiscoveryServer(self.snapshot, clock, self.metrics, warmup=lease_ttl)
        self.xds = DiscoveryServer(self.xds_snapshot, clock, self.metrics, warmup=lease_ttl,
                                   dialect=XDS_V3)
        self.inbound = InboundRegistrations(self.registry)
        self.registry.subscribe(self._changed)
        self.policy.subscribe(lambda *_: self._changed())
        self.grpc = self._grpc_server()
        self.server: Server | None = None
        self.listener: TlsListener | None = None
        self._snapshot: tuple[tuple[int, int], Snapshot] | None = None
        self._xds_snapshot: tuple[tuple[int, int], XdsSnapshot] | None = None
        self._warned: set[Unsupported] = set()
        self._tasks: list[asyncio.Task[None]] = []

    # -- state -------------------------------------------------------------------------------

    def _state(self) -> tuple[int, int]:
        """(policy version, registry version): what both snapshots are built from."""
        return self.policy.current[0], self.registry.version

    def snapshot(self) -> Snapshot:
        """The current snapshot, rebuilt only when the policy or the registry changed."""
        key = self._state()
        if self._snapshot is None or self._snapshot[0] != key:
            self._snapshot = (key, build(self.policy.current[1], self._endpoints()))
        return self._snapshot[1]

    def xds_snapshot(self) -> XdsSnapshot:
        """The same state in Envoy's resources, rebuilt only when it changed."""
        key = self._state()
        if self._xds_snapshot is None or self._xds_snapshot[0] != key:
            self._xds_snapshot = (key, translate(self.policy.current[1], self._endpoints()))
            warnings = set(self._xds_snapshot[1].warnings)
            for warning in sorted(warnings - self._warned, key=lambda w: (w.resource, w.message)):
                log.warning("xDS: %s: %s", warning.resource, warning.message)
            self._warned = warnings
        return self._xds_snapshot[1]

    def _endpoints(self) -> dict[tuple[str, str], list[Endpoint]]:
        return {key: self.registry.endpoints(*key) for key in self.registry.services()}

    def _changed(self) -> None:
        self.metrics.instances.set(len(self.registry.instances()))
        self.metrics.policy_version.set(self.policy.current[0])
        self.discovery.changed()
        self.xds.changed()

    # -- gRPC services -----------------------------------------------------------------------

    def _grpc_server(self) -> GrpcServer:
        server = GrpcServer()
        unary = Cardinality.UNARY_UNARY
        server.add("/mesh.v1.Identity/SignCertificate", unary,
                   SignCertificateRequest.FromString, self._sign_certificate)
        server.add("/mesh.v1.Registry/Register", unary, RegisterRequest.FromString,
                   self._register)
        server.add("/mesh.v1.Registry/Heartbeat", unary, HeartbeatRequest.FromString,
                   self._heartbeat)
        server.add("/mesh.v1.Registry/Deregister", unary, DeregisterRequest.FromString,
                   self._deregister)
        server.add("/mesh.v1.AggregatedDiscoveryService/StreamResources",
                   Cardinality.STREAM_STREAM, DiscoveryRequest.FromString,
                   self._stream_resources)
        server.add(ADS_METHOD, Cardinality.STREAM_STREAM, parse_request,
                   self._stream_aggregated_resources)
        return server

    def _authenticate(self, context: Context, call: str) -> SpiffeId:
        """The mesh identity the caller proved with its client certificate.

        Raises:
            AuthenticationError: UNAUTHENTICATED, the caller proved none.
        """
        try:
            identity = caller_identity(context)
        except ValueError as error:
            identity, reason, problem = None, "bad_certificate", str(error)
        else:
            reason, problem = "no_certificate", "no client certificate was presented"
            if identity is not None and identity.trust_domain != self.trust_domain:
                reason, problem = "foreign_trust_domain", f"{identity} is outside trust " \
                                                          f"domain {self.trust_domain!r}"
                identity = None
        if identity is not None:
            return identity
        message = (f"{call} needs a certificate of the mesh CA (mTLS): {problem}; only "
                   f"SignCertificate with a join token may be called without one")
        raise self._refused(call, context, AuthenticationError(StatusCode.UNAUTHENTICATED,
                                                               message, reason))

    def _refused(self, call: str, context: Context,
                 error: ControlPlaneError) -> ControlPlaneError:
        """Log and count a refusal; return it to be raised."""
        self.metrics.refused(call, error.reason)
        log.warning("%s from %s refused (%s): %s", call, caller_address(context),
                    error.code.name, error.message)
        return error

    async def _stream_resources(self, requests: AsyncIterator[DiscoveryRequest],
                                context: Context) -> AsyncIterator[Message]:
        identity = self._authenticate(context, "StreamResources")
        async for response in self.discovery.serve(requests, identity, caller_peer(context)):
            yield response

    async def _stream_aggregated_resources(self, requests: AsyncIterator[Any],
                                           context: Context) -> AsyncIterator[Message]:
        """xDS v3 for a proxyless gRPC client or server; a server's inbound listener
        request registers it (:mod:`controlplane.xds.proxyless`)."""
        call = "StreamAggregatedResources"
        identity = self._authenticate(context, call)
        watched = self.inbound.watch(requests, identity, caller_address(context),
                                     lambda error: self._refused(call, context, error))
        async for response in self.xds.serve(watched, identity, caller_peer(context)):
            yield response

    async def _sign_certificate(self, request: SignCertificateRequest,
                                context: Context) -> SignCertificateResponse:
        try:
            if request.join_token:
                self.issuer.check(request.csr_pem)  # a bad CSR does not spend the token
                try:
                    identity = await self.tokens.redeem(request.join_token)
                except StoreUnavailable as error:
                    raise IdentityError(StatusCode.UNAVAILABLE, str(error),
                                        "store_unavailable") from None
                issued = self.issuer.issue(request.csr_pem, identity)
            else:
                identity = self._authenticate(context, "SignCertificate")
                issued = self.issuer.issue(request.csr_pem, identity)
        except ControlPlaneError as error:
            self.metrics.certificates.labels(error.code.name.lower()).inc()
            if isinstance(error, IdentityError):
                self._refused("SignCertificate", context, error)
            raise
        self.metrics.certificates.labels("issued").inc()
        return SignCertificateResponse(certificate_pem=issued.certificate_pem,
                                       ca_pem=issued.ca_pem,
                                       not_after_unix=int(issued.not_after.timestamp()))

    def _as_caller(self, call: str, context: Context,
                      action: Callable[[SpiffeId], T]) -> T:
        """Run ``action`` for the caller's proven identity; log and count its refusal."""
        identity = self._authenticate(context, call)
        try:
            return action(identity)
        except ControlPlaneError as error:
            raise self._refused(call, context, error) from None

    async def _register(self, request: RegisterRequest, context: Context) -> RegisterResponse:
        try:
            instance = self._as_caller("Register", context, lambda identity: (
                self.registry.register(request.service, request.endpoint, identity,
                                       caller_address(context), request.namespace)))
        except ControlPlaneError:
            self.metrics.registrations.labels("refused").inc()
            raise
        self.metrics.registrations.labels("accepted").inc()
        return RegisterResponse(instance=instance.id,
                                lease_ttl_ms=int(self.registry.lease_ttl * 1000))

    async def _heartbeat(self, request: HeartbeatRequest, context: Context) -> HeartbeatResponse:
        self._as_caller("Heartbeat", context, lambda identity: (
            self.registry.heartbeat(request.instance, request.health, identity)))
        return HeartbeatResponse(lease_ttl_ms=int(self.registry.lease_ttl * 1000))

    async def _deregister(self, request: DeregisterRequest,
                          context: Context) -> DeregisterResponse:
        self._as_caller("Deregister", context, lambda identity: (
            self.registry.deregister(request.instance, identity)))
        return DeregisterResponse()

    # -- running -----------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 15012) -> None:
        """Serve gRPC on ``host:port`` and run the lease sweeper (and the policy watcher)."""
        identity = control_plane_id(self.trust_domain)
        # Its address too, for clients that verify host names (grpcio's xDS client does).
        serving = (host,) if host not in ("", "0.0.0.0", "::") else ()
        own = issue_workload(self.ca, identity, timedelta(days=1), hosts=serving)
        cert, key = write_workload(own, self.pki_dir / "controlplane")
        tls = server_context(cert, key, self.pki_dir / "ca.crt", require_client_cert=False)
        self.server = Server(self.grpc.handle)
        self.listener = TlsListener(
            self.server, tls,
            on_failed=lambda _: self.metrics.handshakes_failed.inc())
        await self.listener.start(host, port)
        self._tasks.append(asyncio.create_task(self._sweep_leases()))
        if self.policy_path is not None:
            self._tasks.append(asyncio.create_task(self.policy.watch(self.policy_path)))
        log.info("control plane serving on %s:%d (trust domain %s)", host, self.port,
                 self.trust_domain)

    @property
    def port(self) -> int:
        assert self.listener is not None, "not started"
        return self.listener.port

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.listener is not None:
            await self.listener.close()
        if self.server is not None:
            await self.server.shutdown(grace=1.0)
        await self.store.close()  # the control plane owns its store (see __init__)

    async def _sweep_leases(self) -> None:
        # Streams renew the leases of the instances whose sidecar is connected; expiry runs at a
        # quarter of the TTL, so a lapsed lease is gone within 1.25 x TTL at worst.
        interval = self.registry.lease_ttl / 4
        while True:
            await asyncio.sleep(interval)
            connected = {(s.node.id, s.identity) for s in self.discovery.subscriptions.values()}
            connected |= self.inbound.held()  # proxyless servers (controlplane/xds/)
            for instance in self.registry.instances():
                if (instance.id, instance.owner) in connected:
                    self.registry.heartbeat(instance.id, None, instance.owner)
            self.registry.expire()
            self.metrics.subscribers.set(len(self.discovery.subscriptions)
                                         + len(self.xds.subscriptions))

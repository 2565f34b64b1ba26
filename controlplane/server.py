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

The state — registry, join tokens, policy — is in the state store (:mod:`controlplane.store`),
and several replicas may share it: each follows the store's watch (:mod:`controlplane.state`),
serves discovery, registration and the operator API, and says in the store that it runs (a
key on a lease: ``meshctl status`` lists every replica from it). No task needs to run once
for the whole mesh: every lease lapses in the store itself, and each replica renews only the
leases of the streams it holds. A replica that cannot reach the store serves its last state,
refuses writes with UNAVAILABLE, and reports not ready.

Every change to the policy or the registry builds one new snapshot (lazily, on the first
stream that asks) and wakes every discovery stream. The xDS dialect translates the same
clusters, endpoints and routes (:mod:`controlplane.xds.translate`); what gRPC cannot apply of
a policy is logged once per snapshot and shown in the operator API's status.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import shutil
import socket
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
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
from controlplane.policy import Document, PolicyError, PolicyStore
from controlplane.registry import Registry
from controlplane.snapshot import Snapshot, build
from controlplane.state import Replicas, StoreState
from controlplane.store import LeaseExpired, Store, StoreError, StoreUnavailable
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

LISTED_TIMEOUT = 5.0  # seconds start() waits for the first listing of the store; after it, the
# replica starts not ready and keeps trying



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
        """``store``: where the state shared by replicas lives; default: in this process's
        memory. ``policy_path`` is checked here and applied by :meth:`start`.

        Raises:
            OperatorCredentialError: the operator token file cannot be used.
            PolicyError: the policy at ``policy_path`` is refused.
        """
        self.pki_dir = pki_dir
        self.ca = load_ca(pki_dir)
        self.trust_domain = self.ca.trust_domain
        self.clock = clock
        self.metrics = ControlPlaneMetrics()
        self.operator_token_file = operator_token_file or pki_dir / TOKEN_FILE
        self.operator = OperatorToken.load_or_create(self.operator_token_file)
        self.store = store or MemoryStore(clock, trust_domain=self.trust_domain)
        self.state = StoreState(self.store)
        self.tokens = JoinTokens(self.store, clock, ttl=token_ttl)
        self.issuer = CertificateIssuer(self.ca, validity=cert_validity)
        self.policy = PolicyStore(self.state,
                                  on_reject=lambda _: self.metrics.policy_rejections.inc())
        self.policy_path = policy_path
        if policy_path is not None:
            self.policy.check_path(policy_path)
        self.registry = Registry(self.state, trust_domain=self.trust_domain, lease_ttl=lease_ttl,
                                 grants=lambda: self.policy.current[1].registration)
        # Warm-up (controlplane/discovery.py) covers a registry that restarts empty; a store
        # that outlives the process lists every live instance at once.
        warmup = 0.0 if self.store.durable else lease_ttl
        known = self.state.listed.is_set  # before a first listing, the state is unknown
        self.discovery = DiscoveryServer(self.snapshot, clock, self.metrics, warmup=warmup,
                                         known=known)
        self.xds = DiscoveryServer(self.xds_snapshot, clock, self.metrics, warmup=warmup,
                                   dialect=XDS_V3, known=known)
        self.name = ""  # this replica's, in the store: its gRPC host:port, once started
        self.replicas = Replicas()  # every running replica, as the store says
        self._lease = 0  # of this replica's key in the store
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
        self._cert_dir: Path | None = None
        self._api = ""

    # -- state -------------------------------------------------------------------------------

    def _state(self) -> tuple[int, int]:
        """(policy version, registry version): what both snapshots are built from."""
        return self.policy.current[0], self.registry.version

    def snapshot(self) -> Snapshot:
        """The current snapshot, rebuilt only when the policy or the registry changed."""
        key = self._state()
        if self._snapshot is None or self._snapshot[0] != key:
            version, policy = self.policy.current
            self._snapshot = (key, build(policy, self._endpoints(), policy_version=version))
        return self._snapshot[1]

    def xds_snapshot(self) -> XdsSnapshot:
        """The same state in Envoy's resources, rebuilt only when it changed."""
        key = self._state()
        if self._xds_snapshot is None or self._xds_snapshot[0] != key:
            version, policy = self.policy.current
            self._xds_snapshot = (key, translate(policy, self._endpoints(),
                                                 policy_version=version))
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
                    identity = await self.state.write(
                        lambda: self.tokens.redeem(request.join_token))
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

    async def _as_caller(self, call: str, context: Context,
                         action: Callable[[SpiffeId], Awaitable[T]]) -> T:
        """Run ``action`` for the caller's proven identity; log and count its refusal."""
        identity = self._authenticate(context, call)
        try:
            return await action(identity)
        except ControlPlaneError as error:
            raise self._refused(call, context, error) from None

    async def _register(self, request: RegisterRequest, context: Context) -> RegisterResponse:
        try:
            instance = await self._as_caller("Register", context, lambda identity: (
                self.registry.register(request.service, request.endpoint, identity,
                                       caller_address(context), request.namespace)))
        except ControlPlaneError:
            self.metrics.registrations.labels("refused").inc()
            raise
        self.metrics.registrations.labels("accepted").inc()
        return RegisterResponse(instance=instance.id,
                                lease_ttl_ms=int(self.registry.lease_ttl * 1000))

    async def _heartbeat(self, request: HeartbeatRequest, context: Context) -> HeartbeatResponse:
        await self._as_caller("Heartbeat", context, lambda identity: (
            self.registry.heartbeat(request.instance, request.health, identity)))
        return HeartbeatResponse(lease_ttl_ms=int(self.registry.lease_ttl * 1000))

    async def _deregister(self, request: DeregisterRequest,
                          context: Context) -> DeregisterResponse:
        await self._as_caller("Deregister", context, lambda identity: (
            self.registry.deregister(request.instance, identity)))
        return DeregisterResponse()

    # -- running -----------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 15012, *, api: str = "") -> None:
        """Serve gRPC on ``host:port``: follow the store, apply the policy files (if given and
        the store answers), announce this replica, and renew leases.

        Args:
            api: ``host:port`` of this replica's operator API, announced with it.
        """
        identity = control_plane_id(self.trust_domain)
        # Its address too, for clients that verify host names (grpcio's xDS client does).
        serving = (host,) if host not in ("", "0.0.0.0", "::") else ()
        own = issue_workload(self.ca, identity, timedelta(days=1), hosts=serving)
        # Each replica's own files, so that replicas can share one PKI folder.
        self._cert_dir = Path(tempfile.mkdtemp(prefix="controlplane-", dir=self.pki_dir))
        cert, key = write_workload(own, self._cert_dir)
        tls = server_context(cert, key, self.pki_dir / "ca.crt", require_client_cert=False)
        self._tasks.append(asyncio.create_task(
            self.state.follow([self.registry, self.policy, self.replicas])))
        self._tasks.append(asyncio.create_task(self._answer_once_listed()))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(LISTED_TIMEOUT):
                await self.state.listed.wait()
        applied = await self._apply_policy_files()
        self.server = Server(self.grpc.handle)
        self.listener = TlsListener(
            self.server, tls,
            on_failed=lambda _: self.metrics.handshakes_failed.inc())
        await self.listener.start(host, port)
        self.name, self._api = f"{announced_host(host)}:{self.port}", announced_address(api)
        self._tasks.append(asyncio.create_task(self._renew_leases()))
        if self.policy_path is not None:
            self._tasks.append(asyncio.create_task(
                self.policy.watch(self.policy_path, applied=applied)))
        log.info("control plane serving on %s:%d (trust domain %s, state in %s%s)", host,
                 self.port, self.trust_domain, self.store.where,
                 "" if self.state.ready else f", not ready: {self.state.problem}")

    async def _answer_once_listed(self) -> None:
        """Wake the streams held back until the store was listed (see DiscoveryServer)."""
        await self.state.listed.wait()
        self._changed()

    async def _apply_policy_files(self) -> tuple[Document, ...] | None:
        """Write the policy files to the store if they differ; what was applied, or None for
        the file watcher to try again."""
        if self.policy_path is None:
            return None
        try:
            documents = self.policy.check_path(self.policy_path)
            await self.policy.load_path(self.policy_path)
        except (PolicyError, StoreError) as error:
            log.warning("policy files %s not applied yet: %s", self.policy_path, error)
            return None
        return documents

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
        if self._lease:  # other replicas see this one leave at once, not a TTL later
            with contextlib.suppress(StoreError):
                await self.store.revoke_lease(self._lease)
        await self.store.close()  # the control plane owns its store (see __init__)
        if self._cert_dir is not None:
            shutil.rmtree(self._cert_dir, ignore_errors=True)

    async def _renew_leases(self) -> None:
        # Streams renew the leases of the instances whose sidecar is connected, so a sidecar
        # connected to any replica stays registered; this replica's own lease says it runs.
        # Every quarter of the TTL: a lease lapses within 1.25 x TTL of its last renewal.
        interval = self.registry.lease_ttl / 4
        while True:
            connected = {(s.node.id, s.identity) for s in self.discovery.subscriptions.values()}
            connected |= self.inbound.held()  # proxyless servers (controlplane/xds/)
            with contextlib.suppress(StoreUnavailable):  # counted by the state; next round
                await self.state.request(self._announce)
                await self.state.request(functools.partial(self.registry.renew, connected))
                await self.state.request(self.store.expire)
            self.metrics.subscribers.set(len(self.discovery.subscriptions)
                                         + len(self.xds.subscriptions))
            await asyncio.sleep(interval)

    async def _announce(self) -> None:
        """Renew this replica's key in the store (made again if its lease lapsed)."""
        if self._lease:
            try:
                await self.store.keep_alive(self._lease)
                return
            except LeaseExpired:
                pass
        lease = await self.store.grant_lease(self.registry.lease_ttl)
        record = json.dumps({"grpc": self.name, "api": self._api, "started": time.time()})
        await self.store.put_replica(self.name, record.encode(), lease=lease)
        self._lease = lease  # only once the key is on it: else the next round writes it again



WILDCARDS = ("", "0.0.0.0", "::")  # a listener on every address: no address to announce


def announced_host(host: str) -> str:
    """The host other replicas and tools can reach a listener on ``host`` at: itself, or for
    a wildcard this machine's name (in compose, the container's ``hostname``). Replicas are
    keyed by it in the store, so two replicas listening on 0.0.0.0 must not both say so."""
    return socket.gethostname() if host in WILDCARDS else host


def announced_address(address: str) -> str:
    """``host:port`` with a wildcard host replaced as :func:`announced_host` does; "" stays."""
    if not address:
        return address
    host, _, port = address.rpartition(":")
    return f"{announced_host(host.strip('[]'))}:{port}"

"""The sidecar assembled: identity, configuration, listeners, admin — and their lifecycle.

    app ──h2c / HTTP/1.1──▶ outbound (127.0.0.1:15001) ══HTTP/2 + mTLS══▶ peers' inbound
    peers ══HTTP/2 + mTLS══▶ inbound (:15006) ──h2c / HTTP/1.1──▶ app
    operator ──HTTP──▶ admin (127.0.0.1:15000)

With a control plane the sidecar joins with a join token, registers its endpoint, and takes
its configuration from the discovery stream; without one it reads a static file.

With ``concurrency`` above 1 this process is the parent of that many workers, which serve the
listeners (``sidecar/workers.py``); it keeps the identity, discovery and the admin.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import socket
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web
from google.protobuf.message import Message

from mesh.address import Address
from mesh.clock import SYSTEM_CLOCK
from mesh.grpc import Channel
from mesh.http2 import Http2Connection, Server, serve
from mesh.identity import SpiffeId, control_plane_id
from mesh.proto.config_pb2 import Cluster, Endpoint
from mesh.proto.discovery_pb2 import Node
from mesh.proto.resources import instance_name, short_name
from mesh.tls import client_context, server_context
from sidecar import static_config
from sidecar.admin import make_admin
from sidecar.backoff import Backoff
from sidecar.config import LiveConfig
from sidecar.control_planes import ControlPlanes
from sidecar.discovery import DiscoveryClient
from sidecar.http1 import Http1App, Http1Downstream
from sidecar.identity import CertificateFiles, Rotation, bootstrap
from sidecar.inbound import Inbound
from sidecar.listener import Sniffer
from sidecar.metrics import SidecarMetrics
from sidecar.outbound import Outbound
from sidecar.pool import ConnectionPool
from sidecar.registration import Registration, published_admin_port
from sidecar.workers import WorkerError, Workers, listening_socket, reserve_port, with_ports

log = logging.getLogger("sidecar")

APP_PROTOCOLS = {"h2c": Cluster.GRPC, "http1": Cluster.HTTP1}  # --app-protocol → the config's


@dataclass(frozen=True, slots=True, kw_only=True)
class SidecarOptions:
    service: str
    namespace: str = "default"
    trust_domain: str = "cluster.local"
    outbound: Address = ("127.0.0.1", 15001)
    inbound: Address = ("127.0.0.1", 15006)
    admin: Address = ("127.0.0.1", 15000)
    advertise: str | None = None  # the address to register; default: the inbound host
    app: Address = ("127.0.0.1", 8080)
    app_protocol: str | None = None  # "h2c" or "http1"; None: as the configuration declares
    control_plane: tuple[Address, ...] = ()  # replicas of one control plane; none: static
    bootstrap_ca: Path | None = None  # verifies the control plane before we have a cert
    join_token: str = ""  # from the environment: a command line is public
    join_token_file: Path | None = None  # holds the join token; used instead of join_token
    cert_dir: Path = Path(".mesh/sidecar")
    static_config: Path | None = None
    cert: Path | None = None  # static mode: our certificate, key and the mesh CA
    key: Path | None = None
    ca: Path | None = None
    seed: int | None = None
    concurrency: int = 1  # worker processes serving the listeners; 1: this process serves


class Sidecar:
    """One sidecar; ``await start()``, then ``await stop()``. A worker of a sidecar (see
    ``sidecar/workers.py``) is one too, started with ``start_worker()`` instead."""

    def __init__(self, options: SidecarOptions) -> None:
        self.options = options
        self.clock = SYSTEM_CLOCK
        self.rng = random.Random(options.seed)
        self.metrics = SidecarMetrics()
        self.files: CertificateFiles | None = None
        self.client_tls: ssl.SSLContext | None = None
        self.server_tls: ssl.SSLContext | None = None
        self.config = LiveConfig(service=options.service, clock=self.clock, rng=self.rng,
                                 tls=lambda: self.client_tls, metrics=self.metrics,
                                 namespace=options.namespace)
        self.outbound = Outbound(self.config, self.metrics, clock=self.clock, rng=self.rng)
        self.discovery: DiscoveryClient | None = None
        self.registration: Registration | None = None
        self.rotation: Rotation | None = None
        self.static_loaded = False
        self.h2c_app: ConnectionPool | None = None
        self.http1_app: Http1App | None = None
        self._servers: list[asyncio.Server] = []
        self._inbound: Server | None = None
        self._admin: web.AppRunner | None = None
        self._h1: web.Server | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.control_planes: ControlPlanes | None = None
        self.workers: Workers | None = None
        self._reserved: list[socket.socket] = []  # the listeners' ports, while workers serve

    # -- start -------------------------------------------------------------------------------

    async def start(self) -> None:
        o = self.options
        await self._identity()
        assert self.files is not None
        self._contexts()
        identity = self.files.identity()
        if o.static_config is not None:
            for type_url, resources in static_config.load(o.static_config):
                try:
                    self.config.apply(type_url, resources)
                except ValueError as error:
                    raise ValueError(f"{o.static_config}: {error}") from None
            self.static_loaded = True
        if o.concurrency > 1:
            await self._start_workers()
        # The admin first: registration publishes its port (sidecar/registration.py).
        self._admin = web.AppRunner(make_admin(self.config, self.metrics, self.ready,
                                               workers=self.workers), access_log=None)
        await self._admin.setup()
        await web.TCPSite(self._admin, *o.admin).start()
        if o.control_plane:
            self._join(identity)
        if self.workers is None:
            await self._serve(identity)
        log.info("sidecar for %s (%s): outbound %s:%d, inbound %s:%d (mTLS), admin %s:%d%s",
                 o.service, identity, *self.options.outbound, *self.options.inbound, *o.admin,
                 f", {o.concurrency} workers" if self.workers else "")

    async def start_worker(self, configure: Callable[[], None]) -> None:
        """Serve the listeners as one of the sidecar's workers: with the certificate files its
        parent keeps, and the configuration its parent sends (``sidecar/worker.py``), the
        first of which ``configure()`` installs before the listeners open."""
        await self._identity(worker=True)
        assert self.files is not None
        self._contexts()
        configure()
        await self._serve(self.files.identity(), reuse_port=True)

    def _contexts(self) -> None:
        assert self.files is not None
        self.server_tls = server_context(self.files.cert, self.files.key, self.files.ca)
        self.client_tls = client_context(self.files.cert, self.files.key, self.files.ca)

    def reload_certificates(self) -> None:
        """Load the certificate files again into the live contexts (a worker, after its parent
        renewed them)."""
        assert self.files is not None
        for context in (self.server_tls, self.client_tls):
            if context is not None:
                context.load_cert_chain(self.files.cert, self.files.key)

    async def _start_workers(self) -> None:
        """Reserve the listeners' ports, start the workers on them, and hand them the
        configuration held so far (a static file's)."""
        o = self.options
        outbound_sock, outbound = reserve_port(o.outbound)
        self._reserved.append(outbound_sock)
        inbound_sock, inbound = reserve_port(o.inbound)
        self._reserved.append(inbound_sock)
        self.options = with_ports(o, outbound, inbound)
        workers = Workers(o.concurrency, self.options)
        for type_url, resources in self.config.raw.items():
            workers.apply(type_url, resources)
        try:
            await workers.start()
        except WorkerError as error:
            raise OSError(str(error)) from None
        self.workers = workers

    async def _serve(self, identity: SpiffeId, *, reuse_port: bool = False) -> None:
        """Listen (inbound, outbound) and serve: this process is the sidecar, or one of its
        workers (``reuse_port``: beside the others, on the same ports)."""
        o = self.options
        # Both are lazy: only the one the service declares ever connects.
        self.h2c_app = ConnectionPool(*o.app, ssl=None)
        self.http1_app = Http1App(*o.app)
        inbound = Inbound(self.config, self.metrics, h2c=self.h2c_app, http1=self.http1_app,
                          protocol=APP_PROTOCOLS[o.app_protocol] if o.app_protocol else None,
                          own_id=identity, clock=self.clock)
        if reuse_port:
            self._inbound = Server(inbound.handle, clock=self.clock)
            await self._inbound.start(*o.inbound, ssl=self.server_tls,
                                      sock=listening_socket(o.inbound))
        else:
            self._inbound = await serve(inbound.handle, *o.inbound, ssl=self.server_tls)
        await self._listen_outbound(reuse_port)
        self._tasks.append(asyncio.create_task(self._tick()))

    async def _identity(self, *, worker: bool = False) -> None:
        """The certificate files: given (static), kept in ``cert_dir``, or obtained now with
        the join token; a worker only reads those its parent keeps."""
        o = self.options
        if not o.control_plane:
            if o.cert is None or o.key is None or o.ca is None:
                raise ValueError("without a control plane, --cert, --key and --ca are needed")
            self.files = CertificateFiles(o.cert, o.key, o.ca)
            return
        files = CertificateFiles(o.cert_dir / "cert.pem", o.cert_dir / "key.pem",
                                 o.cert_dir / "ca.pem")
        if not files.cert.exists() and not worker:
            token = o.join_token
            if o.join_token_file is not None:
                try:
                    token = o.join_token_file.read_text().strip()
                except OSError as error:
                    raise ValueError(f"--join-token-file {o.join_token_file}: "
                                     f"{error.strerror}; the first certificate needs it") from None
                if not token:
                    raise ValueError(f"--join-token-file {o.join_token_file} is empty; the "
                                     f"first certificate needs a join token")
            if not token or o.bootstrap_ca is None:
                raise ValueError("first start with a control plane needs a join token "
                                 "(--join-token-file or MESH_JOIN_TOKEN) and --bootstrap-ca "
                                 "(the mesh CA that signs the control plane)")
            wanted = SpiffeId(trust_domain=o.trust_domain, namespace=o.namespace,
                              service=o.service)
            await bootstrap(*o.control_plane[0], o.bootstrap_ca, files, wanted, token,
                            fallbacks=o.control_plane[1:])
        self.files = files

    def _join(self, identity: SpiffeId) -> None:
        o = self.options
        assert o.control_plane and self.files is not None
        assert self.server_tls is not None and self.client_tls is not None
        files = self.files

        def connect(address: Address) -> Channel:
            # Registration must come from the address it registers: bind the source address.
            return Channel(*address, ssl=client_context(files.cert, files.key, files.ca),
                           authority="controlplane", local_address=o.advertise or o.inbound[0],
                           peer_identity=str(control_plane_id(identity.trust_domain)))

        planes = self.control_planes = ControlPlanes(o.control_plane, connect, rng=self.rng)
        backoff = functools.partial(Backoff(base_interval=0.1, max_interval=5.0).delays,
                                    self.rng)
        address = o.advertise or o.inbound[0]
        assert self._admin is not None
        admin = (o.admin[0], self._admin.addresses[0][1])  # the port bound, if o.admin's was 0
        endpoint = Endpoint(address=address, port=o.inbound[1],
                            admin_port=published_admin_port(admin, address))
        self.registration = Registration(planes, o.service, identity.namespace, endpoint,
                                         ready=lambda: True, backoff=backoff)
        node = Node(id=instance_name(identity.namespace, o.service, endpoint.address,
                                     endpoint.port),
                    service=o.service, namespace=identity.namespace)
        self.discovery = DiscoveryClient(planes, node, self._apply, backoff=backoff)
        self.rotation = Rotation(*planes.address, self.files,
                                 [self.server_tls, self.client_tls],
                                 address=lambda: planes.address,
                                 renewed=self.workers.reload_certificates if self.workers
                                 else None)
        for job in (self.registration.run(), self.discovery.run(), self.rotation.run()):
            self._tasks.append(asyncio.create_task(job))

    def _apply(self, type_url: str, resources: Sequence[Message]) -> None:
        try:
            self.config.apply(type_url, resources)
        except Exception:
            self.metrics.config_updates.labels(short_name(type_url), "nack").inc()
            raise
        self.metrics.config_updates.labels(short_name(type_url), "ack").inc()
        if self.workers is not None:
            self.workers.apply(type_url, resources)

    async def _listen_outbound(self, reuse_port: bool) -> None:
        loop = asyncio.get_running_loop()

        async def http1(request: web.BaseRequest) -> web.StreamResponse:
            down = Http1Downstream(request)
            await self.outbound.handle(down)
            return await down.finish()

        # A caller that hangs up cancels its request, and so the upstream stream.
        self._h1 = web.Server(http1, access_log=None, handler_cancellation=True)
        h1 = self._h1

        def http2() -> Http2Connection:
            return Http2Connection(client_side=False, handler=self.outbound.handle)

        if reuse_port:
            server = await loop.create_server(lambda: Sniffer(http2, h1),
                                              sock=listening_socket(self.options.outbound))
        else:
            server = await loop.create_server(lambda: Sniffer(http2, h1),
                                              *self.options.outbound, reuse_address=True)
        self._servers.append(server)

    def ready(self) -> tuple[bool, str]:
        """Whether the sidecar can serve, and why not."""
        if self.discovery is not None and not self.discovery.synced.is_set():
            return False, "waiting for the first configuration from the control plane"
        if self.registration is not None and not self.registration.registered.is_set():
            return False, "not registered with the control plane yet"
        if self.discovery is None and not self.static_loaded:
            return False, "no configuration"
        if self.workers is not None and not self.workers.running():
            return False, "no worker is running"
        return True, "ready"

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(0.1)
            for cluster in self.config.clusters.values():
                cluster.tick()

    # -- stop --------------------------------------------------------------------------------

    async def stop(self, grace: float = 2.0) -> None:
        """Deregister, stop accepting, let requests in flight finish, close everything."""
        if self.workers is not None:
            self.workers.stopping()  # a worker that exits now is not started again
        if self.registration is not None:
            try:
                await self.registration.deregister()
            except Exception as error:  # stopping all the same: the lease lapses instead
                log.warning("could not deregister (%r): callers that list the registry see "
                            "this instance until its lease lapses", error)
        for task in self._tasks:
            task.cancel()
        if self.workers is not None:
            await self.workers.stop(grace)
        for sock in self._reserved:
            sock.close()
        for server in self._servers:
            server.close()
        if self._h1 is not None:
            await self._h1.shutdown(grace)
        if self._inbound is not None:
            await self._inbound.shutdown(grace)
        if self._admin is not None:
            await self._admin.cleanup()
        for cluster in self.config.clusters.values():
            await cluster.close()
        for app in (self.h2c_app, self.http1_app):
            if app is not None:
                await app.close()
        if self.control_planes is not None:
            await self.control_planes.close()

"""Registration: keep this sidecar's instance in the control plane's registry.

The sidecar registers its service's endpoint (its own address and inbound port), then renews
the lease with heartbeats at a third of the lease's TTL, reporting whether its app is ready.
If the control plane answers NOT_FOUND — it restarted, or the lease lapsed while it was
unreachable — the sidecar registers again. Other failures are retried with backoff, but never
less often than heartbeats: a control plane that comes back must hear from every live instance
within a lease TTL (it waits that long before telling reconnecting sidecars who is there). The
endpoint simply lapses if the sidecar is gone for longer than the TTL.

With several control-plane replicas (:mod:`sidecar.control_planes`), a replica that cannot be
reached (or answers UNAVAILABLE) moves the sidecar to the next; there the same instance is
renewed where the replicas share their state, and registered again where the new replica
answers NOT_FOUND.

The endpoint also publishes the port of the sidecar's admin endpoint (``admin_port``) when the
admin is reachable at the registered address (:func:`published_admin_port`), so that operators'
tools — Prometheus through the operator API's ``/prometheus/targets``, the dashboard — find
every sidecar's ``/metrics`` from the registry alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
from collections.abc import Callable, Iterator

from mesh.address import Address
from mesh.grpc import Channel, GrpcError, StatusCode
from mesh.http2 import Http2Error
from mesh.proto.config_pb2 import Endpoint
from mesh.proto.registry_pb2 import (
    DeregisterRequest,
    DeregisterResponse,
    HeartbeatRequest,
    HeartbeatResponse,
    RegisterRequest,
    RegisterResponse,
)
from sidecar.control_planes import ControlPlanes

log = logging.getLogger("sidecar.registration")

REGISTRY = "/mesh.v1.Registry/"
ALL_INTERFACES = ""  # a listener's host that binds every interface, IPv4 and IPv6


def published_admin_port(admin: Address, address: str) -> int:
    """The admin port to register with an endpoint at ``address``, given where the admin
    listens: its port when ``ip:port`` reaches it, else 0 (not published).

    It does when the admin listens on ``address`` itself or on the wildcard of its family:
    ``0.0.0.0`` for IPv4, ``::`` for IPv6 (asyncio binds ``::`` to IPv6 alone, IPV6_V6ONLY),
    ``""`` for both. An admin on loopback while the sidecar registers another IP (the default
    ``--admin 127.0.0.1:15000`` behind ``--advertise 10.0.0.5``) is reachable only from its
    own machine: publishing that port under the registered IP would send a scraper to a port
    where nothing answers, or something else does. Host names are not resolved: only an IP
    literal equal to the registered one counts.
    """
    host, port = admin
    if host == ALL_INTERFACES:
        return port
    try:
        listening, registered = ipaddress.ip_address(host), ipaddress.ip_address(address)
    except ValueError:
        return port if host == address else 0
    if listening == registered or (listening.is_unspecified
                                   and listening.version == registered.version):
        return port
    return 0


class Registration:
    """Registers once, renews forever, registers again when forgotten."""

    def __init__(self, channel: Channel | ControlPlanes, service: str, namespace: str,
                 endpoint: Endpoint, *, ready: Callable[[], bool],
                 backoff: Callable[[], Iterator[float]]) -> None:
        self.service = service
        self.namespace = namespace
        self.endpoint = endpoint
        self.instance: str | None = None
        self.lease_ttl = 10.0
        self.registered = asyncio.Event()
        self._ready = ready
        self._backoff = backoff
        self._planes = channel if isinstance(channel, ControlPlanes) else \
            ControlPlanes.of(channel)
        self._moved = asyncio.Event()  # to another replica: renew there now
        self._planes.on_move(self._moved.set)
        self._running: asyncio.Task[object] | None = None  # run()'s task, stopped by deregister()

    async def run(self) -> None:
        self._running = asyncio.current_task()
        delays: Iterator[float] | None = None
        while True:
            channel = self._planes.channel
            try:
                await self._renew(channel)
                delays = None
                await self._pause(self.lease_ttl / 3)
            except GrpcError as error:
                if error.code == StatusCode.NOT_FOUND:
                    log.warning("control plane forgot %s (%s): registering again",
                                self.instance, error.message)
                    self.instance = None
                    self.registered.clear()
                    continue
                if error.code in (StatusCode.PERMISSION_DENIED, StatusCode.UNAUTHENTICATED):
                    log.error("registration of %s refused: %s", self.service, error.message)
                elif error.code == StatusCode.UNAVAILABLE:
                    self._move(channel)
                delays = delays or self._backoff()
                await self._pause(min(next(delays), self.lease_ttl / 3))
            except (Http2Error, OSError) as error:
                log.warning("control plane unreachable for registration: %s", error)
                self._move(channel)
                delays = delays or self._backoff()
                await self._pause(min(next(delays), self.lease_ttl / 3))

    def _move(self, channel: Channel) -> None:
        """Leave the replica that failed; the next try, there, still waits its backoff."""
        self._planes.failed(channel)
        # Only a move made elsewhere (discovery's) cuts a pause short. A move of our own must
        # not: when every replica answers UNAVAILABLE (their store has lost its majority), the
        # sidecar would go round them without pause, reconnecting discovery at each step.
        self._moved.clear()

    async def _pause(self, seconds: float) -> None:
        """Sleep ``seconds``, or less if the sidecar moves to another control plane."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._moved.wait(), seconds)
        self._moved.clear()

    async def _renew(self, channel: Channel) -> None:
        health = Endpoint.HEALTHY if self._ready() else Endpoint.UNHEALTHY
        if self.instance is None:
            endpoint = Endpoint()
            endpoint.CopyFrom(self.endpoint)
            endpoint.health = health
            request = RegisterRequest(service=self.service, namespace=self.namespace,
                                      endpoint=endpoint)
            register = channel.unary_unary(REGISTRY + "Register", RegisterResponse.FromString)
            response = await register(request, timeout=5.0)
            self.instance = response.instance
            self.lease_ttl = response.lease_ttl_ms / 1000 or self.lease_ttl
            self.registered.set()
            log.info("registered %s (lease %.1fs)", self.instance, self.lease_ttl)
            return
        heartbeat = channel.unary_unary(REGISTRY + "Heartbeat", HeartbeatResponse.FromString)
        response = await heartbeat(HeartbeatRequest(instance=self.instance, health=health),
                                   timeout=5.0)
        self.lease_ttl = response.lease_ttl_ms / 1000 or self.lease_ttl

    async def deregister(self) -> None:
        """Leave the registry now (on a clean shutdown), rather than when the lease lapses.

        The renewal loop stops first. Left running, a heartbeat in flight would reach the
        control plane after the deregistration, be told the instance is gone, and register
        it again: callers that list the registry would then see this instance until the new
        lease lapsed, long after discovery had pushed it away.
        """
        if self._running is not None and self._running is not asyncio.current_task():
            self._running.cancel()
            await asyncio.wait([self._running])
        if self.instance is not None:
            deregister = self._planes.channel.unary_unary(REGISTRY + "Deregister",
                                                          DeregisterResponse.FromString)
            await deregister(DeregisterRequest(instance=self.instance), timeout=2.0)
            self.instance = None
            self.registered.clear()

"""The discovery client: the sidecar's end of the xDS-like stream to the control plane.

It subscribes to every resource type on one stream. Each response holds the whole state of one
type; the client hands it to ``apply``, which validates and swaps it in atomically or raises.
Then it answers: ACK (the new version, the response's nonce) when applied, NACK (the version
it still runs, the nonce, and the reason) when not — and keeps serving with the last good
configuration.

When the control plane is unreachable the sidecar keeps what it has (static stability) and
reconnects with backoff and jitter — to the next replica when it was given several
(:mod:`sidecar.control_planes`); on reconnect it sends the versions it holds, so the control
plane (whichever replica) can tell it is in sync.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from google.protobuf.message import Message

from mesh.grpc import Call, Channel, GrpcError, StatusCode
from mesh.http2 import Http2Error
from mesh.proto.discovery_pb2 import DiscoveryRequest, DiscoveryResponse, Node, Status
from mesh.proto.resources import ORDER, short_name, unpack
from sidecar.control_planes import ControlPlanes

log = logging.getLogger("sidecar.discovery")

STREAM_RESOURCES = "/mesh.v1.AggregatedDiscoveryService/StreamResources"
WORKED_AFTER = 5.0  # seconds a stream must last to count as working (backoff starts over)

Apply = Callable[[str, list[Message]], None]
"""Validate and install the resources of one type; raise to reject them (NACK)."""


@dataclass(slots=True)
class Accepted:
    """What the sidecar runs of one type."""

    version: str
    resources: list[Message]


class DiscoveryClient:
    """Subscribes, applies, ACKs or NACKs; reconnects forever with backoff."""

    def __init__(self, channel: Channel | ControlPlanes, node: Node, apply: Apply, *,
                 backoff: Callable[[], Iterator[float]],
                 types: tuple[str, ...] = ORDER) -> None:
        self.node = node
        self.accepted: dict[str, Accepted] = {}
        self.connected = False  # a response came on the current stream
        self.synced = asyncio.Event()  # every type accepted at least once
        self.nacks = 0
        self.last_error = ""
        self.reconnects = 0
        self.responses = 0
        self._planes = channel if isinstance(channel, ControlPlanes) else \
            ControlPlanes.of(channel)
        self._apply = apply
        self._backoff = backoff
        self._types = types

    async def run(self) -> None:
        """Keep a stream open for as long as the task runs."""
        delays: Iterator[float] | None = None
        loop = asyncio.get_running_loop()
        while True:
            channel = self._planes.channel
            opened = loop.time()
            try:
                await self._session(channel)
                reason = "control plane closed the stream"
            except (GrpcError, Http2Error, OSError) as error:
                reason = str(error)
            self._planes.failed(channel)  # the next try goes to another replica, if any
            # A stream resumed with the versions the sidecar holds may carry no response at
            # all (nothing changed), so lasting counts as working too.
            if self.connected or loop.time() - opened >= WORKED_AFTER:
                delays = None  # it worked for a while: start backing off from the beginning
            self.connected = False
            delays = delays or self._backoff()
            delay = next(delays)
            self.reconnects += 1
            log.warning("discovery stream lost (%s); reconnecting in %.2fs with the last good "
                        "configuration in force", reason, delay)
            await asyncio.sleep(delay)

    async def _session(self, channel: Channel) -> None:
        call: Call[DiscoveryResponse]
        async with channel.call(STREAM_RESOURCES, DiscoveryResponse.FromString) as call:
            for type_url in self._types:
                held = self.accepted.get(type_url)
                await call.send(DiscoveryRequest(
                    type_url=type_url, node=self.node,
                    version_info=held.version if held else ""))
            async for response in call:
                self.connected = True
                await call.send(self._handle(response))

    def _handle(self, response: DiscoveryResponse) -> DiscoveryRequest:
        type_url = response.type_url
        held = self.accepted.get(type_url)
        self.responses += 1
        try:
            resources = unpack(type_url, list(response.resources))
            self._apply(type_url, resources)
        except Exception as error:  # any reason to refuse the update becomes a NACK
            self.nacks += 1
            self.last_error = f"{short_name(type_url)} version {response.version_info}: {error}"
            log.warning("NACK %s; keeping version %s", self.last_error,
                        held.version if held else "(none)")
            return DiscoveryRequest(
                type_url=type_url, version_info=held.version if held else "",
                response_nonce=response.nonce,
                error_detail=Status(code=StatusCode.INVALID_ARGUMENT, message=str(error)))
        self.accepted[type_url] = Accepted(response.version_info, resources)
        if all(t in self.accepted for t in self._types):
            self.synced.set()
        log.debug("ACK %s version %s (%d resources)", short_name(type_url),
                  response.version_info, len(resources))
        return DiscoveryRequest(type_url=type_url, version_info=response.version_info,
                                response_nonce=response.nonce)

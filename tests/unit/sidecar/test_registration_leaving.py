"""A sidecar that deregisters stays deregistered: its renewal loop cannot register it again."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from mesh.grpc import GrpcError, StatusCode
from mesh.proto.config_pb2 import Endpoint
from mesh.proto.registry_pb2 import HeartbeatResponse, RegisterResponse
from sidecar.control_planes import ControlPlanes
from sidecar.registration import Registration


class ScriptedControlPlane:
    """A channel whose Heartbeat waits until released, then answers NOT_FOUND if the
    instance was deregistered meanwhile: the race a real control plane can serve."""

    host, port = "127.0.0.1", 15012

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.heartbeat_sent = asyncio.Event()
        self.release_heartbeat = asyncio.Event()
        self.registered: set[str] = set()
        self._ids = itertools.count(1)

    def unary_unary(self, method: str, _parse: Any) -> Callable[..., Awaitable[Any]]:
        name = method.rsplit("/", 1)[1]

        async def call(request: Any, timeout: float) -> Any:
            self.calls.append(name)
            if name == "Register":
                instance = f"backend-{next(self._ids)}"
                self.registered.add(instance)
                return RegisterResponse(instance=instance, lease_ttl_ms=30)
            if name == "Heartbeat":
                self.heartbeat_sent.set()
                await self.release_heartbeat.wait()
                if request.instance not in self.registered:
                    raise GrpcError(StatusCode.NOT_FOUND, f"unknown instance {request.instance}")
                return HeartbeatResponse(lease_ttl_ms=30)
            self.registered.discard(request.instance)  # Deregister
            self.release_heartbeat.set()  # the heartbeat in flight lands after it
            await asyncio.sleep(0.01)
            return None
        return call


def no_backoff() -> Iterator[float]:
    return itertools.repeat(0.0)


async def test_a_heartbeat_in_flight_at_deregistration_does_not_register_again() -> None:
    plane = ScriptedControlPlane()
    registration = Registration(
        ControlPlanes.of(plane), "backend", "default",  # type: ignore[arg-type]
        Endpoint(address="127.0.0.1", port=8080), ready=lambda: True, backoff=no_backoff)
    running = asyncio.create_task(registration.run())
    await asyncio.wait_for(plane.heartbeat_sent.wait(), 5)  # registered, heartbeat in flight
    await registration.deregister()
    await asyncio.sleep(0.1)  # time for a second registration, if the loop were still going
    assert plane.calls[-1] == "Deregister", plane.calls
    assert plane.registered == set()
    assert running.done()
    assert registration.instance is None

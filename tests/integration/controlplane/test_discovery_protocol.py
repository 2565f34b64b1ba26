"""The discovery protocol over real streams: pushes, ACK/NACK, restarts, lapsed leases."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from google.protobuf.message import Message

from certs.pki import CertificateAuthority
from controlplane.server import ControlPlane
from mesh.grpc import Channel
from mesh.proto.config_pb2 import Cluster, ClusterLoadAssignment, Endpoint
from mesh.proto.discovery_pb2 import Node
from mesh.proto.registry_pb2 import RegisterRequest, RegisterResponse
from mesh.proto.resources import CLUSTERS, ENDPOINTS
from sidecar.discovery import DiscoveryClient
from sidecar.registration import Registration
from tests.integration.controlplane.conftest import Mesh


def quick_backoff() -> Iterator[float]:
    return itertools.repeat(0.05)


@dataclass
class Sidecar:
    """A discovery client (and its channel) standing in for a sidecar."""

    client: DiscoveryClient
    channel: Channel
    task: asyncio.Task[None]

    def endpoints(self, service: str) -> list[str]:
        held = self.client.accepted.get(ENDPOINTS)
        for assignment in held.resources if held else []:
            assert isinstance(assignment, ClusterLoadAssignment)
            if assignment.cluster_name == service:
                return [f"{e.address}:{e.port}" for e in assignment.endpoints]
        return []


@contextlib.asynccontextmanager
async def sidecar(mesh: Mesh, service: str,
                  reject: Callable[[str, list[Message]], None] = lambda *_: None
                  ) -> AsyncIterator[Sidecar]:
    channel = mesh.channel(service)
    client = DiscoveryClient(channel, Node(id=f"{service}-sidecar", service=service), reject,
                             backoff=quick_backoff)
    task = asyncio.create_task(client.run())
    try:
        await asyncio.wait_for(client.synced.wait(), 5)
        yield Sidecar(client, channel, task)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await channel.close()


async def eventually(check: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.01)


async def test_a_registration_is_pushed_to_subscribers(mesh: Mesh) -> None:
    async with sidecar(mesh, "frontend") as frontend:
        assert frontend.endpoints("orders") == []
        channel = mesh.channel("orders")
        register = channel.unary_unary("/mesh.v1.Registry/Register", RegisterResponse.FromString)
        await register(RegisterRequest(service="orders",
                                       endpoint=Endpoint(address="127.0.0.1", port=15006)))
        await eventually(lambda: frontend.endpoints("orders") == ["127.0.0.1:15006"])
        await channel.close()


def refuse_clusters_named_bad(type_url: str, resources: list[Message]) -> None:
    if type_url == CLUSTERS and any(isinstance(c, Cluster) and c.name == "bad"
                                    for c in resources):
        raise ValueError("cluster 'bad' is not acceptable here")


async def test_a_nack_keeps_the_old_version_until_the_policy_is_fixed(mesh: Mesh) -> None:
    await mesh.cp.policy.apply_text("clusters:\n- name: orders\n", "v1")
    async with sidecar(mesh, "frontend", refuse_clusters_named_bad) as frontend:
        good = frontend.client.accepted[CLUSTERS].version
        await mesh.cp.policy.apply_text("clusters:\n- name: orders\n- name: bad\n", "v2")
        await eventually(lambda: frontend.client.nacks == 1)
        assert frontend.client.accepted[CLUSTERS].version == good
        assert "cluster 'bad' is not acceptable" in frontend.client.last_error
        await eventually(lambda: any(s.types[CLUSTERS].nacks == 1
                                     for s in mesh.cp.discovery.subscriptions.values()))
        state = next(iter(mesh.cp.discovery.subscriptions.values())).types[CLUSTERS]
        assert "cluster 'bad'" in state.last_nack and state.acked_version == good
        # No push loop: the NACK is not answered with the same update again and again.
        responses = frontend.client.responses
        await asyncio.sleep(0.3)
        assert frontend.client.responses == responses
        await mesh.cp.policy.apply_text("clusters:\n- name: orders\n- name: fixed\n", "v3")
        await eventually(lambda: frontend.client.accepted[CLUSTERS].version != good)
        assert frontend.client.nacks == 1
        names = [c.name for c in frontend.client.accepted[CLUSTERS].resources
                 if isinstance(c, Cluster)]
        assert names == ["fixed", "orders"]


async def test_clients_resync_after_a_control_plane_restart(
        pki: tuple[Path, CertificateAuthority], tmp_path: Path) -> None:
    pki_dir, ca = pki
    policy = tmp_path / "mesh.yaml"
    policy.write_text("clusters:\n- name: orders\n  lb_policy: PEAK_EWMA\n")
    first = ControlPlane(pki_dir, lease_ttl=0.6, policy_path=policy)
    await first.start("127.0.0.1", 0)
    port = first.port
    mesh = Mesh(first, ca, pki_dir, tmp_path)
    async with sidecar(mesh, "orders") as orders:
        registration = Registration(orders.channel, "orders", "default",
                                    Endpoint(address="127.0.0.1", port=15006),
                                    ready=lambda: True, backoff=quick_backoff)
        registering = asyncio.create_task(registration.run())
        await eventually(lambda: orders.endpoints("orders") == ["127.0.0.1:15006"])
        before = {t: a.version for t, a in orders.client.accepted.items()}
        await first.stop()
        await eventually(lambda: not orders.client.connected)
        second = ControlPlane(pki_dir, lease_ttl=0.6, policy_path=policy)
        await second.start("127.0.0.1", port)
        try:
            # Resubscribed with the versions it holds, and sent nothing new: the restarted
            # control plane, once its registry is back, builds the same versions.
            await eventually(lambda: second.registry.instances() != [] and
                             len(second.discovery.subscriptions) == 1 and
                             {t: a.version for t, a in orders.client.accepted.items()}
                             == before)
            assert orders.client.reconnects >= 1
            (stream,) = second.discovery.subscriptions.values()
            assert {t: s.acked_version for t, s in stream.types.items()} == before
        finally:
            registering.cancel()
            await second.stop()


@pytest.mark.parametrize("ttl", [0.6])
async def test_a_lapsed_lease_removes_the_endpoint_everywhere(mesh: Mesh, ttl: float) -> None:
    async with sidecar(mesh, "frontend") as frontend, sidecar(mesh, "payments") as payments:
        channel = mesh.channel("orders")
        register = channel.unary_unary("/mesh.v1.Registry/Register", RegisterResponse.FromString)
        await register(RegisterRequest(service="orders",
                                       endpoint=Endpoint(address="127.0.0.1", port=15006)))
        await channel.close()  # no heartbeats, no stream: the lease will lapse
        await eventually(lambda: frontend.endpoints("orders") != [] and
                         payments.endpoints("orders") != [])
        loop = asyncio.get_running_loop()
        started = loop.time()
        await eventually(lambda: frontend.endpoints("orders") == [] and
                         payments.endpoints("orders") == [], timeout=3 * ttl)
        # The lease is TTL long; the sweeper runs every TTL/4.
        assert loop.time() - started <= ttl * 1.25 + 0.2

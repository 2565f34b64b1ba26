"""Control-plane replicas whose state store cannot be reached (a real etcd client, given an
address where no etcd answers): they start, say they are not ready and why, refuse writes with
UNAVAILABLE naming the store, send no empty configuration to a sidecar that holds one — and a
sidecar given all of them goes round them at the pace of its backoff, not in a tight loop."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from certs.pki import CertificateAuthority
from controlplane.api import make_app
from controlplane.server import ControlPlane
from controlplane.store.etcd import EtcdStore
from mesh.grpc import Channel, GrpcError, StatusCode
from mesh.proto.config_pb2 import Endpoint
from mesh.proto.discovery_pb2 import DiscoveryRequest, DiscoveryResponse, Node
from mesh.proto.registry_pb2 import RegisterRequest, RegisterResponse
from mesh.proto.resources import CLUSTERS
from sidecar.control_planes import ControlPlanes
from sidecar.registration import Registration
from tests.integration.controlplane.conftest import TRUST_DOMAIN, Mesh

REPLICAS = 3
PAUSE = 0.2  # seconds: the sidecar's backoff between registration attempts, fixed here
WATCHED = 1.0  # seconds the sidecar is watched going round the replicas
HELD_BACK = 1.0  # seconds a sidecar holding a configuration is watched getting nothing
STREAM_RESOURCES = "/mesh.v1.AggregatedDiscoveryService/StreamResources"


def nowhere() -> str:
    """A loopback address where nothing listens (an etcd member that is gone)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{probe.getsockname()[1]}"


@pytest.fixture
async def cut_off(pki: tuple[Path, CertificateAuthority],
                  tmp_path: Path) -> AsyncIterator[list[Mesh]]:
    """Three replicas whose etcd is gone, started at once."""
    pki_dir, ca = pki
    gone = nowhere()
    replicas = [ControlPlane(pki_dir, lease_ttl=3.0,
                             store=EtcdStore([gone], trust_domain=TRUST_DOMAIN, timeout=0.5))
                for _ in range(REPLICAS)]
    await asyncio.gather(*(cp.start("127.0.0.1", 0) for cp in replicas))
    try:
        yield [Mesh(cp, ca, pki_dir, tmp_path) for cp in replicas]
    finally:
        for cp in replicas:
            await cp.stop()


async def test_a_replica_without_its_store_is_not_ready_and_refuses_writes(
        cut_off: list[Mesh]) -> None:
    mesh = cut_off[0]
    async with TestClient(TestServer(make_app(mesh.cp), host="127.0.0.1"),
                          headers=mesh.operator_headers) as http:
        response = await http.get("/readyz")
        assert response.status == 503
        etcd = mesh.cp.store.where.removeprefix("etcd://")
        assert (await response.text()).startswith(
            f"not ready: state store unavailable: tried {etcd}")
        response = await http.post("/policy", data="clusters:\n- name: orders\n")
        assert response.status == 503
        assert (await response.json())["error"].startswith("policy not applied: state store "
                                                           "unavailable")
        response = await http.post("/tokens", json={"service": "orders"})
        assert response.status == 503
    channel = mesh.channel("orders")
    try:
        register = channel.unary_unary("/mesh.v1.Registry/Register",
                                       RegisterResponse.FromString)
        with pytest.raises(GrpcError) as refused:
            await register(RegisterRequest(service="orders", endpoint=Endpoint(
                address="127.0.0.1", port=8080)))
        assert refused.value.code == StatusCode.UNAVAILABLE
        assert refused.value.message.startswith("state store unavailable: tried 127.0.0.1:")
    finally:
        await channel.close()


async def test_a_sidecar_goes_round_unavailable_replicas_at_its_backoff_pace(
        cut_off: list[Mesh]) -> None:
    mesh = cut_off[0]
    tls = mesh.context_for("orders")
    planes = ControlPlanes([("127.0.0.1", m.cp.port) for m in cut_off],
                           lambda address: Channel(*address, ssl=tls, authority="controlplane"),
                           rng=random.Random(1))
    registration = Registration(planes, "orders", "default",
                                Endpoint(address="127.0.0.1", port=8080), ready=lambda: True,
                                backoff=lambda: itertools.repeat(PAUSE))
    task = asyncio.create_task(registration.run())
    try:
        await asyncio.sleep(WATCHED)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await planes.close()
    # One move per refused attempt, one attempt per pause: about WATCHED / PAUSE. Going round
    # without pausing made hundreds in this time.
    print(f"moves in {WATCHED:.1f}s with a {PAUSE:.1f}s backoff: {planes.failovers}")
    assert 1 <= planes.failovers <= WATCHED / PAUSE + 1
    assert not registration.registered.is_set()


async def test_a_replica_that_never_listed_its_store_sends_no_empty_configuration(
        cut_off: list[Mesh]) -> None:
    # A sidecar that moves here holding its configuration would be told to drop it all.
    channel = cut_off[0].channel("orders")
    try:
        async with channel.call(STREAM_RESOURCES, DiscoveryResponse.FromString) as holding:
            await holding.send(DiscoveryRequest(type_url=CLUSTERS, version_info="held",
                                                node=Node(id="orders-1")))
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(HELD_BACK):
                    await holding.receive()
        async with channel.call(STREAM_RESOURCES, DiscoveryResponse.FromString) as new:
            await new.send(DiscoveryRequest(type_url=CLUSTERS, node=Node(id="orders-2")))
            first = await new.receive()  # nothing to lose: answered, with nothing
            assert first is not None and list(first.resources) == []
    finally:
        await channel.close()

"""The xDS v3 stream, driven with grpcio's raw ADS stub: who may open it, and its protocol.

grpcio's own xDS *client* is tested in tests/interop/xds/; here each test writes the
DiscoveryRequests itself, to check the rules one at a time — the same as our own stream's
(controlplane/discovery.py): authentication by certificate, a node its certificate does not
prove refused, an ACK never answered with a push, a NACK recorded with its reason, a push
only when a view changed — and that a proxyless server is registered only where it may be.
"""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import grpc
import pytest
from envoy.config.core.v3.base_pb2 import Locality, Node
from envoy.service.discovery.v3 import ads_pb2_grpc
from envoy.service.discovery.v3.discovery_pb2 import DiscoveryRequest
from google.protobuf.struct_pb2 import Struct
from google.rpc.status_pb2 import Status

from certs.pki import issue_workload, write_workload
from controlplane.api import start_api
from controlplane.xds.proxyless import MAX_INBOUND
from controlplane.xds.resources import (
    CLUSTER,
    CLUSTER_LOAD_ASSIGNMENT,
    LISTENER,
    NAMESPACE_METADATA,
    ROUTE_CONFIGURATION,
)
from mesh.proto.config_pb2 import Endpoint
from tests.integration.controlplane.conftest import Mesh

pytestmark = [pytest.mark.interop, pytest.mark.timeout(60)]

QUIET = 0.3  # seconds to listen for a push that must not come (a bound, never a measurement)


def channel(mesh: Mesh, service: str | None, namespace: str = "default") -> grpc.aio.Channel:
    """A grpcio channel to the control plane as ``service`` (None: no client certificate)."""
    root = (mesh.pki / "ca.crt").read_bytes()
    if service is None:
        credentials = grpc.ssl_channel_credentials(root)
    else:
        workload = issue_workload(mesh.ca, mesh.identity(service, namespace), timedelta(hours=1))
        cert, key = write_workload(workload, mesh.tmp / f"grpcio-{namespace}-{service}")
        credentials = grpc.ssl_channel_credentials(root, key.read_bytes(), cert.read_bytes())
    # The control plane's certificate names 127.0.0.1, where it serves: no name override.
    return grpc.aio.secure_channel(f"127.0.0.1:{mesh.cp.port}", credentials,
                                   options=[("grpc.enable_http_proxy", 0)])


def node(service: str, namespace: str = "default", zone: str = "") -> Node:
    metadata = Struct()
    metadata.update({NAMESPACE_METADATA: namespace})
    return Node(id=f"{service}-proxyless", cluster=service, metadata=metadata,
                locality=Locality(zone=zone))


class Stream:
    """One ADS call: write requests, read responses."""

    def __init__(self, chan: grpc.aio.Channel) -> None:
        self.channel = chan
        self.call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(chan).StreamAggregatedResources(
            timeout=30)
        self._pending: asyncio.Future[Any] | None = None

    async def send(self, **fields: Any) -> None:
        await self.call.write(DiscoveryRequest(**fields))

    async def receive(self, within: float = 10.0) -> Any:
        """The next response (one read in flight at a time: a read that timed out goes on)."""
        if self._pending is None:
            self._pending = asyncio.ensure_future(self.call.read())
        try:
            return await asyncio.wait_for(asyncio.shield(self._pending), within)
        finally:
            if self._pending.done():
                self._pending = None

    async def nothing_within(self, seconds: float) -> bool:
        try:
            await self.receive(seconds)
        except TimeoutError:
            return True
        return False


async def status(mesh: Mesh) -> Any:
    """What the operator API's ``GET /status`` answers."""
    runner = await start_api(mesh.cp, "127.0.0.1", 0)
    try:
        port = runner.addresses[0][1]
        request = urllib.request.Request(f"http://127.0.0.1:{port}/status",
                                         headers=mesh.operator_headers)
        return await asyncio.to_thread(lambda: json.load(urllib.request.urlopen(request)))
    finally:
        await runner.cleanup()


@pytest.fixture
async def streams(mesh: Mesh) -> AsyncIterator[list[Stream]]:
    opened: list[Stream] = []
    yield opened
    for stream in opened:
        stream.call.cancel()
        if stream._pending is not None:
            stream._pending.cancel()
        await stream.channel.close()


def open_stream(mesh: Mesh, streams: list[Stream], service: str | None,
                namespace: str = "default") -> Stream:
    stream = Stream(channel(mesh, service, namespace))
    streams.append(stream)
    return stream


async def test_a_stream_without_a_mesh_certificate_is_refused(mesh: Mesh) -> None:
    chan = channel(mesh, None)
    try:
        # No request at all: the server refuses when the call opens (a write of ours racing
        # that answer would fail on our side first, with grpcio's own INTERNAL).
        call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(chan).StreamAggregatedResources(
            timeout=10)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            async for _ in call:
                pass
    finally:
        await chan.close()
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "certificate" in (refused.value.details() or "")
    assert not mesh.cp.xds.subscriptions


async def test_a_node_its_certificate_does_not_prove_is_refused(mesh: Mesh,
                                                                streams: list[Stream]) -> None:
    stream = open_stream(mesh, streams, "auditor", "shop")
    await stream.send(node=node("payments", "shop"), type_url=CLUSTER)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stream.receive()
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    details = refused.value.details() or ""
    assert "'payments'" in details and "spiffe://cluster.local/ns/shop/sa/auditor" in details


async def test_ack_nack_and_pushes_follow_the_xds_rules(mesh: Mesh,
                                                        streams: list[Stream]) -> None:
    await mesh.cp.policy.apply_text("clusters:\n- name: orders\n", "test")
    stream = open_stream(mesh, streams, "auditor")
    await stream.send(node=node("auditor"), type_url=CLUSTER, resource_names=["orders"])
    first = await stream.receive()
    assert first.type_url == CLUSTER and first.nonce and len(first.resources) == 1
    # ACK: recorded, never answered with a push.
    await stream.send(type_url=CLUSTER, resource_names=["orders"],
                      version_info=first.version_info, response_nonce=first.nonce)
    assert await stream.nothing_within(QUIET)
    (row,) = [s for s in mesh.cp.xds.subscriptions.values()]
    assert row.types[CLUSTER].acked_version == first.version_info
    # A change to what it holds is pushed, with a new version and nonce.
    await mesh.cp.policy.apply_text("clusters:\n- name: orders\n  lb_policy: RING_HASH\n"
                              "  ring_hash: {hash_header: x-user}\n", "test")
    second = await stream.receive()
    assert second.version_info != first.version_info and second.nonce != first.nonce
    # NACK: the previous version, the new nonce, a reason — recorded, not answered.
    await stream.send(type_url=CLUSTER, resource_names=["orders"],
                      version_info=first.version_info, response_nonce=second.nonce,
                      error_detail=Status(code=3, message="ring hash refused, say"))
    assert await stream.nothing_within(QUIET)
    state = row.types[CLUSTER]
    assert (state.nacks, state.last_nack) == (1, "ring hash refused, say")
    assert state.acked_version == first.version_info
    # A request with a stale nonce is ignored.
    await stream.send(type_url=CLUSTER, resource_names=["orders"],
                      version_info=second.version_info, response_nonce=first.nonce)
    assert await stream.nothing_within(QUIET)
    assert state.acked_version == first.version_info


async def test_the_operator_api_shows_xds_streams_beside_sidecars(mesh: Mesh,
                                                                  streams: list[Stream]) -> None:
    await mesh.cp.policy.apply_text("clusters:\n- name: orders\n  lb_policy: PEAK_EWMA\n", "test")
    stream = open_stream(mesh, streams, "auditor", "shop")
    await stream.send(node=node("auditor", "shop"), type_url=CLUSTER, resource_names=["orders"])
    response = await stream.receive()
    await stream.send(type_url=CLUSTER, resource_names=["orders"],
                      version_info=response.version_info, response_nonce=response.nonce,
                      error_detail=Status(code=3, message="no such policy"))
    assert await stream.nothing_within(QUIET)
    data = await status(mesh)
    (row,) = data["streams"]
    assert (row["protocol"], row["service"], row["namespace"]) == ("xds.v3", "auditor", "shop")
    assert row["identity"] == "spiffe://cluster.local/ns/shop/sa/auditor"
    assert row["types"]["Cluster"]["last_nack"] == "no such policy"
    assert any(w["resource"] == "Cluster orders" and "ROUND_ROBIN" in w["message"]
               for w in data["xds"]["unsupported"])


def canary_policy(route: str) -> str:
    """Clusters orders and orders-v2, and the routes "orders": every call to ``route``."""
    return ("clusters:\n- name: orders\n- name: orders-v2\n"
            "routes:\n- name: orders\n  virtual_hosts:\n  - name: orders\n"
            "    domains: [orders]\n    routes:\n    - match: {prefix: /}\n"
            f"      route: {route}\n")


async def test_a_nack_of_the_clusters_new_routes_name_shows_the_version_before(
        mesh: Mesh, streams: list[Stream]) -> None:
    # As gRPC does: it ACKs the new routes, then asks for the clusters they name; for a moment
    # it has ACKed all it asked for. Refusing those clusters, it never held version 2 in full.
    await mesh.cp.policy.apply_text(canary_policy("{cluster: orders}"), "v1")
    stream = open_stream(mesh, streams, "auditor")
    await stream.send(node=node("auditor"), type_url=ROUTE_CONFIGURATION,
                      resource_names=["orders"])
    routes = await stream.receive()
    await stream.send(type_url=ROUTE_CONFIGURATION, resource_names=["orders"],
                      version_info=routes.version_info, response_nonce=routes.nonce)
    await stream.send(type_url=CLUSTER, resource_names=["orders"])
    held = await stream.receive()
    await stream.send(type_url=CLUSTER, resource_names=["orders"],
                      version_info=held.version_info, response_nonce=held.nonce)
    assert await stream.nothing_within(QUIET)
    assert [(row["policy_version"], row["nack"]) for row in (await status(mesh))["streams"]] \
        == [(1, None)]

    await mesh.cp.policy.apply_text(canary_policy(
        "{weighted_clusters: {clusters: [{name: orders, weight: 90}, "
        "{name: orders-v2, weight: 10}]}}"), "v2")
    routes = await stream.receive()
    assert routes.type_url == ROUTE_CONFIGURATION  # orders' Cluster is the same
    await stream.send(type_url=ROUTE_CONFIGURATION, resource_names=["orders"],
                      version_info=routes.version_info, response_nonce=routes.nonce)
    await stream.send(type_url=CLUSTER, resource_names=["orders", "orders-v2"],
                      version_info=held.version_info, response_nonce=held.nonce)
    clusters = await stream.receive()
    assert (clusters.type_url, len(clusters.resources)) == (CLUSTER, 2)
    await stream.send(type_url=CLUSTER, resource_names=["orders", "orders-v2"],
                      version_info=held.version_info, response_nonce=clusters.nonce,
                      error_detail=Status(code=3, message="orders-v2 refused, say"))
    assert await stream.nothing_within(QUIET)

    (row,) = (await status(mesh))["streams"]
    assert row["policy_version"] == 1
    assert row["nack"] == {"type": "Cluster", "message": "orders-v2 refused, say",
                           "policy_version": 2}


async def test_a_proxyless_server_is_registered_while_it_asks_for_its_listener(
        mesh: Mesh, streams: list[Stream]) -> None:
    stream = open_stream(mesh, streams, "inventory", "shop")
    await stream.send(node=node("inventory", "shop", zone="z1"), type_url=LISTENER,
                      resource_names=["mesh/inbound/0.0.0.0:50051"])
    listener = await stream.receive()
    assert listener.type_url == LISTENER and len(listener.resources) == 1
    (instance,) = mesh.cp.registry.instances()
    assert instance.id == "shop/inventory@127.0.0.1:50051"
    assert (instance.endpoint.zone, instance.endpoint.health) == ("z1", Endpoint.HEALTHY)
    assert instance.endpoint.identity == "spiffe://cluster.local/ns/shop/sa/inventory"
    assert (instance.id, instance.owner) in mesh.cp.inbound.held()
    # Its callers see it: the cluster inventory.shop has it as an endpoint.
    await stream.send(type_url=CLUSTER_LOAD_ASSIGNMENT, resource_names=["inventory.shop"])
    assignment = await stream.receive()
    assert assignment.type_url == CLUSTER_LOAD_ASSIGNMENT and len(assignment.resources) == 1
    # Its stream ends: no lease renewal any more.
    stream.call.cancel()
    for _ in range(100):
        if not mesh.cp.inbound.held():
            break
        await asyncio.sleep(0.02)
    assert not mesh.cp.inbound.held()


FLOOD = [f"mesh/inbound/127.0.0.1:{port}" for port in range(50000, 50000 + MAX_INBOUND + 1)]


@pytest.mark.parametrize(("claims", "names", "code", "said"), [
    pytest.param("inventory", ["mesh/inbound/127.0.0.99:50051"],
                 grpc.StatusCode.PERMISSION_DENIED, "127.0.0.99", id="an-address-not-its-own"),
    pytest.param("inventory", ["mesh/inbound/nonsense"], grpc.StatusCode.INVALID_ARGUMENT,
                 "'nonsense' is not host:port", id="a-name-that-does-not-parse"),
    pytest.param("inventory", FLOOD, grpc.StatusCode.RESOURCE_EXHAUSTED,
                 f"on {MAX_INBOUND} addresses at most", id="a-flood-of-listeners"),
    pytest.param("payments", ["mesh/inbound/127.0.0.1:50051"],
                 grpc.StatusCode.PERMISSION_DENIED, "claims service 'payments'",
                 id="a-node-its-certificate-does-not-prove"),
])
async def test_a_proxyless_server_refused_registers_nothing(
        mesh: Mesh, streams: list[Stream], claims: str, names: list[str],
        code: grpc.StatusCode, said: str) -> None:
    """The stream ends with the reason, and the registry is as it was (the node is checked
    before anything is registered)."""
    stream = open_stream(mesh, streams, "inventory", "shop")
    await stream.send(node=node(claims, "shop"), type_url=LISTENER, resource_names=names)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stream.receive()
    assert refused.value.code() == code
    assert said in (refused.value.details() or "")
    assert not mesh.cp.registry.instances()

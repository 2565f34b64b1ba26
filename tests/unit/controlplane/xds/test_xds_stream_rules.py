"""The discovery server's rules in the xDS dialect: what an empty list of names means, how
many names a request may carry, and how refusals are counted (no stream, no socket)."""

from __future__ import annotations

import pytest
from envoy.config.core.v3.base_pb2 import Node as EnvoyNode
from envoy.service.discovery.v3.discovery_pb2 import DiscoveryRequest

from controlplane.discovery import (
    MAX_RESOURCE_NAMES,
    DiscoveryObserver,
    DiscoveryServer,
    Subscription,
)
from controlplane.errors import DiscoveryError
from controlplane.xds.resources import (
    CLUSTER,
    CLUSTER_LOAD_ASSIGNMENT,
    LISTENER,
    ROUTE_CONFIGURATION,
    XDS_V3,
)
from controlplane.xds.translate import translate
from mesh.clock import FakeClock
from mesh.grpc import StatusCode
from mesh.identity import SpiffeId
from mesh.proto.config_pb2 import Cluster, MeshPolicy
from mesh.proto.discovery_pb2 import Node

AUDITOR = SpiffeId(trust_domain="cluster.local", namespace="shop", service="auditor")
POLICY = MeshPolicy(clusters=[Cluster(name="orders", lb_policy=Cluster.ROUND_ROBIN),
                              Cluster(name="payments", lb_policy=Cluster.ROUND_ROBIN)])


class Refusals(DiscoveryObserver):
    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    def refused(self, call: str, reason: str) -> None:
        self.seen.append((call, reason))


def server_and_stream() -> tuple[DiscoveryServer, Subscription, Refusals]:
    snapshot = translate(POLICY, {}, policy_version=1)
    refusals = Refusals()
    server = DiscoveryServer(lambda: snapshot, FakeClock(), refusals, dialect=XDS_V3)
    stream = Subscription(1, Node(id="auditor-1"), "127.0.0.1:5000", AUDITOR, 0.0)
    server.subscriptions[1] = stream
    return server, stream, refusals


@pytest.mark.parametrize(("type_url", "count"), [(CLUSTER, 2), (LISTENER, 2)])
def test_an_empty_first_request_for_listeners_or_clusters_is_the_wildcard(
        type_url: str, count: int) -> None:
    server, stream, _ = server_and_stream()
    server._on_request(stream, DiscoveryRequest(type_url=type_url))
    (response,) = server._due(stream)
    assert len(response.resources) == count  # every one (listeners: one per cluster)


@pytest.mark.parametrize("type_url", [ROUTE_CONFIGURATION, CLUSTER_LOAD_ASSIGNMENT])
def test_an_empty_list_for_routes_or_endpoints_means_none(type_url: str) -> None:
    server, stream, _ = server_and_stream()
    server._on_request(stream, DiscoveryRequest(type_url=type_url))
    (response,) = server._due(stream)
    assert list(response.resources) == []


def test_an_ack_with_no_names_unsubscribes_from_what_it_named() -> None:
    # gRPC drops a RouteConfiguration it no longer needs by asking for none: it must not be
    # given (and then pushed) every route configuration of the mesh instead.
    server, stream, _ = server_and_stream()
    server._on_request(stream, DiscoveryRequest(type_url=CLUSTER_LOAD_ASSIGNMENT,
                                                resource_names=["orders"]))
    (first,) = server._due(stream)
    assert len(first.resources) == 1
    server._on_request(stream, DiscoveryRequest(type_url=CLUSTER_LOAD_ASSIGNMENT,
                                                version_info=first.version_info,
                                                response_nonce=first.nonce))
    (second,) = server._due(stream)
    assert list(second.resources) == []


def test_the_explicit_wildcard_asks_for_everything() -> None:
    server, stream, _ = server_and_stream()
    server._on_request(stream, DiscoveryRequest(type_url=CLUSTER_LOAD_ASSIGNMENT,
                                                resource_names=["*"]))
    (response,) = server._due(stream)
    assert len(response.resources) == 2


def test_a_request_naming_too_many_resources_is_refused_and_counted() -> None:
    server, stream, refusals = server_and_stream()
    names = [f"orders:{port}" for port in range(MAX_RESOURCE_NAMES + 1)]
    with pytest.raises(DiscoveryError) as refused:
        server._on_request(stream, DiscoveryRequest(type_url=LISTENER, resource_names=names))
    assert refused.value.code == StatusCode.RESOURCE_EXHAUSTED
    assert f"names {MAX_RESOURCE_NAMES + 1} resources" in refused.value.message
    assert refusals.seen == [("StreamAggregatedResources", "too_many_names")]
    assert stream.types == {}


def test_a_node_mismatch_is_counted_under_the_xds_call() -> None:
    server, stream, refusals = server_and_stream()
    with pytest.raises(DiscoveryError):
        server._on_request(stream, DiscoveryRequest(type_url=CLUSTER,
                                                    node=EnvoyNode(id="x", cluster="payments")))
    assert refusals.seen == [("StreamAggregatedResources", "node_mismatch")]

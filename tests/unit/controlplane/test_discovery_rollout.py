"""Which policy version each stream runs: at V once everything sent for V is ACKed, at once
when V changes nothing it holds, held back (with the reason) by a NACK — in both dialects,
driven request by request (no stream, no socket)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from envoy.service.discovery.v3.discovery_pb2 import DiscoveryRequest as XdsRequest
from google.rpc.status_pb2 import Status as RpcStatus

from controlplane.discovery import MESH_V1, DiscoveryServer, Subscription, View
from controlplane.rollout import Nack
from controlplane.snapshot import build
from controlplane.xds.resources import CLUSTER, ROUTE_CONFIGURATION, XDS_V3
from controlplane.xds.translate import translate
from mesh.clock import FakeClock
from mesh.identity import SpiffeId
from mesh.proto.config_pb2 import (
    AuthorizationPolicy,
    Cluster,
    MeshPolicy,
    Route,
    RouteAction,
    RouteConfiguration,
    RouteMatch,
    VirtualHost,
    WeightedClusters,
)
from mesh.proto.discovery_pb2 import DiscoveryRequest, Node, Status
from mesh.proto.resources import CLUSTERS, ROUTES

FRONTEND = SpiffeId(trust_domain="cluster.local", namespace="shop", service="frontend")
ORDERS = MeshPolicy(clusters=[Cluster(name="orders")])
ORDERS_AND_PAYMENTS = MeshPolicy(clusters=[Cluster(name="orders"), Cluster(name="payments")])
PAYMENTS_PROTECTED = MeshPolicy(clusters=[Cluster(name="orders"), Cluster(name="payments")],
                                authorization=[AuthorizationPolicy(service="payments",
                                                                   namespace="shop")])



def routed(action: RouteAction) -> MeshPolicy:
    """Clusters orders and orders-v2, and the routes "orders": every call to ``action``."""
    route = Route(match=RouteMatch(prefix="/"), route=action)
    return MeshPolicy(clusters=[Cluster(name="orders"), Cluster(name="orders-v2")],
                      routes=[RouteConfiguration(name="orders", virtual_hosts=[
                          VirtualHost(name="orders", domains=["orders"], routes=[route])])])


TO_ORDERS = routed(RouteAction(cluster="orders"))
CANARY = routed(RouteAction(weighted_clusters=WeightedClusters(clusters=[
    WeightedClusters.ClusterWeight(name="orders", weight=90),
    WeightedClusters.ClusterWeight(name="orders-v2", weight=10)])))


class Mesh:
    """A discovery server over a snapshot the test replaces, one policy version at a time,
    and one stream."""

    def __init__(self, policy: MeshPolicy, *, xds: bool = False) -> None:
        self.xds = xds
        self.snapshot = self._build(policy, 1)
        self.server = DiscoveryServer(lambda: self.snapshot, FakeClock(),
                                      dialect=XDS_V3 if xds else MESH_V1)
        self.stream = Subscription(1, Node(id="frontend-1"), "127.0.0.1:5000", FRONTEND, 0.0)
        self.server.subscriptions[1] = self.stream

    def _build(self, policy: MeshPolicy, version: int) -> View:
        return (translate if self.xds else build)(policy, {}, policy_version=version)

    def policy(self, policy: MeshPolicy, version: int) -> list[Any]:
        """The policy changes to ``version``: what the stream is sent."""
        self.snapshot = self._build(policy, version)
        self.server.changed()
        return self.server._due(self.stream)

    def request(self, type_url: str, *, version: str = "", nonce: str = "",
                names: Sequence[str] = (), nack: str | None = None) -> list[Any]:
        """The stream sends a request (a NACK with reason ``nack``): what it is sent back."""
        if self.xds:
            request: Any = XdsRequest(type_url=type_url, version_info=version,
                                      response_nonce=nonce, resource_names=names)
            error: Any = RpcStatus
        else:
            request = DiscoveryRequest(type_url=type_url, version_info=version,
                                       response_nonce=nonce, resource_names=names)
            error = Status
        if nack is not None:
            request.error_detail.CopyFrom(error(code=3, message=nack))
        self.server._on_request(self.stream, request)
        return self.server._due(self.stream)

    def subscribe(self, *type_urls: str, names: Sequence[str] = ()) -> list[Any]:
        return [response for type_url in type_urls
                for response in self.request(type_url, names=names)]

    def hold(self, *type_urls: str) -> None:
        """Subscribe to ``type_urls`` and ACK what is sent."""
        for response in self.subscribe(*type_urls):
            self.ack(response)

    def ack(self, response: Any, names: Sequence[str] = ()) -> list[Any]:
        """ACK ``response``, asking for ``names`` from now on."""
        return self.request(response.type_url, version=response.version_info,
                            nonce=response.nonce, names=names)

    def nack(self, response: Any, reason: str, names: Sequence[str] = ()) -> None:
        self.request(response.type_url, nonce=response.nonce, names=names, nack=reason)

    def at(self) -> tuple[int | None, Nack | None]:
        """The policy version the stream runs in full, and the NACK that holds it back."""
        return self.stream.rollout.policy_version, self.stream.rollout.nack


def test_a_stream_is_at_a_version_once_every_type_sent_for_it_is_acked() -> None:
    mesh = Mesh(ORDERS)
    clusters, routes = mesh.subscribe(CLUSTERS, ROUTES)
    assert mesh.at() == (None, None)  # nothing ACKed yet
    mesh.ack(clusters)
    assert mesh.at() == (None, None)  # the routes of version 1 are not
    mesh.ack(routes)
    assert mesh.at() == (1, None)

    (clusters,) = mesh.policy(ORDERS_AND_PAYMENTS, 2)
    assert mesh.at() == (1, None)
    mesh.ack(clusters)
    assert mesh.at() == (2, None)


def test_a_version_that_changes_nothing_a_stream_holds_is_reached_at_once() -> None:
    mesh = Mesh(ORDERS_AND_PAYMENTS)
    mesh.hold(CLUSTERS, ROUTES)
    # Version 2 protects payments: frontend's sidecar is sent nothing, and runs version 2.
    assert mesh.policy(PAYMENTS_PROTECTED, 2) == []
    assert mesh.at() == (2, None)


def test_a_nack_holds_the_stream_back_until_a_later_version_is_acked_in_full() -> None:
    mesh = Mesh(ORDERS)
    mesh.hold(CLUSTERS, ROUTES)
    (clusters,) = mesh.policy(ORDERS_AND_PAYMENTS, 2)

    mesh.nack(clusters, "cluster payments: no such balancer")

    assert mesh.at() == (1, Nack(CLUSTERS, "cluster payments: no such balancer", 2))
    # Version 3 protects payments, which frontend is not sent: the clusters it refused are
    # still what it would get, so it is held back still.
    assert mesh.policy(PAYMENTS_PROTECTED, 3) == []
    assert mesh.at() == (1, Nack(CLUSTERS, "cluster payments: no such balancer", 2))

    (clusters,) = mesh.policy(ORDERS, 4)  # payments taken out again
    mesh.ack(clusters)
    assert mesh.at() == (4, None)


def test_the_xds_dialect_reports_its_rollout_the_same_way() -> None:
    mesh = Mesh(ORDERS, xds=True)
    (clusters,) = mesh.subscribe(CLUSTER)
    mesh.ack(clusters)
    assert mesh.at() == (1, None)
    (clusters,) = mesh.policy(ORDERS_AND_PAYMENTS, 2)

    mesh.nack(clusters, "no such balancer")

    assert mesh.at() == (1, Nack(CLUSTER, "no such balancer", 2))
    (clusters,) = mesh.policy(ORDERS, 3)
    mesh.ack(clusters)
    assert mesh.at() == (3, None)


def test_an_xds_nack_of_clusters_a_new_route_asks_for_holds_the_stream_back() -> None:
    # gRPC learns the cluster names from the routes: it ACKs version 2's routes before it asks
    # for orders-v2, so for a moment everything it asked for is ACKed. A NACK of what it then
    # asks for shows version 2 was never held in full.
    mesh = Mesh(TO_ORDERS, xds=True)
    (routes,) = mesh.subscribe(ROUTE_CONFIGURATION, names=["orders"])
    (held,) = mesh.subscribe(CLUSTER, names=["orders"])
    mesh.ack(routes, ["orders"])
    mesh.ack(held, ["orders"])
    assert mesh.at() == (1, None)

    (routes,) = mesh.policy(CANARY, 2)  # the canary: 10 % to orders-v2; orders is unchanged
    assert mesh.ack(routes, ["orders"]) == []
    assert mesh.at() == (2, None)  # as far as the server can tell
    (clusters,) = mesh.ack(held, ["orders", "orders-v2"])  # what the new routes name
    mesh.nack(clusters, "cluster orders-v2: no such balancer", ["orders", "orders-v2"])

    assert mesh.at() == (1, Nack(CLUSTER, "cluster orders-v2: no such balancer", 2))
    (routes,) = mesh.policy(TO_ORDERS, 3)  # the canary called off
    assert mesh.ack(routes, ["orders"]) == []
    assert mesh.at() == (1, Nack(CLUSTER, "cluster orders-v2: no such balancer", 2))
    # gRPC drops orders-v2: the last nonce, the version it holds, the names it still wants.
    (clusters,) = mesh.request(CLUSTER, version=held.version_info, nonce=clusters.nonce,
                               names=["orders"])
    mesh.ack(clusters, ["orders"])
    assert mesh.at() == (3, None)

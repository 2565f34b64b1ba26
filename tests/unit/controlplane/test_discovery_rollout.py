"""Which policy version each stream runs: at V once everything sent for V is ACKed, at once
when V changes nothing it holds, held back (with the reason) by a NACK — in both dialects,
driven request by request (no stream, no socket)."""

from __future__ import annotations

from typing import Any

from envoy.service.discovery.v3.discovery_pb2 import DiscoveryRequest as XdsRequest
from google.rpc.status_pb2 import Status as RpcStatus

from controlplane.discovery import MESH_V1, DiscoveryServer, Nack, Subscription, View
from controlplane.snapshot import build
from controlplane.xds.resources import CLUSTER, XDS_V3
from controlplane.xds.translate import translate
from mesh.clock import FakeClock
from mesh.identity import SpiffeId
from mesh.proto.config_pb2 import AuthorizationPolicy, Cluster, MeshPolicy
from mesh.proto.discovery_pb2 import DiscoveryRequest, Node, Status
from mesh.proto.resources import CLUSTERS, ROUTES

FRONTEND = SpiffeId(trust_domain="cluster.local", namespace="shop", service="frontend")
ORDERS = MeshPolicy(clusters=[Cluster(name="orders")])
ORDERS_AND_PAYMENTS = MeshPolicy(clusters=[Cluster(name="orders"), Cluster(name="payments")])
PAYMENTS_PROTECTED = MeshPolicy(clusters=[Cluster(name="orders"), Cluster(name="payments")],
                                authorization=[AuthorizationPolicy(service="payments",
                                                                   namespace="shop")])


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

    def subscribe(self, *type_urls: str) -> list[Any]:
        request = XdsRequest if self.xds else DiscoveryRequest
        for type_url in type_urls:
            self.server._on_request(self.stream, request(type_url=type_url))
        return self.server._due(self.stream)

    def ack(self, response: Any) -> None:
        request = XdsRequest if self.xds else DiscoveryRequest
        self.server._on_request(self.stream, request(
            type_url=response.type_url, version_info=response.version_info,
            response_nonce=response.nonce))

    def nack(self, response: Any, reason: str) -> None:
        if self.xds:
            request: Any = XdsRequest(type_url=response.type_url, response_nonce=response.nonce,
                                      error_detail=RpcStatus(code=3, message=reason))
        else:
            request = DiscoveryRequest(type_url=response.type_url, response_nonce=response.nonce,
                                       error_detail=Status(code=3, message=reason))
        self.server._on_request(self.stream, request)

    def at(self) -> tuple[int | None, Nack | None]:
        """The policy version the stream runs in full, and the NACK that holds it back."""
        return self.stream.policy_version, self.stream.nack


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
    for response in mesh.subscribe(CLUSTERS, ROUTES):
        mesh.ack(response)
    # Version 2 protects payments: frontend's sidecar is sent nothing, and runs version 2.
    assert mesh.policy(PAYMENTS_PROTECTED, 2) == []
    assert mesh.at() == (2, None)


def test_a_nack_holds_the_stream_back_until_a_later_version_is_acked_in_full() -> None:
    mesh = Mesh(ORDERS)
    for response in mesh.subscribe(CLUSTERS, ROUTES):
        mesh.ack(response)
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

"""The discovery server's bookkeeping, driven request by request (no stream, no socket)."""

from __future__ import annotations

import pytest

from controlplane.discovery import DiscoveryServer, Subscription
from controlplane.errors import DiscoveryError
from controlplane.snapshot import build
from mesh.clock import FakeClock
from mesh.grpc import StatusCode
from mesh.identity import SpiffeId
from mesh.proto.config_pb2 import AuthorizationPolicy, Cluster, MeshPolicy
from mesh.proto.discovery_pb2 import DiscoveryRequest, Node
from mesh.proto.resources import AUTHORIZATION, CLUSTERS, ROUTES, unpack
from tests.unit.controlplane.test_discovery_rollout import ORDERS, ORDERS_AND_PAYMENTS, Mesh

FRONTEND = SpiffeId(trust_domain="cluster.local", namespace="shop", service="frontend")
POLICY = MeshPolicy(clusters=[Cluster(name="orders")], authorization=[
    AuthorizationPolicy(service="frontend", namespace="shop"),
    AuthorizationPolicy(service="payments", namespace="shop"),
    AuthorizationPolicy(service="frontend", namespace="evil")])


def server_and_stream(identity: SpiffeId = FRONTEND) -> tuple[DiscoveryServer, Subscription]:
    snapshot = build(POLICY, {}, policy_version=1)
    server = DiscoveryServer(lambda: snapshot, FakeClock())
    subscription = Subscription(1, Node(id="frontend-1"), "127.0.0.1:5000", identity, 0.0)
    server.subscriptions[1] = subscription
    return server, subscription


def test_an_ack_settles_what_was_sent() -> None:
    server, stream = server_and_stream()
    server._on_request(stream, DiscoveryRequest(type_url=CLUSTERS))
    (response,) = server._due(stream)
    assert server.unacked == 1
    server._on_request(stream, DiscoveryRequest(type_url=CLUSTERS,
                                                version_info=response.version_info,
                                                response_nonce=response.nonce))
    assert server.unacked == 0


def test_a_resubscription_forgets_what_was_in_flight() -> None:
    # A sidecar that subscribes again (empty nonce) before ACKing will never ACK the old
    # response: counting it would leave convergence waiting forever.
    server, stream = server_and_stream()
    server._on_request(stream, DiscoveryRequest(type_url=CLUSTERS))
    server._due(stream)
    assert server.unacked == 1
    server._on_request(stream, DiscoveryRequest(type_url=CLUSTERS))
    assert server.unacked == 0
    (response,) = server._due(stream)  # answered afresh, and counted once
    assert server.unacked == 1
    server._on_request(stream, DiscoveryRequest(type_url=CLUSTERS,
                                                version_info=response.version_info,
                                                response_nonce=response.nonce))
    assert server.unacked == 0


def test_a_refused_version_replaced_by_the_one_held_leaves_nothing_waiting() -> None:
    # The version it refused stays unACKed; once the policy goes back, it is sent the version
    # it holds (and ACKed already): convergence must not wait for the refused one for ever.
    mesh = Mesh(ORDERS)
    mesh.hold(CLUSTERS, ROUTES)
    (clusters,) = mesh.policy(ORDERS_AND_PAYMENTS, 2)
    mesh.nack(clusters, "cluster payments: no such balancer")
    assert mesh.server.unacked == 1

    (clusters,) = mesh.policy(ORDERS, 3)
    assert mesh.server.unacked == 0
    assert (mesh.server.convergences, mesh.server.changed_at) == (1, None)  # 2 and 3 in one
    mesh.ack(clusters)
    assert mesh.server.unacked == 0


def test_a_reconnect_holding_the_current_version_is_sent_nothing() -> None:
    # A sidecar that moves to another replica holds what that replica would send it.
    server, stream = server_and_stream()
    current = server._snapshot().view(CLUSTERS, FRONTEND, None).version
    server._on_request(stream, DiscoveryRequest(type_url=CLUSTERS, version_info=current))
    assert server._due(stream) == [] and server.unacked == 0
    assert stream.types[CLUSTERS].acked_version == current


def test_a_reconnect_holding_an_older_version_is_sent_the_current_one() -> None:
    server, stream = server_and_stream()
    server._on_request(stream, DiscoveryRequest(type_url=CLUSTERS, version_info="0ld"))
    (response,) = server._due(stream)
    assert response.version_info == server._snapshot().view(CLUSTERS, FRONTEND, None).version


@pytest.mark.parametrize(("claimed", "field"), [
    (Node(id="x", service="payments"), "service"),
    (Node(id="x", service="frontend", namespace="evil"), "namespace"),
])
def test_a_node_that_is_not_the_certificate_is_refused(claimed: Node, field: str) -> None:
    server, stream = server_and_stream()
    with pytest.raises(DiscoveryError) as refused:
        server._on_request(stream, DiscoveryRequest(type_url=CLUSTERS, node=claimed))
    assert refused.value.code == StatusCode.PERMISSION_DENIED
    value = getattr(claimed, field)
    assert refused.value.message == (
        f"node 'x' claims {field} {value!r}, but its certificate proves "
        f"spiffe://cluster.local/ns/shop/sa/frontend ({field} {getattr(FRONTEND, field)!r})")
    assert stream.types == {}  # nothing was subscribed


def test_the_authorization_view_follows_the_proven_identity_not_the_claim() -> None:
    """A node that claims nothing gets its certificate's service and namespace, and only the
    authorization policies of that service in that namespace."""
    server, stream = server_and_stream()
    server._on_request(stream, DiscoveryRequest(type_url=AUTHORIZATION, node=Node(id="x")))
    assert (stream.node.service, stream.node.namespace) == ("frontend", "shop")
    (response,) = server._due(stream)
    policies = unpack(AUTHORIZATION, list(response.resources))
    assert [(p.service, p.namespace) for p in policies  # type: ignore[attr-defined]
            ] == [("frontend", "shop")]


def test_an_ack_that_changes_the_names_asked_for_is_answered_with_the_new_set() -> None:
    # gRPC subscribes to one more Cluster by ACKing with the longer list (SotW): the new name
    # must be answered, or its resource is never sent and gRPC times out on it.
    server, stream = server_and_stream()
    server._on_request(stream, DiscoveryRequest(type_url=CLUSTERS, resource_names=["orders"]))
    (first,) = server._due(stream)
    server._on_request(stream, DiscoveryRequest(
        type_url=CLUSTERS, resource_names=["orders", "payments"],
        version_info=first.version_info, response_nonce=first.nonce))
    assert stream.wake.is_set()
    (second,) = server._due(stream)
    assert second.nonce != first.nonce  # answered, although "payments" does not exist
    # The same names in another order are the same subscription: an ACK, nothing sent.
    server._on_request(stream, DiscoveryRequest(
        type_url=CLUSTERS, resource_names=["payments", "orders"],
        version_info=second.version_info, response_nonce=second.nonce))
    assert server._due(stream) == []
    assert server.unacked == 0

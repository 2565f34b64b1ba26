"""The discovery server's bookkeeping, driven request by request (no stream, no socket)."""

from __future__ import annotations

from controlplane.discovery import DiscoveryServer, Subscription
from controlplane.snapshot import build
from mesh.clock import FakeClock
from mesh.proto.config_pb2 import Cluster, MeshPolicy
from mesh.proto.discovery_pb2 import DiscoveryRequest, Node
from mesh.proto.resources import CLUSTERS


def server_and_stream() -> tuple[DiscoveryServer, Subscription]:
    snapshot = build(MeshPolicy(clusters=[Cluster(name="orders")]), {})
    server = DiscoveryServer(lambda: snapshot, FakeClock())
    subscription = Subscription(1, Node(id="frontend-1"), "127.0.0.1:5000", None, 0.0)
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

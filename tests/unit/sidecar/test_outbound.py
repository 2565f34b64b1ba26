"""The outbound path's local answers that need no upstream: a route to a cluster it lacks.

A route may name a cluster the sidecar does not have — the control plane removed the cluster
and has yet to remove the route, or the route came first. The caller gets 503 (gRPC:
UNAVAILABLE) "no cluster X" at once, as from Envoy, and the request is counted.
"""

from __future__ import annotations

import random

from google.protobuf.json_format import ParseDict

from mesh.clock import FakeClock
from mesh.grpc import StatusCode
from mesh.http2 import ErrorCode, Headers
from mesh.proto.config_pb2 import Cluster, RouteConfiguration
from mesh.proto.resources import CLUSTERS, ROUTES
from sidecar.config import LiveConfig
from sidecar.metrics import SidecarMetrics
from sidecar.outbound import Outbound


class CallerStream:
    """The app's side of one request, recording what the sidecar answered."""

    def __init__(self, headers: Headers) -> None:
        self.headers: Headers | None = headers
        self.trailers: Headers | None = None
        self.sent: Headers = []
        self.body = b""
        self.closed = False

    @property
    def ended(self) -> bool:
        return True

    @property
    def complete(self) -> bool:
        return True

    @property
    def send_closed(self) -> bool:
        return self.closed

    async def read(self) -> bytes:
        return b""

    def send_headers(self, headers: Headers, *, end_stream: bool = False) -> None:
        self.sent = headers
        self.closed = end_stream

    async def send_data(self, data: bytes, *, end_stream: bool = False) -> None:
        self.body += data
        self.closed = end_stream

    def send_trailers(self, trailers: Headers) -> None:
        raise AssertionError("a local reply sends no trailers")

    def end(self) -> None:
        self.closed = True

    def reset(self, code: int = ErrorCode.CANCEL) -> None:
        raise AssertionError(f"the stream was reset ({code})")


def outbound_with_a_route_to_a_removed_cluster() -> tuple[Outbound, SidecarMetrics]:
    clock, rng = FakeClock(), random.Random(1)
    config = LiveConfig(service="shopper", clock=clock, rng=rng, tls=lambda: None)
    config.apply(CLUSTERS, [Cluster(name="orders"), Cluster(name="orders-v2")])
    config.apply(ROUTES, [ParseDict({"name": "mesh", "virtual_hosts": [
        {"name": "orders", "domains": ["orders"],
         "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "orders-v2"}}]}]},
        RouteConfiguration())])
    config.apply(CLUSTERS, [Cluster(name="orders")])  # v2 goes first; its route still points
    metrics = SidecarMetrics()
    return Outbound(config, metrics, clock=clock, rng=rng), metrics


def requests(metrics: SidecarMetrics, code: str) -> float | None:
    return metrics.registry.get_sample_value(
        "mesh_sidecar_requests_total",
        {"direction": "outbound", "cluster": "orders-v2", "code": code})


async def test_a_route_to_a_cluster_it_lacks_answers_503_no_cluster() -> None:
    outbound, metrics = outbound_with_a_route_to_a_removed_cluster()
    caller = CallerStream([(":method", "GET"), (":path", "/items"), (":authority", "orders")])
    await outbound.handle(caller)
    assert dict(caller.sent)[":status"] == "503"
    assert caller.body == b"no cluster orders-v2\n" and caller.closed
    assert requests(metrics, "5xx") == 1


async def test_over_grpc_it_is_unavailable() -> None:
    outbound, _ = outbound_with_a_route_to_a_removed_cluster()
    caller = CallerStream([(":method", "POST"), (":path", "/shop.Orders/Get"),
                           (":authority", "orders"), ("content-type", "application/grpc")])
    await outbound.handle(caller)
    answer = dict(caller.sent)
    assert answer[":status"] == "200" and caller.closed  # trailers-only
    assert answer["grpc-status"] == str(int(StatusCode.UNAVAILABLE))
    assert answer["grpc-message"] == "no cluster orders-v2"

"""A cluster's endpoints as Envoy's ClusterLoadAssignment (EDS), grouped by zone.

Envoy groups endpoints by *locality*; we have one locality per zone (``Endpoint.zone``, the
empty zone included), all at priority 0, so gRPC balances over every zone as one set, as our
sidecars do. Each locality carries a ``load_balancing_weight``, the sum of its endpoints'
weights: gRPC picks a locality by that weight before an endpoint within it, and silently drops
a locality that has none (an EDS update that is ACKed and routes nowhere). An endpoint's weight
0 means our default, 1.

Health maps name for name (HEALTHY, UNHEALTHY, DRAINING); gRPC sends calls only to HEALTHY
(and UNKNOWN) endpoints, so an unhealthy or draining instance gets no new calls, as behind a
sidecar. The output is sorted (zones, then address and port) so the same endpoints always
serialize to the same bytes, and so the same version.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import groupby
from typing import Any

from envoy.config.core.v3.address_pb2 import Address, SocketAddress
from envoy.config.core.v3.base_pb2 import Locality
from envoy.config.core.v3.health_check_pb2 import HealthStatus
from envoy.config.endpoint.v3.endpoint_components_pb2 import (
    Endpoint as EnvoyEndpoint,
)
from envoy.config.endpoint.v3.endpoint_components_pb2 import (
    LbEndpoint,
    LocalityLbEndpoints,
)
from envoy.config.endpoint.v3.endpoint_pb2 import ClusterLoadAssignment as EnvoyAssignment
from google.protobuf.wrappers_pb2 import UInt32Value

from mesh.proto.config_pb2 import ClusterLoadAssignment, Endpoint

_HEALTH = {
    Endpoint.HEALTHY: HealthStatus.HEALTHY,
    Endpoint.UNHEALTHY: HealthStatus.UNHEALTHY,
    Endpoint.DRAINING: HealthStatus.DRAINING,
}


def assignment(ours: ClusterLoadAssignment) -> Any:
    """The Envoy ClusterLoadAssignment of one cluster's endpoints."""
    translated = EnvoyAssignment(cluster_name=ours.cluster_name)
    ordered = sorted(ours.endpoints, key=lambda e: (e.zone, e.address, e.port))
    for zone, members in groupby(ordered, key=lambda e: e.zone):
        translated.endpoints.append(_locality(zone, list(members)))
    return translated


def _weight(endpoint: Endpoint) -> int:
    """An endpoint's weight, 0 read as the default 1."""
    return endpoint.weight or 1


def _locality(zone: str, endpoints: Sequence[Endpoint]) -> Any:
    return LocalityLbEndpoints(
        locality=Locality(zone=zone),
        priority=0,
        load_balancing_weight=UInt32Value(value=sum(_weight(e) for e in endpoints)),
        lb_endpoints=[_lb_endpoint(e) for e in endpoints])


def _lb_endpoint(endpoint: Endpoint) -> Any:
    address = Address(socket_address=SocketAddress(address=endpoint.address,
                                                   port_value=endpoint.port))
    return LbEndpoint(endpoint=EnvoyEndpoint(address=address),
                      health_status=_HEALTH[endpoint.health],
                      load_balancing_weight=UInt32Value(value=_weight(endpoint)))

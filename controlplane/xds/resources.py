"""The xDS v3 resource types we serve, their push order, and names a bootstrap shares with us."""

from __future__ import annotations

from envoy.config.core.v3.base_pb2 import Node as EnvoyNode
from envoy.service.discovery.v3.discovery_pb2 import DiscoveryRequest, DiscoveryResponse

from controlplane.discovery import Dialect
from mesh.proto.discovery_pb2 import Node

LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
ROUTE_CONFIGURATION = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
CLUSTER_LOAD_ASSIGNMENT = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"

# Make before break: clusters, then their endpoints, then the listeners and routes that lead
# to them. (A gRPC client *asks* in the opposite order, LDS → RDS → CDS → EDS, discovering
# each name from the resource before; pushes after a change go in this order.)
ORDER = (CLUSTER, CLUSTER_LOAD_ASSIGNMENT, LISTENER, ROUTE_CONFIGURATION)

ADS_METHOD = ("/envoy.service.discovery.v3.AggregatedDiscoveryService/"
              "StreamAggregatedResources")

# A proxyless server asks for the Listener named by this template with its listening address
# ("10.0.0.7:50051", "[::1]:50051") in place of %s (gRFC A36).
INBOUND_LISTENER_TEMPLATE = "mesh/inbound/%s"
INBOUND_LISTENER_PREFIX = INBOUND_LISTENER_TEMPLATE.removesuffix("%s")

# The bootstrap's certificate provider (gRFC A29: a file watcher over the workload's
# certificate, key and CA files); every TLS context we send names it.
CERTIFICATE_PROVIDER = "mesh"

# Node metadata key for the namespace a node claims (Envoy's Node has no namespace field;
# Istio's node metadata carries NAMESPACE the same way). ``Node.cluster`` is its service.
NAMESPACE_METADATA = "NAMESPACE"


def inbound_address(listener_name: str) -> tuple[str, int] | None:
    """``(host, port)`` of an inbound listener's name, or None when it is not one.

    Raises:
        ValueError: it is an inbound listener name whose address does not parse.
    """
    if not listener_name.startswith(INBOUND_LISTENER_PREFIX):
        return None
    address = listener_name.removeprefix(INBOUND_LISTENER_PREFIX)
    host, colon, port = address.rpartition(":")
    if not colon or not port.isdigit() or not 0 < int(port) < 65536 or not host:
        raise ValueError(f"inbound listener {listener_name!r}: {address!r} is not host:port")
    return host.removeprefix("[").removesuffix("]"), int(port)


def _node(node: EnvoyNode) -> Node:
    """An Envoy node read as ours: its id, ``cluster`` as the service, NAMESPACE metadata."""
    namespace = node.metadata.fields.get(NAMESPACE_METADATA)
    return Node(id=node.id, service=node.cluster,
                namespace=namespace.string_value if namespace is not None else "")


# Envoy's wildcard (an empty first request means every resource) exists for Listeners and
# Clusters only; gRPC never uses it, and unsubscribes from a type with an empty list.
XDS_V3 = Dialect("xds.v3", "StreamAggregatedResources", ORDER, DiscoveryResponse, _node,
                 frozenset({LISTENER, CLUSTER}))
parse_request = DiscoveryRequest.FromString  # for the gRPC server's method table

"""The resource types that discovery carries: type URL ↔ message class, in push order."""

from __future__ import annotations

from google.protobuf.any_pb2 import Any as AnyProto
from google.protobuf.message import Message

from mesh.proto.config_pb2 import (
    AuthorizationPolicy,
    Cluster,
    ClusterLoadAssignment,
    RouteConfiguration,
)

PREFIX = "type.googleapis.com/mesh.v1."
CLUSTERS = PREFIX + "Cluster"
ENDPOINTS = PREFIX + "ClusterLoadAssignment"
ROUTES = PREFIX + "RouteConfiguration"
AUTHORIZATION = PREFIX + "AuthorizationPolicy"

# Make before break: clusters, then their endpoints, then the routes that name them.
ORDER = (CLUSTERS, ENDPOINTS, ROUTES, AUTHORIZATION)

MESSAGE_TYPES: dict[str, type[Message]] = {
    CLUSTERS: Cluster,
    ENDPOINTS: ClusterLoadAssignment,
    ROUTES: RouteConfiguration,
    AUTHORIZATION: AuthorizationPolicy,
}


def short_name(type_url: str) -> str:
    """``Cluster`` for ``type.googleapis.com/mesh.v1.Cluster`` (for logs and metrics)."""
    return type_url.rsplit(".", 1)[-1]


def unpack(type_url: str, resources: list[AnyProto]) -> list[Message]:
    """Decode a response's resources.

    Raises:
        ValueError: a resource is not of ``type_url`` or does not parse.
    """
    message_type = MESSAGE_TYPES.get(type_url)
    if message_type is None:
        raise ValueError(f"unknown resource type {type_url!r}")
    decoded = []
    for index, resource in enumerate(resources):
        if resource.type_url != type_url:
            raise ValueError(f"resource {index} is a {resource.type_url!r}, not {type_url!r}")
        message = message_type()
        if not resource.Unpack(message):
            raise ValueError(f"resource {index} does not parse as {short_name(type_url)}")
        decoded.append(message)
    return decoded


def instance_name(namespace: str, service: str, address: str, port: int) -> str:
    """The id of the instance of ``service`` in ``namespace`` at ``address:port``.

    The registry gives an instance this id, and a sidecar names its discovery node the same,
    so that the control plane knows which lease an open discovery stream keeps alive.
    """
    return f"{namespace}/{service}@{address}:{port}"

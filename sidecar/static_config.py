"""A static configuration file: the sidecar without a control plane (tests, teaching).

The file is a mesh policy (the same YAML the control plane reads: ``clusters``, ``routes``,
``authorization``) plus the endpoints discovery would have sent::

    clusters:
    - name: orders
      lb_policy: ROUND_ROBIN
    endpoints:
      orders:
      - {address: 127.0.10.2, port: 15006}
      - {address: 127.0.10.3, port: 15006, weight: 2}
"""

from __future__ import annotations

from pathlib import Path

import yaml
from google.protobuf.json_format import ParseDict, ParseError
from google.protobuf.message import Message

from mesh.proto.config_pb2 import ClusterLoadAssignment, Endpoint, MeshPolicy
from mesh.proto.resources import AUTHORIZATION, CLUSTERS, ENDPOINTS, ROUTES
from sidecar.router import Router


def load(path: Path) -> list[tuple[str, list[Message]]]:
    """The resources in ``path``, by type, in the order to apply them.

    Raises:
        ValueError: the file cannot be read or does not parse, naming the file and the problem.
    """
    try:
        text = path.read_text()
    except OSError as error:
        raise ValueError(f"{path}: cannot read the static configuration: "
                         f"{error.strerror or error}") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as error:
        raise ValueError(f"{path}: not YAML: {error}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: want a mapping of clusters, endpoints, routes and "
                         f"authorization at the top, got {type(data).__name__}")
    endpoints = data.pop("endpoints", None) or {}
    if not isinstance(endpoints, dict):
        raise ValueError(f"{path}: endpoints: want a mapping of cluster name to a list of "
                         f"endpoints, got {type(endpoints).__name__}")
    try:
        policy = ParseDict(data, MeshPolicy())
    except ParseError as error:
        raise ValueError(f"{path}: {error}") from None
    assignments = []
    for name, listed in endpoints.items():
        try:
            assignments.append(ClusterLoadAssignment(
                cluster_name=str(name),
                endpoints=[ParseDict(e, Endpoint()) for e in listed or []]))
        except (ParseError, AttributeError, TypeError) as error:
            raise ValueError(f"{path}: endpoints.{name}: want a list of {{address, port, "
                             f"weight}} entries: {error}") from None
    named = {c.name for c in policy.clusters}
    for assignment in assignments:  # as the control plane does: endpoints imply a cluster
        if assignment.cluster_name not in named:
            policy.clusters.add(name=assignment.cluster_name)
            named.add(assignment.cluster_name)
    try:  # no update will ever bring a missing cluster: refuse the file (Envoy does too)
        Router(list(policy.routes), named).check_clusters()
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None
    return [
        (CLUSTERS, list(policy.clusters)),
        (ENDPOINTS, list(assignments)),
        (ROUTES, list(policy.routes)),
        (AUTHORIZATION, list(policy.authorization)),
    ]

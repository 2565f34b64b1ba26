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


def load(path: Path) -> list[tuple[str, list[Message]]]:
    """The resources in ``path``, by type, in the order to apply them.

    Raises:
        ValueError: the file does not parse, naming the file and the problem.
    """
    try:
        data = yaml.safe_load(path.read_text()) or {}
        endpoints = data.pop("endpoints", {}) or {}
        policy = ParseDict(data, MeshPolicy())
        assignments = [
            ClusterLoadAssignment(cluster_name=name,
                                  endpoints=[ParseDict(e, Endpoint()) for e in listed or []])
            for name, listed in endpoints.items()]
    except (yaml.YAMLError, ParseError, AttributeError, TypeError) as error:
        raise ValueError(f"{path}: {error}") from None
    named = {c.name for c in policy.clusters}
    for assignment in assignments:  # as the control plane does: endpoints imply a cluster
        if assignment.cluster_name not in named:
            policy.clusters.add(name=assignment.cluster_name)
    return [
        (CLUSTERS, list(policy.clusters)),
        (ENDPOINTS, list(assignments)),
        (ROUTES, list(policy.routes)),
        (AUTHORIZATION, list(policy.authorization)),
    ]

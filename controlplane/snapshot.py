"""The snapshot: every resource a sidecar should have, built from the policy and the registry.

One snapshot is built per change (not per subscriber) and then *viewed* per sidecar: clusters,
endpoints and routes are the same for everyone; authorization policies go only to the sidecars
of the service they protect — chosen by the identity a sidecar *proved* with its certificate,
never by what its discovery request claims.

A cluster's endpoints are the instances registered for its name in its namespace (``default``
unless the cluster says). A service that registered instances but has no cluster in the policy
gets a default cluster, so a mesh works before anyone writes a policy: named ``<service>`` in
the ``default`` namespace and ``<service>.<namespace>`` in any other, like a Kubernetes DNS
name; a sidecar reads a short name in its own namespace first (sidecar/router.py).

An endpoint goes to sidecars without its ``admin_port``: that is for operators' tools (the
operator API), not for callers, and a sidecar restarted with another admin port must not make
every sidecar of the mesh be sent its service's endpoints again.

Each type's version is a digest of its resources, so "did this sidecar's view change?" is a
string comparison, and an unchanged view is never pushed again.

Types are sent in make-before-break order: clusters, then their endpoints, then the routes that
name them, then authorization — a sidecar never holds a route to a cluster it does not know.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from google.protobuf.any_pb2 import Any as AnyProto
from google.protobuf.message import Message

from mesh.identity import DEFAULT_NAMESPACE, SpiffeId
from mesh.proto.config_pb2 import (
    AuthorizationPolicy,
    Cluster,
    ClusterLoadAssignment,
    Endpoint,
    MeshPolicy,
)
from mesh.proto.resources import AUTHORIZATION, CLUSTERS, ENDPOINTS, ROUTES


@dataclass(frozen=True, slots=True)
class Resources:
    """All resources of one type in one view, and the version that names them."""

    type_url: str
    version: str
    names: tuple[str, ...]
    packed: tuple[AnyProto, ...]

    def only(self, names: Sequence[str] | None) -> Resources:
        """The subset named (all of them when ``names`` is None)."""
        if names is None:
            return self
        wanted = set(names)
        kept = [(n, p) for n, p in zip(self.names, self.packed, strict=True) if n in wanted]
        return _resources(self.type_url, [n for n, _ in kept], [p for _, p in kept])


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The mesh's whole configuration at one moment."""

    clusters: Resources
    endpoints: Resources
    routes: Resources
    authorization: tuple[AuthorizationPolicy, ...]
    policy_version: int  # of the policy it was built from

    def view(self, type_url: str, identity: SpiffeId,
             names: Sequence[str] | None = None) -> Resources:
        """What the sidecar that proved ``identity`` should hold of ``type_url``: the
        resources ``names`` names, or all of them when ``names`` is None."""
        if type_url == CLUSTERS:
            return self.clusters.only(names)
        if type_url == ENDPOINTS:
            return self.endpoints.only(names)
        if type_url == ROUTES:
            return self.routes.only(names)
        if type_url == AUTHORIZATION:
            mine = [p for _, p in protecting(self.authorization, identity)]
            return pack(AUTHORIZATION,
                        [(f"{p.service}/{i}", p) for i, p in enumerate(mine)]).only(names)
        raise KeyError(f"unknown resource type {type_url!r}")


def protecting(policies: Sequence[AuthorizationPolicy], identity: SpiffeId,
               ) -> list[tuple[int, AuthorizationPolicy]]:
    """The authorization policies (with their place in ``policies``) that protect the service
    ``identity`` proves, in its namespace: what its sidecar, or a proxyless server's RBAC,
    enforces."""
    return [(i, p) for i, p in enumerate(policies) if p.service == identity.service
            and (p.namespace or DEFAULT_NAMESPACE) == identity.namespace]


def build(policy: MeshPolicy, endpoints: Mapping[tuple[str, str], list[Endpoint]], *,
          policy_version: int) -> Snapshot:
    """The snapshot for ``policy`` (at ``policy_version``) and the registry's ``endpoints`` by
    (namespace, service)."""
    clusters, assignments = resolve(policy, endpoints)
    return Snapshot(
        clusters=pack(CLUSTERS, [(name, clusters[name]) for name in sorted(clusters)]),
        endpoints=pack(ENDPOINTS, [(a.cluster_name, _for_callers(a)) for a in assignments]),
        routes=pack(ROUTES, [(r.name, r) for r in policy.routes]),
        authorization=tuple(policy.authorization),
        policy_version=policy_version,
    )


def resolve(policy: MeshPolicy, endpoints: Mapping[tuple[str, str], list[Endpoint]],
            ) -> tuple[dict[str, Cluster], list[ClusterLoadAssignment]]:
    """Every cluster by name (the policy's, and a default one per registered service the
    policy does not serve) and each cluster's endpoints, sorted by cluster name.

    Shared by both dialects: what a sidecar gets (:func:`build`) and what a proxyless gRPC
    workload gets (:mod:`controlplane.xds.translate`) are the same clusters and endpoints.
    """
    clusters: dict[str, Cluster] = {c.name: c for c in policy.clusters}
    served = {(c.namespace or DEFAULT_NAMESPACE, c.name): c.name for c in policy.clusters}
    for namespace, service in sorted(endpoints):
        if (namespace, service) not in served:
            name = default_cluster_name(namespace, service)
            if name not in clusters:  # else the policy's cluster of that name (another namespace)
                clusters[name] = Cluster(name=name, namespace=namespace)
                served[namespace, service] = name
    found = {name: endpoints.get(key, []) for key, name in served.items()}
    assignments = [ClusterLoadAssignment(cluster_name=name, endpoints=found.get(name, []))
                   for name in sorted(clusters)]
    return clusters, assignments


def _for_callers(assignment: ClusterLoadAssignment) -> ClusterLoadAssignment:
    """``assignment`` as sidecars get it: without the endpoints' admin ports."""
    sent = ClusterLoadAssignment()
    sent.CopyFrom(assignment)
    for endpoint in sent.endpoints:
        endpoint.ClearField("admin_port")
    return sent


def default_cluster_name(namespace: str, service: str) -> str:
    """The cluster a registered service gets when the policy has none for it."""
    return service if namespace == DEFAULT_NAMESPACE else f"{service}.{namespace}"


def pack(type_url: str, named: Sequence[tuple[str, Message]]) -> Resources:
    """``named`` (name, message) pairs as the resources of one type, with their version."""
    packed = []
    for _, message in named:
        any_message = AnyProto()
        any_message.Pack(message, type_url_prefix="type.googleapis.com/", deterministic=True)
        packed.append(any_message)
    return _resources(type_url, [name for name, _ in named], packed)


def _resources(type_url: str, names: list[str], packed: list[AnyProto]) -> Resources:
    digest = hashlib.sha256()
    for any_message in packed:
        digest.update(any_message.value)
        digest.update(b"\0")
    return Resources(type_url, digest.hexdigest()[:12], tuple(names), tuple(packed))

"""The snapshot: which registrations become which cluster's endpoints, namespace by namespace."""

from __future__ import annotations

from controlplane.snapshot import build
from mesh.proto.config_pb2 import Cluster, ClusterLoadAssignment, Endpoint, MeshPolicy
from mesh.proto.resources import CLUSTERS, ENDPOINTS, unpack


def at(address: str) -> list[Endpoint]:
    return [Endpoint(address=address, port=15006)]


def endpoints_by_cluster(policy: MeshPolicy,
                         registered: dict[tuple[str, str], list[Endpoint]]) -> dict[str, list[str]]:
    snapshot = build(policy, registered, policy_version=1)
    clusters = [c.name for c in unpack(CLUSTERS, list(snapshot.clusters.packed))
                if isinstance(c, Cluster)]
    assignments = [a for a in unpack(ENDPOINTS, list(snapshot.endpoints.packed))
                   if isinstance(a, ClusterLoadAssignment)]
    assert [a.cluster_name for a in assignments] == clusters
    return {a.cluster_name: [e.address for e in a.endpoints] for a in assignments}


def test_a_cluster_takes_the_registrations_of_its_own_namespace_only() -> None:
    policy = MeshPolicy(clusters=[Cluster(name="orders", namespace="shop")])
    registered = {("shop", "orders"): at("10.0.0.1"), ("evil", "orders"): at("10.6.6.6")}
    assert endpoints_by_cluster(policy, registered) == {
        "orders": ["10.0.0.1"],
        "orders.evil": ["10.6.6.6"],  # another service, under its own name
    }


def test_a_cluster_without_a_namespace_is_in_default() -> None:
    policy = MeshPolicy(clusters=[Cluster(name="orders")])
    registered = {("default", "orders"): at("10.0.0.1"), ("shop", "orders"): at("10.0.0.2")}
    assert endpoints_by_cluster(policy, registered) == {"orders": ["10.0.0.1"],
                                                        "orders.shop": ["10.0.0.2"]}


def test_services_without_a_cluster_get_one_named_like_a_short_dns_name() -> None:
    registered = {("default", "orders"): at("10.0.0.1"), ("shop", "payments"): at("10.0.0.2")}
    assert endpoints_by_cluster(MeshPolicy(), registered) == {"orders": ["10.0.0.1"],
                                                              "payments.shop": ["10.0.0.2"]}


def test_a_policy_cluster_keeps_its_name_against_another_namespaces_default() -> None:
    """`orders` in the policy serves shop; default's orders would also want that name: the
    policy wins, and the unclaimed registrations stay out of every cluster."""
    policy = MeshPolicy(clusters=[Cluster(name="orders", namespace="shop")])
    registered = {("default", "orders"): at("10.0.0.1"), ("shop", "orders"): at("10.0.0.2")}
    assert endpoints_by_cluster(policy, registered) == {"orders": ["10.0.0.2"]}

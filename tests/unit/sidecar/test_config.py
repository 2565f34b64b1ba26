"""LiveConfig: clusters and routes arrive apart, and the router follows both.

The control plane sends clusters before the routes that name them, and removes a cluster before
the routes that name it. So a clusters update must rebuild the router (its fallback routes an
authority that names a cluster), and must not be refused because the routes still in force name
a cluster it removes: those routes answer 503 "no cluster" until the routes update arrives.
"""

from __future__ import annotations

import random
from typing import Any

import pytest
from google.protobuf.json_format import ParseDict

from mesh.clock import FakeClock
from mesh.proto.config_pb2 import Cluster, RouteConfiguration
from mesh.proto.resources import CLUSTERS, ROUTES
from sidecar.config import LiveConfig
from sidecar.router import Router


def live() -> LiveConfig:
    return LiveConfig(service="shopper", clock=FakeClock(), rng=random.Random(1),
                      tls=lambda: None)


def clusters(*names: str) -> list[Any]:
    return [Cluster(name=name) for name in names]


def routes(host: str, cluster: str) -> list[Any]:
    return [ParseDict({"name": "mesh", "virtual_hosts": [
        {"name": host, "domains": [host],
         "routes": [{"match": {"prefix": "/"}, "route": {"cluster": cluster}}]}]},
        RouteConfiguration())]


def target(config: LiveConfig, authority: str) -> str | None:
    found = config.router.route(authority, "/", {}, random.Random(1))
    return None if found is None else found.cluster


def test_a_cluster_that_arrives_after_the_routes_is_routable_by_its_name() -> None:
    config = live()
    config.apply(CLUSTERS, clusters("orders"))
    config.apply(ROUTES, routes("shop", "orders"))
    config.apply(CLUSTERS, clusters("orders", "billing"))  # a service registered later
    assert target(config, "billing") == "billing"
    assert target(config, "billing:8080") == "billing"
    assert target(config, "shop") == "orders"  # the routes are still in force


def test_a_cluster_that_leaves_is_no_longer_routed_to_by_its_name() -> None:
    config = live()
    config.apply(CLUSTERS, clusters("orders", "billing"))
    config.apply(ROUTES, [])
    assert target(config, "billing") == "billing"
    config.apply(CLUSTERS, clusters("orders"))
    assert target(config, "billing") is None  # 404, not a KeyError


def test_removing_a_cluster_before_its_route_is_accepted() -> None:
    # Make before break: the control plane drops the cluster first, then the route.
    config = live()
    config.apply(CLUSTERS, clusters("orders", "orders-v2"))
    config.apply(ROUTES, routes("orders", "orders-v2"))
    config.apply(CLUSTERS, clusters("orders"))  # no NACK for the route still naming v2
    assert set(config.clusters) == {"orders"}
    assert target(config, "orders") == "orders-v2"  # the outbound path answers 503
    config.apply(ROUTES, [])
    assert target(config, "orders") == "orders"


def test_a_route_may_name_a_cluster_that_is_yet_to_come() -> None:
    config = live()
    config.apply(CLUSTERS, clusters("orders"))
    config.apply(ROUTES, routes("shop", "cart"))
    assert target(config, "shop") == "cart"
    config.apply(CLUSTERS, clusters("orders", "cart"))
    assert "cart" in config.clusters and target(config, "shop") == "cart"


@pytest.mark.parametrize(("resources", "message"), [
    (clusters("orders", "orders"), "two clusters share a name"),
    ([ParseDict({"name": "orders", "timeout": "0s"}, Cluster())],
     "orders: timeout must be positive"),
])
def test_genuinely_bad_clusters_are_still_refused_and_change_nothing(
        resources: list[Any], message: str) -> None:
    config = live()
    config.apply(CLUSTERS, clusters("orders", "billing"))
    router = config.router
    with pytest.raises(ValueError, match=message):
        config.apply(CLUSTERS, resources)
    assert set(config.clusters) == {"orders", "billing"} and config.router is router


def test_genuinely_bad_routes_are_still_refused() -> None:
    config = live()
    config.apply(CLUSTERS, clusters("orders"))
    bad = ParseDict({"name": "mesh", "virtual_hosts": [{"name": "v", "domains": ["v"], "routes": [
        {"match": {"safe_regex": "("}, "route": {"cluster": "orders"}}]}]},
        RouteConfiguration())
    with pytest.raises(ValueError, match=r"route v/0: bad regex"):
        config.apply(ROUTES, [bad])


def test_a_static_configuration_checks_its_routes_clusters_up_front() -> None:
    router = Router(routes("v", "nope"), ["orders"])
    with pytest.raises(ValueError, match="route v/0: unknown cluster 'nope'"):
        router.check_clusters()
    Router(routes("v", "orders"), ["orders"]).check_clusters()


def test_a_short_name_is_read_in_the_callers_own_namespace_first() -> None:
    """`billing` from a sidecar of namespace `team` is team's billing (`billing.team`, its
    default cluster) when it exists, not the default namespace's `billing` — as a Kubernetes
    short DNS name; a name without a cluster of its own namespace is what it says."""
    clusters = ["billing", "billing.team", "orders"]
    rng = random.Random(1)
    team = Router([], clusters, namespace="team")
    assert (target := team.route("billing:8080", "/", {}, rng)) is not None
    assert target.cluster == "billing.team"
    assert (target := team.route("orders", "/", {}, rng)) is not None
    assert target.cluster == "orders"
    default = Router([], clusters)
    assert (target := default.route("billing", "/", {}, rng)) is not None
    assert target.cluster == "billing"

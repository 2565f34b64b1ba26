"""The xDS translation: each rule of controlplane/xds, read back from the packed resources."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from envoy.config.cluster.v3.cluster_pb2 import Cluster as EnvoyCluster
from envoy.config.core.v3.health_check_pb2 import HealthStatus
from envoy.config.endpoint.v3.endpoint_pb2 import ClusterLoadAssignment as EnvoyAssignment
from envoy.config.listener.v3.listener_pb2 import Listener
from envoy.config.rbac.v3.rbac_pb2 import RBAC as RbacRules
from envoy.config.route.v3.route_pb2 import RouteConfiguration as EnvoyRouteConfiguration
from envoy.extensions.filters.http.fault.v3.fault_pb2 import HTTPFault
from envoy.extensions.filters.http.rbac.v3.rbac_pb2 import RBAC
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm,
)
from envoy.extensions.transport_sockets.tls.v3.tls_pb2 import (
    DownstreamTlsContext,
    UpstreamTlsContext,
)
from envoy.type.v3.percent_pb2 import FractionalPercent
from google.protobuf.json_format import ParseDict

from controlplane.policy_file import parse
from controlplane.xds.resources import (
    CLUSTER,
    CLUSTER_LOAD_ASSIGNMENT,
    LISTENER,
    ROUTE_CONFIGURATION,
)
from controlplane.xds.routes import TIMEOUT_NOT_APPLIED
from controlplane.xds.translate import Unsupported, XdsSnapshot, translate
from mesh.identity import SpiffeId
from mesh.proto.config_pb2 import Endpoint, MeshPolicy

SHOP = Path(__file__).parents[4] / "demo_services" / "policy" / "shop.yaml"
CALLER = SpiffeId(trust_domain="cluster.local", namespace="default", service="client")
TEAM = SpiffeId(trust_domain="cluster.local", namespace="team", service="client")
ECHO_ID = "spiffe://cluster.local/ns/default/sa/echo"


def policy(data: dict[str, Any]) -> MeshPolicy:
    return ParseDict(data, MeshPolicy())


def snapshot(data: dict[str, Any], endpoints: dict[tuple[str, str], list[Endpoint]] | None = None,
             ) -> XdsSnapshot:
    return translate(policy(data), endpoints or {}, policy_version=1)


def one(snap: XdsSnapshot, type_url: str, name: str, message: Any, identity: SpiffeId = CALLER,
        ) -> Any:
    view = snap.view(type_url, identity, [name])
    assert view.names == (name,), view.names
    view.packed[0].Unpack(message)
    return message


def cluster(snap: XdsSnapshot, name: str) -> Any:
    return one(snap, CLUSTER, name, EnvoyCluster())


def routes(snap: XdsSnapshot, name: str) -> Any:
    return one(snap, ROUTE_CONFIGURATION, name, EnvoyRouteConfiguration())


def listener(snap: XdsSnapshot, name: str, identity: SpiffeId = CALLER) -> Any:
    return one(snap, LISTENER, name, Listener(), identity)


def messages(snap: XdsSnapshot, resource: str) -> list[str]:
    return [w.message for w in snap.warnings if w.resource == resource]


# ------------------------------------------------------------------------------ clusters

def test_a_cluster_is_eds_over_ads() -> None:
    c = cluster(snapshot({"clusters": [{"name": "echo", "lb_policy": "ROUND_ROBIN",
                                        "connect_timeout": "0.5s"}]}), "echo")
    assert c.type == EnvoyCluster.EDS
    assert c.eds_cluster_config.eds_config.HasField("ads")
    assert c.eds_cluster_config.eds_config.resource_api_version == 2  # V3
    assert c.lb_policy == EnvoyCluster.ROUND_ROBIN
    assert c.connect_timeout.ToMilliseconds() == 500


@pytest.mark.parametrize(("ours", "why"), [
    ("PEAK_EWMA", "no peak EWMA"), ("LEAST_REQUEST", "gRFC A48"), ("RANDOM", "no random")])
def test_balancers_grpc_lacks_go_as_round_robin_with_a_warning(ours: str, why: str) -> None:
    snap = snapshot({"clusters": [{"name": "echo", "lb_policy": ours}]})
    assert cluster(snap, "echo").lb_policy == EnvoyCluster.ROUND_ROBIN
    [warning] = snap.warnings
    assert warning.resource == "Cluster echo"
    assert warning.message.startswith(f"lb_policy {ours} sent as ROUND_ROBIN: ")
    assert why in warning.message


def test_a_registered_service_without_a_cluster_is_downgraded_silently() -> None:
    snap = snapshot({}, {("default", "echo"): [Endpoint(address="10.0.0.1", port=1)]})
    assert cluster(snap, "echo").lb_policy == EnvoyCluster.ROUND_ROBIN
    assert snap.warnings == ()


def test_ring_hash_keeps_grpc_ring_sizes_and_warns_for_points_per_weight() -> None:
    snap = snapshot({"clusters": [{"name": "ring", "lb_policy": "RING_HASH",
                                   "ring_hash": {"hash_header": "x-user",
                                                 "points_per_weight": 100}}]})
    c = cluster(snap, "ring")
    assert c.lb_policy == EnvoyCluster.RING_HASH
    assert c.ring_hash_lb_config.hash_function == EnvoyCluster.RingHashLbConfig.XX_HASH
    assert not c.ring_hash_lb_config.HasField("minimum_ring_size")
    assert messages(snap, "Cluster ring") == [
        "ring_hash.points_per_weight not applied: gRPC's ring has 1024 to 4096 points "
        "whatever the weights"]
    # and every route to it hashes its header (gRFC A42)
    action = routes(snap, "cluster:ring").virtual_hosts[0].routes[0].route
    assert [h.header.header_name for h in action.hash_policy] == ["x-user"]


def test_slow_start_is_warned_about() -> None:
    snap = snapshot({"clusters": [{"name": "echo", "lb_policy": "ROUND_ROBIN", "round_robin": {
        "slow_start_config": {"slow_start_window": "10s"}}}]})
    assert messages(snap, "Cluster echo")[0].startswith("round_robin.slow_start_config not")


def test_circuit_breakers_send_every_limit_but_warn_for_all_but_max_requests() -> None:
    snap = snapshot({"clusters": [{"name": "echo", "lb_policy": "ROUND_ROBIN",
                                   "circuit_breakers": {"max_requests": 100,
                                                        "max_retries": 2}}]})
    [thresholds] = cluster(snap, "echo").circuit_breakers.thresholds
    assert thresholds.priority == 0  # DEFAULT
    assert thresholds.max_requests.value == 100
    assert thresholds.max_retries.value == 2
    assert not thresholds.HasField("max_pending_requests")
    assert messages(snap, "Cluster echo") == [
        "circuit_breakers.max_retries not applied: gRPC applies max_requests only (A32)"]


def test_outlier_detection_copies_only_the_fields_written() -> None:
    snap = snapshot({"clusters": [{"name": "echo", "lb_policy": "ROUND_ROBIN",
                                   "outlier_detection": {
                                       "interval": "1s", "max_ejection_percent": 0,
                                       "enforcing_consecutive_5xx": 0,
                                       "failure_percentage_threshold": 50}}]})
    od = cluster(snap, "echo").outlier_detection
    assert od.interval.seconds == 1
    assert od.HasField("max_ejection_percent") and od.max_ejection_percent.value == 0
    assert od.failure_percentage_threshold.value == 50
    assert not od.HasField("consecutive_5xx") and not od.HasField("base_ejection_time")
    assert snap.warnings == ()  # consecutive 5xx turned off, gateway failures not enforced


def test_consecutive_failure_ejection_in_force_is_warned_about() -> None:
    snap = snapshot({"clusters": [{"name": "echo", "lb_policy": "ROUND_ROBIN",
                                   "outlier_detection": {
                                       "enforcing_consecutive_gateway_failure": 100}}]})
    assert [m.split(" not")[0] for m in messages(snap, "Cluster echo")] == [
        "outlier_detection.consecutive_5xx", "outlier_detection.consecutive_gateway_failure"]


def test_retry_budget_is_warned_about_only_for_a_retried_cluster() -> None:
    budget = {"retry_ratio": 0.2}
    snap = snapshot({
        "clusters": [
            {"name": "a", "lb_policy": "ROUND_ROBIN", "retry_budget": budget,
             "retry_policy": {"retry_on": ["unavailable"]}},
            {"name": "b", "lb_policy": "ROUND_ROBIN", "retry_budget": budget},
            {"name": "c", "lb_policy": "ROUND_ROBIN", "retry_budget": budget},
            {"name": "d", "lb_policy": "ROUND_ROBIN",
             "retry_budget": {"disabled": True}, "retry_policy": {"retry_on": ["internal"]}}],
        "routes": [{"name": "r", "virtual_hosts": [{"name": "v", "domains": ["c"], "routes": [
            {"match": {"prefix": "/"}, "route": {"cluster": "c", "retry_policy": {
                "retry_on": ["unavailable"]}}}]}]}]})
    budgeted = sorted(w.resource for w in snap.warnings if w.message.startswith("retry_budget"))
    assert budgeted == ["Cluster a", "Cluster c"]
    assert "retries are limited by num_retries only" in snap.warnings[0].message


def test_inbound_rate_limit_is_warned_about() -> None:
    snap = snapshot({"clusters": [{"name": "echo", "lb_policy": "ROUND_ROBIN",
                                   "inbound_rate_limit": {"max_tokens": 5,
                                                          "fill_interval": "1s"}}]})
    assert messages(snap, "Cluster echo")[0].startswith("inbound_rate_limit not applied")


def upstream(c: Any) -> Any:
    assert c.transport_socket.name == "envoy.transport_sockets.tls"
    context = UpstreamTlsContext()
    c.transport_socket.typed_config.Unpack(context)
    return context.common_tls_context


def test_mtls_checks_the_identities_that_registered_the_endpoints() -> None:
    other = "spiffe://cluster.local/ns/default/sa/echo-v2"
    snap = snapshot({}, {("default", "echo"): [
        Endpoint(address="10.0.0.1", port=1, identity=other),
        Endpoint(address="10.0.0.2", port=1, identity=ECHO_ID),
        Endpoint(address="10.0.0.3", port=1, identity=ECHO_ID)]})
    common = upstream(cluster(snap, "echo"))
    assert common.tls_certificate_provider_instance.instance_name == "mesh"
    assert common.tls_certificate_provider_instance.certificate_name == "default"
    validation = common.validation_context
    assert validation.ca_certificate_provider_instance.instance_name == "mesh"
    assert validation.ca_certificate_provider_instance.certificate_name == "ROOTCA"
    assert [m.exact for m in validation.match_subject_alt_names] == [ECHO_ID, other]


@pytest.mark.parametrize("identities", [[], ["", ECHO_ID]])
def test_without_an_identity_for_every_endpoint_any_mesh_certificate_will_do(
        identities: list[str]) -> None:
    snap = snapshot({"clusters": [{"name": "echo"}]}, {("default", "echo"): [
        Endpoint(address="10.0.0.1", port=1, identity=i) for i in identities]})
    assert not upstream(cluster(snap, "echo")).validation_context.match_subject_alt_names


# ------------------------------------------------------------------------------ endpoints

def test_endpoints_by_zone_with_weights_and_health() -> None:
    snap = snapshot({}, {("default", "echo"): [
        Endpoint(address="10.0.0.2", port=2, zone="b", weight=3),
        Endpoint(address="10.0.0.1", port=1, zone="b", health=Endpoint.DRAINING),
        Endpoint(address="10.0.0.3", port=3, zone="", health=Endpoint.UNHEALTHY)]})
    cla = one(snap, CLUSTER_LOAD_ASSIGNMENT, "echo", EnvoyAssignment())
    assert cla.cluster_name == "echo"
    assert [(loc.locality.zone, loc.priority, loc.load_balancing_weight.value)
            for loc in cla.endpoints] == [("", 0, 1), ("b", 0, 4)]
    zone_b = cla.endpoints[1].lb_endpoints
    assert [(e.endpoint.address.socket_address.address,
             e.endpoint.address.socket_address.port_value, e.load_balancing_weight.value,
             e.health_status) for e in zone_b] == [
        ("10.0.0.1", 1, 1, HealthStatus.DRAINING), ("10.0.0.2", 2, 3, HealthStatus.HEALTHY)]
    assert cla.endpoints[0].lb_endpoints[0].health_status == HealthStatus.UNHEALTHY


# ------------------------------------------------------------------------------ routes

ROUTES = {
    "clusters": [
        {"name": "echo", "lb_policy": "ROUND_ROBIN", "timeout": "2s",
         "retry_policy": {"retry_on": ["unavailable", "connect-failure"],
                          "per_try_timeout": "0.5s", "hedging_delay": "0.1s"}},
        {"name": "ring", "lb_policy": "RING_HASH", "ring_hash": {"hash_header": "x-user"}},
    ],
    "routes": [{"name": "main", "virtual_hosts": [
        {"name": "echo", "domains": ["echo", "echo:8080"], "routes": [
            {"match": {"path": "/a.B/C", "headers": [{"name": "x-v", "exact": "1"},
                                                     {"name": "x-p", "present": False}]},
             "route": {"cluster": "echo"}},
            {"match": {"safe_regex": "/a\\.B/(?=D).*"},
             "route": {"weighted_clusters": {"clusters": [{"name": "echo", "weight": 90},
                                                          {"name": "ring", "weight": 10}]},
                       "timeout": "1s",
                       "retry_policy": {"retry_on": ["cancelled", "5xx"], "num_retries": 6,
                                        "retriable_status_codes": [503],
                                        "retry_non_idempotent": True,
                                        "backoff": {"max_interval": "1s"}}},
             "fault": {"delay": {"fixed_delay": "0.2s", "percentage": 12.5},
                       "abort": {"grpc_status": 14, "percentage": 100},
                       "headers": [{"name": "x-fault", "prefix": "y"}]},
             "rate_limit": {"max_tokens": 1, "fill_interval": "1s"}},
            {"match": {"prefix": "/", "headers": [{"name": "x-v", "prefix": "a",
                                                   "invert": True}]},
             "route": {"cluster": "echo", "retry_policy": {}}},
        ]}]}],
}


def test_virtual_hosts_keep_their_domains_and_read_a_port_as_our_router_does() -> None:
    [host] = routes(snapshot(ROUTES), "main").virtual_hosts
    assert host.name == "echo"
    assert list(host.domains) == ["echo", "echo:8080", "echo:*"]


def test_matchers_and_a_route_to_one_cluster_with_its_cluster_settings() -> None:
    route = routes(snapshot(ROUTES), "main").virtual_hosts[0].routes[0]
    assert route.match.path == "/a.B/C"
    exact, absent = route.match.headers
    assert (exact.name, exact.string_match.exact, exact.invert_match) == ("x-v", "1", False)
    assert (absent.name, absent.present_match) == ("x-p", False)
    action = route.route
    assert action.cluster == "echo"
    assert action.timeout.seconds == 2
    assert not action.HasField("max_stream_duration")  # see routes.TIMEOUT_NOT_APPLIED
    assert action.retry_policy.retry_on == "unavailable,connect-failure"
    assert not action.retry_policy.HasField("num_retries")  # Envoy's default 1 is ours
    assert action.retry_policy.per_try_timeout.nanos == 500_000_000


def test_a_weighted_route_with_its_own_timeout_retries_hash_and_fault() -> None:
    route = routes(snapshot(ROUTES), "main").virtual_hosts[0].routes[1]
    assert route.match.safe_regex.regex == "/a\\.B/(?=D).*"  # sent as written: gRPC NACKs it
    action = route.route
    assert [(w.name, w.weight.value) for w in action.weighted_clusters.clusters] == [
        ("echo", 90), ("ring", 10)]
    assert action.timeout.seconds == 1 and not action.HasField("max_stream_duration")
    retry = action.retry_policy
    assert (retry.retry_on, retry.num_retries.value) == ("cancelled,5xx", 6)
    assert list(retry.retriable_status_codes) == [503]
    assert retry.retry_back_off.base_interval.ToMilliseconds() == 25
    assert retry.retry_back_off.max_interval.seconds == 1
    assert [h.header.header_name for h in action.hash_policy] == ["x-user"]
    fault = HTTPFault()
    route.typed_per_filter_config["envoy.filters.http.fault"].Unpack(fault)
    assert fault.delay.fixed_delay.ToMilliseconds() == 200
    assert (fault.delay.percentage.numerator, fault.delay.percentage.denominator) == (
        125_000, FractionalPercent.MILLION)
    assert fault.abort.grpc_status == 14
    assert fault.abort.percentage.numerator == 1_000_000
    assert fault.headers[0].string_match.prefix == "y"


def test_an_inverted_matcher_also_matches_a_request_without_the_header() -> None:
    absent, inverted = routes(snapshot(ROUTES), "main").virtual_hosts[0].routes[2:]
    assert (absent.match.headers[0].name, absent.match.headers[0].present_match) == (
        "x-v", False)
    assert inverted.match.headers[0].invert_match
    assert inverted.match.headers[0].string_match.prefix == "a"
    assert absent.route == inverted.route
    # an empty retry policy on the route overrides the cluster's: no retries
    assert not absent.route.HasField("retry_policy")


def test_route_warnings_name_the_field() -> None:
    snap = snapshot(ROUTES)
    prefix = "virtual_hosts[0].routes[1]."
    assert [m.removeprefix(prefix).split(" ")[0]
            for m in messages(snap, "RouteConfiguration main")] == [
        "rate_limit", "route.retry_policy.num_retries", "route.retry_policy.retriable_status_codes",
        "route.retry_policy.retry_on", "route.timeout"]
    assert messages(snap, "Cluster echo") == [
        "retry_policy.hedging_delay not sent: gRPC's xDS client has no hedging",
        "retry_policy.per_try_timeout not applied: gRPC ignores it; a try may use the whole "
        "timeout",
        "retry_policy.retry_on connect-failure not applied: gRPC retries on cancelled, "
        "deadline-exceeded, internal, resource-exhausted, unavailable only (gRFC A44)",
        f"timeout {TIMEOUT_NOT_APPLIED}"]
    assert "applied as 4: gRPC makes at most 5 attempts" in messages(
        snap, "RouteConfiguration main")[1]


def test_every_cluster_has_a_generated_route_configuration() -> None:
    snap = snapshot(ROUTES)
    assert snap.view(ROUTE_CONFIGURATION, CALLER, None).names == (
        "cluster:echo", "cluster:ring", "main")
    [host] = routes(snap, "cluster:echo").virtual_hosts
    assert list(host.domains) == ["*"]
    [route] = host.routes
    assert route.match.prefix == ""
    assert route.route.cluster == "echo"
    assert route.route.timeout.seconds == 2


def test_weighted_clusters_that_disagree_on_a_setting_get_none_of_it() -> None:
    snap = snapshot({
        "clusters": [{"name": "a", "lb_policy": "ROUND_ROBIN", "timeout": "1s"},
                     {"name": "b", "lb_policy": "ROUND_ROBIN"}],
        "routes": [{"name": "r", "virtual_hosts": [{"name": "v", "domains": ["v"], "routes": [
            {"match": {"prefix": "/"}, "route": {"weighted_clusters": {"clusters": [
                {"name": "a", "weight": 50}, {"name": "b", "weight": 50}]}}}]}]}]})
    assert not routes(snap, "r").virtual_hosts[0].routes[0].route.HasField("timeout")
    assert messages(snap, "RouteConfiguration r") == [
        "virtual_hosts[0].routes[0].route.weighted_clusters: the clusters' timeouts differ "
        "(a, b); none sent"]


# ------------------------------------------------------------------------------ API listeners

NAMES = {
    "clusters": [{"name": "echo", "lb_policy": "ROUND_ROBIN"},
                 {"name": "billing", "lb_policy": "ROUND_ROBIN"},
                 {"name": "billing.team", "namespace": "team", "lb_policy": "ROUND_ROBIN"}],
    "routes": [{"name": "main", "virtual_hosts": [
        {"name": "e", "domains": ["echo.example", "echo.example:9"], "routes": [
            {"match": {"prefix": "/"}, "route": {"cluster": "echo"}}]}]}],
}


def rds_name(lst: Any) -> str:
    manager = hcm.HttpConnectionManager()
    lst.api_listener.api_listener.Unpack(manager)
    return str(manager.rds.route_config_name)


@pytest.mark.parametrize(("name", "identity", "expected"), [
    ("echo.example", CALLER, "main"),
    ("echo.example:9", CALLER, "main"),
    ("echo.example:50051", CALLER, "main"),  # without its port
    ("billing", TEAM, "cluster:billing.team"),  # the caller's own namespace first
    ("billing:50051", TEAM, "cluster:billing.team"),
    ("billing", CALLER, "cluster:billing"),
    ("echo:50051", CALLER, "cluster:echo"),
])
def test_a_listener_name_is_read_as_our_router_reads_an_authority(
        name: str, identity: SpiffeId, expected: str) -> None:
    assert rds_name(listener(snapshot(NAMES), name, identity)) == expected


def test_a_star_virtual_host_takes_every_name_no_domain_names() -> None:
    data = {**NAMES, "routes": [{"name": "any", "virtual_hosts": [{
        "name": "all", "domains": ["*"], "routes": [
            {"match": {"prefix": "/"}, "route": {"cluster": "echo"}}]}]}]}
    assert rds_name(listener(snapshot(data), "billing")) == "any"


def test_a_name_nothing_serves_has_no_listener() -> None:
    assert snapshot(NAMES).view(LISTENER, CALLER, ["nothing"]).names == ()


def test_an_api_listener_runs_fault_then_router_last() -> None:
    manager = hcm.HttpConnectionManager()
    lst = listener(snapshot(NAMES), "echo")
    assert lst.name == "echo"
    lst.api_listener.api_listener.Unpack(manager)
    assert manager.rds.config_source.HasField("ads")
    assert [f.name for f in manager.http_filters] == [
        "envoy.filters.http.fault", "envoy.filters.http.router"]
    assert manager.http_filters[1].typed_config.type_url.endswith("router.v3.Router")


def test_a_wildcard_request_gets_every_nameable_listener() -> None:
    snap = snapshot(NAMES)
    assert snap.view(LISTENER, TEAM, None).names == (
        "billing", "billing.team", "echo", "echo.example", "echo.example:9")
    assert snap.view(LISTENER, CALLER, None).names == (
        "billing", "billing.team", "echo", "echo.example", "echo.example:9")


# ------------------------------------------------------------------------------ inbound

SERVER = SpiffeId(trust_domain="cluster.local", namespace="shop", service="orders")
INBOUND = "mesh/inbound/10.0.0.7:50051"


def inbound(data: dict[str, Any], name: str = INBOUND) -> tuple[Any, Any]:
    lst = listener(snapshot(data), name, SERVER)
    [chain] = lst.filter_chains
    [network_filter] = chain.filters
    assert network_filter.name == "envoy.filters.network.http_connection_manager"
    manager = hcm.HttpConnectionManager()
    network_filter.typed_config.Unpack(manager)
    return lst, manager


def rbac_filters(manager: Any) -> list[tuple[str, Any]]:
    found = []
    for f in manager.http_filters[:-1]:
        config = RBAC()
        f.typed_config.Unpack(config)
        found.append((f.name, config.rules))
    assert manager.http_filters[-1].name == "envoy.filters.http.router"
    return found


def test_an_inbound_listener_has_its_address_mtls_and_a_non_forwarding_route() -> None:
    lst, manager = inbound({})
    assert lst.address.socket_address.address == "10.0.0.7"
    assert lst.address.socket_address.port_value == 50051
    socket = lst.filter_chains[0].transport_socket
    assert socket.name == "envoy.transport_sockets.tls"
    context = DownstreamTlsContext()
    socket.typed_config.Unpack(context)
    assert context.require_client_certificate.value
    common = context.common_tls_context
    assert common.tls_certificate_provider_instance.certificate_name == "default"
    assert common.validation_context.ca_certificate_provider_instance.certificate_name == \
        "ROOTCA"
    [host] = manager.route_config.virtual_hosts
    assert list(host.domains) == ["*"]
    assert host.routes[0].match.prefix == ""
    assert host.routes[0].HasField("non_forwarding_action")
    assert rbac_filters(manager) == []  # no rules: every authenticated caller


def test_an_ipv6_inbound_listener() -> None:
    lst, _ = inbound({}, "mesh/inbound/[::1]:50051")
    assert lst.address.socket_address.address == "::1"


def test_rbac_denies_first_then_allows_only_what_a_rule_allows() -> None:
    _, manager = inbound({"authorization": [
        {"service": "other", "namespace": "shop", "rules": [{"principals": ["*"]}]},
        {"service": "orders", "namespace": "shop", "rules": [
            {"principals": ["cluster.local/ns/shop/sa/frontend",
                            "spiffe://cluster.local/ns/shop/sa/admin"],
             "paths": ["/shop.Orders/*", "/shop.Orders2/Get"]}]},
        {"service": "orders", "namespace": "shop", "action": "DENY", "rules": [
            {"paths": ["/shop.Orders/Delete"]}]},
        {"service": "orders", "rules": [{"principals": ["*"]}]},  # namespace default
    ]})
    (deny_name, deny), (allow_name, allow) = rbac_filters(manager)
    assert (deny_name, deny.action) == ("envoy.filters.http.rbac.deny", RbacRules.DENY)
    assert (allow_name, allow.action) == ("envoy.filters.http.rbac.allow", RbacRules.ALLOW)
    assert list(deny.policies) == ["2/0"]
    assert deny.policies["2/0"].principals[0].any
    assert deny.policies["2/0"].permissions[0].url_path.path.exact == "/shop.Orders/Delete"
    assert list(allow.policies) == ["1/0"]
    rule = allow.policies["1/0"]
    assert [p.authenticated.principal_name.exact for p in rule.principals] == [
        "spiffe://cluster.local/ns/shop/sa/frontend", "spiffe://cluster.local/ns/shop/sa/admin"]
    assert [(p.url_path.path.prefix, p.url_path.path.exact) for p in rule.permissions] == [
        ("/shop.Orders/", ""), ("", "/shop.Orders2/Get")]


def test_a_deny_only_service_gets_no_allow_filter() -> None:
    _, manager = inbound({"authorization": [{"service": "orders", "namespace": "shop",
                                             "action": "DENY", "rules": [{}]}]})
    [(name, rules)] = rbac_filters(manager)
    assert name == "envoy.filters.http.rbac.deny"
    assert rules.action == RbacRules.DENY
    assert rules.policies["0/0"].principals[0].any and rules.policies["0/0"].permissions[0].any


def test_an_inbound_listener_is_built_for_the_caller() -> None:
    data = {"authorization": [{"service": "orders", "namespace": "shop",
                               "rules": [{"principals": ["*"]}]}]}
    snap = snapshot(data)
    other = SpiffeId(trust_domain="cluster.local", namespace="shop", service="payments")
    mine = listener(snap, INBOUND, SERVER)
    theirs = listener(snap, INBOUND, other)
    assert mine != theirs  # payments has no rules: no RBAC filter


def test_an_unparsable_inbound_name_gets_no_listener() -> None:
    # (The stream that asks for one is refused: tests/integration/controlplane/test_xds_stream.py)
    view = snapshot({}).view(LISTENER, SERVER, ["mesh/inbound/nonsense", "mesh/inbound/:1"])
    assert view.names == ()


def test_an_inbound_rate_limit_is_logged_for_the_servers_listener(
        caplog: pytest.LogCaptureFixture) -> None:
    data = {"clusters": [{"name": "orders", "namespace": "shop", "inbound_rate_limit": {
        "max_tokens": 1, "fill_interval": "1s"}}]}
    with caplog.at_level(logging.WARNING, logger="controlplane.xds"):
        snapshot(data).view(LISTENER, SERVER, [INBOUND])
    assert f"Listener {INBOUND}: inbound_rate_limit of cluster orders" in caplog.text


def test_clients_and_servers_share_one_listener_request() -> None:
    view = snapshot(NAMES).view(LISTENER, SERVER, ["echo", INBOUND])
    assert view.names == ("echo", INBOUND)


# ------------------------------------------------------------------------------ the whole

def test_unknown_types_raise_key_error() -> None:
    with pytest.raises(KeyError):
        snapshot({}).view("type.googleapis.com/nothing", CALLER, None)


def test_translation_is_deterministic() -> None:
    endpoints = {("default", "echo"): [Endpoint(address=f"10.0.0.{i}", port=1, zone=z)
                                       for i, z in ((3, "b"), (1, "a"), (2, "b"))]}
    first, second = snapshot(ROUTES, endpoints), snapshot(ROUTES, dict(reversed(
        list(endpoints.items()))))
    for type_url in (CLUSTER, CLUSTER_LOAD_ASSIGNMENT, ROUTE_CONFIGURATION, LISTENER):
        a, b = first.view(type_url, CALLER, None), second.view(type_url, CALLER, None)
        assert (a.version, a.packed) == (b.version, b.packed)
    assert first.view(LISTENER, CALLER, ["echo:8080", "echo"]).version == \
        second.view(LISTENER, CALLER, ["echo", "echo:8080"]).version


def test_the_shop_translates_with_its_expected_warnings() -> None:
    shop, problems = parse(SHOP.read_text(), str(SHOP))
    assert not problems
    snap = translate(shop, {}, policy_version=1)
    found = {(w.resource, w.message.split(" ")[0]) for w in snap.warnings}
    assert found == {
        ("Cluster frontend", "timeout"),
        ("Cluster inventory", "timeout"),
        ("Cluster orders", "timeout"),
        ("Cluster payments", "timeout"),
        ("RouteConfiguration shop", "virtual_hosts[0].routes[0].route.timeout"),
        ("Cluster inventory", "lb_policy"),
        ("Cluster inventory", "outlier_detection.consecutive_5xx"),
        ("Cluster inventory", "retry_budget"),
        ("Cluster inventory", "retry_policy.per_try_timeout"),
        ("Cluster inventory", "retry_policy.retry_on"),
        ("Cluster orders", "retry_policy.retry_on"),
        ("Cluster payments", "lb_policy"),
        ("Cluster payments", "outlier_detection.consecutive_5xx"),
        ("Cluster payments", "retry_budget"),
        ("Cluster payments", "retry_policy.per_try_timeout"),
        ("Cluster payments", "retry_policy.retry_on"),
        ("RouteConfiguration shop", "virtual_hosts[0].routes[0].route.retry_policy.retry_on"),
    }
    assert Unsupported("Cluster inventory", "lb_policy PEAK_EWMA sent as ROUND_ROBIN: gRPC's "
                       "C-core/Python client has no peak EWMA (and least request, gRFC A48, is "
                       "Java-only)") in snap.warnings
    assert list(snap.warnings) == sorted(snap.warnings, key=lambda w: (w.resource, w.message))

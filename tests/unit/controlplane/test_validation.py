"""Every rule beyond the schema, each with the exact message an operator reads."""

from __future__ import annotations

import textwrap

import pytest
from google.protobuf.json_format import ParseDict

from controlplane.policy import PolicyError, merge, validate
from controlplane.validation import RETRY_ON
from mesh.proto.config_pb2 import MeshPolicy
from sidecar.cluster_settings import settings_from
from sidecar.retry import RetryOn
from sidecar.router import Router

GOOD = """
clusters:
- name: orders
  lb_policy: PEAK_EWMA
  peak_ewma: {decay: 10s, default_rtt: 0.03s}
  connect_timeout: 1s
  timeout: 5s
  retry_policy:
    retry_on: [connect-failure, refused-stream, unavailable, retriable-status-codes]
    num_retries: 2
    per_try_timeout: 1s
    retriable_status_codes: [503]
    backoff: {base_interval: 0.025s, max_interval: 0.25s, jitter: FULL}
  retry_budget: {retry_ratio: 0.2, min_retries_per_second: 10, ttl: 10s}
  outlier_detection: {consecutive_5xx: 5, interval: 10s, base_ejection_time: 30s,
                      max_ejection_time: 300s, max_ejection_percent: 100}
  circuit_breakers: {max_requests: 100}
  pool: {max_streams_per_connection: 100, idle_timeout: 60s}
- name: orders-v2
  app_protocol: HTTP1
routes:
- name: shop
  virtual_hosts:
  - name: orders
    domains: [orders, "orders:50051"]
    routes:
    - match: {prefix: /api/, headers: [{name: x-canary, exact: "1"}]}
      route: {cluster: orders-v2}
    - match: {safe_regex: "/orders/[0-9]+"}
      route:
        weighted_clusters: {clusters: [{name: orders, weight: 90}, {name: orders-v2, weight: 10}]}
        timeout: 2s
        retry_policy: {retry_on: [5xx], per_try_timeout: 0.5s}
    - match: {path: /health}
      route: {cluster: orders}
authorization:
- service: orders
  rules:
  - principals: [cluster.local/ns/shop/sa/frontend]
    paths: [/orders/*, /health]
- service: payments
  action: DENY
  rules: [{principals: ["*"], paths: ["/admin*"]}]
registration:
- service: orders-v2
  namespace: shop
  identities: [spiffe://cluster.local/ns/shop/sa/orders, spiffe://cluster.local/ns/ops/sa/*]
"""


def problems(text: str) -> list[str]:
    """The problems the store reports for ``text`` (applied as ``p.yaml``)."""
    with pytest.raises(PolicyError) as refused:
        validate(textwrap.dedent(text), "p.yaml")
    return [str(p) for p in refused.value.problems]


def test_a_policy_using_every_feature_passes_and_the_sidecar_accepts_it_too() -> None:
    policy, found = merge([("good.yaml", GOOD)])
    assert found == []
    assert [c.name for c in policy.clusters] == ["orders", "orders-v2"]
    # What the control plane accepts, a sidecar must not NACK.
    for cluster in policy.clusters:
        settings_from(cluster)
    Router(list(policy.routes), [c.name for c in policy.clusters])


TUNED = """
clusters:
- name: orders
  least_request:
    choice_count: 3
    active_request_bias: 0               # ignore the load: weighted round robin
    slow_start_config: {slow_start_window: 30s, aggression: 2, min_weight_percent: 5}
  outlier_detection:
    consecutive_5xx: 3
    enforcing_consecutive_5xx: 0         # watched, never ejected
    consecutive_gateway_failure: 2
    enforcing_consecutive_gateway_failure: 100
    max_ejection_percent: 0              # one endpoint out at a time
    success_rate_minimum_hosts: 3
    success_rate_request_volume: 20
    success_rate_stdev_factor: 1000
    enforcing_success_rate: 50
    failure_percentage_threshold: 50
    failure_percentage_minimum_hosts: 3
    failure_percentage_request_volume: 10
    enforcing_failure_percentage: 100
  circuit_breakers: {max_retries: 0}
- name: payments
  lb_policy: ROUND_ROBIN
  round_robin: {slow_start_config: {slow_start_window: 60s}}
"""


def test_written_zeros_and_every_new_field_are_accepted_and_the_sidecar_runs_them() -> None:
    orders, payments = (settings_from(c) for c in validate(TUNED, "p.yaml").clusters)
    assert orders.least_request is not None and orders.outlier_detection is not None
    assert orders.least_request.active_request_bias == 0.0  # not the default 1.0
    assert orders.least_request.slow_start_config is not None
    assert orders.least_request.slow_start_config.min_weight_percent == 5.0
    assert orders.outlier_detection.max_ejection_percent == 0  # not the default 10
    assert orders.outlier_detection.enforcing_consecutive_5xx == 0  # not the default 100
    assert orders.outlier_detection.enforcing_failure_percentage == 100
    assert orders.circuit_breakers.max_retries == 0  # not the default 3
    assert payments.round_robin is not None and payments.round_robin.slow_start_config is not None
    assert payments.round_robin.slow_start_config.slow_start_window == 60.0


def test_the_retry_conditions_are_the_sidecars() -> None:
    assert set(RETRY_ON) == {condition.value for condition in RetryOn}


CLUSTER = "clusters:\n- name: orders\n"


@pytest.mark.parametrize(("text", "expected"), [
    pytest.param("clusters:\n- lb_policy: RANDOM\n",
                 ["p.yaml: clusters[0].name: a cluster needs a name (the service it stands for)"],
                 id="cluster-without-name"),
    pytest.param("clusters:\n- name: orders/v2\n",
                 ["p.yaml: clusters[0].name: 'orders/v2' may hold only letters, digits, '.', "
                  "'-' and '_'"], id="cluster-name-characters"),
    pytest.param(CLUSTER + "- name: payments\n- name: orders\n",
                 ["p.yaml: clusters[2].name: duplicate cluster name 'orders' (first declared "
                  "in p.yaml clusters[0])"], id="duplicate-cluster"),
    pytest.param(CLUSTER + "  timeout: -1s\n",
                 ["p.yaml: clusters[0].timeout: must be positive, not -1s"],
                 id="negative-timeout"),
    pytest.param(CLUSTER + "  connect_timeout: 0s\n",
                 ["p.yaml: clusters[0].connect_timeout: must be positive, not 0s"],
                 id="zero-connect-timeout"),
    pytest.param(CLUSTER + "  retry_policy: {backoff: {base_interval: -0.5s}}\n",
                 ["p.yaml: clusters[0].retry_policy.backoff.base_interval: must be positive, "
                  "not -0.500s"], id="negative-nested-duration"),
    pytest.param(CLUSTER + "  retry_policy: {retry_on: [5xx, timeout]}\n",
                 ["p.yaml: clusters[0].retry_policy.retry_on[1]: unknown condition 'timeout' (want "
                  "one of connect-failure, refused-stream, reset, 5xx, gateway-error, "
                  "retriable-status-codes, cancelled, deadline-exceeded, internal, "
                  "resource-exhausted, unavailable)"], id="unknown-retry-on"),
    pytest.param(CLUSTER + "  retry_policy: {retriable_status_codes: [503, 99]}\n",
                 ["p.yaml: clusters[0].retry_policy.retriable_status_codes[1]: 99 is not "
                  "within 100..599"], id="status-code-range"),
    pytest.param(CLUSTER + "  timeout: 1s\n  retry_policy: {per_try_timeout: 2s}\n",
                 ["p.yaml: clusters[0].retry_policy.per_try_timeout: 2s is longer than timeout "
                  "1s: the overall timeout would cut every try first, so a slow try is never "
                  "retried"], id="per-try-over-cluster-timeout"),
    pytest.param(CLUSTER + "  retry_policy: {backoff: {base_interval: 1s, max_interval: 0.1s}}\n",
                 ["p.yaml: clusters[0].retry_policy.backoff.max_interval: must be at least "
                  "base_interval (1s)"], id="backoff-max-below-base"),
    pytest.param(CLUSTER + "  retry_budget: {retry_ratio: 1.5}\n",
                 ["p.yaml: clusters[0].retry_budget.retry_ratio: 1.5 is outside 0..1 (a "
                  "fraction of requests)"], id="budget-ratio-over-1"),
    pytest.param(CLUSTER + "  retry_budget: {retry_ratio: -0.1}\n",
                 ["p.yaml: clusters[0].retry_budget.retry_ratio: -0.1 is outside 0..1 (a "
                  "fraction of requests)"], id="budget-ratio-negative"),
    pytest.param(CLUSTER + "  retry_budget: {ttl: 0.5s}\n",
                 ["p.yaml: clusters[0].retry_budget.ttl: 0.500s is outside 1s..60s"],
                 id="budget-ttl-short"),
    pytest.param(CLUSTER + "  retry_budget: {ttl: 61s}\n",
                 ["p.yaml: clusters[0].retry_budget.ttl: 61s is outside 1s..60s"],
                 id="budget-ttl-long"),
    pytest.param(CLUSTER + "  retry_budget: {kind: CONCURRENCY, ttl: 5s,"
                           " min_retries_per_second: 2}\n",
                 ["p.yaml: clusters[0].retry_budget.ttl: applies to kind RATE only (a "
                  "CONCURRENCY budget counts retries in progress, not per second)",
                  "p.yaml: clusters[0].retry_budget.min_retries_per_second: applies to kind "
                  "RATE only (a CONCURRENCY budget counts retries in progress, not per second)"],
                 id="budget-concurrency-with-rate-fields"),
    pytest.param(CLUSTER + "  retry_budget: {min_retry_concurrency: 4}\n",
                 ["p.yaml: clusters[0].retry_budget.min_retry_concurrency: applies to kind "
                  "CONCURRENCY only"],
                 id="budget-rate-with-concurrency-field"),
    pytest.param(CLUSTER + "  outlier_detection: {max_ejection_percent: 101}\n",
                 ["p.yaml: clusters[0].outlier_detection.max_ejection_percent: 101 is over 100 "
                  "(a percentage)"], id="ejection-percent"),
    pytest.param(CLUSTER + "  outlier_detection: {max_ejection_percent: -5}\n",
                 ["p.yaml: clusters[0].outlier_detection.max_ejection_percent: Value out of "
                  "range: -5"], id="ejection-percent-negative"),
    pytest.param(CLUSTER + "  outlier_detection: {enforcing_success_rate: 101, "
                           "enforcing_failure_percentage: 200, "
                           "failure_percentage_threshold: 150}\n",
                 ["p.yaml: clusters[0].outlier_detection.failure_percentage_threshold: 150 is "
                  "over 100 (a percentage)",
                  "p.yaml: clusters[0].outlier_detection.enforcing_success_rate: 101 is over 100 "
                  "(a percentage)",
                  "p.yaml: clusters[0].outlier_detection.enforcing_failure_percentage: 200 is "
                  "over 100 (a percentage)"], id="outlier-percentages"),
    pytest.param(CLUSTER + "  outlier_detection: {consecutive_5xx: 0}\n",
                 ["p.yaml: clusters[0].outlier_detection.consecutive_5xx: 0 failures in a row "
                  "never happen: to turn the rule off, set enforcing_consecutive_5xx: 0"],
                 id="consecutive-5xx-zero"),
    pytest.param(CLUSTER + "  outlier_detection: {interval: 0s}\n",
                 ["p.yaml: clusters[0].outlier_detection.interval: must be positive, not 0s"],
                 id="outlier-interval-zero"),
    pytest.param(CLUSTER + "  least_request: {active_request_bias: -1}\n",
                 ["p.yaml: clusters[0].least_request.active_request_bias: -1.0 is not a number "
                  "of 0 or more (0 ignores the load; 1 divides the weight by it)"],
                 id="bias-negative"),
    pytest.param(CLUSTER + "  least_request: {active_request_bias: Infinity}\n",
                 ["p.yaml: clusters[0].least_request.active_request_bias: inf is not a number "
                  "of 0 or more (0 ignores the load; 1 divides the weight by it)"],
                 id="bias-infinite"),
    pytest.param(CLUSTER + "  least_request: {choice_count: 1}\n",
                 ["p.yaml: clusters[0].least_request.choice_count: 1 is below 2 (a pick compares "
                  "two endpoints or more)"], id="choice-count"),
    pytest.param(CLUSTER + "  least_request: {slow_start_config: {aggression: 0, "
                           "min_weight_percent: 150}}\n",
                 ["p.yaml: clusters[0].least_request.slow_start_config.slow_start_window: a slow "
                  "start needs its window (how long a new endpoint's weight ramps up)",
                  "p.yaml: clusters[0].least_request.slow_start_config.aggression: 0.0 is not "
                  "positive (1 ramps linearly, more ramps faster early)",
                  "p.yaml: clusters[0].least_request.slow_start_config.min_weight_percent: 150.0 "
                  "is outside 0..100 (above 0: a weight of 0 never gets a turn)"],
                 id="slow-start-ranges"),
    pytest.param(CLUSTER + "  lb_policy: ROUND_ROBIN\n"
                           "  round_robin: {slow_start_config: {slow_start_window: 0s}}\n",
                 ["p.yaml: clusters[0].round_robin.slow_start_config.slow_start_window: must be "
                  "positive, not 0s"], id="slow-start-window-zero"),
    pytest.param(CLUSTER + "  ring_hash: {points_per_weight: 0}\n",
                 ["p.yaml: clusters[0].ring_hash.points_per_weight: 0 is outside 1..262144"],
                 id="ring-points"),
    pytest.param(CLUSTER + "  pool: {max_streams_per_connection: 0}\n",
                 ["p.yaml: clusters[0].pool.max_streams_per_connection: 0 opens no stream at "
                  "all: at least 1 per connection"], id="pool-streams-zero"),
    pytest.param(CLUSTER + "  retry_budget: {kind: CONCURRENCY, min_retries_per_second: 0}\n",
                 ["p.yaml: clusters[0].retry_budget.min_retries_per_second: applies to kind "
                  "RATE only (a CONCURRENCY budget counts retries in progress, not per second)"],
                 id="budget-concurrency-with-a-written-zero"),
    pytest.param(CLUSTER + "  outlier_detection: {base_ejection_time: 30s, "
                           "max_ejection_time: 10s}\n",
                 ["p.yaml: clusters[0].outlier_detection.max_ejection_time: must be at least "
                  "base_ejection_time (30s)"], id="ejection-max-below-base"),
])
def test_cluster_rules(text: str, expected: list[str]) -> None:
    assert problems(text) == expected


def routes(*lines: str, domains: str = "[orders]", name: str = "shop") -> str:
    """A policy declaring clusters orders and payments, with one virtual host of ``lines``."""
    body = "".join(f"    {line}\n" for line in lines)
    return (f"{CLUSTER}  timeout: 3s\n- name: payments\nroutes:\n- name: {name}\n"
            f"  virtual_hosts:\n  - name: v\n    domains: {domains}\n    routes:\n{body}")


@pytest.mark.parametrize(("text", "expected"), [
    pytest.param(routes("- match: {prefix: /}", "  route: {cluster: ordres}"),
                 ["p.yaml: routes[0].virtual_hosts[0].routes[0].route.cluster: unknown cluster "
                  "'ordres' (the policy declares: orders, payments)"], id="unknown-cluster"),
    pytest.param(routes("- match: {prefix: /}",
                        "  route: {weighted_clusters: {clusters: [{name: orders, weight: 50}, "
                        "{name: billing, weight: 50}]}}"),
                 ["p.yaml: routes[0].virtual_hosts[0].routes[0].route.weighted_clusters."
                  "clusters[1].name: unknown cluster 'billing' (the policy declares: orders, "
                  "payments)"], id="unknown-weighted-cluster"),
    pytest.param(routes("- match: {prefix: /}",
                        "  route: {weighted_clusters: {clusters: [{name: orders, weight: 90}, "
                        "{name: payments, weight: 5}]}}"),
                 ["p.yaml: routes[0].virtual_hosts[0].routes[0].route.weighted_clusters: "
                  "weights add up to 95, not 100"], id="weights-not-100"),
    pytest.param(routes("- route: {cluster: orders}"),
                 ["p.yaml: routes[0].virtual_hosts[0].routes[0].match: a route needs a path "
                  "specifier: prefix, path or safe_regex (prefix '/' matches every path)"],
                 id="no-path-specifier"),
    pytest.param(routes("- match: {prefix: /}"),
                 ["p.yaml: routes[0].virtual_hosts[0].routes[0].route: a route needs a cluster "
                  "or weighted_clusters"], id="no-cluster"),
    pytest.param(routes("- match: {safe_regex: '/orders/([0-9]+'}", "  route: {cluster: orders}"),
                 ["p.yaml: routes[0].virtual_hosts[0].routes[0].match.safe_regex: invalid regex "
                  "'/orders/([0-9]+': missing ), unterminated subpattern at position 8"],
                 id="invalid-regex"),
    pytest.param(routes("- match: {path: health}", "  route: {cluster: orders}"),
                 ["p.yaml: routes[0].virtual_hosts[0].routes[0].match.path: 'health' must start "
                  "with '/'"], id="path-without-slash"),
    pytest.param(routes("- match: {prefix: api}", "  route: {cluster: orders}"),
                 ["p.yaml: routes[0].virtual_hosts[0].routes[0].match.prefix: 'api' must start "
                  "with '/'"], id="prefix-without-slash"),
    pytest.param(routes("- match: {prefix: /, headers: [{name: X-Canary, exact: '1'}, "
                        "{present: true}]}", "  route: {cluster: orders}"),
                 ["p.yaml: routes[0].virtual_hosts[0].routes[0].match.headers[0].name: "
                  "'X-Canary': header names are matched in lower case, write 'x-canary'",
                  "p.yaml: routes[0].virtual_hosts[0].routes[0].match.headers[1].name: a header "
                  "matcher needs a header name"], id="header-names"),
    pytest.param(routes("- match: {prefix: /}",
                        "  route: {cluster: orders, retry_policy: {per_try_timeout: 4s}}"),
                 ["p.yaml: routes[0].virtual_hosts[0].routes[0].route.retry_policy."
                  "per_try_timeout: 4s is longer than cluster 'orders''s timeout 3s: the "
                  "overall timeout would cut every try first, so a slow try is never retried"],
                 id="per-try-over-the-clusters-timeout"),
    pytest.param(routes("- match: {prefix: /}", "  route: {cluster: orders, timeout: 10s, "
                        "retry_policy: {per_try_timeout: 4s, retry_on: [bogus]}}"),
                 ["p.yaml: routes[0].virtual_hosts[0].routes[0].route.retry_policy.retry_on[0]: "
                  "unknown condition 'bogus' (want one of connect-failure, refused-stream, "
                  "reset, 5xx, gateway-error, retriable-status-codes, cancelled, "
                  "deadline-exceeded, internal, resource-exhausted, unavailable)"],
                 id="route-retry-policy-rules"),
    pytest.param(routes("- match: {prefix: /}", "  route: {cluster: orders, timeout: -2s}"),
                 ["p.yaml: routes[0].virtual_hosts[0].routes[0].route.timeout: must be "
                  "positive, not -2s"], id="negative-route-timeout"),
    pytest.param(routes(domains="[]"),
                 ["p.yaml: routes[0].virtual_hosts[0].domains: a virtual host needs at least "
                  "one domain ('*': any)"], id="no-domains"),
    pytest.param(routes(domains="[orders, Orders]"),
                 ["p.yaml: routes[0].virtual_hosts[0].domains[1]: 'Orders' is already served by "
                  "p.yaml routes[0].virtual_hosts[0]: the first wins, so this one would never be "
                  "used"], id="duplicate-domain"),
    pytest.param(routes(name="''"),
                 ["p.yaml: routes[0].name: a route configuration needs a name"],
                 id="route-configuration-without-name"),
    pytest.param(routes() + "- name: shop\n",
                 ["p.yaml: routes[1].name: duplicate route configuration name 'shop' (first in "
                  "p.yaml routes[0])"], id="duplicate-route-configuration"),
])
def test_route_rules(text: str, expected: list[str]) -> None:
    assert problems(text) == expected


@pytest.mark.parametrize(("text", "expected"), [
    pytest.param("authorization:\n- rules: [{principals: ['*']}]\n",
                 ["p.yaml: authorization[0].service: an authorization policy needs the service "
                  "it protects"], id="authorization-without-service"),
    pytest.param("authorization:\n- service: orders\n  rules:\n  - principals: "
                 "[spiffe://cluster.local/ns/shop/sa/frontend]\n",
                 ["p.yaml: authorization[0].rules[0].principals[0]: "
                  "'spiffe://cluster.local/ns/shop/sa/frontend': write principals without "
                  "'spiffe://', as 'cluster.local/ns/shop/sa/frontend'"],
                 id="principal-with-scheme"),
    pytest.param("authorization:\n- service: orders\n  rules:\n  - principals: "
                 "['*', cluster.local/ns/shop/sa/frontend, frontend, cluster.local/sa/frontend, "
                 "Cluster.local/ns/shop/sa/frontend]\n",
                 [f"p.yaml: authorization[0].rules[0].principals[{n}]: malformed principal "
                  f"{bad!r} (want '<trust-domain>/ns/<namespace>/sa/<service>' or '*')"
                  for n, bad in ((2, "frontend"), (3, "cluster.local/sa/frontend"),
                                 (4, "Cluster.local/ns/shop/sa/frontend"))],
                 id="malformed-principals"),
    pytest.param("authorization:\n- service: orders\n  rules:\n  - paths: [orders, /a*b]\n",
                 ["p.yaml: authorization[0].rules[0].paths[0]: 'orders' must start with '/' "
                  "(or be '*')",
                  "p.yaml: authorization[0].rules[0].paths[1]: '/a*b': '*' may only end a path "
                  "(a prefix)"], id="authorization-paths"),
    pytest.param("registration:\n- service: orders\n",
                 ["p.yaml: registration[0].identities: a registration grant needs at least one "
                  "identity"], id="grant-without-identities"),
    pytest.param("registration:\n- identities: [spiffe://cluster.local/ns/ops/sa/deployer]\n",
                 ["p.yaml: registration[0].service: a registration grant needs the service it "
                  "opens"], id="grant-without-service"),
    *(pytest.param(f"registration:\n- service: orders\n  identities: ['{granted}']\n",
                   [f"p.yaml: registration[0].identities[0]: '{granted}' is not a SPIFFE ID "
                    "(want 'spiffe://<td>/ns/<namespace>/sa/<service>' or "
                    "'spiffe://<td>/ns/<namespace>/sa/*': an account name alone would match "
                    "that name in every namespace)"], id=f"grant-{granted}")
      for granted in ("deployer", "*", "cluster.local/ns/ops/sa/deployer",
                      "spiffe://cluster.local/ns/*/sa/deployer")),
    pytest.param("registration:\n- service: orders\n  principals: [deployer]\n",
                 ["p.yaml: registration[0].principals: unknown field (a RegistrationGrant has: "
                  "service, namespace, identities)"], id="grant-with-principals"),
    pytest.param("clusters:\n- {name: a, namespace: 'a/b'}\n",
                 ["p.yaml: clusters[0].namespace: 'a/b' may hold only letters, digits, '.', "
                  "'-' and '_'"], id="bad-namespace"),
])
def test_principal_rules(text: str, expected: list[str]) -> None:
    assert problems(text) == expected


def test_authorization_for_a_service_without_a_cluster_is_accepted() -> None:
    # A service exists once its instances register; its policy may come first.
    policy = validate("authorization:\n- service: payments\n  rules: [{principals: ['*']}]\n",
                     "p.yaml")
    assert policy.authorization[0].service == "payments"


def test_every_problem_is_reported_at_once() -> None:
    found = problems(CLUSTER + "  timeout: -1s\n  retry_budget: {retry_ratio: 2}\n"
                     "routes:\n- name: r\n  virtual_hosts:\n  - domains: ['*']\n"
                     "    routes: [{match: {prefix: /}, route: {cluster: nope}}]\n")
    assert [p.split(": ")[1] for p in found] == [
        "clusters[0].timeout", "clusters[0].retry_budget.retry_ratio",
        "routes[0].virtual_hosts[0].routes[0].route.cluster"]


def test_a_route_may_name_a_cluster_declared_in_another_file() -> None:
    policy, found = merge([("10-clusters.yaml", CLUSTER),
                           ("20-routes.yaml", "routes:\n- name: r\n  virtual_hosts:\n"
                                              "  - domains: ['*']\n    routes: [{match: "
                                              "{prefix: /}, route: {cluster: orders}}]\n")])
    assert found == []
    assert policy == ParseDict({"clusters": [{"name": "orders"}], "routes": [
        {"name": "r", "virtual_hosts": [{"domains": ["*"], "routes": [
            {"match": {"prefix": "/"}, "route": {"cluster": "orders"}}]}]}]}, MeshPolicy())

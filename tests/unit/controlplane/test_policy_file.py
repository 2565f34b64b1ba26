"""Parsing a policy file: YAML and schema mistakes are named by file, line or field path."""

from __future__ import annotations

import pytest

from controlplane.policy_file import parse
from mesh.proto.config_pb2 import Cluster, MeshPolicy

CLUSTER_FIELDS = ("name, namespace, lb_policy, round_robin, least_request, peak_ewma, ring_hash, "
                  "connect_timeout, timeout, retry_policy, retry_budget, outlier_detection, "
                  "circuit_breakers, pool, app_protocol, inbound_rate_limit")


def problems(text: str) -> list[str]:
    policy, found = parse(text, "mesh.yaml")
    assert found, "expected the document to be refused"
    assert policy == MeshPolicy()  # nothing half-parsed comes back
    return [str(p) for p in found]


@pytest.mark.parametrize(("text", "expected"), [
    pytest.param("clusters:\n- name: orders\n  timeout: [1s\n",
                 "mesh.yaml: YAML syntax error at line 4, column 1: expected ',' or ']', but got "
                 "'<stream end>'", id="unclosed-list"),
    pytest.param("clusters:\n- name: a\n bad: 1\n",
                 "mesh.yaml: YAML syntax error at line 3, column 2: expected <block end>, but "
                 "found '<block mapping start>'", id="indentation"),
    pytest.param("clusters: []\nroutes: []\nclusters: [{name: a}]\n",
                 "mesh.yaml: YAML syntax error at line 3, column 1: key 'clusters' appears twice "
                 "in one mapping", id="duplicate-key"),
    pytest.param("- name: orders\n",
                 "mesh.yaml: a policy is a mapping (clusters, routes, authorization, "
                 "registration), not a list", id="not-a-mapping"),
])
def test_yaml_problems(text: str, expected: str) -> None:
    assert problems(text) == [expected]


@pytest.mark.parametrize(("text", "expected"), [
    pytest.param("cluster: []\n",
                 "mesh.yaml: cluster: unknown field (a MeshPolicy has: clusters, routes, "
                 "authorization, registration)", id="unknown-top-level-field"),
    pytest.param("clusters:\n- name: a\n- name: b\n  retry_budjet: {}\n",
                 f"mesh.yaml: clusters[1].retry_budjet: unknown field (a Cluster has: "
                 f"{CLUSTER_FIELDS})", id="unknown-nested-field"),
    pytest.param("clusters:\n- name: a\n- name: b\n  retry_budget: {retry_ratio: lots}\n",
                 "mesh.yaml: clusters[1].retry_budget.retry_ratio: Couldn't parse float: lots",
                 id="wrong-number"),
    pytest.param("clusters:\n- name: a\n  lb_policy: LEAST_CONN\n",
                 "mesh.yaml: clusters[0].lb_policy: unknown value 'LEAST_CONN' (want one of "
                 "LEAST_REQUEST, ROUND_ROBIN, RANDOM, PEAK_EWMA, RING_HASH)", id="unknown-enum"),
    pytest.param("clusters:\n- name: a\n  timeout: 30ms\n",
                 "mesh.yaml: clusters[0].timeout: '30ms' is not a duration: write seconds "
                 "ending in 's', like '1.5s' or '0.030s'", id="duration-in-ms"),
    pytest.param("clusters:\n- name: a\n  timeout: 5\n",
                 "mesh.yaml: clusters[0].timeout: 5 is not a duration: write seconds ending in "
                 "'s', like '1.5s' or '0.030s'", id="duration-as-number"),
    pytest.param("clusters:\n- name: 42\n",
                 "mesh.yaml: clusters[0].name: want a string, not 42 (int)", id="wrong-string"),
    pytest.param("clusters:\n- name: a\n  retry_budget: 0.2\n",
                 "mesh.yaml: clusters[0].retry_budget: want a mapping (the fields of a "
                 "RetryBudget), not 0.2 (float)", id="wrong-message"),
    pytest.param("clusters:\n  name: a\n",
                 "mesh.yaml: clusters: want a list, not a mapping", id="wrong-list"),
    pytest.param("clusters:\n- name: a\n  circuit_breakers: {max_requests: -1}\n",
                 "mesh.yaml: clusters[0].circuit_breakers.max_requests: Value out of range: -1",
                 id="negative-unsigned"),
    pytest.param("routes:\n- name: r\n  virtual_hosts:\n  - domains: ['*']\n    routes:\n"
                 "    - match: {prefix: /, path: /x}\n",
                 "mesh.yaml: routes[0].virtual_hosts[0].routes[0].match: prefix and path are "
                 "alternatives (path_specifier): give one", id="two-of-a-oneof"),
])
def test_schema_problems_name_the_field(text: str, expected: str) -> None:
    assert problems(text) == [expected]


def test_every_schema_problem_is_reported() -> None:
    found = problems("clusters:\n- name: a\n  timeout: soon\n- nmae: b\n"
                     "registration: {service: a}\n")
    assert [p.split(": ")[1] for p in found] == ["clusters[0].timeout", "clusters[1].nmae",
                                                  "registration"]


def test_json_names_enum_numbers_and_an_empty_document_parse() -> None:
    policy, found = parse("clusters:\n- name: a\n  lbPolicy: 3\n  retryBudget: {retryRatio: 0.1}\n",
                          "mesh.yaml")
    assert found == []
    assert policy.clusters[0].lb_policy == Cluster.PEAK_EWMA
    assert policy.clusters[0].retry_budget.retry_ratio == pytest.approx(0.1)
    assert parse("", "empty.yaml") == (MeshPolicy(), [])
    assert parse("# only a comment\n", "empty.yaml") == (MeshPolicy(), [])

"""Hedging in a retry policy: what the control plane accepts and refuses, with field paths."""

from __future__ import annotations

import random

import pytest

from controlplane.policy import PolicyError, validate
from sidecar.cluster_settings import settings_from
from sidecar.router import Router

POLICY = """\
clusters:
- name: orders
  timeout: 1s
  retry_policy: {retry_on: [unavailable], num_retries: 2, hedging_delay: 0.05s}
routes:
- name: shop
  virtual_hosts:
  - domains: ['*']
    routes:
    - match: {prefix: /}
      route:
        cluster: orders
        retry_policy: {%s}
"""
ENVOY = "retry_on: [5xx], per_try_timeout: 0.1s, hedge_on_per_try_timeout: true"


def problems(route_policy: str, policy: str = POLICY) -> list[str]:
    with pytest.raises(PolicyError) as refused:
        validate(policy % route_policy, "p.yaml")
    return [str(p) for p in refused.value.problems]


def test_grpcs_and_envoys_shapes_pass_and_the_sidecar_runs_them() -> None:
    policy = validate(POLICY % ENVOY, "p.yaml")
    cluster = settings_from(policy.clusters[0]).retry_policy
    assert (cluster.hedging_delay, cluster.num_retries) == (0.05, 2)
    target = Router(list(policy.routes), ["orders"]).route("orders", "/", {}, random.Random(1))
    assert target is not None and target.retry_policy is not None
    # Envoy's: the per-try timeout is the hedging delay, and no longer cuts the try.
    assert (target.retry_policy.hedging_delay, target.retry_policy.per_try_timeout) == \
        (0.1, None)


AT = "p.yaml: routes[0].virtual_hosts[0].routes[0].route.retry_policy"


@pytest.mark.parametrize(("route_policy", "expected"), [
    pytest.param("hedge_on_per_try_timeout: true",
                 [f"{AT}.hedge_on_per_try_timeout: needs per_try_timeout: the delay after "
                  "which a try gets a hedge"], id="envoy-without-per-try-timeout"),
    pytest.param(f"{ENVOY}, hedging_delay: 0.05s",
                 [f"{AT}.hedging_delay: set hedging_delay (gRPC) or hedge_on_per_try_timeout "
                  "(Envoy), not both"], id="both-shapes"),
    pytest.param("per_try_timeout: 0.1s, hedging_delay: 0.2s",
                 [f"{AT}.hedging_delay: 0.200s is not shorter than per_try_timeout 0.100s: a "
                  "try ends before any hedge could join it"], id="after-the-per-try-timeout"),
    pytest.param("hedging_delay: 2s",
                 [f"{AT}.hedging_delay: 2s is not shorter than cluster 'orders''s timeout 1s: "
                  "a try ends before any hedge could join it"], id="after-the-timeout"),
    pytest.param("hedging_delay: 0s",
                 [f"{AT}.hedging_delay: must be positive, not 0s"], id="zero"),
])
def test_nonsense_is_refused_with_the_field_path(route_policy: str,
                                                 expected: list[str]) -> None:
    assert problems(route_policy) == expected


def test_a_clusters_hedging_is_checked_against_its_own_timeout() -> None:
    policy = "clusters:\n- name: orders\n  timeout: 1s\n  retry_policy: {hedging_delay: 1s%s}\n"
    assert problems("", policy) == [
        "p.yaml: clusters[0].retry_policy.hedging_delay: 1s is not shorter than timeout 1s: a "
        "try ends before any hedge could join it"]

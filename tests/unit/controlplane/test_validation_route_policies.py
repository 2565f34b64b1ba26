"""A route's fault injection and rate limit: what the control plane accepts and refuses."""

from __future__ import annotations

import textwrap

import pytest

from controlplane.policy import PolicyError, validate
from sidecar.router import Router

ROUTE = """\
clusters:
- name: orders
routes:
- name: shop
  virtual_hosts:
  - domains: ['*']
    routes:
    - match: {prefix: /}
      route: {cluster: orders}
"""


def policy_with(extra: str) -> str:
    return ROUTE + textwrap.indent(textwrap.dedent(extra), " " * 6)


def problems(text: str) -> list[str]:
    with pytest.raises(PolicyError) as refused:
        validate(text, "p.yaml")
    return [str(p) for p in refused.value.problems]


def test_a_fault_and_a_limit_pass_and_the_sidecar_compiles_them() -> None:
    policy = validate(policy_with("""\
        fault:
          delay: {fixed_delay: 0.2s, percentage: 10}
          abort: {grpc_status: 14, percentage: 1.5}
          headers: [{name: x-chaos, present: true}]
        rate_limit: {max_tokens: 100, tokens_per_fill: 10, fill_interval: 0.1s}
        """), "p.yaml")
    router = Router(list(policy.routes), ["orders"])
    assert set(router.limiters) == {"/0"}  # the virtual host has no name


AT = "p.yaml: routes[0].virtual_hosts[0].routes[0]"


@pytest.mark.parametrize(("extra", "expected"), [
    pytest.param("fault: {headers: [{name: x}]}\n",
                 [f"{AT}.fault: a fault needs a delay, an abort or both"], id="empty-fault"),
    pytest.param("fault: {delay: {fixed_delay: 1s, percentage: 120}}\n",
                 [f"{AT}.fault.delay.percentage: 120.0 is outside 0..100 (a percentage of "
                  "requests)"], id="delay-percentage"),
    pytest.param("fault: {delay: {percentage: 50}}\n",
                 [f"{AT}.fault.delay.fixed_delay: a delay needs its fixed_delay"],
                 id="delay-without-duration"),
    pytest.param("fault: {abort: {percentage: 50}}\n",
                 [f"{AT}.fault.abort: an abort needs an http_status or a grpc_status"],
                 id="abort-without-status"),
    pytest.param("fault: {abort: {http_status: 99, percentage: 50}}\n",
                 [f"{AT}.fault.abort.http_status: 99 is not an HTTP status (200..599)"],
                 id="http-status"),
    pytest.param("fault: {abort: {grpc_status: 0, percentage: 50}}\n",
                 [f"{AT}.fault.abort.grpc_status: 0 is not a gRPC error status (1..16)"],
                 id="grpc-ok-is-no-fault"),
    pytest.param("fault: {abort: {http_status: 503, percentage: -1}, headers: [{name: X}]}\n",
                 [f"{AT}.fault.abort.percentage: -1.0 is outside 0..100 (a percentage of "
                  "requests)",
                  f"{AT}.fault.headers[0].name: 'X': header names are matched in lower case, "
                  "write 'x'"], id="two-problems"),
    pytest.param("rate_limit: {max_tokens: 0, fill_interval: 1s}\n",
                 [f"{AT}.rate_limit.max_tokens: a bucket needs at least one token "
                  "(max_tokens >= 1)"], id="no-tokens"),
    pytest.param("rate_limit: {max_tokens: 5, tokens_per_fill: 0, fill_interval: 1s}\n",
                 [f"{AT}.rate_limit.tokens_per_fill: 0 would never refill the bucket"],
                 id="no-refill"),
    pytest.param("rate_limit: {max_tokens: 5}\n",
                 [f"{AT}.rate_limit.fill_interval: a bucket needs its fill_interval"],
                 id="no-interval"),
])
def test_nonsense_is_refused_with_the_field_path(extra: str, expected: list[str]) -> None:
    assert problems(policy_with(extra)) == expected


def test_a_clusters_inbound_limit_is_checked_too() -> None:
    assert problems("clusters:\n- name: orders\n  inbound_rate_limit: {max_tokens: 0}\n") == [
        "p.yaml: clusters[0].inbound_rate_limit.max_tokens: a bucket needs at least one token "
        "(max_tokens >= 1)",
        "p.yaml: clusters[0].inbound_rate_limit.fill_interval: a bucket needs its fill_interval"]

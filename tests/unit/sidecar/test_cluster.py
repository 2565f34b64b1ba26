"""Clusters: the runtime state a live update keeps, and the policies each setting builds."""

from __future__ import annotations

import random
from typing import Any

import pytest
from google.protobuf.json_format import ParseDict

from mesh.clock import FakeClock
from mesh.proto.config_pb2 import Cluster, Endpoint
from sidecar.balancers import (
    LeastRequestBalancer,
    PeakEwmaBalancer,
    RandomBalancer,
    RingHashBalancer,
    RoundRobinBalancer,
)
from sidecar.circuit_breaker import Limit, Overflow, Permit
from sidecar.cluster import UpstreamCluster
from sidecar.cluster_settings import ClusterSettings, settings_from
from sidecar.metrics import SidecarMetrics
from sidecar.outcome import Failure, Outcome
from sidecar.pool import ConnectFailure
from sidecar.retry_budget import ConcurrencyBudget

OK = Outcome(status=200)
E503 = Outcome(status=503)
ADDRESSES = ["10.0.0.1:15006", "10.0.0.2:15006", "10.0.0.3:15006"]


def settings(**fields: Any) -> ClusterSettings:
    return settings_from(ParseDict({"name": "orders", **fields}, Cluster()))


def endpoints(*addresses: str) -> list[Endpoint]:
    return [Endpoint(address=a.split(":")[0], port=int(a.split(":")[1])) for a in addresses]


def cluster(clock: FakeClock, **fields: Any) -> tuple[UpstreamCluster, SidecarMetrics]:
    metrics = SidecarMetrics()
    made = UpstreamCluster(settings(**fields), clock=clock, rng=random.Random(5),
                           tls=lambda: None, metrics=metrics)
    made.set_endpoints(endpoints(*ADDRESSES))
    return made, metrics


def ejections(metrics: SidecarMetrics) -> float:
    value = metrics.registry.get_sample_value("mesh_sidecar_outlier_ejections_total",
                                              {"cluster": "orders"})
    return value or 0.0


# -- runtime state ---------------------------------------------------------------------------


def test_each_lb_policy_gets_its_balancer() -> None:
    clock = FakeClock()
    for policy, kind in [("ROUND_ROBIN", RoundRobinBalancer), ("PEAK_EWMA", PeakEwmaBalancer),
                         ("LEAST_REQUEST", LeastRequestBalancer), ("RANDOM", RandomBalancer),
                         ("RING_HASH", RingHashBalancer)]:
        made, _ = cluster(clock, lb_policy=policy)
        assert isinstance(made.balancer, kind)
        assert list(made.balancer.endpoints) == ADDRESSES


def test_consecutive_failures_eject_the_endpoint_from_balancing_until_the_sweep_returns_it(
) -> None:
    clock = FakeClock()
    made, metrics = cluster(clock, outlier_detection={"consecutive_5xx": 3, "interval": "1s",
                                                      "base_ejection_time": "5s"})
    bad = ADDRESSES[2]
    for _ in range(3):
        made.record(bad, E503)
    assert made.balancer.endpoints[bad].ejected
    assert ejections(metrics) == 1
    picks = {made.balancer.pick().address for _ in range(50)}  # type: ignore[union-attr]
    assert picks == set(ADDRESSES[:2])
    clock.advance(4.9)
    made.tick()
    assert made.balancer.endpoints[bad].ejected
    clock.advance(1.0)  # 5.9 s: the first sweep after the ejection time
    made.tick()
    assert not made.balancer.endpoints[bad].ejected


def test_at_most_max_ejection_percent_but_always_one() -> None:
    clock = FakeClock()
    made, metrics = cluster(clock, outlier_detection={"consecutive_5xx": 1})
    for address in ADDRESSES:  # every endpoint fails: 10 % of 3 lets only one go
        made.record(address, E503)
    assert [a for a, e in made.balancer.endpoints.items() if e.ejected] == ADDRESSES[:1]
    assert ejections(metrics) == 1


def test_an_update_keeps_in_flight_counts_estimates_and_ejections() -> None:
    clock = FakeClock()
    made, _ = cluster(clock, outlier_detection={"consecutive_5xx": 1})
    busy = made.balancer.endpoints[ADDRESSES[0]]
    busy.start()
    made.record(ADDRESSES[1], E503)
    budget, breaker = made.budget, made.breaker
    permit = breaker.try_acquire(Limit.REQUESTS)
    assert isinstance(permit, Permit)
    made.update(settings(outlier_detection={"consecutive_5xx": 1}, timeout="3s",
                         circuit_breakers={"max_requests": 1}))
    assert made.settings.timeout == 3.0
    assert made.balancer.endpoints[ADDRESSES[0]] is busy and busy.active == 1
    assert made.balancer.endpoints[ADDRESSES[1]].ejected
    assert made.budget is budget and made.breaker is breaker
    assert isinstance(breaker.try_acquire(Limit.REQUESTS), Overflow)  # new limit, old count
    permit.release()
    made.set_endpoints(endpoints(*ADDRESSES))  # discovery resends the same endpoints
    assert made.balancer.endpoints[ADDRESSES[1]].ejected


def test_a_new_balancer_inherits_the_ejections() -> None:
    clock = FakeClock()
    made, _ = cluster(clock, outlier_detection={"consecutive_5xx": 1})
    made.record(ADDRESSES[1], E503)
    made.update(settings(lb_policy="ROUND_ROBIN", outlier_detection={"consecutive_5xx": 1}))
    assert isinstance(made.balancer, RoundRobinBalancer)
    assert [a for a, e in made.balancer.endpoints.items() if e.ejected] == [ADDRESSES[1]]


def test_changing_outlier_detection_starts_afresh_and_leaves_nobody_stranded() -> None:
    clock = FakeClock()
    made, _ = cluster(clock, outlier_detection={"consecutive_5xx": 1})
    made.record(ADDRESSES[1], E503)
    made.update(settings(outlier_detection={"consecutive_5xx": 2}))
    assert not any(e.ejected for e in made.balancer.endpoints.values())
    made.update(settings())  # switched off
    assert made.outlier is None
    assert not any(e.ejected for e in made.balancer.endpoints.values())


def test_a_budget_change_replaces_the_budget() -> None:
    clock = FakeClock()
    made, _ = cluster(clock)
    before = made.budget
    made.update(settings(retry_budget={"retry_ratio": 0.5}))
    assert made.budget is not before and made.budget is not None
    made.update(settings(retry_budget={"disabled": True}))
    assert made.budget is None


def test_envoys_concurrency_budget_is_chosen_by_kind() -> None:
    made, _ = cluster(FakeClock(), retry_budget={"kind": "CONCURRENCY"})
    assert isinstance(made.budget, ConcurrencyBudget)


# -- what each policy field builds -----------------------------------------------------------


def test_slow_start_ramps_a_new_endpoint_of_a_round_robin_cluster() -> None:
    clock = FakeClock()
    made, _ = cluster(clock, lb_policy="ROUND_ROBIN",
                      round_robin={"slow_start_config": {"slow_start_window": "60s"}})
    clock.advance(120.0)  # the first three are past their window
    made.set_endpoints(endpoints(*ADDRESSES, "10.0.0.4:15006"))
    picks = [made.balancer.pick() for _ in range(3100)]
    new = sum(1 for e in picks if e is not None and e.address == "10.0.0.4:15006")
    assert new == pytest.approx(3100 * 0.1 / 3.1, abs=10)  # weight 0.1 (the 10 % floor) vs 3


def test_a_least_request_bias_of_zero_ignores_the_load() -> None:
    made, _ = cluster(FakeClock(), least_request={"active_request_bias": 0})
    made.set_endpoints([Endpoint(address="10.0.0.1", port=15006, weight=2),
                        Endpoint(address="10.0.0.2", port=15006, weight=1)])
    heavy = made.balancer.endpoints["10.0.0.1:15006"]
    for _ in range(50):
        heavy.start()  # busy, but a bias of 0 does not care
    picks = [made.balancer.pick() for _ in range(300)]
    assert sum(1 for e in picks if e is heavy) == 200


def test_a_rule_enforced_at_zero_detects_but_never_ejects() -> None:
    clock = FakeClock()
    made, metrics = cluster(clock, outlier_detection={"enforcing_consecutive_5xx": 0})
    for _ in range(20):
        made.record(ADDRESSES[2], E503)
    assert not made.balancer.endpoints[ADDRESSES[2]].ejected
    assert ejections(metrics) == 0


def test_failure_percentage_ejects_at_the_sweep_when_enforced() -> None:
    clock = FakeClock()
    made, metrics = cluster(clock, outlier_detection={
        "interval": "1s", "consecutive_5xx": 1000, "enforcing_success_rate": 0,
        "enforcing_failure_percentage": 100, "failure_percentage_minimum_hosts": 3,
        "failure_percentage_request_volume": 10, "max_ejection_percent": 50})
    for address in ADDRESSES:
        for i in range(20):
            made.record(address, E503 if address == ADDRESSES[2] or i == 0 else OK)
    clock.advance(1.0)
    made.tick()
    assert [a for a, e in made.balancer.endpoints.items() if e.ejected] == [ADDRESSES[2]]
    assert ejections(metrics) == 1


async def test_a_pool_checks_for_the_identity_that_registered_its_endpoint_or_is_not_made(
) -> None:
    """A call may pick an endpoint just before an update removes it: no pool is made for an
    address the cluster no longer has, since it could not know whose certificate to expect."""
    made, _ = cluster(FakeClock())
    registered = Endpoint(address="10.0.0.9", port=15006,
                          identity="spiffe://cluster.local/ns/shop/sa/orders")
    made.set_endpoints([registered])
    assert made.pool("10.0.0.9:15006").peer_identity == registered.identity
    made.set_endpoints(endpoints("10.0.0.8:15006"))
    assert "10.0.0.9:15006" not in made.pools  # dropped with its endpoint
    with pytest.raises(ConnectFailure, match="no longer an endpoint of cluster orders"):
        made.pool("10.0.0.9:15006")
    # Another workload registering the same address later gets a pool checking for it.
    impostor = Endpoint(address="10.0.0.9", port=15006,
                        identity="spiffe://cluster.local/ns/shop/sa/mallory")
    made.set_endpoints([impostor])
    assert made.pool("10.0.0.9:15006").peer_identity == impostor.identity


def test_each_answered_attempt_is_counted_by_what_its_endpoint_said() -> None:
    # A call that failed on one endpoint and was retried on another: the request is one 2xx,
    # its attempts a 5xx and a 2xx — what the callees said, before the retry hid it.
    made, metrics = cluster(FakeClock())
    made.record(ADDRESSES[0], E503)
    made.record(ADDRESSES[1], OK)
    made.record(ADDRESSES[2], Outcome(failure=Failure.TIMEOUT))  # a per-try timeout: a 504

    def attempts(code: str) -> float | None:
        return metrics.registry.get_sample_value("mesh_sidecar_upstream_attempts_total",
                                                 {"cluster": "orders", "code": code})

    assert (attempts("2xx"), attempts("5xx")) == (1.0, 2.0)

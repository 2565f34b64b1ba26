"""Clusters: the control plane's ``Cluster`` message with every default filled in (the values
REFERENCE.md cites from Envoy, Linkerd and Finagle), and the runtime state a live update keeps."""

from __future__ import annotations

import random
from typing import Any

import pytest
from google.protobuf.json_format import ParseDict

from mesh.clock import FakeClock
from mesh.proto.config_pb2 import Cluster, Endpoint
from sidecar.backoff import Backoff, Jitter
from sidecar.balancers import LeastRequestBalancer, PeakEwmaBalancer, RoundRobinBalancer
from sidecar.circuit_breaker import CircuitBreakerConfig, Limit, Overflow, Permit
from sidecar.cluster import ClusterSettings, UpstreamCluster, settings_from
from sidecar.metrics import SidecarMetrics
from sidecar.outcome import Outcome
from sidecar.outlier import OutlierDetectionConfig
from sidecar.retry import RetryOn, RetrySettings
from sidecar.retry_budget import (
    ConcurrencyBudget,
    ConcurrencyBudgetConfig,
    RateBudgetConfig,
)

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


# -- defaults: one place, the anchors' values ----------------------------------------------


def test_an_empty_cluster_gets_the_anchors_defaults() -> None:
    s = settings()
    assert s.lb_policy == Cluster.LEAST_REQUEST  # Envoy's default balancer here
    assert (s.least_request.choice_count, s.least_request.active_request_bias) == (2, 1.0)
    assert (s.peak_ewma.decay, s.peak_ewma.default_rtt) == (10.0, 0.030)  # Linkerd
    assert s.ring_hash.points_per_weight == 1024  # Envoy's minimum ring
    assert (s.connect_timeout, s.timeout) == (1.0, 15.0)  # Envoy's route timeout
    assert s.retry_policy == RetrySettings()  # no retries until a policy says so
    assert s.retry_budget == RateBudgetConfig(retry_ratio=0.2, min_retries_per_second=10,
                                               ttl=10.0)  # Finagle / Linkerd
    assert s.outlier is None  # off unless configured, as in Envoy
    assert s.breakers == CircuitBreakerConfig(max_pending_requests=1024, max_requests=1024,
                                              max_retries=3)  # Envoy


def test_outlier_detection_defaults_are_envoys() -> None:
    assert settings(outlier_detection={}).outlier == OutlierDetectionConfig(
        consecutive_5xx=5, consecutive_gateway_failure=None, interval=10.0,
        base_ejection_time=30.0, max_ejection_time=300.0, max_ejection_percent=10)


def test_a_retry_policy_defaults_to_one_retry_with_envoys_backoff() -> None:
    policy = settings(retry_policy={"retry_on": ["5xx", "reset"]}).retry_policy
    assert policy.retry_on == {RetryOn.SERVER_ERROR, RetryOn.RESET}
    assert policy.num_retries == 1  # Envoy's default
    assert policy.per_try_timeout is None
    assert policy.backoff == Backoff(base_interval=0.025, max_interval=None,
                                     jitter=Jitter.DECORRELATED)
    assert policy.backoff.cap == 0.25  # ten times the base


def test_retry_settings_are_read() -> None:
    policy = settings(retry_policy={
        "retry_on": ["retriable-status-codes"], "num_retries": 3, "per_try_timeout": "0.2s",
        "retriable_status_codes": [409], "retry_non_idempotent": True,
        "backoff": {"base_interval": "0.01s", "max_interval": "1s", "jitter": "FULL"}},
    ).retry_policy
    assert policy == RetrySettings(
        retry_on=frozenset({RetryOn.RETRIABLE_STATUS_CODES}), num_retries=3,
        per_try_timeout=0.2, retriable_status_codes=frozenset({409}),
        retry_non_idempotent=True,
        backoff=Backoff(base_interval=0.01, max_interval=1.0, jitter=Jitter.FULL))


def test_a_budget_block_fills_in_what_it_leaves_out_and_one_may_be_switched_off() -> None:
    # The floor left out: the documented 10 per second, not proto3's 0.
    assert settings(retry_budget={"retry_ratio": 0.1}).retry_budget == RateBudgetConfig(
        retry_ratio=0.1, min_retries_per_second=10, ttl=10.0)
    assert settings(retry_budget={"ttl": "5s"}).retry_budget == RateBudgetConfig(
        retry_ratio=0.2, min_retries_per_second=10, ttl=5.0)
    assert settings(retry_budget={"disabled": True}).retry_budget is None


def test_a_written_zero_in_a_budget_means_zero() -> None:
    # No retries beyond the floor, or no floor: both valid, neither is "use the default".
    assert settings(retry_budget={"retry_ratio": 0}).retry_budget == RateBudgetConfig(
        retry_ratio=0.0, min_retries_per_second=10, ttl=10.0)
    assert settings(retry_budget={"min_retries_per_second": 0}).retry_budget == \
        RateBudgetConfig(retry_ratio=0.2, min_retries_per_second=0, ttl=10.0)
    assert settings(retry_budget={"kind": "CONCURRENCY", "retry_ratio": 0,
                                  "min_retry_concurrency": 0}).retry_budget == \
        ConcurrencyBudgetConfig(budget_percent=0.0, min_retry_concurrency=0)


def test_a_written_zero_survives_the_wire() -> None:
    # What the control plane sends is serialised: presence must travel with the value.
    sent = ParseDict({"name": "orders", "retry_budget": {"retry_ratio": 0,
                                                         "min_retries_per_second": 0}}, Cluster())
    received = Cluster.FromString(sent.SerializeToString())
    assert settings_from(received).retry_budget == RateBudgetConfig(
        retry_ratio=0.0, min_retries_per_second=0, ttl=10.0)


@pytest.mark.parametrize(("fields", "message"), [
    ({"timeout": "0s"}, "orders: timeout must be positive"),
    ({"connect_timeout": "-1s"}, "orders: connect_timeout must be positive"),
    ({"peak_ewma": {"decay": "0s"}}, "orders: decay must be positive"),
    ({"retry_budget": {"ttl": "90s"}}, "ttl 90.0: must be within 1..60"),
    ({"retry_policy": {"retry_on": ["sometimes"]}}, "retry_on 'sometimes': unknown condition"),
    ({"outlier_detection": {"base_ejection_time": "400s"}}, "max_ejection_time 300.0"),
])
def test_bad_values_are_refused_with_the_field_named(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        settings(**fields)


# -- runtime state ---------------------------------------------------------------------------


def test_each_lb_policy_gets_its_balancer() -> None:
    clock = FakeClock()
    for policy, kind in [("ROUND_ROBIN", RoundRobinBalancer), ("PEAK_EWMA", PeakEwmaBalancer),
                         ("LEAST_REQUEST", LeastRequestBalancer)]:
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
    chosen = settings(retry_budget={"kind": "CONCURRENCY", "retry_ratio": 0.5})
    assert chosen.retry_budget == ConcurrencyBudgetConfig(budget_percent=50.0,
                                                          min_retry_concurrency=3)
    assert settings(retry_budget={"kind": "CONCURRENCY"}).retry_budget == \
        ConcurrencyBudgetConfig(budget_percent=20.0, min_retry_concurrency=3)
    made, _ = cluster(FakeClock(), retry_budget={"kind": "CONCURRENCY"})
    assert isinstance(made.budget, ConcurrencyBudget)

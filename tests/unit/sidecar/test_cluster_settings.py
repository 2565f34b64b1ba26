"""Cluster settings: the ``Cluster`` message with every default filled in (the values REFERENCE.md
cites from Envoy, Linkerd and Finagle), a written zero kept as zero, and the defaulted named."""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf.json_format import ParseDict

from mesh.proto.config_pb2 import Cluster
from sidecar.backoff import Backoff, Jitter
from sidecar.balancers import (
    LeastRequestConfig,
    PeakEwmaConfig,
    RingHashConfig,
    RoundRobinConfig,
    SlowStart,
)
from sidecar.circuit_breaker import CircuitBreakerConfig
from sidecar.cluster_settings import ClusterSettings, PoolSettings, settings_from
from sidecar.outlier import OutlierDetectionConfig
from sidecar.retry import RetryOn, RetrySettings
from sidecar.retry_budget import ConcurrencyBudgetConfig, RateBudgetConfig


def settings(**fields: Any) -> ClusterSettings:
    return settings_from(ParseDict({"name": "orders", **fields}, Cluster()))


# -- defaults: one place, the anchors' values ----------------------------------------------


def test_an_empty_cluster_gets_the_anchors_defaults() -> None:
    s = settings()
    assert s.lb_policy == Cluster.LEAST_REQUEST  # Envoy's default balancer here
    assert s.least_request == LeastRequestConfig(choice_count=2, active_request_bias=1.0,
                                                 slow_start_config=None)  # Envoy
    assert (s.round_robin, s.peak_ewma, s.ring_hash) == (None, None, None)  # not chosen
    assert (s.connect_timeout, s.timeout) == (1.0, 15.0)  # Envoy's route timeout
    assert s.retry_policy == RetrySettings()  # no retries until a policy says so
    assert s.retry_budget == RateBudgetConfig(retry_ratio=0.2, min_retries_per_second=10,
                                              ttl=10.0)  # Finagle / Linkerd
    assert s.outlier_detection is None  # off unless configured, as in Envoy
    assert s.circuit_breakers == CircuitBreakerConfig(max_pending_requests=1024,
                                                      max_requests=1024, max_retries=3)  # Envoy
    assert s.pool == PoolSettings(max_streams_per_connection=25, idle_timeout=60.0)


def test_each_balancers_defaults() -> None:
    assert settings(lb_policy="PEAK_EWMA").peak_ewma == PeakEwmaConfig(
        decay=10.0, default_rtt=0.030)  # Linkerd
    assert settings(lb_policy="RING_HASH").ring_hash == RingHashConfig(
        points_per_weight=1024)  # Envoy's minimum ring
    assert settings(lb_policy="ROUND_ROBIN").round_robin == RoundRobinConfig(
        slow_start_config=None)
    random = settings(lb_policy="RANDOM")
    assert (random.round_robin, random.least_request, random.peak_ewma, random.ring_hash) == \
        (None, None, None, None)


def test_outlier_detection_defaults_are_envoys() -> None:
    assert settings(outlier_detection={}).outlier_detection == OutlierDetectionConfig(
        consecutive_5xx=5, enforcing_consecutive_5xx=100,
        consecutive_gateway_failure=5, enforcing_consecutive_gateway_failure=0,
        interval=10.0, base_ejection_time=30.0, max_ejection_time=300.0,
        max_ejection_percent=10,
        success_rate_minimum_hosts=5, success_rate_request_volume=100,
        success_rate_stdev_factor=1900, enforcing_success_rate=100,
        failure_percentage_threshold=85, failure_percentage_minimum_hosts=5,
        failure_percentage_request_volume=50, enforcing_failure_percentage=0)


def test_an_unset_max_ejection_time_is_never_below_the_base() -> None:
    # Envoy: the default (300 s) or base_ejection_time, whichever is larger.
    detection = settings(outlier_detection={"base_ejection_time": "400s"}).outlier_detection
    assert detection is not None
    assert (detection.base_ejection_time, detection.max_ejection_time) == (400.0, 400.0)


def test_every_field_left_unset_is_named_with_its_path() -> None:
    assert set(settings().defaulted) == {
        "least_request.choice_count", "least_request.active_request_bias",
        "least_request.slow_start_config", "connect_timeout", "timeout", "retry_policy",
        "retry_budget.retry_ratio", "retry_budget.min_retries_per_second", "retry_budget.ttl",
        "outlier_detection", "circuit_breakers.max_pending_requests",
        "circuit_breakers.max_requests", "circuit_breakers.max_retries",
        "pool.max_streams_per_connection", "pool.idle_timeout"}
    written = settings(least_request={"active_request_bias": 0, "choice_count": 3},
                       timeout="2s", outlier_detection={"max_ejection_percent": 0})
    assert "least_request.active_request_bias" not in written.defaulted
    assert "outlier_detection.max_ejection_percent" not in written.defaulted
    assert {"outlier_detection.consecutive_5xx", "outlier_detection.interval"} <= \
        set(written.defaulted)


# -- a written zero means zero ---------------------------------------------------------------


def test_written_zeros_mean_zero() -> None:
    s = settings(least_request={"active_request_bias": 0},
                 outlier_detection={"max_ejection_percent": 0, "enforcing_consecutive_5xx": 0},
                 circuit_breakers={"max_retries": 0})
    assert s.least_request is not None and s.least_request.active_request_bias == 0.0
    assert s.outlier_detection is not None
    assert (s.outlier_detection.max_ejection_percent,
            s.outlier_detection.enforcing_consecutive_5xx) == (0, 0)
    assert s.circuit_breakers.max_retries == 0


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
    sent = ParseDict({"name": "orders", "least_request": {"active_request_bias": 0},
                      "outlier_detection": {"max_ejection_percent": 0},
                      "retry_budget": {"retry_ratio": 0, "min_retries_per_second": 0}}, Cluster())
    received = settings_from(Cluster.FromString(sent.SerializeToString()))
    assert received.least_request is not None
    assert received.least_request.active_request_bias == 0.0
    assert received.outlier_detection is not None
    assert received.outlier_detection.max_ejection_percent == 0
    assert received.retry_budget == RateBudgetConfig(retry_ratio=0.0, min_retries_per_second=0,
                                                     ttl=10.0)


# -- slow start, for round robin and least request ---------------------------------------------


@pytest.mark.parametrize(("policy", "section"), [("ROUND_ROBIN", "round_robin"),
                                                 ("LEAST_REQUEST", "least_request")])
def test_slow_start_is_read_for_both_balancers_that_have_it(policy: str, section: str) -> None:
    s = settings(lb_policy=policy, **{section: {"slow_start_config": {
        "slow_start_window": "60s", "aggression": 2.0, "min_weight_percent": 25}}})
    config = getattr(s, section)
    assert config.slow_start_config == SlowStart(slow_start_window=60.0, aggression=2.0,
                                                 min_weight_percent=25.0)
    left_out = settings(lb_policy=policy, **{section: {"slow_start_config": {
        "slow_start_window": "30s"}}})
    assert getattr(left_out, section).slow_start_config == SlowStart(
        slow_start_window=30.0, aggression=1.0, min_weight_percent=10.0)  # Envoy's
    assert {f"{section}.slow_start_config.aggression",
            f"{section}.slow_start_config.min_weight_percent"} <= set(left_out.defaulted)


def test_only_the_chosen_balancers_settings_are_read() -> None:
    s = settings(lb_policy="ROUND_ROBIN", least_request={"choice_count": 1})  # ignored, as Envoy
    assert s.least_request is None and s.round_robin == RoundRobinConfig()


# -- retries ---------------------------------------------------------------------------------


def test_a_retry_policy_defaults_to_one_retry_with_envoys_backoff() -> None:
    policy = settings(retry_policy={"retry_on": ["5xx", "reset"]}).retry_policy
    assert policy.retry_on == {RetryOn.SERVER_ERROR, RetryOn.RESET}
    assert policy.num_retries == 1  # Envoy's default
    assert policy.per_try_timeout is None
    assert policy.backoff == Backoff(base_interval=0.025, max_interval=None,
                                     jitter=Jitter.DECORRELATED)
    assert policy.backoff.cap == 0.25  # ten times the base
    assert settings(retry_policy={"backoff": {"jitter": "FULL"}}).retry_policy.backoff == \
        Backoff(jitter=Jitter.FULL)  # the base left out: Backoff's own default


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


def test_envoys_concurrency_budget_is_chosen_by_kind() -> None:
    chosen = settings(retry_budget={"kind": "CONCURRENCY", "retry_ratio": 0.5})
    assert chosen.retry_budget == ConcurrencyBudgetConfig(budget_percent=50.0,
                                                          min_retry_concurrency=3)
    assert settings(retry_budget={"kind": "CONCURRENCY"}).retry_budget == \
        ConcurrencyBudgetConfig(budget_percent=20.0, min_retry_concurrency=3)


# -- refusals --------------------------------------------------------------------------------


@pytest.mark.parametrize(("fields", "message"), [
    ({"timeout": "0s"}, "cluster orders: timeout must be positive"),
    ({"connect_timeout": "-1s"}, "cluster orders: connect_timeout must be positive"),
    ({"lb_policy": "PEAK_EWMA", "peak_ewma": {"decay": "0s"}},
     "cluster orders: peak_ewma.decay must be positive"),
    ({"retry_budget": {"ttl": "90s"}}, "ttl 90.0: must be within 1..60"),
    ({"retry_policy": {"retry_on": ["sometimes"]}}, "retry_on 'sometimes': unknown condition"),
    ({"outlier_detection": {"base_ejection_time": "60s", "max_ejection_time": "30s"}},
     "max_ejection_time 30.0"),
    ({"outlier_detection": {"max_ejection_percent": 101}}, "max_ejection_percent 101"),
    ({"outlier_detection": {"consecutive_5xx": 0}},
     "consecutive_5xx 0: must be at least 1 \\(to turn the rule off, set "
     "enforcing_consecutive_5xx to 0\\)"),
    ({"outlier_detection": {"enforcing_success_rate": 150}}, "enforcing_success_rate 150"),
    ({"least_request": {"active_request_bias": -1}}, "active_request_bias -1.0"),
    ({"least_request": {"choice_count": 1}}, "choice_count 1"),
    ({"least_request": {"slow_start_config": {}}},
     "cluster orders: least_request.slow_start_config.slow_start_window: required"),
    ({"lb_policy": "ROUND_ROBIN", "round_robin": {"slow_start_config": {
        "slow_start_window": "10s", "min_weight_percent": 0}}}, "min_weight_percent 0.0"),
    ({"lb_policy": "RING_HASH", "ring_hash": {"points_per_weight": 0}}, "points_per_weight 0"),
    ({"pool": {"max_streams_per_connection": 0}}, "max_streams_per_connection 0"),
])
def test_bad_values_are_refused_with_the_field_named(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        settings(**fields)


def test_an_unknown_lb_policy_is_refused_not_guessed() -> None:
    with pytest.raises(ValueError, match="cluster orders: lb_policy 9: unknown"):
        settings_from(Cluster(name="orders", lb_policy=9))  # type: ignore[arg-type]

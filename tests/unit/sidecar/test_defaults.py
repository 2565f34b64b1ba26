"""Every default has one home: the constant beside its algorithm. ``config.proto``'s comments
state the values for the operator, so they are checked here against those constants, and the
sidecar is checked to fill in exactly those values, under the field paths the proto names."""

from __future__ import annotations

import re
from functools import reduce
from pathlib import Path

import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.json_format import ParseDict

from mesh.proto.config_pb2 import Cluster
from sidecar import circuit_breaker, outlier, retry_budget
from sidecar.balancers import endpoint, least_request, ring_hash, slow_start
from sidecar.cluster_settings import DEFAULT_CONNECT_TIMEOUT, DEFAULT_TIMEOUT, settings_from
from sidecar.pool import DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_STREAMS
from sidecar.retry_budget import ConcurrencyBudgetConfig

PROTO = Path(__file__).resolve().parents[3] / "mesh" / "proto" / "config.proto"

# (message, field) -> the constant its default lives in. Every tunable of the cluster's
# messages is here, except the one that has no default (a slow start needs its window).
DEFAULTS: dict[tuple[str, str], float] = {
    ("Cluster", "connect_timeout"): DEFAULT_CONNECT_TIMEOUT,
    ("Cluster", "timeout"): DEFAULT_TIMEOUT,
    ("LeastRequest", "choice_count"): least_request.DEFAULT_CHOICE_COUNT,
    ("LeastRequest", "active_request_bias"): least_request.DEFAULT_ACTIVE_REQUEST_BIAS,
    ("SlowStartConfig", "aggression"): slow_start.DEFAULT_AGGRESSION,
    ("SlowStartConfig", "min_weight_percent"): slow_start.DEFAULT_MIN_WEIGHT_PERCENT,
    ("PeakEwma", "decay"): endpoint.DEFAULT_DECAY,
    ("PeakEwma", "default_rtt"): endpoint.DEFAULT_RTT,
    ("RingHash", "points_per_weight"): ring_hash.DEFAULT_POINTS_PER_WEIGHT,
    ("RetryBudget", "retry_ratio"): retry_budget.DEFAULT_RETRY_RATIO,
    ("RetryBudget", "min_retries_per_second"): retry_budget.DEFAULT_MIN_RETRIES_PER_SECOND,
    ("RetryBudget", "ttl"): retry_budget.DEFAULT_TTL,
    ("RetryBudget", "min_retry_concurrency"): retry_budget.DEFAULT_MIN_RETRY_CONCURRENCY,
    **{("OutlierDetection", name): getattr(outlier, f"DEFAULT_{name.upper()}") for name in (
        "consecutive_5xx", "enforcing_consecutive_5xx", "consecutive_gateway_failure",
        "enforcing_consecutive_gateway_failure", "interval", "base_ejection_time",
        "max_ejection_time", "max_ejection_percent", "success_rate_minimum_hosts",
        "success_rate_request_volume", "success_rate_stdev_factor", "enforcing_success_rate",
        "failure_percentage_threshold", "failure_percentage_minimum_hosts",
        "failure_percentage_request_volume", "enforcing_failure_percentage")},
    ("CircuitBreakers", "max_pending_requests"): circuit_breaker.DEFAULT_MAX_PENDING_REQUESTS,
    ("CircuitBreakers", "max_requests"): circuit_breaker.DEFAULT_MAX_REQUESTS,
    ("CircuitBreakers", "max_retries"): circuit_breaker.DEFAULT_MAX_RETRIES,
    ("ConnectionPool", "max_streams_per_connection"): DEFAULT_MAX_STREAMS,
    ("ConnectionPool", "idle_timeout"): DEFAULT_IDLE_TIMEOUT,
}
REQUIRED = {("SlowStartConfig", "slow_start_window")}
MESSAGES = ("Cluster", "RoundRobin", "LeastRequest", "SlowStartConfig", "PeakEwma", "RingHash",
            "RetryBudget", "OutlierDetection", "CircuitBreakers", "ConnectionPool")

_FIELD = re.compile(r"^\s*(?:optional\s+)?[\w.]+\s+(\w+)\s*=\s*\d+;\s*//(.*)$")
_DEFAULT = re.compile(r"\bdefault (\d+(?:\.\d+)?)(ms|s)?\b")


def stated_in_the_proto() -> dict[tuple[str, str], float]:
    """``default <value>`` from the comment on each field's line, in seconds for durations."""
    stated: dict[tuple[str, str], float] = {}
    blocks: list[str | None] = []  # the message (or None: an enum) each open brace belongs to
    for line in PROTO.read_text().splitlines():
        opened = re.match(r"^\s*(message|enum|oneof) (\w+) \{", line)
        if opened:  # a oneof's fields are its message's
            kinds = {"message": opened[2], "enum": None, "oneof": blocks[-1] if blocks else None}
            blocks.append(kinds[opened[1]])
            continue
        if re.match(r"^\s*\}", line):
            blocks.pop()
            continue
        field = _FIELD.match(line)
        if not blocks or blocks[-1] not in MESSAGES or not field:
            continue
        found = _DEFAULT.search(field[2])
        if found:
            value = float(found[1]) / (1000 if found[2] == "ms" else 1)
            stated[(blocks[-1], field[1])] = value
    return stated


def test_every_default_the_proto_states_is_its_constant() -> None:
    stated = stated_in_the_proto()
    assert set(stated) == set(DEFAULTS)  # no value stated without a constant, none unstated
    for key, value in stated.items():
        assert value == pytest.approx(DEFAULTS[key]), key


def test_every_tunable_has_a_default_or_is_required() -> None:
    descriptors: dict[str, Descriptor] = {}
    pending: list[Descriptor] = [Cluster.DESCRIPTOR]  # type: ignore[list-item]
    while pending:
        message = pending.pop()
        descriptors[message.name] = message
        pending += [f.message_type for f in message.fields
                    if f.message_type is not None and f.message_type.name in MESSAGES
                    and f.message_type.name not in descriptors]
    tunable = {(name, f.name) for name, message in descriptors.items() for f in message.fields
               if _tunable(f)}
    assert tunable == set(DEFAULTS) | REQUIRED


def _tunable(field: FieldDescriptor) -> bool:
    """A number with presence (``optional``), or a duration."""
    if field.message_type is not None:
        return field.message_type.full_name == "google.protobuf.Duration"
    return field.has_presence and field.cpp_type in (
        FieldDescriptor.CPPTYPE_UINT32, FieldDescriptor.CPPTYPE_DOUBLE)


@pytest.mark.parametrize("fields", [
    {"lb_policy": "LEAST_REQUEST", "least_request": {"slow_start_config": {
        "slow_start_window": "1s"}}, "outlier_detection": {}},
    {"lb_policy": "PEAK_EWMA", "retry_budget": {"kind": "CONCURRENCY"}},
    {"lb_policy": "RING_HASH"},
    {"lb_policy": "ROUND_ROBIN", "round_robin": {"slow_start_config": {
        "slow_start_window": "1s"}}},
], ids=["least-request", "peak-ewma", "ring-hash", "round-robin"])
def test_the_sidecar_fills_in_each_constant_under_the_protos_path(
        fields: dict[str, object]) -> None:
    settings = settings_from(ParseDict({"name": "orders", **fields}, Cluster()))
    checked = 0
    for path in settings.defaulted:
        *parents, name = path.split(".")
        message = reduce(lambda m, part: m.fields_by_name[part].message_type, parents,
                         Cluster.DESCRIPTOR)
        if (message.name, name) not in DEFAULTS:
            continue  # a whole section left out (its absence is the default)
        budget = settings.retry_budget
        if path == "retry_budget.retry_ratio" and isinstance(budget, ConcurrencyBudgetConfig):
            value: object = budget.budget_percent / 100  # Envoy's budget counts in percent
        else:
            value = reduce(getattr, path.split("."), settings)  # the names are the proto's
        assert value == pytest.approx(DEFAULTS[(message.name, name)]), path
        checked += 1
    assert checked >= 10

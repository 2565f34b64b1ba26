"""Policies that do what they say: a written 0 and slow start are accepted by the control plane's
policy store and by a real sidecar, whose ``/config_dump`` shows every effective value with the
defaults filled in and names the fields that took their default; a value out of range is
refused by both, naming the field."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from controlplane.policy import PolicyError, validate
from tests.integration.sidecar.conftest import (
    INBOUND,
    Pki,
    run_tool,
    static_sidecar,
    stopping,
)

pytestmark = [pytest.mark.asyncio(loop_scope="package"), pytest.mark.interop,
              pytest.mark.timeout(60)]

HOST = "127.0.20.61"  # this test's sidecar; nothing listens at its endpoints

POLICY = """\
clusters:
- name: orders
  least_request:
    active_request_bias: 0             # weighted round robin: the load is ignored
    slow_start_config: {slow_start_window: 30s}
  outlier_detection:
    max_ejection_percent: 0            # one endpoint out at a time
    enforcing_consecutive_5xx: 0       # counted, never ejected
    enforcing_failure_percentage: 100
- name: payments
  lb_policy: ROUND_ROBIN
  round_robin:
    slow_start_config: {slow_start_window: 60s, aggression: 2, min_weight_percent: 20}
"""

BAD = """\
clusters:
- name: orders
  least_request: {active_request_bias: -1}
  outlier_detection: {max_ejection_percent: 150}
"""


def static_config(policy: str) -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load(policy)
    config["endpoints"] = {"orders": [{"address": "127.0.20.62", "port": INBOUND}],
                           "payments": [{"address": "127.0.20.63", "port": INBOUND}]}
    return config


async def test_written_zeros_and_slow_start_reach_config_dump_with_defaults_marked(
        mesh_pki: Pki, tmp_path: Path) -> None:
    validate(POLICY, "shop.yaml")  # the control plane accepts it
    sidecar = static_sidecar("defaults", HOST, "client", static_config(POLICY), mesh_pki,
                             tmp_path)
    with stopping([sidecar]):
        await sidecar.wait_ready()
        status, text = await sidecar.admin("/config_dump")

    assert status == 200
    effective = json.loads(text)["effective_cluster_settings"]
    orders, payments = effective["orders"], effective["payments"]
    print("\norders as the sidecar runs it:\n" + json.dumps(orders, indent=2))
    assert orders["lb_policy"] == "LEAST_REQUEST"
    assert orders["least_request"] == {
        "choice_count": 2,  # defaulted
        "active_request_bias": 0.0,  # as written: not the default 1.0
        "slow_start_config": {"slow_start_window": 30.0, "aggression": 1.0,
                              "min_weight_percent": 10.0}}
    detection = orders["outlier_detection"]
    assert (detection["max_ejection_percent"], detection["enforcing_consecutive_5xx"],
            detection["enforcing_failure_percentage"]) == (0, 0, 100)  # as written
    assert (detection["consecutive_5xx"], detection["interval"],
            detection["success_rate_stdev_factor"]) == (5, 10.0, 1900)  # Envoy's defaults
    defaulted = set(orders["defaulted"])
    assert {"least_request.choice_count", "least_request.slow_start_config.aggression",
            "least_request.slow_start_config.min_weight_percent",
            "outlier_detection.consecutive_5xx", "outlier_detection.interval",
            "circuit_breakers.max_requests", "timeout"} <= defaulted
    assert not {"least_request.active_request_bias", "outlier_detection.max_ejection_percent",
                "outlier_detection.enforcing_consecutive_5xx",
                "least_request.slow_start_config.slow_start_window"} & defaulted
    assert payments["round_robin"] == {"slow_start_config": {
        "slow_start_window": 60.0, "aggression": 2.0, "min_weight_percent": 20.0}}
    assert payments["least_request"] is None  # only the chosen balancer's settings


async def test_a_value_out_of_range_is_refused_by_both_naming_the_field(
        mesh_pki: Pki, tmp_path: Path) -> None:
    with pytest.raises(PolicyError) as refused:
        validate(BAD, "shop.yaml")
    assert [str(p) for p in refused.value.problems] == [
        "shop.yaml: clusters[0].least_request.active_request_bias: -1.0 is not a number of 0 or "
        "more (0 ignores the load; 1 divides the weight by it)",
        "shop.yaml: clusters[0].outlier_detection.max_ejection_percent: 150 is over 100 (a "
        "percentage)"]

    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(static_config(BAD)))
    code, _, err = await run_tool(
        sys.executable, "-m", "sidecar", "--service", "client", "--static-config", str(path),
        "--cert", str(mesh_pki.cert("client")), "--key", str(mesh_pki.key("client")),
        "--ca", str(mesh_pki.ca_cert), "--outbound", f"{HOST}:15001",
        "--inbound", f"{HOST}:15006", "--admin", f"{HOST}:15000", env=dict(os.environ))
    assert code != 0
    assert "cluster orders: least request active_request_bias -1.0" in err, err

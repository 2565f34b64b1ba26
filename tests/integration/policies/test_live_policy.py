"""A policy changed live: the control plane's policy file is edited while traffic flows.

Here the sidecars take everything from a control plane (``python -m controlplane --policy
FILE``): they join with a one-time token, register, and subscribe. The backend fails half its
calls; the policy first retries three times without a budget, and the backend sees the
retry storm. Then the file is rewritten with a 20 % budget: the control plane notices it
(it polls the file), pushes the new cluster to the client's sidecar, which applies it without a
restart (``/config_dump`` shows it), and the same traffic now costs the backend at most 1.25×.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import yaml

from tests.integration.policies.conftest import Mesh, Replica, Sidecar, drive

REQUESTS = 300
RETRY_POLICY = {"retry_on": ["5xx"], "num_retries": 3,
                "backoff": {"base_interval": "0.002s", "max_interval": "0.02s"}}


def policy(budget: dict[str, Any]) -> dict[str, Any]:
    return {"clusters": [{"name": "backend", "retry_policy": RETRY_POLICY,
                          "retry_budget": budget,
                          "circuit_breakers": {"max_retries": 1000}}]}


async def amplification(mesh: Mesh, client: Sidecar, backend: Replica, first_id: int) -> float:
    before: int = (await mesh.stats(backend))["requests"]
    await drive(client, requests=REQUESTS, concurrency=8, first_id=first_id)
    after: int = (await mesh.stats(backend))["requests"]
    return (after - before) / REQUESTS


async def effective_budget(mesh: Mesh, client: Sidecar) -> Any:
    dump = await mesh.admin(client, "/config_dump")
    return dump["effective_cluster_settings"]["backend"]["retry_budget"]


async def test_a_budget_added_live_stops_the_storm(mesh: Mesh) -> None:
    cp = await mesh.control_plane(policy({"disabled": True}))
    (flaky,) = await mesh.replicas({"name": "flaky", "fail_rate": 0.5, "seed": 3},
                                   control_plane=cp)
    client = await mesh.sidecar("client", None, client=True, control_plane=cp)
    deadline = time.monotonic() + 10.0
    while not (await mesh.admin(client, "/clusters")).get("backend", {}).get("endpoints"):
        assert time.monotonic() < deadline, "the backend's endpoint never reached the client"
        await asyncio.sleep(0.05)
    assert await effective_budget(mesh, client) is None

    storm = await amplification(mesh, client, flaky, 0)

    cp.policy.write_text(yaml.safe_dump(policy({"retry_ratio": 0.2,
                                                "min_retries_per_second": 0})))
    written = time.monotonic()
    while await effective_budget(mesh, client) is None:
        assert time.monotonic() < written + 10.0, "the new policy never reached the client"
        await asyncio.sleep(0.01)
    took = time.monotonic() - written
    budgeted = await amplification(mesh, client, flaky, 10_000)

    print(f"\nlive change: the backend saw {storm:.3f}× the offered load before, the new "
          f"budget was in force {took * 1000:.0f} ms after the file was saved (the control "
          f"plane polls it every 0.3 s), then {budgeted:.3f}×")
    assert storm > 1.6
    assert budgeted <= 1.25
    assert (await effective_budget(mesh, client))["retry_ratio"] == 0.2

"""Failing replica: one of three replicas answers every call with 503.

Retries (``retry_on: 5xx``) hide its failures from the client: a retry goes to a replica not
yet tried, so the client sees no error at all. Outlier detection ejects the failing replica
after ``consecutive_5xx`` failures in a row, so it stops costing retries; the admin's
``/clusters`` shows it ejected and ``/metrics`` counts the ejection. After
``base_ejection_time`` it returns, fails again, and is ejected again.

The replicas record each request's ``x-mesh-attempt``: the failing one sees only first attempts
(a retry never goes back to it), and every request it failed arrives as attempt 2 elsewhere.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from tests.integration.policies.conftest import Mesh, Replica, Sidecar, drive, metric

CONSECUTIVE_5XX = 3
CONCURRENCY = 4
BASE_EJECTION = 1.0  # seconds; long enough for the first burst, short enough to see a return


async def ejected(mesh: Mesh, client: Sidecar, replica: Replica) -> bool:
    view = await mesh.admin(client, "/clusters")
    (endpoint,) = [e for e in view["backend"]["endpoints"] if e["address"] == replica.endpoint]
    return bool(endpoint["ejected"])


async def test_outlier_detection_ejects_a_failing_replica_and_retries_hide_it(mesh: Mesh) -> None:
    good_1, good_2, bad = await mesh.replicas({"name": "good-1"}, {"name": "good-2"},
                                              {"name": "bad", "fail_rate": 1.0, "status": 503})
    config: dict[str, Any] = {
        "clusters": [{
            "name": "backend", "lb_policy": "ROUND_ROBIN",
            "retry_policy": {"retry_on": ["5xx"], "num_retries": 2},
            "outlier_detection": {"consecutive_5xx": CONSECUTIVE_5XX, "interval": "0.1s",
                                  "base_ejection_time": f"{BASE_EJECTION}s"}}],
        "endpoints": {"backend": [r.sidecar.endpoint_config for r in (good_1, good_2, bad)]}}
    client = await mesh.sidecar("client", config, client=True)

    started = time.monotonic()
    first = await drive(client, requests=150, concurrency=CONCURRENCY)
    burst = time.monotonic() - started
    assert [r.status for r in first] == [200] * len(first), "retries should hide every failure"
    assert {r.replica for r in first} == {"good-1", "good-2"}
    text = await mesh.admin(client, "/metrics")
    # Once, or more if the burst outlasted an ejection (a busy machine): it came back, failed
    # CONSECUTIVE_5XX more times and went out again, for twice as long.
    ejections = metric(text, "mesh_sidecar_outlier_ejections_total", cluster="backend")
    assert ejections >= 1

    stats = {r.name: await mesh.stats(r) for r in (good_1, good_2, bad)}
    bad_ids = {request_id for request_id, _ in stats["bad"]["seen"]}
    print(f"\nfailing replica: {len(bad_ids)} of {len(first)} requests reached it "
          f"({ejections:.0f} ejection(s) in {burst:.2f} s), the client saw 0 errors")
    assert {attempt for _, attempt in stats["bad"]["seen"]} == {"1"}, "retries avoid it"
    retried = {request_id for name in ("good-1", "good-2")
               for request_id, attempt in stats[name]["seen"] if attempt == "2"}
    assert retried == bad_ids, "each request it failed succeeded on attempt 2 elsewhere"
    # Each ejection costs at most the failures that trip it plus the calls already in flight.
    assert len(bad_ids) <= ejections * (CONSECUTIVE_5XX + CONCURRENCY)
    retries = metric(text, "mesh_sidecar_retries_total", cluster="backend")
    assert retries == len(bad_ids)

    # It returns after its ejection time (the sidecar's sweep runs every interval) ...
    deadline = time.monotonic() + BASE_EJECTION * ejections + 3.0
    while await ejected(mesh, client, bad):
        assert time.monotonic() < deadline, "the ejected replica never returned"
        await asyncio.sleep(0.05)
    # ... is tried again, fails again, and is ejected again; the client still sees no error.
    second = await drive(client, requests=60, concurrency=CONCURRENCY, first_id=1000)
    assert [r.status for r in second] == [200] * len(second)
    text = await mesh.admin(client, "/metrics")
    assert metric(text, "mesh_sidecar_outlier_ejections_total", cluster="backend") > ejections
    assert await ejected(mesh, client, bad)
    assert not await ejected(mesh, client, good_1) and not await ejected(mesh, client, good_2)

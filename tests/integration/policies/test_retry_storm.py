"""Retry storm: a backend failing half its calls, retried three times, with and without a budget.

The course's arithmetic: with independent failures of probability ``p`` and up to ``n`` retries
the backend sees ``1 + p + p^2 + … + p^n`` times the offered load — 1.875× for ``p = 0.5`` and
``num_retries: 3``. A 20 % retry budget (Finagle / Linkerd) caps retries at a fifth of the
requests, so the backend sees at most 1.2× (we allow 1.25×), however badly it fails.

The budget's floor (``min_retries_per_second``, 10 by default, kept for ``ttl`` = 10 s) is set
to 0 here: a short test of a few hundred requests would otherwise spend a reserve of 100
retries and measure the floor, not the ratio.
"""

from __future__ import annotations

import asyncio
from typing import Any

from tests.integration.policies.conftest import Mesh, drive, metric

REQUESTS = 400
CONCURRENCY = 8
RETRY_POLICY = {"retry_on": ["5xx"], "num_retries": 3,
                "backoff": {"base_interval": "0.002s", "max_interval": "0.02s"}}
# max_retries (Envoy's default 3 retries in flight) would cut the storm short at 8 calls in
# flight; raise it so the budget alone is what limits retries.
BREAKERS = {"max_retries": 1000}
COURSE = 1 + 0.5 + 0.5**2 + 0.5**3  # 1.875


async def test_a_budget_stops_the_retry_storm(mesh: Mesh) -> None:
    (flaky,) = await mesh.replicas({"name": "flaky", "fail_rate": 0.5, "seed": 3})

    def config(budget: dict[str, Any]) -> dict[str, Any]:
        return {"clusters": [{"name": "backend", "retry_policy": RETRY_POLICY,
                              "retry_budget": budget, "circuit_breakers": BREAKERS}],
                "endpoints": {"backend": [flaky.sidecar.endpoint_config]}}

    unbudgeted, budgeted = await asyncio.gather(
        mesh.sidecar("client-no-budget", config({"disabled": True}), client=True),
        mesh.sidecar("client-budget", config({"retry_ratio": 0.2, "min_retries_per_second": 0,
                                              "ttl": "10s"}), client=True))

    figures = {}
    for name, client in [("no budget", unbudgeted), ("20 % budget", budgeted)]:
        before = await mesh.stats(flaky)
        results = await drive(client, requests=REQUESTS, concurrency=CONCURRENCY)
        after = await mesh.stats(flaky)
        seen = after["requests"] - before["requests"]
        p = (after["failed"] - before["failed"]) / seen  # the failure rate the backend drew
        errors = sum(r.status != 200 for r in results)
        text = await mesh.admin(client, "/metrics")
        retries = metric(text, "mesh_sidecar_retries_total", cluster="backend")
        refused = metric(text, "mesh_sidecar_retries_refused_total", cluster="backend",
                         reason="budget-exhausted")
        figures[name] = seen / REQUESTS
        print(f"\n{name:>11}: {REQUESTS} requests → the backend saw {seen} "
              f"({seen / REQUESTS:.3f}× the offered load) and failed {p:.1%} of them; retries "
              f"{retries:.0f}, refused by the budget {refused:.0f}; the client got {errors} "
              f"errors ({errors / REQUESTS:.1%})")
        assert all(r.status in (200, 503) for r in results)
        assert retries == seen - REQUESTS, "every retry the sidecar counts reaches the backend"
        if name == "no budget":
            assert refused == 0
            # exactly the arithmetic, for the failure rate this run drew
            assert abs(seen / REQUESTS - (1 + p + p**2 + p**3)) < 0.12, (p, seen)
        else:
            assert refused > 0

    print(f"\nthe course predicts {COURSE}× without a budget and at most 1.2× with 20 %; "
          f"measured {figures['no budget']:.3f}× and {figures['20 % budget']:.3f}×")
    assert abs(figures["no budget"] - COURSE) < 0.2, figures
    assert 1.05 <= figures["20 % budget"] <= 1.25, figures

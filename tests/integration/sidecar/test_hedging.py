"""Hedging over real sidecars: a slow replica's call is answered by a hedge to the fast one,
and the slow one sees its request cancelled. curl is the caller.

    curl ──HTTP/1.1──▶ H "client" 127.0.20.70 ══mTLS══▶ S "web"        127.0.20.71 ─▶ slow app
                       cluster "replicas",       ══mTLS══▶ F "web-canary" 127.0.20.72 ─▶ fast app
                       hedging_delay 0.1s

Both apps serve the same ``/slow?ms=N``: the slow replica sleeps N ms, the fast one answers at
once. The slow replica has 100 times the fast one's weight (round robin), so every first
attempt goes to it, and its hedge to the fast one.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
import pytest_asyncio
from aiohttp import web

from tests.integration.sidecar.apps import WebApp, start_web
from tests.integration.sidecar.conftest import (
    INBOUND,
    OUTBOUND,
    Pki,
    SidecarProcess,
    run_tool,
    static_sidecar,
    stopping,
    web_config,
)

pytestmark = [pytest.mark.asyncio(loop_scope="package"), pytest.mark.interop,
              pytest.mark.timeout(60)]

H_HOST, SLOW_HOST, FAST_HOST = "127.0.20.70", "127.0.20.71", "127.0.20.72"
SLOW_APP, FAST_APP = ("127.0.20.171", 8080), ("127.0.20.172", 8080)
HEDGING_DELAY = 0.1  # seconds
SLOW_MS = 3000  # what the slow replica takes


class Replica(WebApp):
    """A WebApp whose ``/slow`` is slow only on the slow replica: one request, two speeds."""

    def __init__(self, name: str, *, slow: bool) -> None:
        super().__init__(name)
        self.is_slow = slow

    async def slow(self, request: web.Request) -> web.Response:
        if self.is_slow:
            return await super().slow(request)
        self._record(request)
        return web.Response(text=f"{self.name}\n")


@dataclass
class Hedged:
    client: SidecarProcess
    slow: Replica
    fast: Replica


@pytest_asyncio.fixture(scope="module", loop_scope="package")
async def hedged(mesh_pki: Pki, tmp_path_factory: pytest.TempPathFactory
                 ) -> AsyncIterator[Hedged]:
    work = tmp_path_factory.mktemp("hedging")
    slow, fast = Replica("slow", slow=True), Replica("fast", slow=False)
    runners = [await start_web(slow, *SLOW_APP), await start_web(fast, *FAST_APP)]
    config = {
        "clusters": [{"name": "replicas", "app_protocol": "HTTP1", "lb_policy": "ROUND_ROBIN",
                      "timeout": "10s",
                      "retry_policy": {"hedging_delay": f"{HEDGING_DELAY}s"}}],
        "endpoints": {"replicas": [{"address": SLOW_HOST, "port": INBOUND, "weight": 100},
                                   {"address": FAST_HOST, "port": INBOUND, "weight": 1}]},
    }
    sidecars = [
        static_sidecar("hedging-client", H_HOST, "client", config, mesh_pki, work),
        static_sidecar("hedging-slow", SLOW_HOST, "web", web_config("web"), mesh_pki, work,
                       "--app", "{}:{}".format(*SLOW_APP)),
        static_sidecar("hedging-fast", FAST_HOST, "web-canary", web_config("web-canary"),
                       mesh_pki, work, "--app", "{}:{}".format(*FAST_APP)),
    ]
    try:
        with stopping(sidecars):
            await asyncio.gather(*(s.wait_ready() for s in sidecars))
            yield Hedged(sidecars[0], slow, fast)
    finally:
        for runner in runners:
            await runner.cleanup()


async def curl(test_id: str) -> tuple[str, float]:
    """GET /slow through the client sidecar: (body, seconds curl took)."""
    code, out, err = await run_tool(
        "curl", "-sS", "--max-time", "10", "--http1.1", "-H", f"x-test-id: {test_id}",
        "-w", "\n%{time_total}", "--connect-to", f"replicas:80:{H_HOST}:{OUTBOUND}",
        f"http://replicas/slow?ms={SLOW_MS}")
    assert code == 0, f"curl failed ({code}): {err}"
    body, _, seconds = out.rpartition("\n")
    return body, float(seconds)


async def test_a_hedge_answers_from_the_fast_replica_and_the_slow_one_is_cancelled(
        hedged: Hedged) -> None:
    hedges = await hedged.client.metric("mesh_sidecar_hedges_total", cluster="replicas")
    body, seconds = await curl("hedge-1")
    assert body == "fast\n"
    assert HEDGING_DELAY <= seconds < SLOW_MS / 1000 / 3, seconds  # well before the slow one
    # The slow replica got the first attempt, and its sidecar cancelled it when the hedge won.
    assert hedged.slow.requests["hedge-1"]["headers"]["x-mesh-attempt"] == "1"
    assert hedged.fast.requests["hedge-1"]["headers"]["x-mesh-attempt"] == "2"
    assert await asyncio.wait_for(hedged.slow.cancelled.get(), 5) == "hedge-1"
    assert await hedged.client.metric("mesh_sidecar_hedges_total",
                                      cluster="replicas") == hedges + 1


async def test_config_dump_shows_the_hedging_delay(hedged: Hedged) -> None:
    status, text = await hedged.client.admin("/config_dump")
    assert status == 200
    effective = json.loads(text)["effective_cluster_settings"]["replicas"]["retry_policy"]
    assert (effective["hedging_delay"], effective["num_retries"]) == (HEDGING_DELAY, 1)


async def test_every_slot_is_released_after_the_race(hedged: Hedged) -> None:
    await curl("hedge-2")
    status, text = await hedged.client.admin("/clusters")
    assert status == 200
    endpoints = json.loads(text)["replicas"]["endpoints"]
    assert [e["active_requests"] for e in endpoints] == [0, 0]

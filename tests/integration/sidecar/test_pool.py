"""Sidecar A's upstream pool, seen from outside: new connections when the streams per
connection run out, idle connections closed, a restarted peer reconnected.

Each test uses a cluster of its own (all of them W1 or W2 underneath), so the counts in
``/clusters`` and ``/metrics`` are its alone.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from mesh.http2 import connect, request
from tests.integration.sidecar.conftest import A_HOST, OUTBOUND, Mesh, run_tool

pytestmark = [pytest.mark.asyncio(loop_scope="package"), pytest.mark.interop,
              pytest.mark.timeout(60)]


async def endpoint_view(mesh: Mesh, cluster: str) -> dict[str, Any]:
    status, text = await mesh.a.admin("/clusters")
    assert status == 200
    (endpoint,) = json.loads(text)[cluster]["endpoints"]
    return dict(endpoint)


async def get(authority: str, path: str = "/") -> tuple[int, str]:
    code, out, err = await run_tool("curl", "-sS", "-w", "%{http_code}", "-o", "/dev/null",
                                    "-H", f"Host: {authority}",
                                    f"http://{A_HOST}:{OUTBOUND}{path}")
    assert code == 0, err
    return int(out), err


async def test_a_full_connection_makes_the_pool_open_another(mesh: Mesh) -> None:
    # "narrow" allows 2 streams per connection: 6 requests in flight at once need 3.
    conn = await connect(A_HOST, OUTBOUND)
    try:
        responses = await asyncio.gather(*(
            request(conn, "GET", "/slow?ms=500", authority="narrow") for _ in range(6)))
    finally:
        await conn.shutdown(1.0)

    endpoint = await endpoint_view(mesh, "narrow")
    assert [r.status for r in responses] == [200] * 6
    assert endpoint["connections_opened"] == 3
    assert endpoint["streams_opened"] == 6


async def test_an_idle_connection_is_closed_and_the_next_request_opens_a_new_one(
        mesh: Mesh) -> None:
    assert (await get("idle"))[0] == 200
    assert (await endpoint_view(mesh, "idle"))["connections"] == 1

    await asyncio.sleep(1.5)  # the cluster's idle_timeout is 0.5 s
    idled = await endpoint_view(mesh, "idle")
    assert (await get("idle"))[0] == 200

    assert (idled["connections"], idled["connections_opened"]) == (0, 1)
    assert (await endpoint_view(mesh, "idle"))["connections_opened"] == 2


async def test_a_restarted_peer_is_reconnected(mesh: Mesh) -> None:
    assert (await get("web-canary"))[0] == 200
    before = await endpoint_view(mesh, "web-canary")

    # W2 stops (GOAWAY, then it is gone): A answers at once, and says why.
    mesh.w2.stop()
    code, out, _ = await run_tool("curl", "-sS", "-H", "Host: web-canary",
                                  f"http://{A_HOST}:{OUTBOUND}/")
    assert code == 0
    assert out.startswith("cluster web-canary: upstream connect-failure (127.0.20.4:15006)")

    mesh.w2.restart()
    await mesh.w2.wait_ready()
    statuses = [(await get("web-canary"))[0] for _ in range(5)]

    after = await endpoint_view(mesh, "web-canary")
    assert statuses == [200] * 5
    assert after["connections"] == 1
    assert after["connections_opened"] == before["connections_opened"] + 1

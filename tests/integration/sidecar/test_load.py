"""Load through the pair with h2load: no failures, a weighted split that holds, one pooled
connection for a thousand sequential requests."""

from __future__ import annotations

import json

import pytest

from tests.integration.sidecar.conftest import (
    A_HOST,
    INBOUND,
    OUTBOUND,
    W1_HOST,
    H2loadResult,
    Mesh,
    h2load,
)

pytestmark = [pytest.mark.asyncio(loop_scope="package"), pytest.mark.interop,
              pytest.mark.timeout(90)]


async def h2load_to_a(authority: str, *, requests: int, clients: int,
                      streams: int) -> H2loadResult:
    """``requests`` over ``clients`` connections, ``streams`` in flight on each."""
    return await h2load(authority, f"http://{A_HOST}:{OUTBOUND}/", "-n", str(requests),
                        "-c", str(clients), "-m", str(streams))


async def test_h2load_through_the_pair_has_no_failures(mesh: Mesh) -> None:
    before = await mesh.a.metric("mesh_sidecar_requests_total", direction="outbound",
                                 cluster="web", code="2xx")

    # 8 connections × 50 streams: 400 requests in flight at A, more than one upstream
    # connection's worth (100 streams each).
    result = await h2load_to_a("web", requests=3000, clients=8, streams=50)

    assert (result.succeeded, result.failed, result.errored, result.timeout) == \
        (3000, 0, 0, 0), result.output
    assert result.status_2xx == 3000
    after = await mesh.a.metric("mesh_sidecar_requests_total", direction="outbound",
                                cluster="web", code="2xx")
    assert after - before == 3000


async def test_weighted_split_90_10_holds_within_3_percent_over_10000_requests(
        mesh: Mesh) -> None:
    web, canary = mesh.web.hits, mesh.canary.hits

    result = await h2load_to_a("shop", requests=10_000, clients=4, streams=25)

    assert (result.succeeded, result.failed, result.errored) == (10_000, 0, 0), result.output
    to_web, to_canary = mesh.web.hits - web, mesh.canary.hits - canary
    assert to_web + to_canary == 10_000
    assert 0.87 <= to_web / 10_000 <= 0.93, (to_web, to_canary)


async def test_a_thousand_sequential_requests_open_one_connection_between_the_sidecars(
        mesh: Mesh) -> None:
    # "pooled" is W1 under a cluster name no other test uses: its count starts at zero.
    assert await mesh.a.metric("mesh_sidecar_upstream_connections_opened_total",
                               cluster="pooled") == 0

    result = await h2load_to_a("pooled", requests=1000, clients=1, streams=1)

    assert (result.succeeded, result.failed) == (1000, 0), result.output
    assert await mesh.a.metric("mesh_sidecar_upstream_connections_opened_total",
                               cluster="pooled") == 1
    status, text = await mesh.a.admin("/clusters")
    (endpoint,) = json.loads(text)["pooled"]["endpoints"]
    assert status == 200
    assert endpoint["address"] == f"{W1_HOST}:{INBOUND}"
    assert (endpoint["connections"], endpoint["connections_opened"]) == (1, 1)
    assert endpoint["streams_opened"] == 1000

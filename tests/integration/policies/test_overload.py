"""Overload: a circuit breaker answers at once instead of letting calls queue.

``max_requests``: a replica takes ``DELAY`` per call and the client's sidecar allows 4 calls in
flight to the cluster. Twenty calls arrive together: four go through and take the replica's
time; the other sixteen are answered by the client's own sidecar within milliseconds — 503 with
``x-mesh-overloaded: max_requests`` naming the limit — rather than waiting their turn. When the
four are done, the limit has room again.

``max_pending_requests``: the cluster's only endpoint accepts TCP connections and never
answers the TLS handshake, so every call waits for a connection until ``connect_timeout``. Only
2 may wait; the others are refused at once, naming that limit.
"""

from __future__ import annotations

import asyncio
import contextlib

from tests.integration.policies.conftest import (
    INBOUND_PORT,
    Mesh,
    drive,
    metric,
    next_host,
)

DELAY = 1.0  # seconds the replica takes
LIMIT = 4
CALLS = 20


async def test_a_circuit_breaker_fails_fast_and_names_the_limit(mesh: Mesh) -> None:
    (slow,) = await mesh.replicas({"name": "slow", "delay": DELAY})
    client = await mesh.sidecar("client", {
        "clusters": [{"name": "backend", "circuit_breakers": {"max_requests": LIMIT}}],
        "endpoints": {"backend": [slow.sidecar.endpoint_config]}}, client=True)

    results = await drive(client, requests=CALLS, concurrency=CALLS)
    served = [r for r in results if r.status == 200]
    refused = [r for r in results if r.status != 200]
    print(f"\n{CALLS} calls at once, max_requests {LIMIT}: {len(served)} served in "
          f"{min(r.latency for r in served) * 1000:.0f}-{max(r.latency for r in served) * 1000:.0f}"
          f" ms, {len(refused)} refused in at most {max(r.latency for r in refused) * 1000:.1f} ms"
          f" (x-mesh-overloaded: {refused[0].overloaded})")
    assert len(served) == LIMIT and all(r.latency >= DELAY for r in served)
    assert len(refused) == CALLS - LIMIT
    for r in refused:
        assert (r.status, r.overloaded, r.replica) == (503, "max_requests", "")
        assert r.latency < DELAY / 2, "an overflow is answered at once, not after queueing"
    assert (await mesh.stats(slow))["requests"] == LIMIT  # the replica never saw the rest

    text = await mesh.admin(client, "/metrics")
    trips = metric(text, "mesh_sidecar_circuit_breaker_overflows_total", cluster="backend",
                   limit="max_requests")
    assert trips == CALLS - LIMIT

    again = await drive(client, requests=LIMIT, concurrency=LIMIT, first_id=CALLS)
    assert [r.status for r in again] == [200] * LIMIT  # the permits were given back


CONNECT_TIMEOUT = 1.0  # seconds


async def test_calls_waiting_for_a_connection_are_capped_by_max_pending_requests(
        mesh: Mesh) -> None:
    held: list[asyncio.StreamWriter] = []

    async def hold(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)  # accept, then say nothing: the TLS handshake never completes

    host = next_host()
    blackhole = await asyncio.start_server(hold, host, INBOUND_PORT)
    try:
        client = await mesh.sidecar("client", {
            "clusters": [{"name": "backend", "connect_timeout": f"{CONNECT_TIMEOUT}s",
                          "circuit_breakers": {"max_pending_requests": 2}}],
            "endpoints": {"backend": [{"address": host, "port": INBOUND_PORT}]}}, client=True)
        results = await drive(client, requests=10, concurrency=10)
    finally:
        blackhole.close()
        for writer in held:
            writer.close()
        with contextlib.suppress(Exception):
            await blackhole.wait_closed()
    waited = [r for r in results if not r.overloaded]
    refused = [r for r in results if r.overloaded]
    print(f"\n10 calls to an endpoint that never finishes a handshake, max_pending_requests 2: "
          f"{len(waited)} waited {min(r.latency for r in waited):.2f} s for the connect "
          f"timeout, {len(refused)} refused in at most "
          f"{max(r.latency for r in refused) * 1000:.1f} ms")
    assert len(waited) == 2 and all(r.status == 503 for r in waited)
    assert all(r.latency >= CONNECT_TIMEOUT * 0.9 for r in waited)
    assert len(refused) == 8
    for r in refused:
        assert (r.status, r.overloaded) == (503, "max_pending_requests")
        assert r.latency < CONNECT_TIMEOUT / 2
    text = await mesh.admin(client, "/metrics")
    assert metric(text, "mesh_sidecar_circuit_breaker_overflows_total", cluster="backend",
                  limit="max_pending_requests") == 8



async def test_max_retries_refuses_retries_and_says_so(mesh: Mesh) -> None:
    # Four calls fail at once and each may be retried once after a 1 s backoff, but
    # max_retries 1 lets only one retry be in flight: the other three are refused at once,
    # counted under the circuit breaker's own reason, not the retry budget's.
    (failing,) = await mesh.replicas({"name": "failing", "fail_rate": 1.0})
    client = await mesh.sidecar("client", {
        "clusters": [{"name": "backend", "circuit_breakers": {"max_retries": 1},
                      "retry_policy": {"retry_on": ["5xx"], "num_retries": 1,
                                       "backoff": {"base_interval": "1s",
                                                   "max_interval": "1s"}},
                      "retry_budget": {"disabled": True}}],
        "endpoints": {"backend": [failing.sidecar.endpoint_config]}}, client=True)

    results = await drive(client, requests=4, concurrency=4)

    assert [r.status for r in results] == [503] * 4
    assert (await mesh.stats(failing))["requests"] == 4 + 1  # the one retry
    text = await mesh.admin(client, "/metrics")
    refused = {reason: metric(text, "mesh_sidecar_retries_refused_total", cluster="backend",
                              reason=reason)
               for reason in ("circuit-breaker", "budget-exhausted")}
    assert refused == {"circuit-breaker": 3, "budget-exhausted": 0}
    assert metric(text, "mesh_sidecar_circuit_breaker_overflows_total", cluster="backend",
                  limit="max_retries") == 3
    assert metric(text, "mesh_sidecar_retries_total", cluster="backend") == 1

"""The admin's view of a cluster's inner state (``/clusters``) and the gauges ``/metrics`` adds.

The policies run on a ``FakeClock``, so costs, ejection times and budgets are exact; a call in
flight is a scripted one (``scripted.py``) that hangs until the test lets it go; connections
are real, on loopback, plaintext and mTLS.
"""

from __future__ import annotations

import asyncio
import random
import ssl
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from certs.pki import create_ca, issue_workload, write_ca, write_workload
from mesh.clock import FakeClock
from mesh.http2 import Server, Stream, serve
from mesh.identity import SpiffeId
from mesh.tls import client_context, server_context
from sidecar.admin import clusters_view, make_admin
from sidecar.balancers import EndpointState
from sidecar.config import LiveConfig
from sidecar.http1 import Http1App
from sidecar.inbound import Inbound
from sidecar.metrics import SidecarMetrics
from sidecar.outbound import Outbound
from sidecar.outcome import Outcome
from sidecar.pool import ConnectionPool
from tests.unit.sidecar.scripted import Caller, Hang, Upstreams
from tests.unit.sidecar.test_outbound import GET, LoopClock, mesh, orders_config

FIRST, SECOND = "10.0.0.1:15006", "10.0.0.2:15006"
E503 = Outcome(status=503)


def orders(clock: FakeClock, **cluster: Any) -> tuple[LiveConfig, dict[str, Any]]:
    """The configuration of cluster ``orders`` (two endpoints), and its view as made."""
    config = orders_config(clock, random.Random(1), **cluster)
    return config, clusters_view(config)["orders"]


def by_address(view: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {endpoint["address"]: endpoint for endpoint in view["endpoints"]}


# -- the balancer: its policy, and the cost it compares ---------------------------------------

def test_peak_ewma_costs_each_endpoint_its_latency_estimate_times_its_load() -> None:
    config, _ = orders(FakeClock(), lb_policy="PEAK_EWMA")
    config.clusters["orders"].balancer.endpoints[FIRST].start()
    config.clusters["orders"].balancer.endpoints[FIRST].start()

    view = clusters_view(config)["orders"]

    assert (view["lb_policy"], view["balancer"], view["cost_unit"]) == \
        ("PEAK_EWMA", "PeakEwmaBalancer", "ms")
    endpoints = by_address(view)
    assert endpoints[FIRST]["cost"] == 90.0  # the default 30 ms estimate x (2 in flight + 1)
    assert endpoints[SECOND]["cost"] == 30.0
    assert endpoints[FIRST]["latency_estimate_ms"] == 30.0  # still there, as before


def test_least_request_costs_the_calls_in_flight() -> None:
    config, _ = orders(FakeClock(), lb_policy="LEAST_REQUEST")
    config.clusters["orders"].balancer.endpoints[SECOND].start()

    view = clusters_view(config)["orders"]

    assert (view["lb_policy"], view["cost_unit"]) == ("LEAST_REQUEST", "requests")
    assert {a: e["cost"] for a, e in by_address(view).items()} == {FIRST: 0.0, SECOND: 1.0}


def test_weighted_least_request_costs_the_inverse_of_the_effective_weight() -> None:
    config, _ = orders(FakeClock(), lb_policy="LEAST_REQUEST")
    cluster = config.clusters["orders"]
    cluster.endpoints[1].weight = 4
    cluster.set_endpoints(cluster.endpoints)
    cluster.balancer.endpoints[SECOND].start()

    view = clusters_view(config)["orders"]

    assert view["cost_unit"] == "load/weight"  # not calls in flight: (active + 1) / weight
    assert {a: e["cost"] for a, e in by_address(view).items()} == \
        {FIRST: 1.0, SECOND: 0.5}  # (0 + 1) / 1 and (1 + 1) / 4


@pytest.mark.parametrize("weights", [[1] * 200, [1, 2] * 100])
def test_the_view_reads_each_endpoint_once_not_once_per_endpoint(
        monkeypatch: pytest.MonkeyPatch, weights: list[int]) -> None:
    # Whether least request weighs its endpoints depends on all of them: deciding it again for
    # each endpoint's cost would make the view O(endpoints²) on the event loop.
    ports = [(f"10.0.{n // 250}.{n % 250 + 1}", 15006) for n in range(len(weights))]
    config = orders_config(FakeClock(), random.Random(1), ports=ports)
    cluster = config.clusters["orders"]
    for endpoint, weight in zip(cluster.endpoints, weights, strict=True):
        endpoint.weight = weight
    cluster.set_endpoints(cluster.endpoints)
    reads = 0

    def available(endpoint: EndpointState) -> bool:
        nonlocal reads
        reads += 1
        return endpoint.healthy and not endpoint.ejected

    monkeypatch.setattr(EndpointState, "available", property(available))
    view = clusters_view(config)["orders"]

    assert len(view["endpoints"]) == len(weights)
    assert reads == len(weights)


@pytest.mark.parametrize("policy", ["ROUND_ROBIN", "RANDOM", "RING_HASH"])
def test_balancers_that_compare_no_load_show_no_cost(policy: str) -> None:
    _, view = orders(FakeClock(), lb_policy=policy)
    assert view["lb_policy"] == policy and view["cost_unit"] is None
    assert [e["cost"] for e in view["endpoints"]] == [None, None]


# -- outlier detection ------------------------------------------------------------------------

def test_an_ejected_endpoint_shows_why_since_when_for_how_long_and_how_often() -> None:
    clock = FakeClock()
    config, view = orders(clock, outlier_detection={
        "consecutive_5xx": 3, "interval": "1s", "base_ejection_time": "30s",
        "max_ejection_percent": 50})
    cluster = config.clusters["orders"]
    assert [e["ejection"] for e in view["endpoints"]] == [None, None]
    for _ in range(3):
        cluster.record(SECOND, E503)
    clock.advance(10)

    endpoints = by_address(clusters_view(config)["orders"])

    assert endpoints[FIRST]["ejection"] is None
    assert endpoints[SECOND]["ejected"] is True
    assert endpoints[SECOND]["ejection"] == {"reason": "consecutive-5xx",
                                             "ejected_at_s_ago": 10.0, "remaining_s": 20.0,
                                             "times": 1}

    clock.advance(20)
    cluster.tick()  # the sweep returns it
    assert by_address(clusters_view(config)["orders"])[SECOND]["ejection"] is None
    for _ in range(3):
        cluster.record(SECOND, E503)  # at once again: twice as long
    ejection = by_address(clusters_view(config)["orders"])[SECOND]["ejection"]
    assert (ejection["times"], ejection["remaining_s"]) == (2, 60.0)


# -- circuit breakers and the retry budget, while a call is in flight ------------------------

async def test_the_breakers_and_a_concurrency_budget_count_a_call_in_flight(
        monkeypatch: pytest.MonkeyPatch) -> None:
    m = mesh(monkeypatch, Upstreams(Hang()), circuit_breakers={"max_requests": 10},
             retry_budget={"kind": "CONCURRENCY", "retry_ratio": 0.5})
    config = m.outbound.config
    call = asyncio.create_task(m.outbound.handle(Caller(GET)))
    await m.upstreams.opened.wait()

    view = clusters_view(config)["orders"]

    assert view["circuit_breaker"] == {
        "max_pending_requests": {"active": 0, "max": 1024},
        "max_requests": {"active": 1, "max": 10},
        "max_retries": {"active": 0, "max": 3}}
    assert view["retry_budget"] == {"kind": "concurrency", "active_requests": 1,
                                    "active_retries": 0, "limit": 3, "budget_percent": 50.0,
                                    "min_retry_concurrency": 3}
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert clusters_view(config)["orders"]["circuit_breaker"]["max_requests"]["active"] == 0


def test_a_rate_budget_shows_the_retries_it_would_allow_now() -> None:
    _, view = orders(FakeClock(), retry_budget={"min_retries_per_second": 2, "ttl": "5s"})
    assert view["retry_budget"] == {"kind": "rate", "balance": 10,  # the reserve: 2/s x 5 s
                                    "retry_ratio": 0.2, "min_retries_per_second": 2,
                                    "ttl": 5.0}


def test_a_cluster_without_a_budget_shows_none() -> None:
    _, view = orders(FakeClock(), retry_budget={"disabled": True})
    assert view["retry_budget"] is None


# -- /metrics: connections open, by direction and mTLS, and whose sidecar this is ------------

def tls_pair(directory: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A client and a server context of one mesh CA: sidecars "shopper" and "orders"."""
    ca = create_ca()
    write_ca(ca, directory)
    contexts = []
    for service, context in (("shopper", client_context), ("orders", server_context)):
        workload = issue_workload(ca, SpiffeId(trust_domain="cluster.local",
                                               namespace="default", service=service),
                                  timedelta(hours=1), hosts=["127.0.0.1"])
        cert, key = write_workload(workload, directory)
        contexts.append(context(cert, key, directory / "ca.crt"))
    return contexts[0], contexts[1]


async def answer_ok(stream: Stream) -> None:
    stream.send_headers([(":status", "200")], end_stream=True)


@pytest.fixture
async def app() -> AsyncIterator[Server]:
    server = await serve(answer_ok, "127.0.0.1", 0)
    yield server
    await server.shutdown(0)


@pytest.mark.parametrize("tls", ["plaintext", "mtls"])
async def test_connections_open_are_gauged_both_ways_by_tls(tmp_path: Path, app: Server,
                                                            tls: str) -> None:
    client, server = tls_pair(tmp_path) if tls == "mtls" else (None, None)
    clock, rng = LoopClock(), random.Random(1)
    metrics = SidecarMetrics()
    # One sidecar's inbound listener, and another's outbound cluster that calls it.
    app_pool = ConnectionPool("127.0.0.1", app.port, ssl=None)
    receiving = LiveConfig(service="orders", clock=clock, rng=rng, tls=lambda: None)
    inbound = Inbound(receiving, metrics, h2c=app_pool, http1=Http1App("127.0.0.1", app.port),
                      protocol=None, own_id=SpiffeId(trust_domain="cluster.local",
                                                     namespace="default", service="orders"),
                      clock=clock)
    listener = await serve(inbound.handle, "127.0.0.1", 0, ssl=server)
    sending = orders_config(clock, rng, ports=[("127.0.0.1", listener.port)], tls=lambda: client)
    await Outbound(sending, metrics, clock=clock, rng=rng).handle(
        Caller([*GET, (":scheme", "http")]))

    async with TestClient(TestServer(make_admin(sending, metrics, lambda: (True, "ready")))) \
            as http:
        text = await (await http.get("/metrics")).text()
        assert f'mesh_sidecar_connections_open{{cluster="orders",direction="outbound",' \
               f'tls="{tls}"}} 1.0' in text
        assert f'mesh_sidecar_connections_open{{cluster="orders",direction="inbound",' \
               f'tls="{tls}"}} 1.0' in text
        assert 'mesh_sidecar_info{namespace="default",service="shopper"} 1.0' in text

        [accepted] = listener.connections
        await sending.clusters["orders"].close()
        await accepted.closed
        await asyncio.sleep(0)
        samples = await (await http.get("/metrics")).text()
        # The cluster has no pools any more, and the listener no connection.
        assert 'connections_open{cluster="orders",direction="outbound"' not in samples
        assert f'mesh_sidecar_connections_open{{cluster="orders",direction="inbound",' \
               f'tls="{tls}"}} 0.0' in samples
    await listener.shutdown(0)
    await app_pool.close()

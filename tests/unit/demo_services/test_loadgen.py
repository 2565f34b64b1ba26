"""The load generator against real servers on loopback: open loop, latency from the due time."""

from __future__ import annotations

import argparse
import asyncio
import threading
import time
from collections.abc import Iterator

import pytest
from aiohttp import web
from prometheus_client import generate_latest

from demo_services.backend_load import parse
from demo_services.greeter import greeter
from demo_services.load_report import summary
from demo_services.loadgen import (
    HttpClient,
    LoadPlan,
    add_arguments,
    backends_from,
    client_for,
    generate,
    run_load,
)
from mesh.grpc import GrpcServer
from mesh.http2 import serve
from sidecar.metrics import SidecarMetrics


class StallingServer:
    """An HTTP server in its own thread whose whole event loop freezes on one request."""

    def __init__(self, stall_on: int, stall: float) -> None:
        self.stall_on, self.stall = stall_on, stall
        self.served = 0
        self.port = 0
        self._ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, daemon=True)

    async def _handle(self, _: web.Request) -> web.Response:
        self.served += 1
        if self.served == self.stall_on:
            time.sleep(self.stall)  # noqa: ASYNC251 (on purpose: the whole loop freezes)
        return web.Response(text="ok")

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_get("/", self._handle)
        self._runner = web.AppRunner(app)
        self._loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        self._loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(self._runner.cleanup())
        self._loop.close()

    def __enter__(self) -> StallingServer:
        self._thread.start()
        assert self._ready.wait(5)
        return self

    def __exit__(self, *_: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


@pytest.fixture
def stalling() -> Iterator[StallingServer]:
    with StallingServer(stall_on=10, stall=0.5) as server:
        yield server


async def test_a_stalled_server_shows_in_every_request_due_during_the_stall(
        stalling: StallingServer) -> None:
    client = HttpClient(f"http://127.0.0.1:{stalling.port}/", method="GET", body=None,
                        headers={}, connections=200)
    started = time.monotonic()
    recorder, elapsed, lag = await generate(client, LoadPlan(rate=100, duration=1.0))
    await client.close()
    assert recorder.count == 100 and recorder.failures == 0
    # Open loop: the generator kept sending on schedule while the server was frozen...
    assert lag < 0.15
    assert time.monotonic() - started < 2.0
    # ...so every request due during the 0.5 s stall carries its share of it. A closed-loop
    # generator would have recorded one slow request and simply sent nothing meanwhile.
    slow = [latency for latency in recorder.latencies if latency > 0.2]
    assert len(slow) >= 20
    assert recorder.max >= 0.45
    assert elapsed >= 0.95


async def test_grpc_load_counts_each_status() -> None:
    server = await serve(greeter(GrpcServer()).handle, "127.0.0.1", 0)
    try:
        args = argparse.Namespace(
            url=f"grpc://127.0.0.1:{server.port}/hello.Greeter/SayHello", authority="greeter",
            method=None, body='{"name": "load", "failCode": 14, "failMessage": "busy"}',
            header=[], connections=2)
        client, description = client_for(args)
        result = await run_load(client, LoadPlan(rate=200, count=40), description)
    finally:
        await server.shutdown(grace=1)
    assert result.recorder.outcomes == {"UNAVAILABLE": 40}
    assert result.recorder.failures == 40
    text = summary(result)
    assert "gRPC /hello.Greeter/SayHello" in text and "UNAVAILABLE ×40" in text


def test_backend_counts_come_from_the_sidecars_prometheus_text() -> None:
    before_metrics, after_metrics = SidecarMetrics(), SidecarMetrics()
    for m, n in ((before_metrics, 3), (after_metrics, 10)):
        for _ in range(n):
            m.request_done("inbound", "payments", 200, 0.01)
        m.request_done("inbound", "payments", 503, 0.01)
        m.request_done("outbound", "inventory", 200, 0.01)  # not what this sidecar received
        m.retries.labels("inventory").inc(n)
        m.retries_refused.labels("inventory", "budget-exhausted").inc(1)
    before = parse(generate_latest(before_metrics.registry).decode())
    after = parse(generate_latest(after_metrics.registry).decode())
    delta = after.minus(before)
    assert after.inbound == {"2xx": 10, "5xx": 1}
    assert delta.inbound == {"2xx": 7} and delta.inbound_total == 7
    assert delta.retries == {"inventory": 7}
    assert delta.refused == {}  # unchanged counters drop out


def test_cli_errors_name_the_flag() -> None:
    p = argparse.ArgumentParser()
    add_arguments(p, url_required=True)
    with pytest.raises(ValueError, match="want http://HOST:PORT/PATH"):
        client_for(p.parse_args(["ftp://x/"]))
    with pytest.raises(ValueError, match="--body is not JSON"):
        client_for(p.parse_args(["http://127.0.0.1:1/", "--body", "{"]))
    with pytest.raises(ValueError, match="unknown here"):
        client_for(p.parse_args(["grpc://127.0.0.1:1/shop.Nope/Do"]))
    with pytest.raises(ValueError, match="--backend 'x': want NAME=HOST:PORT"):
        backends_from(["x"])
    assert backends_from(["a=127.0.0.1:15000"]) == {"a": "127.0.0.1:15000"}

"""Golden metrics asked of a real Prometheus agree with the dashboard's own two-scrape maths.

Three small aiohttp servers on loopback play sidecars — two of ``frontend`` calling the
clusters ``orders`` and ``payments``, one of ``orders`` calling ``inventory`` — and serve a
``/metrics`` whose counters start from a fixed history and then grow at a fixed rate per
second, with some 5xx and resets, a latency histogram, open connections and
``mesh_sidecar_info``. Debian's ``prometheus`` scrapes them with the demo's configuration
(:mod:`demo_services.prometheus`); once it holds a whole window of samples,
:class:`PrometheusSource`'s edges and services are compared with what
:mod:`dashboard.golden` makes of the same growth over the same window.
"""

from __future__ import annotations

import asyncio
import math
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from dashboard.golden import CONNECTIONS, DURATION, REQUESTS, ClusterCounts, golden, merge
from dashboard.prometheus import PrometheusError, PrometheusSource
from demo_services import prometheus as demo_prometheus

PROMETHEUS = shutil.which("prometheus")
LISTEN = "127.0.62.1:9090"  # this test's own loopback block
SCRAPE_INTERVAL = float(demo_prometheus.SCRAPE_INTERVAL.removesuffix("s"))
WINDOW = 4 * SCRAPE_INTERVAL  # the shortest window prometheus.py advises
SAMPLES_WAIT = 20.0  # seconds to wait for a window of samples of every target at the most
BOUNDS = (0.005, 0.01, 0.025, 0.05, math.inf)

pytestmark = pytest.mark.skipif(PROMETHEUS is None, reason="needs Debian's prometheus "
                                "(apt-get install prometheus; scripts/demo installs it)")


def per_second(codes: Mapping[str, float], buckets: Iterable[float]) -> ClusterCounts:
    """What a sidecar counts each second: requests by status class, cumulative buckets."""
    return ClusterCounts(codes=codes, buckets=dict(zip(BOUNDS, buckets, strict=True)))


def times(counts: ClusterCounts, seconds: float) -> ClusterCounts:
    """What ``counts`` per second make in ``seconds``."""
    return ClusterCounts(codes={c: v * seconds for c, v in counts.codes.items()},
                         buckets={le: v * seconds for le, v in counts.buckets.items()})


# What every series counted before the test: large enough that no counter is near zero in the
# window (rate() would stop its extrapolation at zero), every status class and bucket present.
HISTORY = per_second({"2xx": 5000, "4xx": 200, "5xx": 300, "reset": 100},
                     (1000, 3000, 4500, 5400, 5600))
IDLE = ClusterCounts()  # called before the test, not during it


@dataclass(frozen=True, slots=True, kw_only=True)
class FakeSidecar:
    """A sidecar's ``/metrics``: HISTORY plus ``traffic`` per second since ``started``."""

    service: str
    traffic: Mapping[tuple[str, str], ClusterCounts]  # (direction, cluster) → per second
    connections: Mapping[tuple[str, str, str], int]  # (direction, cluster, tls) → open now

    def families(self, seconds: float) -> list[Metric]:
        requests = CounterMetricFamily(REQUESTS, "Requests", labels=["direction", "cluster",
                                                                     "code"])
        duration = HistogramMetricFamily(DURATION, "Duration", labels=["direction", "cluster"])
        for (direction, cluster), rate in self.traffic.items():
            counts = merge([HISTORY, times(rate, seconds)])
            for code, value in counts.codes.items():
                requests.add_metric([direction, cluster, code], value)
            duration.add_metric([direction, cluster], [
                (floatToGoString(le), value) for le, value in counts.buckets.items()], None)
        connections = GaugeMetricFamily(CONNECTIONS, "Open", labels=["direction", "cluster",
                                                                     "tls"])
        for labels, value in self.connections.items():
            connections.add_metric(labels, value)
        info = InfoMetricFamily("mesh_sidecar", "Who", value={"service": self.service,
                                                              "namespace": "default"})
        return [requests, duration, connections, info]


SIDECARS = {
    "frontend-1": FakeSidecar(service="frontend", traffic={
        ("outbound", "orders"): per_second({"2xx": 8, "5xx": 1, "reset": 1}, (2, 6, 9, 10, 10)),
        ("outbound", "payments"): IDLE,
        ("inbound", "frontend"): per_second({"2xx": 10}, (5, 10, 10, 10, 10)),
    }, connections={("inbound", "frontend", "mtls"): 3, ("inbound", "frontend", "plaintext"): 1,
                    ("outbound", "orders", "mtls"): 2}),
    "frontend-2": FakeSidecar(service="frontend", traffic={
        ("outbound", "orders"): per_second({"2xx": 10}, (0, 4, 10, 10, 10)),
        ("outbound", "payments"): per_second({"2xx": 3, "5xx": 1}, (1, 2, 3, 4, 4)),
        ("inbound", "frontend"): per_second({"2xx": 9, "4xx": 1}, (6, 10, 10, 10, 10)),
    }, connections={("inbound", "frontend", "mtls"): 2}),
    "orders-1": FakeSidecar(service="orders", traffic={
        ("outbound", "inventory"): IDLE,
        ("inbound", "orders"): per_second({"2xx": 19, "5xx": 1}, (10, 15, 20, 20, 20)),
    }, connections={("inbound", "orders", "mtls"): 4}),
}


class Exposition(Collector):
    def __init__(self, sidecar: FakeSidecar, started: float) -> None:
        self.sidecar, self.started = sidecar, started

    def collect(self) -> Iterator[Metric]:
        yield from self.sidecar.families(time.monotonic() - self.started)


def metrics_app(sidecar: FakeSidecar, started: float) -> web.Application:
    registry = CollectorRegistry()
    registry.register(Exposition(sidecar, started))

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(registry),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    return app


def agree(got: Mapping[str, Any], want: Mapping[str, float | None]) -> bool:
    """``got`` has ``want``'s values, ``None`` where it has ``None`` and close to the rest."""
    return all(got[k] is None if v is None else got[k] == pytest.approx(v, rel=0.02, abs=0.002)
               for k, v in want.items())


def expected(direction: str, service: str, cluster: str | None) -> dict[str, Any]:
    """dashboard.golden's metrics of what ``service``'s sidecars counted over the window."""
    grown = [times(s.traffic[d, c], WINDOW) for s in SIDECARS.values() for d, c in s.traffic
             if s.service == service and d == direction and c == (cluster or c)]
    return asdict(golden(merge(grown), WINDOW))


@pytest.fixture
async def source(tmp_path: Path) -> AsyncIterator[PrometheusSource]:
    """The fake sidecars and a Prometheus scraping them with a window of samples of each."""
    assert PROMETHEUS is not None
    started = time.monotonic()
    servers = [TestServer(metrics_app(s, started), host="127.0.0.1") for s in SIDECARS.values()]
    for server in servers:
        await server.start_server()
    folder = tmp_path / "prometheus"
    folder.mkdir()
    config = folder / "prometheus.yml"
    config.write_text(demo_prometheus.config(
        {name: f"127.0.0.1:{server.port}" for name, server in zip(SIDECARS, servers,
                                                                  strict=True)}, [], []))
    log = (tmp_path / "prometheus.log").open("w")
    process = await asyncio.create_subprocess_exec(
        *demo_prometheus.argv(PROMETHEUS, str(config), str(folder / "data"), LISTEN),
        stdout=log, stderr=subprocess.STDOUT)
    try:
        source = PrometheusSource(f"http://{LISTEN}")
        async with aiohttp.ClientSession() as http:
            await until_every_target_fills_the_window(source, http, process)
        yield source
    finally:
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), timeout=10)
        except TimeoutError:
            process.kill()
            await process.wait()
        log.close()
        shutil.rmtree(folder)
        for server in servers:
            await server.close()


async def until_every_target_fills_the_window(source: PrometheusSource,
                                              http: aiohttp.ClientSession,
                                              process: asyncio.subprocess.Process) -> None:
    """Wait until Prometheus holds a sample of every sidecar each scrape interval of the
    window (so rate() sees the whole window), or fail after SAMPLES_WAIT seconds."""
    full = int(WINDOW / SCRAPE_INTERVAL)
    promql = f"count(count_over_time(mesh_sidecar_info[{WINDOW:g}s]) >= {full})"
    deadline = time.monotonic() + SAMPLES_WAIT
    seen: object = None
    while time.monotonic() < deadline:
        assert process.returncode is None, f"prometheus exited with {process.returncode}"
        try:
            samples = await source.query(http, promql)
        except PrometheusError as error:  # not listening yet
            seen = error
        else:
            seen = samples
            if samples and samples[0].value == len(SIDECARS):
                return
        await asyncio.sleep(0.5)
    pytest.fail(f"after {SAMPLES_WAIT} s Prometheus had no {full} samples of every sidecar: "
                f"{seen}")


async def test_edges_and_services_agree_with_the_two_scrape_maths(
        source: PrometheusSource) -> None:
    async with aiohttp.ClientSession() as http:
        edges = await source.edges(http, WINDOW)
        services = await source.services(http, WINDOW)
        with pytest.raises(PrometheusError, match=r"'rate\(': HTTP 400, bad_data: .*parse"):
            await source.query(http, "rate(")
    # rate() divides by the window what it extrapolates from the samples' timestamps (when each
    # scrape began), while the counts are taken when a fake sidecar answers, a millisecond or
    # so later and not exactly one interval apart; so two sidecars' series are scaled by
    # slightly different factors, and every ratio and quantile differs from the exact figures
    # in the last digits, not in the bucket (agree() allows 2 %).
    assert [(e["source"], e["destination"]) for e in edges] == [
        ("frontend", "orders"), ("frontend", "payments"), ("orders", "inventory")]
    for edge in edges:
        want = expected("outbound", edge["source"], edge["destination"])
        assert agree(edge, want), (edge, want)
    assert edges[0]["success"] == pytest.approx(0.9, rel=0.02)  # 2 failed of 20 a second
    assert edges[2]["rps"] == 0 and edges[2]["p99_ms"] is None  # Prometheus' NaN

    assert [s["service"] for s in services] == ["frontend", "orders"]
    for service in services:
        want = expected("inbound", service["service"], None)
        assert agree(service, want), (service, want)
    assert [(s["connections"], s["mtls"]) for s in services] == [(6, 0.833), (4, 1.0)]

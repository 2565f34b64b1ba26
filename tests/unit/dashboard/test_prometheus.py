"""Golden metrics asked of Prometheus (dashboard/prometheus.py), against a canned HTTP API.

A small aiohttp server on loopback plays Prometheus' ``/api/v1/query``: it answers each query
from a table of JSON written as Prometheus writes it, and notes what it was asked, so a test
reads as the transcript of one refresh: the PromQL asked, the vectors answered, the rows made.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from dashboard.prometheus import PrometheusError, PrometheusSource, Sample, duration

JOIN = "* on(job, instance) group_left(service) mesh_sidecar_info"
OUT_REQUESTS = ('sum by (service, cluster, code) (rate(mesh_sidecar_requests_total'
                f'{{direction="outbound"}}[15s]) {JOIN})')
IN_REQUESTS = ('sum by (service, code) (rate(mesh_sidecar_requests_total'
               f'{{direction="inbound"}}[15s]) {JOIN})')
CONNECTIONS = ('sum by (service, tls) (mesh_sidecar_connections_open{direction="inbound"} '
               f'{JOIN})')
OUT_CONNECTIONS = ('sum by (service, cluster, tls) (mesh_sidecar_connections_open'
                   f'{{direction="outbound"}} {JOIN})')
ATTEMPTS = ("sum by (service, cluster, code) (rate(mesh_sidecar_upstream_attempts_total[15s]) "
            f"{JOIN})")


def out_quantile(q: str) -> str:
    return (f"histogram_quantile({q}, sum by (service, cluster, le) (rate("
            f'mesh_sidecar_request_duration_seconds_bucket{{direction="outbound"}}[15s]) {JOIN}))')


def in_quantile(q: str) -> str:
    return (f"histogram_quantile({q}, sum by (service, le) (rate("
            f'mesh_sidecar_request_duration_seconds_bucket{{direction="inbound"}}[15s]) {JOIN}))')


def vector(*rows: tuple[dict[str, str], str]) -> tuple[int, str]:
    """A 200 answer holding an instant vector, values written as Prometheus writes them."""
    result = [{"metric": labels, "value": [1767225600.123, value]} for labels, value in rows]
    return 200, json.dumps({"status": "success",
                            "data": {"resultType": "vector", "result": result}})


class CannedPrometheus:
    """Answers ``/api/v1/query`` from ``answers`` (query → HTTP status and body)."""

    def __init__(self) -> None:
        self.answers: dict[str, tuple[int, str]] = {}
        self.asked: list[str] = []
        self.delay = 0.0
        self.url = ""

    async def query(self, request: web.Request) -> web.Response:
        promql = request.query["query"]
        self.asked.append(promql)
        await asyncio.sleep(self.delay)
        status, body = self.answers.get(promql, (400, json.dumps(
            {"status": "error", "errorType": "bad_data", "error": "not in the test's table"})))
        return web.Response(status=status, text=body, content_type="application/json")


@pytest.fixture
async def prometheus() -> AsyncIterator[CannedPrometheus]:
    canned = CannedPrometheus()
    app = web.Application()
    app.router.add_get("/api/v1/query", canned.query)
    async with TestServer(app, host="127.0.0.1") as server:
        canned.url = str(server.make_url("/"))
        yield canned


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def test_a_vector_becomes_samples_and_nan_or_infinity_none(
        prometheus: CannedPrometheus, http: aiohttp.ClientSession) -> None:
    prometheus.answers["up"] = vector(({"job": "sidecar", "instance": "a:1"}, "1"),
                                      ({"job": "sidecar", "instance": "b:1"}, "NaN"),
                                      ({"job": "sidecar", "instance": "c:1"}, "+Inf"))
    samples = await PrometheusSource(prometheus.url).query(http, "up")
    assert samples == [Sample(labels={"job": "sidecar", "instance": "a:1"}, value=1.0),
                       Sample(labels={"job": "sidecar", "instance": "b:1"}, value=None),
                       Sample(labels={"job": "sidecar", "instance": "c:1"}, value=None)]


async def test_edges_from_requests_attempts_connections_and_one_query_per_quantile(
        prometheus: CannedPrometheus, http: aiohttp.ClientSession) -> None:
    orders = {"service": "frontend", "cluster": "orders"}
    payments = {"service": "frontend", "cluster": "payments"}
    prometheus.answers.update({
        # frontend → orders: 10 requests a second, one in ten a 5xx or reset.
        OUT_REQUESTS: vector(({**orders, "code": "2xx"}, "8.5"), ({**orders, "code": "4xx"}, "0.5"),
                             ({**orders, "code": "5xx"}, "0.6"),
                             ({**orders, "code": "reset"}, "0.4"),
                             ({**payments, "code": "2xx"}, "0")),  # called once, idle since
        out_quantile("0.5"): vector((orders, "0.00875"), (payments, "NaN")),
        out_quantile("0.95"): vector((orders, "0.0225"), (payments, "NaN")),
        out_quantile("0.99"): vector((orders, "0.02450000000000001"), (payments, "NaN")),
        # 12 attempts a second for 10 requests: the 2 retries failed too, and 4 in 12 failed.
        ATTEMPTS: vector(({**orders, "code": "2xx"}, "8"), ({**orders, "code": "5xx"}, "4")),
        OUT_CONNECTIONS: vector(({**orders, "tls": "mtls"}, "2")),
    })
    edges = await PrometheusSource(prometheus.url).edges(http, window=15)
    assert sorted(prometheus.asked) == sorted(
        [OUT_REQUESTS, ATTEMPTS, OUT_CONNECTIONS, out_quantile("0.5"), out_quantile("0.95"),
         out_quantile("0.99")])
    assert edges == [
        {"source": "frontend", "destination": "orders", "requests": 150.0, "failed": 15.0,
         "rps": 10.0, "success": 0.9, "p50_ms": 8.75, "p95_ms": 22.5,
         "p99_ms": 24.5,  # a 4xx succeeded
         "attempt_success": 0.667, "attempts_failed": 60.0, "connections": 2, "mtls": 1.0},
        {"source": "frontend", "destination": "payments", "requests": 0.0, "failed": 0.0,
         "rps": 0.0, "success": None, "p50_ms": None, "p95_ms": None, "p99_ms": None,
         "attempt_success": None, "attempts_failed": 0.0, "connections": 0, "mtls": None}]


async def test_services_add_open_connections_and_their_mtls_share(
        prometheus: CannedPrometheus, http: aiohttp.ClientSession) -> None:
    prometheus.answers.update({
        IN_REQUESTS: vector(({"service": "orders", "code": "2xx"}, "3"),
                            ({"service": "orders", "code": "5xx"}, "1"),
                            ({"service": "payments", "code": "2xx"}, "2")),
        in_quantile("0.5"): vector(({"service": "orders"}, "0.004"),
                                   ({"service": "payments"}, "0.001")),
        in_quantile("0.95"): vector(({"service": "orders"}, "0.01"),
                                    ({"service": "payments"}, "0.002")),
        in_quantile("0.99"): vector(({"service": "orders"}, "0.0123456"),
                                    ({"service": "payments"}, "0.0025")),
        CONNECTIONS: vector(({"service": "orders", "tls": "mtls"}, "5"),
                            ({"service": "orders", "tls": "plaintext"}, "1"),
                            ({"service": "inventory", "tls": "mtls"}, "2")),  # open, idle
    })
    services = await PrometheusSource(prometheus.url).services(http, window=15)
    assert len(prometheus.asked) == 5
    assert services == [
        {"service": "inventory", "requests": 0.0, "failed": 0.0, "rps": 0.0, "success": None,
         "p50_ms": None, "p95_ms": None, "p99_ms": None, "connections": 2, "mtls": 1.0},
        {"service": "orders", "requests": 60.0, "failed": 15.0, "rps": 4.0, "success": 0.75,
         "p50_ms": 4.0, "p95_ms": 10.0, "p99_ms": 12.346, "connections": 6, "mtls": 0.833},
        {"service": "payments", "requests": 30.0, "failed": 0.0, "rps": 2.0, "success": 1.0,
         "p50_ms": 1.0, "p95_ms": 2.0, "p99_ms": 2.5, "connections": 0, "mtls": None}]


async def expect_error(source: PrometheusSource, http: aiohttp.ClientSession,
                       promql: str = "up") -> str:
    with pytest.raises(PrometheusError) as caught:
        await source.query(http, promql)
    message = str(caught.value)
    assert f"Prometheus at {source.url}: query {promql!r}" in message
    return message


async def test_an_error_answer_names_the_server_the_query_and_prometheus_reason(
        prometheus: CannedPrometheus, http: aiohttp.ClientSession) -> None:
    prometheus.answers["rate("] = 400, json.dumps({
        "status": "error", "errorType": "bad_data",
        "error": '1:6: parse error: unexpected end of input in rate'})
    message = await expect_error(PrometheusSource(prometheus.url), http, "rate(")
    assert message.endswith("HTTP 400, bad_data: 1:6: parse error: unexpected end of input "
                            "in rate")


async def test_an_answer_that_is_not_prometheus_json_is_an_error(
        prometheus: CannedPrometheus, http: aiohttp.ClientSession) -> None:
    prometheus.answers["up"] = 502, "<html>Bad Gateway</html>"
    message = await expect_error(PrometheusSource(prometheus.url), http)
    assert message.endswith("HTTP 502 '<html>Bad Gateway</html>'")


async def test_a_range_vector_is_not_what_was_asked(
        prometheus: CannedPrometheus, http: aiohttp.ClientSession) -> None:
    prometheus.answers["up[1m]"] = 200, json.dumps(
        {"status": "success", "data": {"resultType": "matrix", "result": []}})
    message = await expect_error(PrometheusSource(prometheus.url), http, "up[1m]")
    assert message.endswith("want a vector, got 'matrix'")


async def test_a_server_that_is_not_there_or_too_slow_is_an_error(
        prometheus: CannedPrometheus, http: aiohttp.ClientSession) -> None:
    prometheus.answers["up"] = vector()
    prometheus.delay = 0.5
    slow = PrometheusSource(prometheus.url, timeout=0.05)
    assert (await expect_error(slow, http)).endswith(": no answer within 0.05 s")
    gone = TestServer(web.Application(), host="127.0.0.1")
    await gone.start_server()
    url = str(gone.make_url("/"))
    await gone.close()  # nothing listens on its port now
    assert f"Cannot connect to host {url.split('//')[1].rstrip('/')}" in \
        await expect_error(PrometheusSource(url), http)


async def test_one_failed_query_of_a_refresh_is_the_one_error_raised(
        prometheus: CannedPrometheus, http: aiohttp.ClientSession) -> None:
    prometheus.answers.update({OUT_REQUESTS: vector(), ATTEMPTS: vector(),
                               OUT_CONNECTIONS: vector(), out_quantile("0.5"): vector(),
                               out_quantile("0.99"): vector()})  # the 0.95 one fails
    with pytest.raises(PrometheusError, match=r"histogram_quantile\(0\.95, .*not in the test"):
        await PrometheusSource(prometheus.url).edges(http, window=15)


@pytest.mark.parametrize(("seconds", "promql"), [(15, "15s"), (300.0, "300s"), (2.5, "2500ms")])
def test_a_window_is_a_promql_range(seconds: float, promql: str) -> None:
    assert duration(seconds) == promql


async def test_a_window_of_no_time_is_refused_before_asking(
        prometheus: CannedPrometheus, http: aiohttp.ClientSession) -> None:
    with pytest.raises(ValueError, match="window 0: want a positive number of seconds"):
        await PrometheusSource(prometheus.url).services(http, window=0)
    assert prometheus.asked == []


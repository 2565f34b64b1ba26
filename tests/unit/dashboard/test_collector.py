"""The collector against a small mesh of HTTP servers: an operator API and sidecars' admin
endpoints answering as ours do (dashboard/collector.py).

Each test drives rounds by hand (``Collector.poll``) on a fake clock, so windows are exact.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from bench.common import serving
from dashboard.app import make_app
from dashboard.collector import TOP_KEPT, TOP_PER_SIDECAR, TOP_SIDECARS, Collector, Watch
from mesh.clock import FakeClock

TOKEN = "operator-secret"


def exposition(outbound: dict[str, dict[str, int]], inbound: dict[str, int],
               connections: dict[tuple[str, str, str], int],
               attempts: dict[str, dict[str, int]] | None = None) -> str:
    """A sidecar's /metrics: counts per cluster and status class (all requests in the 10 ms
    bucket), open connections per (direction, cluster, tls), attempts per cluster and class."""
    lines = ["# TYPE mesh_sidecar_upstream_attempts_total counter"]
    lines += [f'mesh_sidecar_upstream_attempts_total{{cluster="{cluster}",code="{code}"}} {n}'
              for cluster, codes in (attempts or {}).items() for code, n in codes.items()]
    lines.append("# TYPE mesh_sidecar_requests_total counter")
    series = [("outbound", cluster, codes) for cluster, codes in outbound.items()]
    if inbound:
        series.append(("inbound", "local", inbound))
    for direction, cluster, codes in series:
        lines += [f'mesh_sidecar_requests_total{{cluster="{cluster}",code="{code}",'
                  f'direction="{direction}"}} {n}' for code, n in codes.items()]
    lines.append("# TYPE mesh_sidecar_request_duration_seconds histogram")
    for direction, cluster, codes in series:
        total = sum(codes.values())
        for le, n in (("0.005", 0), ("0.01", total), ("+Inf", total)):
            lines.append(f'mesh_sidecar_request_duration_seconds_bucket{{cluster="{cluster}",'
                         f'direction="{direction}",le="{le}"}} {n}')
    lines.append("# TYPE mesh_sidecar_connections_open gauge")
    lines += [f'mesh_sidecar_connections_open{{cluster="{c}",direction="{d}",tls="{t}"}} {n}'
              for (d, c, t), n in connections.items()]
    return "\n".join(lines) + "\n"


@dataclass
class Sidecar:
    """A fake sidecar admin endpoint: what it answers, and what it was asked."""

    service: str
    instance: str
    metrics: str = ""
    clusters: dict[str, Any] = field(default_factory=dict)
    tapped: list[dict[str, Any]] = field(default_factory=list)  # every request it "forwarded"
    boot: str = "first"  # the tap's: a new one after a restart
    asked: list[str] = field(default_factory=list)  # paths with queries, in order
    port: int = 0

    def app(self) -> web.Application:
        async def metrics(request: web.Request) -> web.Response:
            self.asked.append(request.path_qs)
            return web.Response(text=self.metrics)

        async def clusters(request: web.Request) -> web.Response:
            self.asked.append(request.path_qs)
            return web.json_response(self.clusters)

        async def tap(request: web.Request) -> web.Response:
            self.asked.append(request.path_qs)
            after = int(request.query.get("after", "0"))
            limit = int(request.query.get("limit", "100"))
            newer = [r for r in self.tapped if r["seq"] > after]
            if after > (self.tapped[-1]["seq"] if self.tapped else 0):
                after = 0  # from before a restart: from the start
            return web.json_response({"boot": self.boot,
                                      "next": self.tapped[-1]["seq"] if self.tapped else after,
                                      "dropped": max(0, len(newer) - limit),
                                      "requests": newer[-limit:]})

        app = web.Application()
        app.router.add_get("/metrics", metrics)
        app.router.add_get("/clusters", clusters)
        app.router.add_get("/tap", tap)
        return app


@dataclass
class Mesh:
    """A fake control plane over some sidecars: one operator API per replica, each listing
    the discovery streams of the sidecars that chose it."""

    sidecars: list[Sidecar]
    policies: list[tuple[int, str]] = field(default_factory=lambda: [(1, "clusters: []\n")])
    xds_streams: list[str] = field(default_factory=list)  # services of proxyless clients
    published: bool = True
    down: bool = False  # every route answers 503
    replicas: int = 1  # sidecar n holds its stream at replica n % replicas
    asked: list[str] = field(default_factory=list)
    apis: list[str] = field(default_factory=list)  # each replica's host:port

    @property
    def api(self) -> str:
        return self.apis[0]

    def app(self, replica: int) -> web.Application:
        @web.middleware
        async def operator_only(request: web.Request, handler: Callable[..., Any]) -> Any:
            self.asked.append(request.path)
            if request.headers.get("Authorization") != f"Bearer {TOKEN}":
                return web.json_response({"error": "no"}, status=401)
            if self.down:
                return web.json_response({"error": "store unavailable"}, status=503)
            return await handler(request)

        def stream(node: str, service: str, protocol: str) -> dict[str, Any]:
            version = self.policies[-1][0]
            return {"node": node, "service": service, "namespace": "shop", "protocol": protocol,
                    "types": {"clusters": {"sent": "a", "acked": "a", "nacks": 0,
                                           "last_nack": ""}},
                    "policy_version": version, "nack": None}

        async def status(_: web.Request) -> web.Response:
            streams = [stream(s.instance, s.service, "mesh.v1")
                       for n, s in enumerate(self.sidecars) if n % self.replicas == replica]
            if replica == 0:
                streams += [stream(f"{s}-1", s, "xds.v3") for s in self.xds_streams]
            return web.json_response({
                "policy_version": self.policies[-1][0], "policy_error": None,
                "replica": {"name": f"cp-{replica}"},
                "replicas": [{"name": f"cp-{n}", "api": api} for n, api in enumerate(self.apis)],
                "instances": len(self.sidecars), "streams": streams})

        async def services(_: web.Request) -> web.Response:
            names = sorted({s.service for s in self.sidecars})
            return web.json_response([
                {"service": n, "namespace": "shop", "healthy": 1,
                 "instances": sum(1 for s in self.sidecars if s.service == n)} for n in names])

        async def endpoints(request: web.Request) -> web.Response:
            service = request.match_info["service"]
            return web.json_response([
                {"address": "127.0.0.1", "port": 15006, "instance": s.instance,
                 "admin_port": s.port if self.published else 0}
                for s in self.sidecars if s.service == service])

        async def history(_: web.Request) -> web.Response:
            return web.json_response({"versions": [
                {"version": v, "source": "file", "applied_at": 1.0e9, "policy": text}
                for v, text in self.policies]})

        app = web.Application(middlewares=[operator_only])
        app.router.add_get("/status", status)
        app.router.add_get("/services", services)
        app.router.add_get("/endpoints/{service}", endpoints)
        app.router.add_get("/policy/history", history)
        return app


@contextlib.asynccontextmanager
async def running(mesh: Mesh) -> AsyncIterator[None]:
    async with contextlib.AsyncExitStack() as stack:
        for sidecar in mesh.sidecars:
            sidecar.port = await stack.enter_async_context(serving(sidecar.app()))
        for replica in range(mesh.replicas):
            mesh.apis.append(
                f"127.0.0.1:{await stack.enter_async_context(serving(mesh.app(replica)))}")
        yield


def shop() -> Mesh:
    return Mesh(sidecars=[Sidecar("frontend", "frontend-1"), Sidecar("frontend", "frontend-2"),
                          Sidecar("orders", "orders-1")])


async def rounds(collector: Collector, clock: FakeClock, count: int,
                 before: Callable[[int], None] = lambda _: None) -> None:
    async with aiohttp.ClientSession() as http:
        for n in range(count):
            before(n)
            await collector.poll(http)
            clock.advance(1.0)


async def test_edges_and_services_over_the_window_a_page_chose() -> None:
    mesh, clock = shop(), FakeClock()
    front_1, front_2, orders = mesh.sidecars
    tls = {("inbound", "local", "mtls"): 3, ("outbound", "orders", "mtls"): 2}

    def grow(n: int) -> None:  # each second: frontend-1 10 calls, frontend-2 10 (1 a 5xx),
        # and frontend-2 retried 2 failed tries of them, that did not show: 12 tries, 3 failed
        front_1.metrics = exposition({"orders": {"2xx": 10 * n}}, {"2xx": 5 * n}, tls,
                                     {"orders": {"2xx": 10 * n}})
        front_2.metrics = exposition({"orders": {"2xx": 9 * n, "5xx": n}}, {"2xx": 5 * n}, tls,
                                     {"orders": {"2xx": 9 * n, "5xx": 3 * n}})
        orders.metrics = exposition({}, {"2xx": 19 * n, "5xx": n},
                                    {("inbound", "local", "mtls"): 3,
                                     ("inbound", "local", "plaintext"): 1})

    async with running(mesh):
        collector = Collector(api=mesh.api, token=TOKEN, clock=clock)
        with collector.watching(Watch(window=60)):
            await rounds(collector, clock, 21, grow)
    golden = collector.state["golden"]
    assert set(golden) == {"15", "60"}  # the default window and the one watched
    [edge] = golden["15"]["edges"]
    # 15 s back from the newest scrape: (10 + 10) calls a second, 1 in 20 a 5xx.
    assert (edge["source"], edge["destination"]) == ("frontend", "orders")
    assert edge["rps"] == 20.0 and edge["success"] == 0.95
    assert edge["attempt_success"] == round(19 / 22, 3)  # 22 tries a second, 3 failed
    assert edge["p50_ms"] == pytest.approx(7.5)  # halfway through the (5, 10] ms bucket
    assert edge["connections"] == 4 and edge["mtls"] == 1.0
    assert golden["60"]["edges"][0]["rps"] == 20.0  # 20 s of scrapes: the whole of them
    by_service = {s["service"]: s for s in golden["15"]["services"]}
    assert by_service["orders"]["rps"] == 20.0 and by_service["orders"]["success"] == 0.95
    assert by_service["orders"]["connections"] == 4 and by_service["orders"]["mtls"] == 0.75
    assert by_service["frontend"]["rps"] == 10.0 and by_service["frontend"]["success"] == 1.0
    assert {s["instance"]: s["error"] for s in collector.state["sidecars"]} == \
        {"frontend-1": None, "frontend-2": None, "orders-1": None}


async def test_the_inside_of_a_cluster_is_asked_only_while_a_page_shows_it() -> None:
    mesh, clock = shop(), FakeClock()
    for sidecar in mesh.sidecars:
        sidecar.clusters = {"orders": {"lb_policy": "PEAK_EWMA", "endpoints": []}}
    async with running(mesh):
        collector = Collector(api=mesh.api, token=TOKEN, clock=clock)
        await rounds(collector, clock, 2)
        assert collector.state["clusters"] == {}
        with collector.watching(Watch(service="frontend")):
            await rounds(collector, clock, 2)
            shown = collector.state["clusters"]["frontend"]
        await rounds(collector, clock, 1)
    assert shown["sidecars"] == 2
    assert [s["instance"] for s in shown["shown"]] == ["frontend-1", "frontend-2"]
    assert shown["shown"][0]["clusters"]["orders"]["lb_policy"] == "PEAK_EWMA"
    assert collector.state["clusters"] == {}  # the page went: nobody asks
    asked = {s.instance: [p for p in s.asked if p == "/clusters"] for s in mesh.sidecars}
    assert asked == {"frontend-1": ["/clusters"] * 2, "frontend-2": ["/clusters"] * 2,
                     "orders-1": []}


async def test_top_samples_a_few_sidecars_a_round_and_reads_each_tap_from_where_it_left()\
        -> None:
    mesh, clock = Mesh(sidecars=[Sidecar("orders", f"orders-{n}")
                                 for n in range(TOP_SIDECARS + 2)]), FakeClock()
    for sidecar in mesh.sidecars:
        sidecar.tapped = [{"seq": s, "at": float(s), "cluster": "payments", "authority": "p",
                           "method": "POST", "path": "/charge", "status": 200,
                           "latency_ms": 1.0, "retries": 0, "hedges": 0}
                          for s in range(1, TOP_PER_SIDECAR + 6)]
    async with running(mesh):
        collector = Collector(api=mesh.api, token=TOKEN, clock=clock)
        await rounds(collector, clock, 1)
        assert collector.state.get("top") is None  # no page shows it: no tap is read
        with collector.watching(Watch(top=True)):
            await rounds(collector, clock, 2)
    taps = {s.instance: [p for p in s.asked if p.startswith("/tap")] for s in mesh.sidecars}
    # First round: the first TOP_SIDECARS sidecars; second: the other two, then from the start.
    assert sum(len(t) for t in taps.values()) == 2 * TOP_SIDECARS
    first = mesh.sidecars[0].instance
    assert taps[first] == [f"/tap?limit={TOP_PER_SIDECAR}",
                           f"/tap?limit={TOP_PER_SIDECAR}&after={TOP_PER_SIDECAR + 5}"]
    top = collector.state["top"]
    assert len(top) == TOP_KEPT
    assert [r["at"] for r in top] == sorted((r["at"] for r in top), reverse=True)  # newest 1st
    assert {r["source"] for r in top} == {"orders"}


async def test_policy_history_with_diffs_and_the_version_every_stream_acked() -> None:
    mesh, clock = shop(), FakeClock()
    mesh.xds_streams = ["auditor"]
    mesh.policies = [(1, "retries: 1\n"), (2, "retries: 2\n")]
    async with running(mesh):
        collector = Collector(api=mesh.api, token=TOKEN, clock=clock)
        await rounds(collector, clock, 2)
        assert mesh.asked.count("/policy/history") == 1  # asked again only when it moves
        mesh.policies.append((3, "retries: 3\n"))
        await rounds(collector, clock, 1)
    policy = collector.state["policy"]
    assert policy["version"] == 3 and [v["version"] for v in policy["history"]] == [1, 2, 3]
    assert "-retries: 2\n+retries: 3\n" in policy["history"][-1]["diff"]
    assert {s["node"]: s["policy_version"] for s in policy["streams"]} == \
        {"frontend-1": 3, "frontend-2": 3, "orders-1": 3, "auditor-1": 3}
    assert collector.state["proxyless"] == ["auditor"]


async def test_problems_are_shown_not_hidden() -> None:
    mesh, clock = shop(), FakeClock()
    mesh.published = False
    async with running(mesh):
        refused = Collector(api=mesh.api, token="someone-else's", clock=clock)
        await rounds(refused, clock, 1)
        unpublished = Collector(api=mesh.api, token=TOKEN, clock=clock)
        await rounds(unpublished, clock, 1)
    [error] = refused.state["errors"]
    assert error.startswith(f"operator API {mesh.api}: GET http://{mesh.api}/status: HTTP 401")
    assert {s["error"] for s in unpublished.state["sidecars"]} == \
        {"its admin endpoint is not published (admin_port 0)"}
    assert all(s.asked == [] for s in mesh.sidecars)


async def test_the_event_stream_refuses_what_the_dashboard_does_not_offer() -> None:
    collector = Collector(api="127.0.0.1:9", token=None)
    async with serving(make_app(collector)) as port, aiohttp.ClientSession() as http:
        for query, message in (("window=7", "window 7: want one of 15, 60, 300 seconds"),
                               ("window=soon", "window 'soon': want a number of seconds"),
                               ("top=yes", "top 'yes': want 0 or 1")):
            async with http.get(f"http://127.0.0.1:{port}/events?{query}") as response:
                assert (response.status, (await response.text()).strip()) == (400, message)
        async with http.get(f"http://127.0.0.1:{port}/events?window=300&service=orders"
                            ) as response:
            assert response.status == 200
            first = await response.content.readuntil(b"\n\n")
            assert first.startswith(b"event: state\ndata: ")
            assert json.loads(first.split(b"data: ", 1)[1])["api"] == "127.0.0.1:9"


async def test_each_sidecar_counts_at_its_own_rate_however_long_it_has_been_scraped() -> None:
    # Three replicas scraped for 60 s at 30 calls a second each; a fourth, registered at
    # second 50, made one call since.
    mesh = Mesh(sidecars=[Sidecar("frontend", f"frontend-{n}") for n in range(4)])
    clock, late = FakeClock(), mesh.sidecars[3]

    def grow(n: int) -> None:
        for sidecar in mesh.sidecars[:3]:
            sidecar.metrics = exposition({"orders": {"2xx": 30 * n}}, {}, {})
        if n == 50:
            mesh.sidecars.append(late)
        late.metrics = exposition({"orders": {"2xx": 1}}, {}, {})

    async with running(mesh):
        mesh.sidecars.remove(late)
        collector = Collector(api=mesh.api, token=TOKEN, clock=clock)
        with collector.watching(Watch(window=60)):
            await rounds(collector, clock, 61, grow)
    [edge] = collector.state["golden"]["60"]["edges"]
    # 3 × 30 (the fourth's one call was before its first scrape): not the sum of the counts
    # over the mean of the spans, 5400 / 47.5 s = 113.7.
    assert edge["rps"] == 90.0 and edge["requests"] == 5400


async def test_a_round_without_the_operator_api_keeps_what_was_known() -> None:
    mesh, clock = shop(), FakeClock()
    front_1 = mesh.sidecars[0]

    def grow(n: int) -> None:
        front_1.metrics = exposition({"orders": {"2xx": 10 * n}}, {}, {})

    async with running(mesh):
        collector = Collector(api=mesh.api, token=TOKEN, clock=clock)
        await rounds(collector, clock, 10, grow)
        mesh.down = True
        await rounds(collector, clock, 1, lambda _: grow(10))
        failed = collector.state
        mesh.down = False
        await rounds(collector, clock, 1, lambda _: grow(11))
    assert failed["errors"][0].startswith(f"operator API {mesh.api}: GET http://{mesh.api}"
                                          f"/status: HTTP 503")
    # The sidecars were still scraped, and their scrapes kept: the window is whole.
    assert failed["golden"]["15"]["edges"][0]["rps"] == 10.0
    assert collector.state["golden"]["15"]["edges"][0]["rps"] == 10.0
    assert collector.state["errors"] == []


async def test_the_topology_is_asked_when_instances_change_or_now_and_then() -> None:
    mesh, clock = shop(), FakeClock()
    async with running(mesh):
        collector = Collector(api=mesh.api, token=TOKEN, clock=clock)
        await rounds(collector, clock, 4)  # 1 s apart: one asking, then none until 5 s
        assert mesh.asked.count("/services") == 1
        mesh.sidecars.pop()  # one instance fewer
        await rounds(collector, clock, 1)
        assert mesh.asked.count("/services") == 2
        assert [s["instance"] for s in collector.state["sidecars"]] == \
            ["frontend-1", "frontend-2"]
        await rounds(collector, clock, 5)
    assert mesh.asked.count("/services") == 3  # TOPOLOGY_EVERY after the last asking


async def test_streams_are_shown_from_every_replica() -> None:
    mesh = Mesh(sidecars=[Sidecar("orders", f"orders-{n}") for n in range(5)], replicas=3)
    async with running(mesh):
        collector = Collector(api=mesh.api, token=TOKEN, clock=FakeClock())
        await rounds(collector, FakeClock(), 1)
    assert [s["node"] for s in collector.state["policy"]["streams"]] == \
        [f"orders-{n}" for n in range(5)]
    assert collector.state["control_plane"]["replicas"] == ["cp-0", "cp-1", "cp-2"]


async def test_a_round_that_fails_unforeseen_is_shown_and_the_next_comes(
        monkeypatch: pytest.MonkeyPatch) -> None:
    mesh = Mesh(sidecars=[Sidecar("orders", "orders-1")])
    failures = iter([RuntimeError("a bug")])

    async def scrape_once_failing(*_: Any) -> None:
        if error := next(failures, None):
            raise error

    async with running(mesh):
        collector = Collector(api=mesh.api, token=TOKEN)
        monkeypatch.setattr(collector.sidecar_source, "scrape", scrape_once_failing)
        polling = asyncio.create_task(collector.run())
        try:
            version, payload = await asyncio.wait_for(collector.next_state(0), 5)
            failed = json.loads(payload)
            _, payload = await asyncio.wait_for(collector.next_state(version), 5)
        finally:
            polling.cancel()
    assert failed["errors"] == ["the dashboard's round failed: RuntimeError('a bug') (see its "
                                "log)"]
    assert json.loads(payload)["errors"] == []  # the next round came, and went well


async def test_a_tap_answering_something_else_is_shown_as_an_error() -> None:
    mesh, clock = Mesh(sidecars=[Sidecar("orders", "orders-1")]), FakeClock()
    mesh.sidecars[0].tapped = [{"seq": 1, "cluster": "payments"}]  # no "at", no "path", ...
    async with running(mesh):
        collector = Collector(api=mesh.api, token=TOKEN, clock=clock)
        with collector.watching(Watch(top=True)):
            await rounds(collector, clock, 1)
    assert collector.state["top"] == []
    [error] = collector.state["errors"]
    assert error.startswith("orders-1: GET http://127.0.0.1:") and \
        "/tap: not a tapped request: {'seq': 1, 'cluster': 'payments'}" in error


async def test_a_restarted_sidecars_tap_is_read_from_its_start() -> None:
    mesh, clock = Mesh(sidecars=[Sidecar("orders", "orders-1")]), FakeClock()
    sidecar = mesh.sidecars[0]

    def tapped(first: int, last: int) -> list[dict[str, Any]]:
        return [{"seq": s, "at": float(s), "cluster": "payments", "authority": "payments",
                 "method": "POST", "path": "/charge", "status": 200, "latency_ms": 1.0,
                 "retries": 0, "hedges": 0} for s in range(first, last + 1)]

    sidecar.tapped = tapped(1, 3)
    async with running(mesh):
        collector = Collector(api=mesh.api, token=TOKEN, clock=clock)
        with collector.watching(Watch(top=True)):
            await rounds(collector, clock, 1)
            sidecar.boot, sidecar.tapped = "second", tapped(1, 5)  # restarted, and busy since
            await rounds(collector, clock, 1)
    assert [p for p in sidecar.asked if p.startswith("/tap")] == [
        f"/tap?limit={TOP_PER_SIDECAR}", f"/tap?limit={TOP_PER_SIDECAR}&after=3",
        f"/tap?limit={TOP_PER_SIDECAR}"]
    assert len(collector.state["top"]) == 3 + 5

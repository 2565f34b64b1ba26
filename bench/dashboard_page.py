"""Benchmark: from a change in the mesh to the dashboard's screen, with 50 edges.

A mesh of ``--services`` services and ``--edges`` calls between them, in layers, is served by
this process on 127.0.0.1: an operator API (``/status``, ``/services``, ``/endpoints``,
``/policy/history``) and one sidecar admin endpoint per service whose ``/metrics`` counts 100
calls a second on each of its outbound clusters. The real dashboard (:mod:`dashboard.app` and
its collector, scraping the sidecars) serves the page, and a headless Chromium shows it.

Then, every ``--every`` seconds at a random moment (seeded), one more edge starts failing: its
caller's sidecar counts 5xx from that instant on. The *event* is that instant; the edge is *on
screen* when the page has drawn that edge amber or red (Kiali's colours) and the browser has
painted the next frame. A MutationObserver in the page notes the moment. Reported, over the
events:

- **event → screen**: p50 / p99 / max;
- of which **waiting for the next round**: the collector polls twice a second, so a change
  waits up to half a second before anything asks about it (the start of the round whose
  drawing showed it, minus the event);
- and **round, push and draw**: from the round's start to the painted frame (the page's own
  log, ``window.asyncmeshDrawn``): the scrapes, the state's JSON, the server-sent event,
  parsing and drawing 50 edges in SVG and tables.

    python -m bench.dashboard_page                  # 50 edges, 20 events
    python -m bench.dashboard_page --events 4       # the shortened form the tests run

Clocks: the event's instant and the page's are both this machine's wall clock (Python's
``time.time()`` and the page's ``Date.now()``), so their difference needs no correction.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import statistics
import sys
import time
from dataclasses import dataclass, field

from aiohttp import web

from bench.browser import CHROMEDRIVER, CHROMIUM, MISSING, chromium, read
from bench.common import serving
from dashboard.app import make_app
from dashboard.collector import INTERVAL, Collector

RATE = 100.0  # calls a second each edge carries
LAYERS = 4  # the topology's depth


@dataclass
class FakeSidecar:
    """One service's sidecar: its outbound clusters' counters grow with time."""

    service: str
    calls: list[str]  # the clusters it calls
    started: float = field(default_factory=time.time)
    failing_since: dict[str, float] = field(default_factory=dict)  # cluster → wall-clock s
    port: int = 0

    def metrics(self) -> str:
        now = time.time()
        lines = ["# TYPE mesh_sidecar_requests_total counter"]
        buckets = ["# TYPE mesh_sidecar_request_duration_seconds histogram"]
        for cluster in self.calls:
            total = (now - self.started) * RATE
            failed = max(0.0, now - self.failing_since.get(cluster, now)) * RATE
            lines += [f'mesh_sidecar_requests_total{{cluster="{cluster}",code="2xx",'
                      f'direction="outbound"}} {int(total - failed)}',
                      f'mesh_sidecar_requests_total{{cluster="{cluster}",code="5xx",'
                      f'direction="outbound"}} {int(failed)}']
            for le, share in (("0.005", 0.5), ("0.01", 0.99), ("+Inf", 1.0)):
                buckets.append(f'mesh_sidecar_request_duration_seconds_bucket{{'
                               f'cluster="{cluster}",direction="outbound",le="{le}"}} '
                               f'{int(total * share)}')
        return "\n".join(lines + buckets) + "\n"


def topology(services: int, edges: int, rng: random.Random) -> dict[str, list[str]]:
    """``services`` services in :data:`LAYERS` layers and ``edges`` calls from each layer to
    the next ones; service → the services it calls."""
    names = [f"svc-{n:02d}" for n in range(services)]
    layer = {name: n * LAYERS // services for n, name in enumerate(names)}
    possible = [(a, b) for a in names for b in names if layer[b] == layer[a] + 1]
    possible += [(a, b) for a in names for b in names if layer[b] > layer[a] + 1]
    if edges > len(possible):
        raise ValueError(f"{edges} edges: {services} services in {LAYERS} layers have at "
                         f"most {len(possible)}")
    # Every service of the next layer is called by someone; the rest at random.
    chosen = {(min((a for a in names if layer[a] == layer[b] - 1), key=lambda a: (a, b)), b)
              for b in names if layer[b] > 0}
    rest = [e for e in possible if e not in chosen]
    rng.shuffle(rest)
    chosen |= set(rest[:edges - len(chosen)])
    calls: dict[str, list[str]] = {name: [] for name in names}
    for a, b in sorted(chosen):
        calls[a].append(b)
    return calls


def operator_api(sidecars: list[FakeSidecar]) -> web.Application:
    routes = web.RouteTableDef()

    @routes.get("/status")
    async def status(_: web.Request) -> web.Response:
        return web.json_response({"policy_version": 1, "policy_error": None,
                                  "replica": {"name": "bench"}, "replicas": [{"name": "bench"}],
                                  "instances": len(sidecars), "streams": []})

    @routes.get("/services")
    async def services(_: web.Request) -> web.Response:
        return web.json_response([{"service": s.service, "namespace": "bench", "instances": 1,
                                   "healthy": 1} for s in sidecars])

    @routes.get("/endpoints/{service}")
    async def endpoints(request: web.Request) -> web.Response:
        return web.json_response([
            {"address": "127.0.0.1", "port": 15006, "instance": f"{s.service}-1",
             "admin_port": s.port} for s in sidecars if s.service == request.match_info["service"]])

    @routes.get("/policy/history")
    async def history(_: web.Request) -> web.Response:
        return web.json_response({"versions": [{"version": 1, "source": "bench",
                                                "applied_at": None, "policy": "{}\n"}]})

    app = web.Application()
    app.add_routes(routes)
    return app


def sidecar_admin(sidecar: FakeSidecar) -> web.Application:
    async def metrics(_: web.Request) -> web.Response:
        return web.Response(text=sidecar.metrics())

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    return app


WATCH = """
window.benchSeen = {};
const pending = new Set();
new MutationObserver(() => {
  for (const g of document.querySelectorAll('#topology g.edge')) {
    if (window.benchSeen[g.id] || pending.has(g.id)) continue;
    const cls = g.querySelector('path').getAttribute('class');
    if (cls === 'degraded' || cls === 'failing') {
      pending.add(g.id);
      requestAnimationFrame(() => setTimeout(() => { window.benchSeen[g.id] = Date.now(); }));
    }
  }
}).observe(document.getElementById('topology'), {childList: true, subtree: true});
return true;
"""


@dataclass(frozen=True, slots=True)
class Result:
    edges: int
    to_screen_ms: list[float]  # per event
    waited_ms: list[float]  # per event: until the round that saw it started
    pipeline_ms: list[float]  # per drawing: round start → painted


async def measure(services: int, edges: int, events: int, every: float, seed: int) -> Result:
    rng = random.Random(seed)
    calls = topology(services, edges, rng)
    sidecars = [FakeSidecar(service, called) for service, called in calls.items()]
    async with contextlib.AsyncExitStack() as stack:
        for sidecar in sidecars:
            sidecar.port = await stack.enter_async_context(serving(sidecar_admin(sidecar)))
        api = await stack.enter_async_context(serving(operator_api(sidecars)))
        collector = Collector(api=f"127.0.0.1:{api}", token=None)
        page = await stack.enter_async_context(serving(make_app(collector)))
        browser = stack.enter_context(chromium(width=1600, height=1200))
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, browser.get, f"http://127.0.0.1:{page}/")
        drawn = "return (window.asyncmeshDrawn || []).filter((d) => d.edges > 0).length"
        for _ in range(100):  # 20 s at most for the first drawing with edges
            if await loop.run_in_executor(None, read, browser, drawn):
                break
            await asyncio.sleep(0.2)
        shown_edges = await loop.run_in_executor(None, read, browser, "return document."
                                                 "querySelectorAll('#topology g.edge').length")
        if shown_edges != edges:
            raise RuntimeError(f"the page shows {shown_edges} edges, not {edges}")
        await loop.run_in_executor(None, read, browser, WATCH)
        order = [(s, c) for s in sidecars for c in s.calls]
        rng.shuffle(order)
        happened: dict[str, float] = {}  # edge element id → the event's wall-clock time
        for sidecar, cluster in order[:events]:
            await asyncio.sleep(every * rng.uniform(0.5, 1.5))
            happened[f"edge-{sidecar.service}-{cluster}"] = \
                sidecar.failing_since[cluster] = time.time()
        deadline = time.monotonic() + 10 * INTERVAL
        seen: dict[str, float] = {}
        while time.monotonic() < deadline and len(seen) < len(happened):
            await asyncio.sleep(0.2)
            seen = await loop.run_in_executor(None, read, browser, "return window.benchSeen")
        if missing := sorted(happened.keys() - seen.keys()):
            raise RuntimeError(f"never drawn failing: {', '.join(missing)}")
        log = await loop.run_in_executor(None, read, browser, "return window.asyncmeshDrawn")
    to_screen = [seen[e] - happened[e] * 1000 for e in happened]
    # The drawing that showed an event is the last one painted by the time it was seen; its
    # round may have started a moment before the event and still scraped after it (then 0).
    waited = [max(0.0, max((d for d in log if d["shown"] <= seen[e]),
                           key=lambda d: d["shown"])["at"] - happened[e] * 1000)
              for e in happened]
    pipeline = [d["shown"] - d["at"] for d in log if d["edges"] == edges]
    return Result(edges=edges, to_screen_ms=to_screen, waited_ms=waited, pipeline_ms=pipeline)


def spread(values: list[float]) -> str:
    """p50 / p99 / max in ms (nearest rank)."""
    ordered = sorted(values)
    def rank(q: float) -> float:
        return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]
    return f"{statistics.median(ordered):.0f} / {rank(0.99):.0f} / {ordered[-1]:.0f} ms"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.dashboard_page",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--services", type=int, default=30)
    parser.add_argument("--edges", type=int, default=50)
    parser.add_argument("--events", type=int, default=20)
    parser.add_argument("--every", type=float, default=0.7,
                        help="mean seconds between events (default 0.7)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    if CHROMIUM is None or CHROMEDRIVER is None:
        print(f"bench.dashboard_page: {MISSING}", file=sys.stderr)
        return 2
    if not 0 < args.events <= args.edges:
        parser.error(f"--events {args.events}: want 1 to --edges ({args.edges})")
    result = asyncio.run(measure(args.services, args.edges, args.events, args.every, args.seed))
    print(f"# dashboard page: {args.services} services, {result.edges} edges, "
          f"{len(result.to_screen_ms)} events; the collector polls every {INTERVAL:g} s")
    print("| measured | p50 / p99 / max |")
    print("|---|---|")
    print(f"| event → screen | {spread(result.to_screen_ms)} |")
    print(f"| of which waiting for the next round | {spread(result.waited_ms)} |")
    print(f"| round, push and draw ({len(result.pipeline_ms)} drawings) | "
          f"{spread(result.pipeline_ms)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

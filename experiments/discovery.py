"""Discovery: an endpoint moves — how long until every caller stops using the old address?

    load ──▶ 3 caller sidecars ══mTLS══▶ backend instance k (127.0.40.66) → moves to k+1 (.67)
                  ▲ xDS stream                  │ register / deregister
                  └──────── control plane ◀─────┘        ▲ DNS-like clients poll every TTL

A real control plane (``python -m controlplane``); every sidecar joins it with a join token,
registers its endpoint and subscribes to the discovery stream. The backend moves: a new
instance starts and registers, then the old one is stopped (SIGTERM: it deregisters, drains,
exits). It moves a few times, once per seeded repeat (``repeats.py``): instance 0 to 1, 1 to
2, ..., each new instance on the other address. Two kinds of caller learn of each move:

- **sidecars (xDS push)**: the control plane pushes the new endpoint set to every subscribed
  sidecar the moment the registry changes. Measured by polling each caller sidecar's admin
  ``/clusters`` every few milliseconds until the old address is gone.
- **TTL clients (DNS-like)**: a client that resolves the service name and caches the answer
  for a TTL, as a DNS resolver does. Here they are real clients that re-resolve against the
  control plane's registry (``GET /endpoints/backend``, the stand-in for a DNS server that is
  always up to date) every TTL seconds, each starting at a random point of its TTL (drawn
  from the move's seed: a new fleet for each move), as a fleet of caches does. Until its cache
  expires a client keeps the old address. The full run uses TTLs of 5 s and 30 s; ``--quick``
  scales them down to 0.5 s and 2 s.

Traffic keeps flowing through the caller sidecars meanwhile (with retries on connect failures
and refused streams), so the table also shows whether a move cost any request. Each headline
compares the push with the TTL clients within a move and is reported as the median over the
moves, with its spread.
"""

from __future__ import annotations

import asyncio
import random
import sys
import time
from collections.abc import Awaitable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

import aiohttp
import yaml

from experiments.harness import (
    ExperimentError,
    H2Client,
    Lab,
    Proc,
    Report,
    free_port,
    get_json,
    main,
    markdown_table,
    ms,
    open_loop,
    percentile,
    wait_port,
    wait_ready,
)
from experiments.repeats import Headline, Spread, headlines_json, headlines_table, ratio, seeds

NAME = "discovery"
TITLE = "Discovery: time until callers stop using a moved endpoint, xDS push vs DNS-like TTL"
CONTROL_PLANE = "127.0.40.60"
CALLERS = ("127.0.40.61", "127.0.40.62", "127.0.40.63")
INSTANCES, APPS = ("127.0.40.66", "127.0.40.67"), "127.0.40.68"  # instance k: INSTANCES[k % 2]
POLL = 0.005  # seconds between looks at a sidecar's /clusters
POLICY = {"clusters": [{"name": "backend", "retry_policy": {
    "retry_on": ["connect-failure", "refused-stream", "reset"], "num_retries": 2}}]}


class Sidecar(NamedTuple):
    """A sidecar of the run: its process, admin address, and listener ports."""

    proc: Proc
    admin: tuple[str, int]
    outbound: int
    inbound: int

    @property
    def endpoint(self) -> str:
        """The address it registers: its inbound listener."""
        return f"{self.admin[0]}:{self.inbound}"


@dataclass(frozen=True, slots=True)
class Plan:
    ttls: tuple[float, ...]  # seconds, one fleet of TTL clients each
    clients_per_ttl: int
    rate: float  # requests/s through each caller sidecar
    before: float  # seconds of traffic before a move
    repeats: int  # moves


FULL = Plan(ttls=(5.0, 30.0), clients_per_ttl=10, rate=30, before=2.0, repeats=3)
QUICK = Plan(ttls=(0.5, 2.0), clients_per_ttl=10, rate=30, before=1.0, repeats=3)


def operator_headers(pki: Path) -> dict[str, str]:
    """The operator's credential for the API: the token the control plane wrote in ``pki``."""
    return {"Authorization": f"Bearer {(pki / 'operator.token').read_text().strip()}"}


async def token(api: str, operator: dict[str, str], service: str) -> str:
    async with aiohttp.ClientSession() as session, session.post(
            f"http://{api}/tokens", json={"service": service}, headers=operator) as response:
        if response.status != 200:
            raise ExperimentError(f"token for {service}: HTTP {response.status}: "
                                  f"{await response.text()}")
        return str((await response.json())["token"])


async def endpoints_at(admin: tuple[str, int]) -> set[str]:
    """The ``backend`` endpoints a sidecar holds now (from its admin ``/clusters``)."""
    view = await get_json(f"http://{admin[0]}:{admin[1]}/clusters", within=2.0)
    return {e["address"] for e in view.get("backend", {}).get("endpoints", [])}


async def wait_for(admins: Sequence[tuple[str, int]], present: str | None,
                   absent: str | None, within: float) -> list[float]:
    """When each sidecar's ``backend`` endpoints came to include ``present``, exclude ``absent``."""
    deadline = time.monotonic() + within

    async def one(admin: tuple[str, int]) -> float:
        while time.monotonic() < deadline:
            held = await endpoints_at(admin)
            if (present is None or present in held) and (absent is None or absent not in held):
                return time.monotonic()
            await asyncio.sleep(POLL)
        raise ExperimentError(f"sidecar {admin[0]}: backend endpoints never became "
                              f"+{present} -{absent} within {within:.0f} s")
    return list(await asyncio.gather(*(one(admin) for admin in admins)))


class TtlClient:
    """Resolves ``backend`` through the registry API and keeps the answer for ``ttl`` seconds."""

    def __init__(self, api: str, operator: dict[str, str], ttl: float, phase: float) -> None:
        self.api, self.operator, self.ttl, self.phase = api, operator, ttl, phase
        self.resolutions: list[tuple[float, set[str]]] = []  # (when, addresses)

    async def run(self, stop: asyncio.Event) -> None:
        await asyncio.sleep(self.phase)  # caches in a fleet expire at different moments
        while not stop.is_set():
            async with aiohttp.ClientSession() as session, session.get(
                    f"http://{self.api}/endpoints/backend", headers=self.operator,
                    timeout=aiohttp.ClientTimeout(total=10)) as response:
                response.raise_for_status()
                rows = await response.json()
            self.resolutions.append((time.monotonic(),
                                     {f"{r['address']}:{r['port']}" for r in rows}))
            stopped = asyncio.ensure_future(stop.wait())
            await asyncio.wait([stopped], timeout=self.ttl)  # the cache holds for one TTL
            stopped.cancel()

    def dropped(self, old: str, moved: float) -> float | None:
        """When this client's cache first lost ``old`` after ``moved``."""
        return next((t for t, addresses in self.resolutions
                     if t >= moved and old not in addresses), None)


async def run(quick: bool) -> Report:
    plan = QUICK if quick else FULL
    with Lab(NAME) as lab:
        lab.pki([])
        cp_port, api_port = free_port(CONTROL_PLANE), free_port(CONTROL_PLANE)
        api = f"{CONTROL_PLANE}:{api_port}"
        policy = lab.dir / "policy.yaml"
        policy.write_text(yaml.safe_dump(POLICY, sort_keys=False))
        cp = lab.start("controlplane", [
            "-m", "controlplane", "--pki-dir", str(lab.pki_dir),
            "--listen", f"{CONTROL_PLANE}:{cp_port}", "--api", api, "--policy", str(policy),
            "--log-level", "WARNING"])
        await wait_port(cp, CONTROL_PLANE, api_port)
        operator = operator_headers(lab.pki_dir)
        app_ports = [free_port(APPS) for _ in range(plan.repeats + 1)]  # one per instance
        apps = lab.start("backend", ["-m", "experiments.backend", *(
            arg for k, port in enumerate(app_ports)
            for arg in ("--replica", f"i{k}={APPS}:{port}"))])

        async def sidecar(name: str, service: str, host: str, app: tuple[str, int]) -> Sidecar:
            out, inb, adm = (free_port(host) for _ in range(3))
            proc = lab.start(name, [
                "-m", "sidecar", "--service", service, "--control-plane",
                f"{CONTROL_PLANE}:{cp_port}", "--bootstrap-ca", str(lab.ca), "--cert-dir",
                str(lab.dir / name), "--outbound", f"{host}:{out}", "--inbound",
                f"{host}:{inb}", "--admin", f"{host}:{adm}", "--app", f"{app[0]}:{app[1]}",
                "--seed", "5", "--log-level", "ERROR"],
                env={"MESH_JOIN_TOKEN": await token(api, operator, service)})  # argv is public
            return Sidecar(proc, (host, adm), out, inb)

        def instance(k: int) -> Awaitable[Sidecar]:
            return sidecar(f"backend-{k}", "backend", INSTANCES[k % 2], (APPS, app_ports[k]))

        callers = [await sidecar(f"caller-{i}", "caller", host, (APPS, 1))
                   for i, host in enumerate(CALLERS)]
        current = await instance(0)
        await asyncio.gather(wait_port(apps, APPS, app_ports[0]),
                             *(wait_ready(s.proc, s.admin) for s in [*callers, current]))
        await wait_for([c.admin for c in callers], current.endpoint, None, within=20)
        moves = []
        for k, seed in enumerate(seeds(plan.repeats)):
            following = await instance(k + 1)
            moves.append(await move(plan, api, operator, callers, (current, f"i{k}"),
                                    following, seed))
            current = following
    return report(moves, plan, quick)


async def move(plan: Plan, api: str, operator: dict[str, str], callers: list[Sidecar],
               old_instance: tuple[Sidecar, str], new_instance: Sidecar,
               seed: int) -> dict[str, Any]:
    """Start the new instance, then stop the old one under load; time the push and a fleet
    of TTL clients (their phases drawn from ``seed``)."""
    (old_sidecar, old_replica), old, new = (old_instance, old_instance[0].endpoint,
                                            new_instance.endpoint)
    admins = [c.admin for c in callers]
    rng = random.Random(seed)
    stop = asyncio.Event()
    fleets = {ttl: [TtlClient(api, operator, ttl, rng.uniform(0, ttl))
                    for _ in range(plan.clients_per_ttl)] for ttl in plan.ttls}
    ttl_tasks = [asyncio.create_task(c.run(stop)) for fleet in fleets.values() for c in fleet]
    clients = [H2Client(c.admin[0], c.outbound, authority="backend") for c in callers]

    async def call(index: int) -> tuple[bool, str]:
        async with asyncio.timeout(5.0):
            response = await clients[index % len(clients)].request("GET", "/item")
        return response.status == 200, response.header("x-replica") or str(response.status)

    longest = max(plan.ttls)
    before = max(plan.before, longest)  # every TTL client has resolved at least once
    load = asyncio.create_task(open_loop(call, rate=plan.rate * len(clients),
                                         duration=before + longest + 1.0))
    await asyncio.gather(asyncio.sleep(before), wait_ready(new_instance.proc, new_instance.admin))
    await wait_for(admins, new, None, within=20)  # every caller knows the new instance
    moved = time.monotonic()
    old_sidecar.proc.terminate()  # SIGTERM: it deregisters, drains, exits
    pushed = await wait_for(admins, new, old, within=20)
    await old_sidecar.proc.wait_exit()
    await asyncio.sleep(max(0.0, moved + longest + 0.5 - time.monotonic()))
    stop.set()
    await asyncio.gather(*ttl_tasks)
    start, samples = await load
    for client in clients:
        await client.close()
    push = [t - moved for t in pushed]
    ttl_results = {}
    for ttl, fleet in fleets.items():
        dropped = [c.dropped(old, moved) for c in fleet]
        if any(d is None for d in dropped):
            raise ExperimentError(f"a TTL {ttl:g} s client never dropped {old}")
        ttl_results[str(ttl)] = [d - moved for d in dropped if d is not None]
    moved_rel = moved - start
    after = [s for s in samples if s.due >= moved_rel]
    last_old = max((s.due for s in samples if s.tag == old_replica), default=moved_rel)
    return {
        "seed": seed, "old": old, "new": new, "push": push,
        "ttl": ttl_results,
        "requests": len(samples), "errors": sum(not s.ok for s in samples),
        "requests_after_move": len(after),
        "old_after_move": sum(1 for s in after if s.tag == old_replica),
        "last_old_after_move": max(0.0, last_old - moved_rel),
        "latency_p99": percentile([s.latency for s in samples if s.ok], 99),
    }


def headlines(moves: list[dict[str, Any]], plan: Plan) -> list[Headline]:
    def count(value: float) -> str:
        return f"{value:.0f}"

    slowest_push = Spread.of(max(m["push"]) for m in moves)
    return [
        Headline("push_max", "xDS push: ms until the last caller sidecar dropped the old "
                 "address", Spread.of(v * 1000 for v in slowest_push.values),
                 "milliseconds: pushed as the registry changes", lambda v: f"{v:.1f}"),
        *(Headline(f"push_vs_ttl_{ttl:g}",
                   f"the last push ÷ the median TTL {ttl:g} s client's time",
                   Spread.of(ratio(max(m["push"]), percentile(m["ttl"][str(ttl)], 50))
                             for m in moves),
                   "far below 1: a cache keeps the old address for up to a TTL",
                   lambda v: f"{v:.3f}")
          for ttl in plan.ttls),
        Headline("errors", "failed requests during a move", Spread.of(m["errors"] for m in moves),
                 "about 0: retries on connect failure and refused streams", count),
    ]


def report(moves: list[dict[str, Any]], plan: Plan, quick: bool) -> Report:
    series = [("xDS push (caller sidecars)", [m["push"] for m in moves],
               "pushed by the control plane as the registry changes")]
    series += [(f"DNS-like cache, TTL {ttl:g} s", [m["ttl"][str(ttl)] for m in moves],
                "re-resolves when its cache expires") for ttl in plan.ttls]
    rows = [[label, len(per_move[0]), Spread.of(percentile(t, 50) for t in per_move).cell(ms),
             Spread.of(max(t) for t in per_move).cell(ms), how] for label, per_move, how in series]
    table = markdown_table(["callers", "count", "p50 ms until the old address is gone",
                            "max ms (every caller)", "how they learn"], rows)
    claims = headlines(moves, plan)
    requests, errors = sum(m["requests"] for m in moves), sum(m["errors"] for m in moves)
    after = sum(m["requests_after_move"] for m in moves)
    late = [m["last_old_after_move"] for m in moves if m["old_after_move"]]
    notes = [
        f"{'quick' if quick else 'full'} run: {plan.repeats} moves (seeds "
        f"{', '.join(str(seed) for seed in seeds(plan.repeats))}); a cell is the median over "
        f"the moves (min–max). Time 0 is the SIGTERM to the old instance's "
        f"sidecar: it deregisters (an RPC to the control plane), the registry drops the "
        f"endpoint, the control plane pushes.",
        f"TTL clients are real clients re-resolving against the control plane's registry API "
        f"every TTL, each starting at a random point of its TTL (a new fleet each move); TTLs "
        f"{', '.join(f'{t:g} s' for t in plan.ttls)}"
        + (" (scaled down from 5 s and 30 s for --quick)." if quick else "."),
        f"Traffic through the caller sidecars during the moves: {requests} requests, "
        f"{errors} failed; of the {after} sent after a time 0, "
        f"{sum(m['old_after_move'] for m in moves)} were still answered by the old instance"
        + (f" (the last {max(late) * 1000:.0f} ms after time 0)." if late else "."),
        "The machine is shared and loaded: a move that met a busy moment shows in the "
        "min–max, not in the median.",
    ]

    def draw(figure: Any) -> None:
        axes = figure.subplots()
        for index, (label, per_move, _) in enumerate(series):
            ordered = sorted(v for values in per_move for v in values)
            axes.step([v * 1000 for v in ordered],
                      [(i + 1) / len(ordered) * 100 for i in range(len(ordered))],
                      where="post", label=label, linewidth=2 if index == 0 else 1)
        axes.set_xscale("symlog", linthresh=10)
        axes.set_xlabel("ms after the move (symlog)")
        axes.set_ylabel(f"% of callers no longer using the old address ({len(moves)} moves)")
        axes.set_title(TITLE, fontsize=10)
        axes.grid(alpha=0.3)
        axes.legend()

    return Report(NAME, TITLE, table, notes,
                  {"plan": asdict(plan), "moves": moves, "headlines": headlines_json(claims)},
                  draw, headlines_table(claims))


if __name__ == "__main__":
    sys.exit(main(NAME, TITLE, run))

"""Balancers: one slow replica among three — who notices, and what it costs the tail.

    load (open loop) ──h2c──▶ sidecar "client" ══mTLS══▶ sidecars r1, r2, r3 ──h2c──▶ replicas
                              one cluster per balancer                          r3 is 20x slower

Two replicas answer in 5 ms, the third in 100 ms. The same open-loop load goes through each of
the sidecar's five balancers in turn (each its own cluster over the same three endpoints):

- **round robin** and **random** ignore load: the slow replica gets a third of the calls, and
  the p99 is its latency.
- **least request** (power of two choices on calls in flight) sees the slow replica's queue:
  calls pile up there, so it is picked less.
- **peak EWMA** weighs in-flight calls by a latency estimate: the slow replica's cost is twenty
  times higher, so it is picked rarely — only to check whether it got better.
- **ring hash** keys on a header (here ``x-user``, 1000 users): each user sticks to a replica,
  for cache locality, whatever that replica's speed.
"""

from __future__ import annotations

import asyncio
import random
import sys
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any

from experiments.harness import (
    H2Client,
    Lab,
    Report,
    free_port,
    main,
    markdown_table,
    ms,
    open_loop,
    percentile,
    wait_port,
    wait_ready,
)

NAME = "balancers"
TITLE = "Balancers: one slow replica among three"
CLIENT, BACKEND = "127.0.40.21", "127.0.40.25"
REPLICAS = {"r1": ("127.0.40.22", 5.0), "r2": ("127.0.40.23", 5.0), "r3": ("127.0.40.24", 100.0)}
SLOW = "r3"
BALANCERS: dict[str, tuple[str, dict[str, Any]]] = {  # cluster name: (label, settings)
    "round_robin": ("round robin", {"lb_policy": "ROUND_ROBIN"}),
    "random": ("random", {"lb_policy": "RANDOM"}),
    "least_request": ("least request (P2C)", {"lb_policy": "LEAST_REQUEST"}),
    "peak_ewma": ("peak EWMA", {"lb_policy": "PEAK_EWMA"}),
    "ring_hash": ("ring hash on x-user", {"lb_policy": "RING_HASH",
                                          "ring_hash": {"hash_header": "x-user"}}),
}
USERS = 1000


@dataclass(frozen=True, slots=True)
class Plan:
    rate: float
    seconds: float  # per balancer
    warm: float  # seconds of load before measuring (the estimates settle)


FULL = Plan(rate=100, seconds=15, warm=2)
QUICK = Plan(rate=100, seconds=3, warm=1)


async def run(quick: bool) -> Report:
    plan = QUICK if quick else FULL
    with Lab(NAME) as lab:
        lab.pki(["client", *REPLICAS])
        client_ports = [free_port(CLIENT) for _ in range(3)]
        backend_ports = {name: free_port(BACKEND) for name in REPLICAS}
        sidecar_ports = {name: [free_port(host) for _ in range(3)]
                         for name, (host, _) in REPLICAS.items()}
        backend = lab.start("backend", ["-m", "experiments.backend", *[
            arg for name, (_, latency) in REPLICAS.items()
            for arg in ("--replica", f"{name}={BACKEND}:{backend_ports[name]},"
                                     f"latency_ms={latency}")]])
        endpoints = [{"address": host, "port": sidecar_ports[name][1]}
                     for name, (host, _) in REPLICAS.items()]
        config = {"clusters": [{"name": name, **settings}
                               for name, (_, settings) in BALANCERS.items()],
                  "endpoints": {name: endpoints for name in BALANCERS}}
        client_admin = (CLIENT, client_ports[2])
        waits = [wait_ready(lab.sidecar(
            "client", outbound=(CLIENT, client_ports[0]), inbound=(CLIENT, client_ports[1]),
            admin=client_admin, app=(CLIENT, 1), config=config, seed=3), client_admin)]
        for name, (host, _) in REPLICAS.items():
            out, inb, adm = sidecar_ports[name]
            proc = lab.sidecar(name, outbound=(host, out), inbound=(host, inb),
                               admin=(host, adm), app=(BACKEND, backend_ports[name]), config={})
            waits.append(wait_ready(proc, (host, adm)))
        waits.append(wait_port(backend, BACKEND, backend_ports["r1"]))
        await asyncio.gather(*waits)
        results = [await run_balancer(name, plan, client_ports[0]) for name in BALANCERS]
    return report(results, plan, quick)


async def run_balancer(name: str, plan: Plan, outbound: int) -> dict[str, Any]:
    client = H2Client(CLIENT, outbound, authority=name)
    users = random.Random(11)

    async def call(index: int) -> tuple[bool, str]:
        user = f"user-{users.randrange(USERS)}"
        async with asyncio.timeout(5.0):
            response = await client.request("GET", "/item", headers=[("x-user", user)])
        return response.status == 200, response.header("x-replica") or str(response.status)

    _, samples = await open_loop(call, rate=plan.rate, duration=plan.warm + plan.seconds)
    await client.close()
    measured = [s for s in samples if s.due >= plan.warm]
    latencies = [s.latency for s in measured if s.ok]
    shares = Counter(s.tag for s in measured if s.ok)
    return {
        "balancer": name, "label": BALANCERS[name][0], "requests": len(measured),
        "errors": sum(not s.ok for s in measured),
        "p50": percentile(latencies, 50), "p99": percentile(latencies, 99),
        "share": {replica: shares[replica] / max(1, len(latencies)) for replica in REPLICAS},
    }


def report(results: list[dict[str, Any]], plan: Plan, quick: bool) -> Report:
    rows = [[r["label"], ms(r["p50"]), ms(r["p99"]),
             *(f"{r['share'][replica] * 100:.1f} %" for replica in REPLICAS), r["errors"]]
            for r in results]
    headers = ["balancer", "p50 ms", "p99 ms",
               *(f"share {name} ({latency:g} ms)" for name, (_, latency) in REPLICAS.items()),
               "errors"]
    notes = [
        f"{'quick' if quick else 'full'} run: {plan.rate:g} requests/s for {plan.seconds:g} s "
        f"per balancer, after {plan.warm:g} s of warm-up (not counted); latency is from the "
        f"scheduled send time, through two sidecars and mTLS.",
        f"{SLOW} is the slow replica. Ring hash spreads users, not load: its share follows "
        f"how {USERS} user keys fall on the ring.",
        "Numbers vary from run to run: the machine is shared and loaded.",
    ]

    def draw(figure: Any) -> None:
        left, right = figure.subplots(1, 2)
        labels = [r["label"] for r in results]
        xs = range(len(results))
        bottom = [0.0] * len(results)
        for replica in REPLICAS:
            shares = [r["share"][replica] * 100 for r in results]
            left.bar(xs, shares, bottom=bottom, label=replica)
            bottom = [b + s for b, s in zip(bottom, shares, strict=True)]
        left.set_xticks(list(xs), labels, rotation=30, ha="right", fontsize=8)
        left.set_ylabel("share of calls %")
        left.set_title(f"who gets the calls ({SLOW} is slow)")
        left.legend(fontsize=8)
        width = 0.4
        right.bar([x - width / 2 for x in xs], [r["p50"] * 1000 for r in results], width,
                  label="p50")
        right.bar([x + width / 2 for x in xs], [r["p99"] * 1000 for r in results], width,
                  label="p99")
        right.set_xticks(list(xs), labels, rotation=30, ha="right", fontsize=8)
        right.set_ylabel("latency ms")
        right.set_title("latency")
        right.legend(fontsize=8)

    return Report(NAME, TITLE, markdown_table(headers, rows), notes,
                  {"plan": asdict(plan), "slow": SLOW, "balancers": results}, draw)


if __name__ == "__main__":
    sys.exit(main(NAME, TITLE, run))

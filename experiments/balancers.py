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

A p99 of a few seconds' load is a handful of calls, and one busy moment of the machine moves
it. So the run is a few seeded repeats (``repeats.py``): each has a client sidecar of its own,
started with that repeat's seed (its balancers' random draws), warms every balancer at once,
then runs them one after the other in an order drawn from the seed. A headline compares two
balancers within a repeat and is reported as the median over the repeats, with its spread.
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
    Sample,
    free_port,
    main,
    markdown_table,
    ms,
    open_loop,
    percentile,
    wait_port,
    wait_ready,
)
from experiments.repeats import (
    Headline,
    Spread,
    across,
    headlines_json,
    headlines_table,
    ratio,
    seeds,
    shuffled,
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
    seconds: float  # per balancer and repeat
    warm: float  # seconds of load on every balancer at once before each repeat (not counted)
    repeats: int


FULL = Plan(rate=100, seconds=3, warm=1, repeats=5)
QUICK = Plan(rate=100, seconds=0.7, warm=0.6, repeats=5)


async def run(quick: bool) -> Report:
    plan = QUICK if quick else FULL
    with Lab(NAME) as lab:
        lab.pki(["client", *REPLICAS])
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
        # seed: the outbound port of that repeat's client sidecar
        outbound, waits = lab.clients_per_seed(CLIENT, config, seeds(plan.repeats))
        for name, (host, _) in REPLICAS.items():
            out, inb, adm = sidecar_ports[name]
            proc = lab.sidecar(name, outbound=(host, out), inbound=(host, inb),
                               admin=(host, adm), app=(BACKEND, backend_ports[name]), config={})
            waits.append(wait_ready(proc, (host, adm)))
        waits.append(wait_port(backend, BACKEND, backend_ports["r1"]))
        await asyncio.gather(*waits)
        by_repeat = []
        for seed, port in outbound.items():
            await asyncio.gather(*(load(name, plan.rate / len(BALANCERS), plan.warm, port, seed)
                                   for name in BALANCERS))
            results = {}
            for name in shuffled(BALANCERS, seed):
                results[name] = await run_balancer(name, plan, port, seed)
            by_repeat.append(results)
    return report(by_repeat, plan, quick)


async def load(name: str, rate: float, seconds: float, outbound: int,
               seed: int) -> list[Sample]:
    """Open-loop calls through balancer ``name``, each as a user drawn from ``seed``."""
    client = H2Client(CLIENT, outbound, authority=name)
    users = random.Random(seed)

    async def call(index: int) -> tuple[bool, str]:
        user = f"user-{users.randrange(USERS)}"
        async with asyncio.timeout(5.0):
            response = await client.request("GET", "/item", headers=[("x-user", user)])
        return response.status == 200, response.header("x-replica") or str(response.status)

    _, samples = await open_loop(call, rate=rate, duration=seconds)
    await client.close()
    return samples


async def run_balancer(name: str, plan: Plan, outbound: int, seed: int) -> dict[str, Any]:
    samples = await load(name, plan.rate, plan.seconds, outbound, seed)
    latencies = [s.latency for s in samples if s.ok]
    shares = Counter(s.tag for s in samples if s.ok)
    return {
        "balancer": name, "seed": seed, "requests": len(samples),
        "errors": sum(not s.ok for s in samples),
        "p50": percentile(latencies, 50), "p99": percentile(latencies, 99),
        "share": {replica: shares[replica] / max(1, len(latencies)) for replica in REPLICAS},
        "slow_share": shares[SLOW] / max(1, len(latencies)),
    }


def headlines(by_repeat: list[dict[str, dict[str, Any]]]) -> list[Headline]:
    def versus(arm: str, key: str) -> Spread:
        return Spread.of(ratio(r[arm][key], r["round_robin"][key]) for r in by_repeat)

    return [
        Headline("ewma_p99_vs_round_robin", "peak EWMA p99 ÷ round robin p99",
                 versus("peak_ewma", "p99"),
                 "below 1: the slow replica is out of peak EWMA's tail"),
        Headline("ewma_slow_share_vs_round_robin",
                 f"peak EWMA's share of {SLOW} ÷ round robin's", versus("peak_ewma", "slow_share"),
                 "near 0: peak EWMA hardly sends it anything"),
        Headline("least_request_slow_share_vs_round_robin",
                 f"least request's share of {SLOW} ÷ round robin's",
                 versus("least_request", "slow_share"),
                 "below 1: its queue of calls in flight keeps P2C away"),
        Headline("round_robin_slow_share", f"round robin's share of {SLOW}",
                 across(by_repeat, "round_robin", "slow_share"),
                 "a third: round robin ignores speed"),
    ]


def report(by_repeat: list[dict[str, dict[str, Any]]], plan: Plan, quick: bool) -> Report:
    def pct(value: float) -> str:
        return f"{value * 100:.1f}"

    rows = []
    summary = []
    for name, (label, _) in BALANCERS.items():
        p50, p99 = across(by_repeat, name, "p50"), across(by_repeat, name, "p99")
        shares = {replica: Spread.of(r[name]["share"][replica] for r in by_repeat)
                  for replica in REPLICAS}
        errors = sum(r[name]["errors"] for r in by_repeat)
        rows.append([label, p50.cell(ms), p99.cell(ms),
                     *(shares[replica].cell(pct) for replica in REPLICAS), errors])
        summary.append({"balancer": name, "label": label, "p50": p50.as_json(),
                        "p99": p99.as_json(), "errors": errors,
                        "share": {replica: shares[replica].as_json() for replica in REPLICAS}})
    headers = ["balancer", "p50 ms", "p99 ms",
               *(f"share {name} ({latency:g} ms) %" for name, (_, latency) in REPLICAS.items()),
               "errors"]
    claims = headlines(by_repeat)
    notes = [
        f"{'quick' if quick else 'full'} run: {plan.repeats} repeats (seeds "
        f"{', '.join(str(seed) for seed in seeds(plan.repeats))}), each with a client "
        f"sidecar of its seed; in each, {plan.warm:g} s of load on every balancer at once (not "
        f"counted), then {plan.rate:g} requests/s for {plan.seconds:g} s per balancer, in an "
        f"order drawn from the seed. A cell is the median over the repeats (min–max). Latency "
        f"is from the scheduled send time, through two sidecars and mTLS.",
        f"{SLOW} is the slow replica. Ring hash spreads users, not load: its share follows "
        f"how {USERS} user keys fall on the ring.",
        "The machine is shared and loaded: a repeat that met a busy moment shows in the "
        "min–max, not in the median.",
    ]

    def draw(figure: Any) -> None:
        left, right = figure.subplots(1, 2)
        labels = [row["label"] for row in summary]
        xs = range(len(summary))
        bottom = [0.0] * len(summary)
        for replica in REPLICAS:
            shares = [row["share"][replica]["median"] * 100 for row in summary]
            left.bar(xs, shares, bottom=bottom, label=replica)
            bottom = [b + s for b, s in zip(bottom, shares, strict=True)]
        left.set_xticks(list(xs), labels, rotation=30, ha="right", fontsize=8)
        left.set_ylabel("share of calls % (median)")
        left.set_title(f"who gets the calls ({SLOW} is slow)")
        left.legend(fontsize=8)
        width = 0.4
        for offset, key in ((-width / 2, "p50"), (width / 2, "p99")):
            spreads = [row[key] for row in summary]
            medians = [s["median"] * 1000 for s in spreads]
            right.bar([x + offset for x in xs], medians, width, label=key,
                      yerr=[[m - s["min"] * 1000 for m, s in zip(medians, spreads, strict=True)],
                            [s["max"] * 1000 - m for m, s in zip(medians, spreads, strict=True)]],
                      capsize=3)
        right.set_xticks(list(xs), labels, rotation=30, ha="right", fontsize=8)
        right.set_ylabel("latency ms (median, bars: min–max)")
        right.set_title(f"latency over {plan.repeats} repeats")
        right.legend(fontsize=8)

    return Report(NAME, TITLE, markdown_table(headers, rows), notes,
                  {"plan": asdict(plan), "slow": SLOW, "balancers": summary,
                   "headlines": headlines_json(claims), "repeats": by_repeat},
                  draw, headlines_table(claims))


if __name__ == "__main__":
    sys.exit(main(NAME, TITLE, run))

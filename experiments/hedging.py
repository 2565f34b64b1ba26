"""Hedging: a second request beats a heavy tail — what it does to the p99, and what it costs.

    load (open loop) ──h2c──▶ sidecar "client" ══mTLS══▶ sidecars r1, r2, r3 ──h2c──▶ replicas
                              one cluster per arm                  5 % of requests take 300 ms

Three replicas answer in 10 ms, except that any request, drawn at random, takes 300 ms with a
probability of 5 %: a heavy tail, as a GC pause or a cold cache gives (Dean and Barroso, "The
Tail at Scale", 2013). A slow request says nothing about the next one, even to the same
replica, so a second copy of a slow call is almost always fast. The same open-loop load goes
through three clusters over the same endpoints:

- **no hedging**: one call in twenty waits 300 ms, so the p99 is the tail's.
- **hedge after 40 ms** (``hedging_delay``, above what a fast call takes through the mesh): a
  call with no answer by then gets a second request on another replica (a third at 80 ms);
  the first answer wins and the others are reset. The p99 falls to about 40 + 10 ms, and the
  servers see about 1.05 requests per call — the tail's share, and no more.
- **hedge after 1 ms** (too eager): every call would get a second request, twice the load;
  hedges draw from the retry budget (20 % of requests; its floor of 10 per second is off in
  this experiment so that a short run shows the ratio), which refuses the rest: about 1.2.
  And the budget goes on calls that did not need a hedge, so the slow ones find it empty:
  the p99 stays the tail's. A hedging delay belongs just above the fast calls' latency.

Each arm is a cluster of one client sidecar; the servers' load is counted where it lands, as
arrivals at the replicas (losers included: a reset request was still sent). A p99 of a few
seconds' load is a handful of calls, so the arms run in a few seeded repeats
(``repeats.py``): each repeat has a client sidecar of its own (its balancers' random draws, a
fresh budget), warms every cluster, then runs the arms one after the other in an order drawn
from its seed. A headline compares two arms within a repeat, reported as the median over the
repeats with its spread.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
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

NAME = "hedging"
TITLE = "Hedging: a second request against a heavy tail"
CLIENT, BACKEND = "127.0.40.71", "127.0.40.75"
REPLICAS = {"r1": "127.0.40.72", "r2": "127.0.40.73", "r3": "127.0.40.74"}
SERVICE_MS, TAIL_MS, TAIL_RATE = 10.0, 300.0, 0.05
NO_FLOOR = {"min_retries_per_second": 0}  # the budget is 20 % of requests, nothing more
ARMS: dict[str, tuple[str, dict[str, Any]]] = {  # cluster name: (label, its retry policy)
    "plain": ("no hedging", {}),
    "hedged": ("hedge after 40 ms (up to 2)", {"hedging_delay": "0.04s", "num_retries": 2}),
    "eager": ("hedge after 1 ms (budget-bound)", {"hedging_delay": "0.001s"}),
}


@dataclass(frozen=True, slots=True)
class Plan:
    rate: float  # calls per second
    seconds: float  # per arm and repeat
    warm: float  # seconds of load on every arm at once before each repeat (not counted)
    repeats: int


FULL = Plan(rate=100, seconds=8, warm=1, repeats=5)
QUICK = Plan(rate=100, seconds=1.6, warm=0.5, repeats=5)


async def run(quick: bool) -> Report:
    plan = QUICK if quick else FULL
    load_before = os.getloadavg()[0]
    with Lab(NAME) as lab:
        lab.pki(["client", *REPLICAS])
        backend_ports = {name: free_port(BACKEND) for name in REPLICAS}
        sidecar_ports = {name: [free_port(host) for _ in range(3)]
                         for name, host in REPLICAS.items()}
        backend = lab.start("backend", [
            "-m", "experiments.backend", "--latency-ms", str(SERVICE_MS),
            "--tail-rate", str(TAIL_RATE), "--tail-ms", str(TAIL_MS),
            *[arg for name in REPLICAS
              for arg in ("--replica", f"{name}={BACKEND}:{backend_ports[name]}")]])
        endpoints = [{"address": host, "port": sidecar_ports[name][1]}
                     for name, host in REPLICAS.items()]
        config = {"clusters": [{"name": name, "retry_budget": NO_FLOOR,
                                **({"retry_policy": policy} if policy else {})}
                               for name, (_, policy) in ARMS.items()],
                  "endpoints": {name: endpoints for name in ARMS}}
        # seed: the outbound port of that repeat's client sidecar
        outbound, waits = lab.clients_per_seed(CLIENT, config, seeds(plan.repeats))
        for name, host in REPLICAS.items():
            out, inb, adm = sidecar_ports[name]
            proc = lab.sidecar(name, outbound=(host, out), inbound=(host, inb),
                               admin=(host, adm), app=(BACKEND, backend_ports[name]), config={})
            waits.append(wait_ready(proc, (host, adm)))
        waits.append(wait_port(backend, BACKEND, backend_ports["r1"]))
        await asyncio.gather(*waits)
        controls = [H2Client(BACKEND, port, authority="backend")
                    for port in backend_ports.values()]
        by_repeat = []
        for seed, port in outbound.items():
            await asyncio.gather(*(load(name, plan.rate / len(ARMS), plan.warm, port)
                                   for name in ARMS))
            results = {}
            for name in shuffled(ARMS, seed):
                results[name] = await run_arm(name, plan, port, seed, controls)
            by_repeat.append(results)
        for control in controls:
            await control.close()
    return report(by_repeat, plan, quick, (load_before, os.getloadavg()[0]))


async def load(name: str, rate: float, seconds: float, outbound: int) -> list[Sample]:
    """Open-loop calls through the cluster ``name``."""
    client = H2Client(CLIENT, outbound, authority=name)

    async def call(index: int) -> tuple[bool, str]:
        async with asyncio.timeout(5.0):
            response = await client.request("GET", "/item")
        return response.status == 200, response.header("x-replica") or str(response.status)

    _, samples = await open_loop(call, rate=rate, duration=seconds)
    await client.close()
    return samples


async def arrivals(controls: list[H2Client]) -> int:
    """Every request the replicas have received so far (the backend's own count)."""
    total = 0
    for control in controls:
        response = await control.request("GET", "/_control/stats")
        total += len(json.loads(response.body)["arrivals"])
    return total


async def run_arm(name: str, plan: Plan, outbound: int, seed: int,
                  controls: list[H2Client]) -> dict[str, Any]:
    before = await arrivals(controls)
    samples = await load(name, plan.rate, plan.seconds, outbound)
    received = await arrivals(controls) - before
    latencies = [s.latency for s in samples if s.ok]
    return {
        "arm": name, "seed": seed, "calls": len(samples),
        "errors": sum(not s.ok for s in samples),
        "p50": percentile(latencies, 50), "p95": percentile(latencies, 95),
        "p99": percentile(latencies, 99), "max": max(latencies, default=float("nan")),
        "arrivals": received, "per_call": received / max(1, len(samples)),
    }


def headlines(by_repeat: list[dict[str, dict[str, Any]]]) -> list[Headline]:
    def versus(arm: str, key: str) -> Spread:
        return Spread.of(ratio(r[arm][key], r["plain"][key]) for r in by_repeat)

    return [
        Headline("hedged_p99_vs_plain", "hedged p99 ÷ unhedged p99", versus("hedged", "p99"),
                 "well below 1: a second request beats the tail"),
        Headline("hedged_p50_vs_plain", "hedged p50 ÷ unhedged p50", versus("hedged", "p50"),
                 "about 1: the median call is over before any hedge"),
        Headline("hedged_per_call", "requests per call, hedged after 40 ms",
                 across(by_repeat, "hedged", "per_call"),
                 f"a little over 1: only the calls still waiting get a hedge "
                 f"(the tail is {TAIL_RATE:.0%})"),
        Headline("eager_per_call", "requests per call, hedged after 1 ms",
                 across(by_repeat, "eager", "per_call"),
                 "about 1.2, not 2: the retry budget throttles hedges like retries"),
        Headline("eager_p99_vs_plain", "p99 hedged after 1 ms ÷ unhedged p99",
                 versus("eager", "p99"),
                 "about 1: the budget went on calls that needed no hedge"),
    ]


def report(by_repeat: list[dict[str, dict[str, Any]]], plan: Plan, quick: bool,
           load: tuple[float, float]) -> Report:
    rows = []
    summary = []
    for name, (label, _) in ARMS.items():
        spreads = {key: across(by_repeat, name, key)
                   for key in ("p50", "p95", "p99", "max", "per_call")}
        errors = sum(r[name]["errors"] for r in by_repeat)
        rows.append([label, *(spreads[key].cell(ms) for key in ("p50", "p95", "p99", "max")),
                     spreads["per_call"].cell(lambda v: f"{v:.2f}"), errors])
        summary.append({"arm": name, "label": label, "errors": errors,
                        **{key: spread.as_json() for key, spread in spreads.items()}})
    headers = ["arm", "p50 ms", "p95 ms", "p99 ms", "max ms", "requests per call", "errors"]
    claims = headlines(by_repeat)
    notes = [
        f"{'quick' if quick else 'full'} run: {plan.repeats} repeats (seeds "
        f"{', '.join(str(seed) for seed in seeds(plan.repeats))}), each with a client "
        f"sidecar of its seed; in each, {plan.warm:g} s of load on every arm at once (not "
        f"counted), then {plan.rate:g} calls/s for {plan.seconds:g} s per arm, in an order "
        f"drawn from the seed. A cell is the median over the repeats (min–max). Latency is "
        f"from the scheduled send time, through two sidecars and mTLS.",
        f"Each replica takes {SERVICE_MS:g} ms, and {TAIL_MS:g} ms for a random "
        f"{TAIL_RATE:.0%} of requests. Requests per call are the replicas' arrivals over the "
        f"calls sent: a hedge that lost was still a request.",
        "Hedges pass the retries' gates: the budget (20 % of requests here, without the "
        "floor of 10 per second) and the max_retries breaker (3 in flight).",
        f"Machine: {os.cpu_count()} CPUs, shared; 1-minute load average {load[0]:.2f} at the "
        f"start and {load[1]:.2f} at the end. A repeat that met a busy moment shows in the "
        f"min–max, not in the median.",
    ]

    def draw(figure: Any) -> None:
        left, right = figure.subplots(1, 2)
        labels = [row["label"] for row in summary]
        xs = list(range(len(summary)))
        width = 0.27
        for offset, key in ((-width, "p50"), (0.0, "p95"), (width, "p99")):
            spreads = [row[key] for row in summary]
            medians = [s["median"] * 1000 for s in spreads]
            left.bar([x + offset for x in xs], medians, width, label=key,
                     yerr=[[m - s["min"] * 1000 for m, s in zip(medians, spreads, strict=True)],
                           [s["max"] * 1000 - m for m, s in zip(medians, spreads, strict=True)]],
                     capsize=3)
        left.set_xticks(xs, labels, rotation=20, ha="right", fontsize=8)
        left.set_ylabel("latency ms (median, bars: min–max)")
        left.set_title(f"latency over {plan.repeats} repeats")
        left.legend(fontsize=8)
        spreads = [row["per_call"] for row in summary]
        medians = [s["median"] for s in spreads]
        right.bar(xs, medians,
                  yerr=[[m - s["min"] for m, s in zip(medians, spreads, strict=True)],
                        [s["max"] - m for m, s in zip(medians, spreads, strict=True)]],
                  capsize=3, color="tab:gray")
        right.axhline(1.0, color="black", linewidth=0.8)
        right.set_xticks(xs, labels, rotation=20, ha="right", fontsize=8)
        right.set_ylabel("requests per call at the replicas")
        right.set_title("what it costs the servers")

    return Report(NAME, TITLE, markdown_table(headers, rows), notes,
                  {"plan": asdict(plan), "service_ms": SERVICE_MS, "tail_ms": TAIL_MS,
                   "tail_rate": TAIL_RATE, "load_average": {"start": load[0], "end": load[1]},
                   "cpus": os.cpu_count(), "arms": summary,
                   "headlines": headlines_json(claims), "repeats": by_repeat},
                  draw, headlines_table(claims))


if __name__ == "__main__":
    sys.exit(main(NAME, TITLE, run))

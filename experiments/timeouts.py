"""Timeouts and deadlines: in a chain A → B → C where C stalls, who is still working, and when.

    load ──h2c──▶ A ──▶ sidecar a ══mTLS══▶ sidecar b ──▶ B ──▶ sidecar b ══mTLS══▶ sidecar c ──▶ C
                                                                                          stalls

C takes far longer than anyone will wait (``experiments/chain.py``). Three ways to run the
chain (the sidecars' own timeouts are set to 60 s, so only the apps' choices matter):

- **no timeouts**: nobody sets one; the client waits until its own cap and gives up, and A, B
  and C keep working on a call nobody wants — for as long as C stalls.
- **timeouts, no deadline propagation**: every call has a fixed timeout of its own, but it is
  not tied to the caller's: the client gives up after its deadline, B's call to C times out
  later, and C works until then.
- **propagated deadlines**: the client's deadline travels with the call (``grpc-timeout``, less
  the time already spent at each hop; the sidecars pass it on and enforce it, and so does
  ``mesh/grpc``'s server); when it passes, everything below stops at once.

Counted at C: the seconds it spent working after the client had given up, and how many calls
it was still working on then. The three modes run in a few seeded repeats (``repeats.py``), in
an order drawn from each repeat's seed; each headline is the median over the repeats, with its
spread.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

from demo_services.proto.hello_pb2 import HelloReply, HelloRequest
from experiments.chain import SAY_HELLO
from experiments.harness import (
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
from experiments.repeats import (
    Headline,
    across,
    headlines_json,
    headlines_table,
    seeds,
    shuffled,
)
from mesh.grpc import Channel, GrpcError

NAME = "timeouts"
TITLE = "Timeouts and deadlines in a call chain A → B → C when C stalls"
SLACK = 0.05  # seconds past the give-up that count as stopping "in time"
SIDECARS = {"a": "127.0.40.51", "b": "127.0.40.52", "c": "127.0.40.53"}
APPS = "127.0.40.54"
MODES = {
    "none": "no timeouts",
    "timeouts": "timeouts, no deadline propagation",
    "deadlines": "propagated deadlines",
}


@dataclass(frozen=True, slots=True)
class Plan:
    rate: float  # calls per second
    seconds: float  # of load
    stall: float  # how long C takes
    deadline: float  # the client's deadline
    hop_timeout: float  # each call's own timeout in mode "timeouts"
    cap: float  # how long the client waits without a deadline
    repeats: int


FULL = Plan(rate=20, seconds=5, stall=5.0, deadline=0.5, hop_timeout=2.0, cap=3.0, repeats=3)
QUICK = Plan(rate=20, seconds=1.0, stall=1.5, deadline=0.3, hop_timeout=0.8, cap=1.0,
             repeats=3)


async def run(quick: bool) -> Report:
    plan = QUICK if quick else FULL
    with Lab(NAME) as lab:
        lab.pki(list(SIDECARS))
        ports = {tier: [free_port(host) for _ in range(3)] for tier, host in SIDECARS.items()}
        apps = {tier: free_port(APPS) for tier in SIDECARS}
        nxt = {"a": "b", "b": "c"}
        waits = []
        for tier, host in SIDECARS.items():
            out, inb, adm = ports[tier]
            config: dict[str, Any] = {}
            if tier in nxt:
                down = nxt[tier]
                config = {"clusters": [{"name": down, "timeout": "60s"}],
                          "endpoints": {down: [{"address": SIDECARS[down],
                                                "port": ports[down][1]}]}}
            proc = lab.sidecar(tier, outbound=(host, out), inbound=(host, inb),
                               admin=(host, adm), app=(APPS, apps[tier]), config=config)
            waits.append(wait_ready(proc, (host, adm)))
        await asyncio.gather(*waits)
        by_repeat = []
        for seed in seeds(plan.repeats):
            by_repeat.append({mode: await run_mode(lab, mode, plan, ports, apps, seed)
                              for mode in shuffled(MODES, seed)})
    return report(by_repeat, plan, quick)


async def run_mode(lab: Lab, mode: str, plan: Plan, ports: dict[str, list[int]],
                   apps: dict[str, int], seed: int) -> dict[str, Any]:
    stats = lab.dir / f"chain-{mode}-{seed}.json"
    chain = lab.start(f"chain-{mode}-{seed}", [
        "-m", "experiments.chain", "--mode", mode, "--hop-timeout", str(plan.hop_timeout),
        "--a", f"{APPS}:{apps['a']}", "--b", f"{APPS}:{apps['b']}",
        "--c", f"{APPS}:{apps['c']}", "--a-sidecar", f"{SIDECARS['a']}:{ports['a'][0]}",
        "--b-sidecar", f"{SIDECARS['b']}:{ports['b'][0]}", "--stats", str(stats)])
    await wait_port(chain, APPS, apps["c"])
    channel = Channel(APPS, apps["a"], authority="a")
    say_hello = channel.unary_unary(SAY_HELLO, HelloReply.FromString)
    gave_up: dict[str, float] = {}

    async def call(index: int) -> tuple[bool, str]:
        name = f"req-{index}"
        request = HelloRequest(name=name, delay_ms=int(plan.stall * 1000))
        try:
            if mode == "deadlines":  # the deadline goes with the call
                await say_hello(request, timeout=plan.deadline)
            else:  # the client's own patience, which nobody below hears of
                limit = plan.deadline if mode == "timeouts" else plan.cap
                async with asyncio.timeout(limit):
                    await say_hello(request)
            return True, "ok"
        except (GrpcError, TimeoutError) as error:
            return False, error.code.name if isinstance(error, GrpcError) else "gave-up"
        finally:
            gave_up.setdefault(name, time.monotonic())

    _, samples = await open_loop(call, rate=plan.rate, duration=plan.seconds)
    # Let C finish whatever it is still doing (at most one stall), then collect its record.
    await asyncio.sleep(plan.stall + 0.5 - min(plan.stall, plan.cap))
    await channel.close()
    chain.stop()
    work = json.loads(stats.read_text())
    wasted, still = 0.0, 0
    for name, record in work.items():
        left = gave_up.get(name)
        if left is not None and record["end"] > left:
            wasted += record["end"] - max(left, record["start"])
            still += record["end"] > left + SLACK
    answered = [s.latency for s in samples]
    return {
        "mode": mode, "seed": seed, "calls": len(samples),
        "client_ok": sum(s.ok for s in samples),
        "client_p50": percentile(answered, 50), "client_p99": percentile(answered, 99),
        "reached_c": len(work), "finished_at_c": sum(r["finished"] for r in work.values()),
        "still_working_after_give_up": still, "still_working_share": still / max(1, len(samples)),
        "work_after_give_up_s": wasted,
        "work_after_give_up_per_call_ms": wasted * 1000 / max(1, len(work)),
        "outcomes": sorted({s.tag for s in samples}),
    }


def headlines(by_repeat: list[dict[str, dict[str, Any]]]) -> list[Headline]:
    def per_call(value: float) -> str:
        return f"{value:.0f}"

    return [
        *(Headline(f"{mode}_work_after_give_up", f"{MODES[mode]}: C's work after the client "
                   f"gave up, ms per call",
                   across(by_repeat, mode, "work_after_give_up_per_call_ms"), claim, per_call)
          for mode, claim in (("none", "hundreds of ms: C works on for nobody"),
                              ("timeouts", "hundreds of ms: C works until its own timeout"),
                              ("deadlines", "a few ms: C stops when the deadline passes"))),
        Headline("deadlines_still_working", "propagated deadlines: % of calls C still "
                 "worked on 50 ms after the give-up",
                 across(by_repeat, "deadlines", "still_working_share"), "about 0",
                 lambda v: f"{v * 100:.0f}"),
    ]


def report(by_repeat: list[dict[str, dict[str, Any]]], plan: Plan, quick: bool) -> Report:
    def seconds(value: float) -> str:
        return f"{value:.2f}"

    def count(value: float) -> str:
        return f"{value:.0f}"

    columns: list[tuple[str, str, Any]] = [  # (header, result key, format)
        ("client waited p50 ms", "client_p50", ms),
        ("p99 ms", "client_p99", ms),
        ("calls reaching C", "reached_c", count),
        ("still working at C 50 ms after the client gave up", "still_working_after_give_up",
         count),
        ("C's work after give-up (s)", "work_after_give_up_s", seconds),
        ("per call (ms)", "work_after_give_up_per_call_ms", count),
    ]
    rows = []
    summary: list[dict[str, Any]] = []
    for mode, label in MODES.items():
        spreads = {key: across(by_repeat, mode, key) for _, key, _ in columns}
        outcomes = sorted({o for r in by_repeat for o in r[mode]["outcomes"]})
        cells = [spreads[key].cell(fmt) for _, key, fmt in columns]
        rows.append([label, *cells[:2], ", ".join(outcomes), *cells[2:]])
        summary.append({"mode": mode, "label": label, "outcomes": outcomes,
                        **{key: spread.as_json() for key, spread in spreads.items()}})
    headers = ["mode", *(h for h, _, _ in columns[:2]), "client saw",
               *(h for h, _, _ in columns[2:])]
    claims = headlines(by_repeat)
    notes = [
        f"{'quick' if quick else 'full'} run: {plan.repeats} repeats (seeds "
        f"{', '.join(str(seed) for seed in seeds(plan.repeats))}), the three modes in an order "
        f"drawn from each seed; a cell is the median over the repeats (min–max). "
        f"{plan.rate:g} calls/s for {plan.seconds:g} s; C "
        f"stalls {plan.stall:g} s; the client's deadline is {plan.deadline:g} s (without "
        f"timeouts it gives up at {plan.cap:g} s); each hop's own timeout in the middle mode "
        f"is {plan.hop_timeout:g} s.",
        "In the first two modes a tier's downstream call is not tied to its caller (as with "
        "a thread per request): when the caller goes, the call below goes on. With propagated "
        "deadlines every tier passes the deadline on and a cancel travels down with it.",
        "The machine is shared and loaded: a repeat that met a busy moment shows in the "
        "min–max, not in the median.",
    ]

    def draw(figure: Any) -> None:
        left, right = figure.subplots(1, 2)
        labels = [row["label"].replace(", ", ",\n") for row in summary]
        xs = list(range(len(summary)))
        for axes, key, scale, colour in ((left, "client_p50", 1000, "tab:blue"),
                                         (right, "work_after_give_up_s", 1, "tab:red")):
            medians = [row[key]["median"] * scale for row in summary]
            axes.bar(xs, medians, color=colour, capsize=4,
                     yerr=[[m - row[key]["min"] * scale for m, row in zip(medians, summary,
                                                                          strict=True)],
                           [row[key]["max"] * scale - m for m, row in zip(medians, summary,
                                                                          strict=True)]])
            axes.set_xticks(xs, labels, fontsize=8)
        left.set_ylabel("ms (median, bars: min–max)")
        left.set_title("how long the client waited (p50)")
        right.set_ylabel("seconds of work (median, bars: min–max)")
        right.set_title("C's work after the client gave up")

    return Report(NAME, TITLE, markdown_table(headers, rows), notes,
                  {"plan": asdict(plan), "modes": summary, "headlines": headlines_json(claims),
                   "repeats": by_repeat}, draw, headlines_table(claims))


if __name__ == "__main__":
    sys.exit(main(NAME, TITLE, run))

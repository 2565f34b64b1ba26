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
it was still working on then.
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


FULL = Plan(rate=20, seconds=5, stall=5.0, deadline=0.5, hop_timeout=2.0, cap=3.0)
QUICK = Plan(rate=20, seconds=1.5, stall=1.5, deadline=0.3, hop_timeout=0.8, cap=1.0)


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
        results = []
        for mode in MODES:
            results.append(await run_mode(lab, mode, plan, ports, apps))
    return report(results, plan, quick)


async def run_mode(lab: Lab, mode: str, plan: Plan, ports: dict[str, list[int]],
                   apps: dict[str, int]) -> dict[str, Any]:
    stats = lab.dir / f"chain-{mode}.json"
    chain = lab.start(f"chain-{mode}", [
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
        "mode": mode, "label": MODES[mode], "calls": len(samples),
        "client_ok": sum(s.ok for s in samples),
        "client_p50": percentile(answered, 50), "client_p99": percentile(answered, 99),
        "reached_c": len(work), "finished_at_c": sum(r["finished"] for r in work.values()),
        "still_working_after_give_up": still, "work_after_give_up_s": wasted,
        "work_after_give_up_per_call_ms": wasted * 1000 / max(1, len(work)),
        "outcomes": sorted({s.tag for s in samples}),
    }


def report(results: list[dict[str, Any]], plan: Plan, quick: bool) -> Report:
    rows = [[r["label"], ms(r["client_p50"]), ms(r["client_p99"]), ", ".join(r["outcomes"]),
             r["reached_c"], r["still_working_after_give_up"],
             f"{r['work_after_give_up_s']:.2f}", f"{r['work_after_give_up_per_call_ms']:.0f}"]
            for r in results]
    headers = ["mode", "client waited p50 ms", "p99 ms", "client saw", "calls reaching C",
               "still working at C 50 ms after the client gave up", "C's work after give-up (s)",
               "per call (ms)"]
    notes = [
        f"{'quick' if quick else 'full'} run: {plan.rate:g} calls/s for {plan.seconds:g} s; C "
        f"stalls {plan.stall:g} s; the client's deadline is {plan.deadline:g} s (without "
        f"timeouts it gives up at {plan.cap:g} s); each hop's own timeout in the middle mode "
        f"is {plan.hop_timeout:g} s.",
        "In the first two modes a tier's downstream call is not tied to its caller (as with "
        "a thread per request): when the caller goes, the call below goes on. With propagated "
        "deadlines every tier passes the deadline on and a cancel travels down with it.",
        "Numbers vary from run to run: the machine is shared and loaded.",
    ]

    def draw(figure: Any) -> None:
        left, right = figure.subplots(1, 2)
        labels = [r["label"].replace(", ", ",\n") for r in results]
        xs = list(range(len(results)))
        left.bar(xs, [r["client_p50"] * 1000 for r in results], color="tab:blue")
        left.set_xticks(xs, labels, fontsize=8)
        left.set_ylabel("ms")
        left.set_title("how long the client waited (p50)")
        right.bar(xs, [r["work_after_give_up_s"] for r in results], color="tab:red")
        right.set_xticks(xs, labels, fontsize=8)
        right.set_ylabel("seconds of work")
        right.set_title("C's work after the client gave up")

    return Report(NAME, TITLE, markdown_table(headers, rows), notes,
                  {"plan": asdict(plan), "modes": results}, draw)


if __name__ == "__main__":
    sys.exit(main(NAME, TITLE, run))

"""Retry storm: what ``retries: 3`` on every call does to a backend in a brownout.

The course's quiz: "You set retries: 3 on every internal call. A downstream brownout begins.
What happens?" — the failing service sees up to 4x its normal load and cannot recover. Here:

    load (open loop, 100/s) ──h2c──▶ sidecar "client" ══mTLS══▶ sidecar "backend" ──h2c──▶ backend
                                     one cluster per policy          4 workers x 25 ms = 160/s,
                                                                     queue of 80, then 503

The backend is a thread pool: four workers, 25 ms a request (160 requests/s), a queue of 80;
3 % of its answers are errors whatever the load (the failures retries are for).
For a few seconds its service time grows fivefold (32/s: a brownout). Queued requests wait
longer than the caller's 250 ms attempt timeout, so callers give up on them — but the workers
still do them. Four policies, the same 250 ms attempt timeout and 1 s overall timeout:

- **no retries**: one attempt.
- **retries: 3, no budget**: up to three more attempts at once (1 ms backoff).
- **retries: 3 + budget**: the same, within the sidecar's default retry budget (retries may
  add 20 % to the requests, plus 10 per second: Finagle's and Linkerd's defaults).
- **budget + backoff**: the budget, and decorrelated jitter from 50 ms up to 1 s.

The circuit breaker's ``max_retries`` (3 concurrent retries by default, Envoy's) is raised to
1000 for all four, so the retry budget is the only limit compared. The backend restarts for
each policy. Measured: the load the backend receives (every arrival, 503s included), the
client's success rate, and the recovery time: from the brownout's end until the success rate
is 90 % or more in every half second for two seconds.

The four policies run in a few seeded repeats (``repeats.py``), in an order drawn from each
repeat's seed, which also seeds the backend's errors; each headline compares a policy with the
storm within a repeat and is reported as the median over the repeats, with its spread.
"""

from __future__ import annotations

import asyncio
import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

from experiments.harness import (
    ExperimentError,
    H2Client,
    Lab,
    Report,
    Sample,
    buckets,
    free_port,
    main,
    markdown_table,
    open_loop,
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

NAME = "retry_storm"
TITLE = "Retry storm: backend load and recovery in a brownout, by retry policy"
CLIENT, SERVER, BACKEND = "127.0.40.11", "127.0.40.12", "127.0.40.13"
BUCKET = 0.5  # seconds per point of the timelines
RECOVERED = 0.9  # success rate that counts as recovered ...
STEADY = 2.0  # ... when it holds for this many seconds
WORKERS, SERVICE_MS, QUEUE, BROWNOUT_FACTOR = 4, 25.0, 80, 5.0
ERROR_RATE = 0.03  # failures that happen anyway (a retry answers them): 3 % of requests

_common = {"timeout": "1s", "circuit_breakers": {"max_retries": 1000}}
_retry = {"retry_on": ["5xx", "reset"], "num_retries": 3, "per_try_timeout": "0.25s"}
POLICIES: dict[str, tuple[str, dict[str, Any]]] = {
    "none": ("no retries", {
        **_common, "retry_policy": {"per_try_timeout": "0.25s"},
        "retry_budget": {"disabled": True}}),
    "retries": ("retries: 3, no budget", {
        **_common, "retry_policy": {**_retry, "backoff": {"base_interval": "0.001s",
                                                          "max_interval": "0.001s"}},
        "retry_budget": {"disabled": True}}),
    "budget": ("retries: 3 + budget", {
        **_common, "retry_policy": {**_retry, "backoff": {"base_interval": "0.001s",
                                                          "max_interval": "0.001s"}}}),
    "backoff": ("budget + backoff with jitter", {
        **_common, "retry_policy": {**_retry, "backoff": {"base_interval": "0.05s",
                                                          "max_interval": "1s"}}}),
}


@dataclass(frozen=True, slots=True)
class Plan:
    rate: float  # requests per second offered by the client
    warm: float  # seconds before the brownout
    brownout: float  # seconds of brownout
    after: float  # seconds after it
    repeats: int

    @property
    def duration(self) -> float:
        return self.warm + self.brownout + self.after


FULL = Plan(rate=100, warm=2, brownout=5, after=8, repeats=3)
QUICK = Plan(rate=60, warm=1, brownout=1.5, after=3.5, repeats=3)


def recovery_time(success: list[float], plan: Plan) -> float:
    """Seconds from the brownout's end until the success rate stays >= 90 % for ``STEADY``.

    ``success`` is the client's success rate per bucket (NaN: no request in it); the result is
    ``inf`` if the client had not recovered when the run ended.
    """
    end = plan.warm + plan.brownout
    steady = round(STEADY / BUCKET)
    for index in range(math.floor(end / BUCKET), len(success) - steady + 1):
        if all(math.isnan(v) or v >= RECOVERED for v in success[index:index + steady]):
            return max(0.0, index * BUCKET - end)
    return math.inf


async def warm_up(client: H2Client, *, needed: int = 5, within: float = 15.0) -> None:
    """Call until ``needed`` calls in a row succeed: connections open, pools see the new app.

    Raises:
        ExperimentError: the path did not work within ``within`` seconds.
    """
    deadline = time.monotonic() + within
    streak = 0
    while streak < needed:
        if time.monotonic() > deadline:
            raise ExperimentError(f"no {needed} successful calls in a row within {within:g} s")
        response = await client.request("GET", "/warm-up")
        streak = streak + 1 if response.status == 200 else 0


async def run_policy(lab: Lab, policy: str, plan: Plan, ports: dict[str, int],
                     seed: int) -> dict[str, Any]:
    backend_args = ["-m", "experiments.backend", "--replica",
                    f"backend={BACKEND}:{ports['backend']}", "--latency-ms", str(SERVICE_MS),
                    "--workers", str(WORKERS), "--queue-limit", str(QUEUE), "--seed", str(seed),
                    "--error-rate", str(ERROR_RATE)]
    backend = lab.start(f"backend-{policy}-{seed}", backend_args)
    await wait_port(backend, BACKEND, ports["backend"])
    client = H2Client(CLIENT, ports["outbound"], authority=policy)
    control = H2Client(BACKEND, ports["backend"], authority="backend")
    await warm_up(client)

    async def call(index: int) -> tuple[bool, str]:
        async with asyncio.timeout(3.0):
            response = await client.request("GET", f"/item/{index}")
        return response.status == 200, str(response.status)

    async def brownout() -> None:
        await asyncio.sleep(plan.warm)
        await control.request("POST", f"/_control/brownout?factor={BROWNOUT_FACTOR}"
                                      f"&seconds={plan.brownout}")

    trigger = asyncio.create_task(brownout())
    start, samples = await open_loop(call, rate=plan.rate, duration=plan.duration)
    await trigger
    stats = await control.request("GET", "/_control/stats")
    await client.close()
    await control.close()
    backend.stop()
    arrivals = [t - start for t in json.loads(stats.body)["arrivals"]]
    load = [n / BUCKET for n in buckets(arrivals, width=BUCKET, end=plan.duration)]
    success = _success_timeline(samples, plan)
    window = [t for t in arrivals if plan.warm <= t < plan.duration]
    offered = [s for s in samples if s.due >= plan.warm]
    before = [s for s in samples if s.due < plan.warm]
    after = [s for s in samples if s.due >= plan.warm + plan.brownout]
    return {
        "policy": policy,
        "seed": seed,
        "requests": len(samples),
        "success": sum(s.ok for s in samples) / len(samples),
        "success_before": sum(s.ok for s in before) / max(1, len(before)),
        "success_after": sum(s.ok for s in after) / max(1, len(after)),
        "backend_requests": len(arrivals),
        "amplification": len(window) / max(1, len(offered)),
        "backend_rps_before": sum(1 for t in arrivals if 0.5 <= t < plan.warm)
        / max(plan.warm - 0.5, BUCKET),
        "backend_rps_peak": max(load),
        "recovery_s": recovery_time(success, plan),
        "load_timeline": load,
        "success_timeline": success,
    }


def _success_timeline(samples: list[Sample], plan: Plan) -> list[float]:
    """The client's success rate in each bucket, by the requests' scheduled times."""
    count = math.ceil(plan.duration / BUCKET)
    ok, total = [0] * count, [0] * count
    for s in samples:
        index = min(int(s.due / BUCKET), count - 1)
        total[index] += 1
        ok[index] += s.ok
    return [o / t if t else math.nan for o, t in zip(ok, total, strict=True)]


async def run(quick: bool) -> Report:
    plan = QUICK if quick else FULL
    by_repeat = []
    with Lab(NAME) as lab:
        lab.pki(["client", "backend"])
        ports = {name: free_port(host) for name, host in (
            ("outbound", CLIENT), ("inbound", CLIENT), ("admin", CLIENT),
            ("s_outbound", SERVER), ("s_inbound", SERVER), ("s_admin", SERVER),
            ("backend", BACKEND))}
        endpoint = [{"address": SERVER, "port": ports["s_inbound"]}]
        config = {"clusters": [{"name": name, **settings}
                               for name, (_, settings) in POLICIES.items()],
                  "endpoints": {name: endpoint for name in POLICIES}}
        client_admin = (CLIENT, ports["admin"])
        server_admin = (SERVER, ports["s_admin"])
        client = lab.sidecar("client", outbound=(CLIENT, ports["outbound"]),
                             inbound=(CLIENT, ports["inbound"]), admin=client_admin,
                             app=(CLIENT, 1), config=config)
        server = lab.sidecar("backend", outbound=(SERVER, ports["s_outbound"]),
                             inbound=(SERVER, ports["s_inbound"]), admin=server_admin,
                             app=(BACKEND, ports["backend"]), config={})
        await asyncio.gather(wait_ready(client, client_admin), wait_ready(server, server_admin))
        for seed in seeds(plan.repeats):
            by_repeat.append({policy: await run_policy(lab, policy, plan, ports, seed)
                              for policy in shuffled(POLICIES, seed)})
    return report(by_repeat, plan, quick)


def headlines(by_repeat: list[dict[str, dict[str, Any]]]) -> list[Headline]:
    def versus_storm(policy: str, key: str) -> Spread:
        return Spread.of(ratio(r[policy][key], r["retries"][key]) for r in by_repeat)

    def points(value: float) -> str:
        return f"{value * 100:+.0f}"

    def seconds(value: float) -> str:
        return f"{value:.1f}" if math.isfinite(value) else "never"

    claims = [
        Headline("none_amplification", "no retries: backend load ÷ offered",
                 across(by_repeat, "none", "amplification"),
                 "about 1: the backend sees what the clients send"),
        Headline("storm_amplification", "retries: 3, no budget: backend load ÷ offered",
                 across(by_repeat, "retries", "amplification"),
                 "well above 1 (4 at most): the retry storm"),
    ]
    for policy in ("budget", "backoff"):
        label = POLICIES[policy][0]
        claims += [
            Headline(f"{policy}_load_vs_storm", f"{label}: backend requests ÷ the storm's",
                     versus_storm(policy, "backend_requests"),
                     "below 1: the budget caps the retries"),
            Headline(f"{policy}_success_after_vs_storm",
                     f"{label}: success after the brownout, minus the storm's (% points)",
                     Spread.of(r[policy]["success_after"] - r["retries"]["success_after"]
                               for r in by_repeat),
                     "positive: the backend is back in service", points),
            Headline(f"{policy}_recovery", f"{label}: recovery (s)",
                     across(by_repeat, policy, "recovery_s"),
                     "finite: it recovers (the storm does not)", seconds),
        ]
    return claims


def report(by_repeat: list[dict[str, dict[str, Any]]], plan: Plan, quick: bool) -> Report:
    capacity = WORKERS * 1000 / SERVICE_MS

    def pct(value: float) -> str:
        return f"{value * 100:.1f}"

    def recovery(value: float) -> str:
        return f"{value:.1f}" if math.isfinite(value) else "–"

    columns: list[tuple[str, str, Any]] = [  # (header, result key, format)
        ("success before the brownout %", "success_before", pct),
        ("success, whole run %", "success", pct),
        ("success after the brownout %", "success_after", pct),
        ("backend req/s before", "backend_rps_before", lambda v: f"{v:.0f}"),
        ("backend load from the brownout on (x offered)", "amplification",
         lambda v: f"{v:.2f}"),
        ("backend peak req/s", "backend_rps_peak", lambda v: f"{v:.0f}"),
        (f"recovery s (–: not within {plan.after:g} s)", "recovery_s", recovery),
    ]
    rows = []
    summary = []
    for policy, (label, _) in POLICIES.items():
        spreads = {key: across(by_repeat, policy, key) for _, key, _ in columns}
        rows.append([label, *(spreads[key].cell(fmt) for _, key, fmt in columns)])
        summary.append({"policy": policy, "label": label,
                        **{key: spread.as_json() for key, spread in spreads.items()}})
    table = markdown_table(["policy", *(header for header, _, _ in columns)], rows)
    claims = headlines(by_repeat)
    notes = [
        f"{'quick' if quick else 'full'} run: {plan.repeats} repeats (seeds "
        f"{', '.join(str(seed) for seed in seeds(plan.repeats))}), the four policies in an "
        f"order drawn from each seed; a cell is the median over the repeats (min–max). "
        f"{plan.rate:g} requests/s offered; brownout "
        f"from {plan.warm:g} s for {plan.brownout:g} s (service time x{BROWNOUT_FACTOR:g}); "
        f"backend capacity {capacity:.0f}/s, {capacity / BROWNOUT_FACTOR:.0f}/s in the "
        f"brownout; {ERROR_RATE:.0%} of requests fail anyway; 250 ms per attempt, 1 s per "
        f"call.",
        "Backend load counts every arrival, including the 503s of a full queue; "
        "'x offered' divides the arrivals from the brownout's start to the end of the run by "
        "the client's requests in that time.",
        "Recovery: from the brownout's end until the client's success rate is >= 90 % in "
        f"every half second for {STEADY:g} s.",
        "The machine is shared and loaded: a repeat that met a busy moment shows in the "
        "min–max, not in the median. The plot draws every repeat, the first one darker.",
    ]

    def draw(figure: Any) -> None:
        top, bottom = figure.subplots(2, 1, sharex=True)
        for index, (policy, (label, _)) in enumerate(POLICIES.items()):
            for repeat, r in enumerate(by_repeat):  # one line a repeat, in the policy's colour
                xs = [i * BUCKET for i in range(len(r[policy]["load_timeline"]))]
                style = {"color": f"C{index}", "alpha": 0.9 if repeat == 0 else 0.35,
                         "label": label if repeat == 0 else None}
                top.plot(xs, r[policy]["load_timeline"], **style)
                bottom.plot(xs, [v * 100 for v in r[policy]["success_timeline"]], **style)
        for axes in (top, bottom):
            axes.axvspan(plan.warm, plan.warm + plan.brownout, color="orange", alpha=0.15,
                         label="brownout")
            axes.grid(alpha=0.3)
        top.axhline(capacity, color="grey", linestyle=":", label="backend capacity")
        top.axhline(plan.rate, color="black", linestyle="--", linewidth=0.8,
                    label="offered load")
        top.set_ylabel("backend requests/s")
        top.set_title(f"{TITLE} ({plan.repeats} repeats)", fontsize=10)
        top.legend(fontsize=8, loc="upper right")
        bottom.set_ylabel("client success %")
        bottom.set_xlabel("seconds")

    return Report(NAME, TITLE, table, notes,
                  {"plan": asdict(plan), "capacity": capacity, "policies": summary,
                   "headlines": headlines_json(claims), "repeats": by_repeat},
                  draw, headlines_table(claims))


if __name__ == "__main__":
    sys.exit(main(NAME, TITLE, run))

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

    @property
    def duration(self) -> float:
        return self.warm + self.brownout + self.after


FULL = Plan(rate=100, warm=3, brownout=6, after=10)
QUICK = Plan(rate=60, warm=1, brownout=2, after=4)


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


async def run_policy(lab: Lab, policy: str, plan: Plan, ports: dict[str, int]) -> dict[str, Any]:
    backend_args = ["-m", "experiments.backend", "--replica",
                    f"backend={BACKEND}:{ports['backend']}", "--latency-ms", str(SERVICE_MS),
                    "--workers", str(WORKERS), "--queue-limit", str(QUEUE), "--seed", "7",
                    "--error-rate", str(ERROR_RATE)]
    backend = lab.start(f"backend-{policy}", backend_args)
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
        "label": POLICIES[policy][0],
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
    results = []
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
        for policy in POLICIES:
            results.append(await run_policy(lab, policy, plan, ports))
    return report(results, plan, quick)


def report(results: list[dict[str, Any]], plan: Plan, quick: bool) -> Report:
    capacity = WORKERS * 1000 / SERVICE_MS
    rows = []
    for r in results:
        recovery = r["recovery_s"]
        rows.append([
            r["label"], f"{r['success_before'] * 100:.1f} %", f"{r['success'] * 100:.1f} %",
            f"{r['success_after'] * 100:.1f} %",
            f"{r['backend_rps_before']:.0f}", f"{r['amplification']:.2f}x",
            f"{r['backend_rps_peak']:.0f}",
            f"{recovery:.1f} s" if math.isfinite(recovery) else
            f"not within {plan.after:g} s"])
    table = markdown_table(
        ["policy", "success before the brownout", "success, whole run",
         "success after the brownout", "backend req/s before",
         "backend load from the brownout on (x offered)", "backend peak req/s", "recovery"],
        rows)
    notes = [
        f"{'quick' if quick else 'full'} run: {plan.rate:g} requests/s offered; brownout "
        f"from {plan.warm:g} s for {plan.brownout:g} s (service time x{BROWNOUT_FACTOR:g}); "
        f"backend capacity {capacity:.0f}/s, {capacity / BROWNOUT_FACTOR:.0f}/s in the "
        f"brownout; {ERROR_RATE:.0%} of requests fail anyway; 250 ms per attempt, 1 s per "
        f"call.",
        "Backend load counts every arrival, including the 503s of a full queue; "
        "'x offered' divides the arrivals from the brownout's start to the end of the run by "
        "the client's requests in that time.",
        "Recovery: from the brownout's end until the client's success rate is >= 90 % in "
        f"every half second for {STEADY:g} s.",
        "Numbers vary from run to run: the machine is shared and loaded.",
    ]

    def draw(figure: Any) -> None:
        top, bottom = figure.subplots(2, 1, sharex=True)
        for r in results:
            xs = [i * BUCKET for i in range(len(r["load_timeline"]))]
            top.plot(xs, r["load_timeline"], label=r["label"])
            bottom.plot(xs, [v * 100 for v in r["success_timeline"]], label=r["label"])
        for axes in (top, bottom):
            axes.axvspan(plan.warm, plan.warm + plan.brownout, color="orange", alpha=0.15,
                         label="brownout")
            axes.grid(alpha=0.3)
        top.axhline(capacity, color="grey", linestyle=":", label="backend capacity")
        top.axhline(plan.rate, color="black", linestyle="--", linewidth=0.8,
                    label="offered load")
        top.set_ylabel("backend requests/s")
        top.set_title(TITLE)
        top.legend(fontsize=8, loc="upper right")
        bottom.set_ylabel("client success %")
        bottom.set_xlabel("seconds")

    return Report(NAME, TITLE, table, notes,
                  {"plan": asdict(plan), "capacity": capacity, "policies": results}, draw)


if __name__ == "__main__":
    sys.exit(main(NAME, TITLE, run))

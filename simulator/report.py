"""A scenario's report: one row per policy (and sweep value), its numbers, and a plot.

Columns: calls that ended; success (answered below 500); latency percentiles of every call
(a failed call counts with the time it took to fail, so a timeout shows as the timeout);
attempts per call (retries and hedges included); *load*: calls the servers received per call
the clients made — 1.0 without retries, up to 1 + retries when every attempt fails; success
in each of the scenario's windows; the published figure, if the scenario cites one; and how
fast the simulation ran (simulated calls per wall-clock second: every call a sidecar made, a
client's or, in a call graph, a service's).

The plot is success per second over time for each policy, or, for a sweep, success and load
against the swept value. The files are the experiments' (:class:`experiments.harness.Report`):
``NAME.md``, ``NAME.json``, ``NAME.png``.
"""

from __future__ import annotations

from typing import Any

from experiments.harness import Report, markdown_table
from simulator.scenario import Outcome, Scenario

PERCENTILES = (0.5, 0.9, 0.99, 0.999)


def summary(outcome: Outcome, scenario: Scenario) -> dict[str, Any]:
    """One run's figures, as the JSON holds them."""
    record = outcome.record
    calls = len(record)
    arrivals = sum(s.stats.arrivals for s in outcome.servers)
    seconds = int(scenario.duration + scenario.drain) + 1
    per_second_calls = [0] * seconds
    per_second_ok = [0] * seconds
    for started, status in zip(record.started, record.statuses, strict=True):
        second = min(int(started), seconds - 1)
        per_second_calls[second] += 1
        per_second_ok[second] += status < 500
    load_by_second = [0] * seconds
    for server in outcome.servers:
        for second, count in enumerate(server.stats.arrivals_by_second[:seconds]):
            load_by_second[second] += count
    return {
        "policy": outcome.policy,
        "sweep": outcome.sweep_value,
        "calls": calls,
        "success": record.success(),
        "latency_s": {f"p{q * 100:g}": record.latency(q) for q in PERCENTILES},
        "attempts_per_call": record.attempts_per_call(),
        "load_per_call": arrivals / calls if calls else 0.0,
        "statuses": {str(k): v for k, v in record.status_counts().items()},
        "windows": {name: record.success(a, b) for name, (a, b) in scenario.windows.items()},
        "success_by_second": [ok / n if n else None
                              for ok, n in zip(per_second_ok, per_second_calls, strict=True)],
        "server_load_by_second": load_by_second,
        "events": outcome.events,
        "sidecar_calls": outcome.sidecar_calls,
    }


def report(scenario: Scenario, outcomes: list[Outcome]) -> Report:
    """The report of ``scenario``'s runs."""
    rows_data = [summary(o, scenario) for o in outcomes]
    swept = scenario.sweep is not None
    headers = ([scenario.sweep[0]] if scenario.sweep else []) + [
        "policy", "calls", "success", *(f"p{q * 100:g}" for q in PERCENTILES),
        "attempts/call", "load/call", *(f"success {w}" for w in scenario.windows)]
    if scenario.published:
        headers.append("published")
    rows = []
    for data in rows_data:
        row: list[object] = [data["sweep"]] if swept else []
        row += [data["policy"], data["calls"], f"{data['success'] * 100:.2f} %",
                *(_ms(v) for v in data["latency_s"].values()),
                f"{data['attempts_per_call']:.2f}", f"{data['load_per_call']:.2f}",
                *(f"{v * 100:.2f} %" for v in data["windows"].values())]
        if scenario.published:
            row.append(scenario.published.get(data["policy"], ""))
        rows.append(row)
    calls = sum(d["sidecar_calls"] for d in rows_data)
    edge = sum(d["calls"] for d in rows_data)
    wall = sum(o.wall_seconds for o in outcomes)  # in the notes only: the JSON is the seed's
    notes = [scenario.question] if scenario.question else []
    hops = f" ({edge:,} of them the clients')" if edge != calls else ""
    notes.append(f"seed {scenario.seed}; {len(outcomes)} runs, {calls:,} simulated calls{hops} "
                 f"in {wall:.1f} s of wall-clock time: {calls / wall if wall else 0:,.0f} calls "
                 f"per second")
    return Report(name=scenario.name, title=scenario.title, table=markdown_table(headers, rows),
                  notes=notes, data={"scenario": scenario.name, "seed": scenario.seed,
                                     "runs": rows_data},
                  plot=lambda figure: _plot(figure, scenario, rows_data))


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


def _plot(figure: Any, scenario: Scenario, runs: list[dict[str, Any]]) -> None:
    if scenario.sweep is not None:
        setting = scenario.sweep[0]
        success, load = figure.subplots(1, 2)
        for policy in scenario.policies:
            mine = [r for r in runs if r["policy"] == policy]
            xs = [r["sweep"] for r in mine]
            success.plot(xs, [r["success"] * 100 for r in mine], marker="o", label=policy)
            load.plot(xs, [r["load_per_call"] for r in mine], marker="o", label=policy)
        success.set(xlabel=setting, ylabel="success seen by clients (%)")
        load.set(xlabel=setting, ylabel="calls received by servers per client call")
        success.legend()
        return
    axes = figure.subplots()
    for data in runs:
        shares = data["success_by_second"]
        axes.plot([i for i, v in enumerate(shares) if v is not None],
                  [v * 100 for v in shares if v is not None], label=data["policy"])
    axes.set(xlabel="seconds (virtual)", ylabel="success per second (%)", title=scenario.title)
    axes.legend()

"""Handshakes: a new TCP + TLS connection per call against a pooled HTTP/2 connection.

The course: the first request on a fresh connection pays the TCP handshake (1 RTT) and TLS
(1 more with TLS 1.3) before any useful byte, so clients pool connections and amortise it.
On loopback a round trip is microseconds, so what remains is the work: sockets, and for TLS
the key exchange and the certificate signatures both sides make and check (mTLS: ECDSA P-256
on each side). Four ways to make the same call to the same backend:

1. **cold h2c**: a new TCP connection per call, straight to the backend (no TLS);
2. **cold mTLS**: a new TCP + TLS 1.3 connection per call, with client certificate, to the
   backend's sidecar;
3. **pooled mTLS**: one TLS connection to that sidecar, every call a new HTTP/2 stream on it;
4. **through the mesh**: the app calls its own sidecar over h2c and that sidecar's pool
   (``sidecar/pool.py``) keeps the mTLS connection to the backend's sidecar.

Handshakes are counted where they happen: by this client for 1–3, from the client sidecar's
``mesh_sidecar_upstream_connections_opened`` metric for 4. The backend sidecar's CPU time per
call shows what the server pays for each handshake.

The four modes run in a few seeded repeats (``repeats.py``), in an order drawn from each
repeat's seed; each repeat has a client sidecar of its own (started with that seed), so its
pool starts empty. Each headline compares two modes within a repeat and is reported as the
median over the repeats, with its spread.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any

import aiohttp

from experiments.harness import (
    H2Client,
    Lab,
    Proc,
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
    Spread,
    across,
    headlines_json,
    headlines_table,
    ratio,
    seeds,
    shuffled,
)
from mesh.http2 import connect, request
from mesh.tls import client_context

NAME = "handshakes"
TITLE = "Handshakes: a new connection per call vs a pooled HTTP/2 connection"
CLIENT, SERVER, BACKEND = "127.0.40.41", "127.0.40.42", "127.0.40.43"
MODES = {
    "cold_h2c": "cold: new TCP per call (h2c)",
    "cold_mtls": "cold: new TCP + mTLS per call",
    "pooled_mtls": "pooled: one mTLS HTTP/2 connection",
    "mesh": "through the mesh (sidecar pool)",
}


@dataclass(frozen=True, slots=True)
class Plan:
    rate: float
    seconds: float  # per mode and repeat
    repeats: int


FULL = Plan(rate=50, seconds=4, repeats=3)
QUICK = Plan(rate=40, seconds=0.8, repeats=3)


async def upstream_connections(admin: tuple[str, int]) -> float:
    """The client sidecar's count of upstream connections opened (TCP + TLS handshakes)."""
    async with aiohttp.ClientSession() as session, \
            session.get(f"http://{admin[0]}:{admin[1]}/metrics") as response:
        text = await response.text()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("mesh_sidecar_upstream_connections_opened_total"))


async def run(quick: bool) -> Report:
    plan = QUICK if quick else FULL
    with Lab(NAME) as lab:
        lab.pki(["client", "backend"])
        s_out, s_in, s_admin = (free_port(SERVER) for _ in range(3))
        b_port = free_port(BACKEND)
        backend = lab.start("backend", ["-m", "experiments.backend", "--replica",
                                        f"backend={BACKEND}:{b_port},latency_ms=1"])
        server = lab.sidecar("backend", outbound=(SERVER, s_out), inbound=(SERVER, s_in),
                             admin=(SERVER, s_admin), app=(BACKEND, b_port), config={})
        config = {"clusters": [{"name": "backend"}],
                  "endpoints": {"backend": [{"address": SERVER, "port": s_in}]}}
        waits = [wait_port(backend, BACKEND, b_port), wait_ready(server, (SERVER, s_admin))]
        clients = {}  # seed: that repeat's client sidecar, (outbound port, admin address)
        for seed in seeds(plan.repeats):
            c_out, c_in, c_admin = (free_port(CLIENT) for _ in range(3))
            proc = lab.sidecar("client", outbound=(CLIENT, c_out), inbound=(CLIENT, c_in),
                               admin=(CLIENT, c_admin), app=(CLIENT, 1), config=config,
                               seed=seed, name=f"sidecar-client-{seed}")
            waits.append(wait_ready(proc, (CLIENT, c_admin)))
            clients[seed] = (c_out, (CLIENT, c_admin))
        await asyncio.gather(*waits)
        cert, key = lab.cert("client")
        tls = client_context(cert, key, lab.ca)
        by_repeat = []
        for seed, (c_out, admin) in clients.items():
            targets = {"cold_h2c": (BACKEND, b_port, None), "cold_mtls": (SERVER, s_in, tls),
                       "pooled_mtls": (SERVER, s_in, tls), "mesh": (CLIENT, c_out, None)}
            results = {}
            for mode in shuffled(MODES, seed):
                host, port, ssl = targets[mode]
                results[mode] = await run_mode(mode, plan, host, port, ssl, server, admin)
            by_repeat.append(results)
    return report(by_repeat, plan, quick)


async def run_mode(mode: str, plan: Plan, host: str, port: int, ssl: Any, server: Proc,
                   admin: tuple[str, int]) -> dict[str, Any]:
    connects: list[float] = []
    pooled = H2Client(host, port, authority="backend", ssl=ssl)

    async def cold(_: int) -> tuple[bool, str]:
        t0 = time.monotonic()
        conn = await connect(host, port, ssl=ssl, connect_timeout=5.0)
        connects.append(time.monotonic() - t0)
        try:
            response = await request(conn, "GET", "/item", authority="backend")
        finally:
            with contextlib.suppress(Exception):
                await conn.shutdown(grace=0.5)
        return response.status == 200, str(response.status)

    async def warm(_: int) -> tuple[bool, str]:
        response = await pooled.request("GET", "/item")
        return response.status == 200, str(response.status)

    before_connections = await upstream_connections(admin)
    cpu_before = server.cpu_seconds()
    _, samples = await open_loop(cold if mode.startswith("cold") else warm, rate=plan.rate,
                                 duration=plan.seconds)
    server_cpu = server.cpu_seconds() - cpu_before
    if mode == "mesh":
        handshakes = await upstream_connections(admin) - before_connections
    elif mode == "pooled_mtls":
        handshakes = len(pooled.connections)
    else:
        handshakes = len(connects)
    await pooled.close()
    latencies = [s.latency for s in samples if s.ok]
    return {
        "mode": mode, "calls": len(samples),
        "errors": sum(not s.ok for s in samples), "handshakes": int(handshakes),
        "error_kinds": dict(Counter(s.tag for s in samples if not s.ok)),
        "p50": percentile(latencies, 50), "p99": percentile(latencies, 99),
        "connect_p50": percentile(connects, 50),
        "server_cpu_ms_per_call": (server_cpu * 1000 / len(samples)
                                   if mode != "cold_h2c" else None),
    }


def headlines(by_repeat: list[dict[str, dict[str, Any]]]) -> list[Headline]:
    def versus(arm: str, key: str, other: str) -> Spread:
        return Spread.of(ratio(r[arm][key], r[other][key]) for r in by_repeat)

    def count(value: float) -> str:
        return f"{value:.0f}"

    return [
        Headline("mtls_connect_vs_h2c", "cold: connect p50 with mTLS ÷ without",
                 versus("cold_mtls", "connect_p50", "cold_h2c"),
                 "above 1: the TLS handshake costs more than TCP's"),
        Headline("cold_vs_pooled_server_cpu",
                 "server sidecar CPU per call: cold mTLS ÷ pooled mTLS",
                 versus("cold_mtls", "server_cpu_ms_per_call", "pooled_mtls"),
                 "above 1: every handshake costs the server"),
        Headline("cold_vs_pooled_p50", "p50 per call: cold mTLS ÷ pooled mTLS",
                 versus("cold_mtls", "p50", "pooled_mtls"),
                 "above 1: a call waits for its handshake"),
        Headline("pooled_handshakes", "pooled mTLS: handshakes",
                 across(by_repeat, "pooled_mtls", "handshakes"), "1, for all its calls", count),
        Headline("mesh_handshakes", "through the mesh: handshakes (the sidecar's pool)",
                 across(by_repeat, "mesh", "handshakes"), "1, for all its calls", count),
    ]


def report(by_repeat: list[dict[str, dict[str, Any]]], plan: Plan, quick: bool) -> Report:
    def count(value: float) -> str:
        return f"{value:.0f}"

    def cpu(value: float | None) -> str:
        return "–" if value is None or math.isnan(value) else f"{value:.2f}"

    columns: list[tuple[str, str, Any]] = [  # (header, result key, format)
        ("calls", "calls", count), ("handshakes", "handshakes", count),
        ("p50 ms per call", "p50", ms), ("p99 ms", "p99", ms),
        ("connect p50 ms", "connect_p50", ms),
        ("server sidecar CPU ms per call", "server_cpu_ms_per_call", cpu),
        ("errors", "errors", count),
    ]
    rows = []
    summary: list[dict[str, Any]] = []
    for mode, label in MODES.items():
        spreads = {key: Spread.of(math.nan if r[mode][key] is None else r[mode][key]
                                  for r in by_repeat) for _, key, _ in columns}
        rows.append([label, *(spreads[key].cell(fmt) for _, key, fmt in columns)])
        summary.append({"mode": mode, "label": label,
                        **{key: spread.as_json() for key, spread in spreads.items()}})
    headers = ["mode", *(header for header, _, _ in columns)]
    claims = headlines(by_repeat)
    notes = [
        f"{'quick' if quick else 'full'} run: {plan.repeats} repeats (seeds "
        f"{', '.join(str(seed) for seed in seeds(plan.repeats))}), each with a client sidecar "
        f"of its own, the four modes in an order drawn from the seed; a cell is the median "
        f"over the repeats (min–max). {plan.rate:g} calls/s for {plan.seconds:g} s per mode, "
        f"open loop; the backend answers in 1 ms.",
        "Connect = TCP connect plus, with mTLS, the TLS 1.3 handshake with certificates both "
        "ways. On loopback the round trips are nearly free: the cost shown is CPU.",
        "'through the mesh' adds a hop (app → its sidecar → the backend's sidecar) and still "
        "makes one handshake for all its calls.",
        "The machine is shared and loaded: a repeat that met a busy moment shows in the "
        "min–max, not in the median.",
    ]

    def draw(figure: Any) -> None:
        left, right = figure.subplots(1, 2)
        labels = [row["label"].replace(": ", ":\n") for row in summary]
        xs = list(range(len(summary)))
        for offset, key in ((-0.2, "p50"), (0.2, "p99")):
            medians = [row[key]["median"] * 1000 for row in summary]
            left.bar([x + offset for x in xs], medians, 0.4, label=key, capsize=3,
                     yerr=[[m - row[key]["min"] * 1000 for m, row in zip(medians, summary,
                                                                         strict=True)],
                           [row[key]["max"] * 1000 - m for m, row in zip(medians, summary,
                                                                         strict=True)]])
        left.set_xticks(xs, labels, fontsize=7)
        left.set_ylabel("ms per call (median, bars: min–max)")
        left.set_title(f"latency per call, {plan.repeats} repeats")
        left.legend(fontsize=8)
        right.bar(xs, [row["handshakes"]["median"] for row in summary], color="tab:red")
        right.set_xticks(xs, labels, fontsize=7)
        right.set_yscale("log")
        right.set_ylabel("handshakes (log)")
        right.set_title(f"handshakes for {summary[0]['calls']['median']:.0f} calls")

    return Report(NAME, TITLE, markdown_table(headers, rows), notes,
                  {"plan": asdict(plan), "modes": summary, "headlines": headlines_json(claims),
                   "repeats": by_repeat}, draw, headlines_table(claims))


if __name__ == "__main__":
    sys.exit(main(NAME, TITLE, run))

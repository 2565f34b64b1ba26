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
"""

from __future__ import annotations

import asyncio
import contextlib
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
    seconds: float  # per mode


FULL = Plan(rate=50, seconds=10)
QUICK = Plan(rate=40, seconds=2)


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
        c_out, c_in, c_admin = (free_port(CLIENT) for _ in range(3))
        s_out, s_in, s_admin = (free_port(SERVER) for _ in range(3))
        b_port = free_port(BACKEND)
        backend = lab.start("backend", ["-m", "experiments.backend", "--replica",
                                        f"backend={BACKEND}:{b_port},latency_ms=1"])
        server = lab.sidecar("backend", outbound=(SERVER, s_out), inbound=(SERVER, s_in),
                             admin=(SERVER, s_admin), app=(BACKEND, b_port), config={})
        config = {"clusters": [{"name": "backend"}],
                  "endpoints": {"backend": [{"address": SERVER, "port": s_in}]}}
        client_sidecar = lab.sidecar("client", outbound=(CLIENT, c_out),
                                     inbound=(CLIENT, c_in), admin=(CLIENT, c_admin),
                                     app=(CLIENT, 1), config=config)
        await asyncio.gather(wait_port(backend, BACKEND, b_port),
                             wait_ready(server, (SERVER, s_admin)),
                             wait_ready(client_sidecar, (CLIENT, c_admin)))
        cert, key = lab.cert("client")
        tls = client_context(cert, key, lab.ca)
        targets = {"cold_h2c": (BACKEND, b_port, None), "cold_mtls": (SERVER, s_in, tls),
                   "pooled_mtls": (SERVER, s_in, tls), "mesh": (CLIENT, c_out, None)}
        results = []
        for mode in MODES:
            host, port, ssl = targets[mode]
            results.append(await run_mode(mode, plan, host, port, ssl, server,
                                          (CLIENT, c_admin)))
    return report(results, plan, quick)


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
        "mode": mode, "label": MODES[mode], "calls": len(samples),
        "errors": sum(not s.ok for s in samples), "handshakes": int(handshakes),
        "error_kinds": dict(Counter(s.tag for s in samples if not s.ok)),
        "p50": percentile(latencies, 50), "p99": percentile(latencies, 99),
        "connect_p50": percentile(connects, 50),
        "server_cpu_ms_per_call": (server_cpu * 1000 / len(samples)
                                   if mode != "cold_h2c" else None),
    }


def report(results: list[dict[str, Any]], plan: Plan, quick: bool) -> Report:
    rows = []
    for r in results:
        cpu = r["server_cpu_ms_per_call"]
        rows.append([r["label"], r["calls"], r["handshakes"], ms(r["p50"]), ms(r["p99"]),
                     ms(r["connect_p50"]), "–" if cpu is None else f"{cpu:.2f}", r["errors"]])
    headers = ["mode", "calls", "handshakes", "p50 ms per call", "p99 ms", "connect p50 ms",
               "server sidecar CPU ms per call", "errors"]
    notes = [
        f"{'quick' if quick else 'full'} run: {plan.rate:g} calls/s for {plan.seconds:g} s "
        f"per mode, open loop; the backend answers in 1 ms.",
        "Connect = TCP connect plus, with mTLS, the TLS 1.3 handshake with certificates both "
        "ways. On loopback the round trips are nearly free: the cost shown is CPU.",
        "'through the mesh' adds a hop (app → its sidecar → the backend's sidecar) and still "
        "makes one handshake for all its calls.",
        "Numbers vary from run to run: the machine is shared and loaded.",
    ]

    def draw(figure: Any) -> None:
        left, right = figure.subplots(1, 2)
        labels = [r["label"].replace(": ", ":\n") for r in results]
        xs = list(range(len(results)))
        left.bar([x - 0.2 for x in xs], [r["p50"] * 1000 for r in results], 0.4, label="p50")
        left.bar([x + 0.2 for x in xs], [r["p99"] * 1000 for r in results], 0.4, label="p99")
        left.set_xticks(xs, labels, fontsize=7)
        left.set_ylabel("ms per call")
        left.set_title("latency per call")
        left.legend(fontsize=8)
        right.bar(xs, [r["handshakes"] for r in results], color="tab:red")
        right.set_xticks(xs, labels, fontsize=7)
        right.set_yscale("log")
        right.set_ylabel("handshakes (log)")
        right.set_title(f"handshakes for {results[0]['calls']} calls")

    return Report(NAME, TITLE, markdown_table(headers, rows), notes,
                  {"plan": asdict(plan), "modes": results}, draw)


if __name__ == "__main__":
    sys.exit(main(NAME, TITLE, run))

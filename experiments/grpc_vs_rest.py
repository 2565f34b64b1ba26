"""gRPC vs REST: the course's Lab 2.1, scaled to this machine.

The same logical service (``experiments/catalog.py``: a product by id) as gRPC — protobuf over
HTTP/2, ``mesh/grpc`` — and as JSON over HTTP/1.1 (aiohttp), each called direct and through
the mesh, at several request rates:

    direct:  load ──▶ catalog server
    mesh:    load ──▶ sidecar "client" ══HTTP/2 + mTLS══▶ sidecar "catalog-*" ──▶ catalog server

Between the sidecars it is always HTTP/2 over mTLS, whatever the app speaks: the REST client
talks HTTP/1.1 to its sidecar and the REST server gets HTTP/1.1 from its own.

Measured per cell: latency percentiles (from the scheduled send time, open loop), throughput,
CPU seconds of every process (``/proc/PID/stat``; the client is this process), and bytes on
the wire, read from the kernel's per-socket counters (``ss -ti``: ``bytes_sent`` and
``bytes_received``) on the client's connections and, through the mesh, on the sidecar-to-
sidecar connections. The lab asks for 5-minute runs at 100/1000/5000 requests/s; pure Python
on two shared cores reaches a few hundred through two sidecars, so the rates are scaled down.

The cells (rate × protocol × path) run in a few seeded repeats (``repeats.py``), in an order
drawn from each repeat's seed; a table cell is the median over the repeats, with its spread,
and each headline compares gRPC with REST within a repeat.
"""

from __future__ import annotations

import asyncio
import math
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any

import aiohttp

from experiments.catalog import GET_PRODUCT
from experiments.harness import (
    Lab,
    Proc,
    Report,
    cpu_meter,
    free_port,
    main,
    markdown_table,
    ms,
    open_loop,
    percentile,
    wait_port,
    wait_ready,
)
from experiments.proto.catalog_pb2 import Product, ProductRequest
from experiments.repeats import (
    Headline,
    Spread,
    headlines_json,
    headlines_table,
    ratio,
    seeds,
    shuffled,
)
from mesh.grpc import Channel

NAME = "grpc_vs_rest"
TITLE = "gRPC vs REST (HTTP/1.1 JSON), direct and through the mesh"
CLIENT, GRPC_SIDECAR, REST_SIDECAR = "127.0.40.31", "127.0.40.32", "127.0.40.33"
GRPC_APP, REST_APP = "127.0.40.34", "127.0.40.35"
LOAD = "127.0.40.30"  # the load generator's source address, to tell its sockets apart
PATHS = ("direct", "mesh")
PROTOCOLS = ("grpc", "rest")


@dataclass(frozen=True, slots=True)
class Plan:
    rates: tuple[float, ...]
    seconds: float  # per cell and repeat
    repeats: int


FULL = Plan(rates=(100, 300, 600), seconds=3, repeats=3)
QUICK = Plan(rates=(100, 200), seconds=0.7, repeats=3)


def cell_key(rate: float, protocol: str, path: str) -> str:
    """A cell's name in the JSON: ``grpc-mesh-100``."""
    return f"{protocol}-{path}-{rate:g}"


def wire_bytes(host: str, port: int, source: str | None = None) -> dict[tuple[str, str], int]:
    """Bytes sent + received on each established TCP socket to ``host:port`` (from ``source``)."""
    command = ["ss", "-tinH", "state", "established", "dst", f"{host}:{port}"]
    out = subprocess.run([*command, *(["src", source] if source else [])],
                         capture_output=True, text=True, check=True).stdout
    counts: dict[tuple[str, str], int] = {}
    key: tuple[str, str] | None = None
    for line in out.splitlines():
        if not line.startswith(("\t", " ")):
            fields = line.split()
            key = (fields[2], fields[3]) if len(fields) >= 4 else None
        elif key is not None:
            sent = re.search(r"bytes_sent:(\d+)", line)
            received = re.search(r"bytes_received:(\d+)", line)
            counts[key] = (int(sent[1]) if sent else 0) + (int(received[1]) if received else 0)
    return counts


def delta(before: dict[tuple[str, str], int], after: dict[tuple[str, str], int]) -> int:
    return sum(value - before.get(key, 0) for key, value in after.items())


async def run(quick: bool) -> Report:
    plan = QUICK if quick else FULL
    with Lab(NAME) as lab:
        lab.pki(["client", "catalog-grpc", "catalog-rest"])
        c = [free_port(CLIENT) for _ in range(3)]
        g = [free_port(GRPC_SIDECAR) for _ in range(3)]
        r = [free_port(REST_SIDECAR) for _ in range(3)]
        grpc_port, rest_port = free_port(GRPC_APP), free_port(REST_APP)
        procs = {
            "grpc server": lab.start("catalog-grpc", ["-m", "experiments.catalog", "grpc",
                                                      f"{GRPC_APP}:{grpc_port}"]),
            "rest server": lab.start("catalog-rest", ["-m", "experiments.catalog", "rest",
                                                      f"{REST_APP}:{rest_port}"]),
        }
        config = {"clusters": [{"name": "catalog-grpc"},
                               {"name": "catalog-rest", "app_protocol": "HTTP1"}],
                  "endpoints": {"catalog-grpc": [{"address": GRPC_SIDECAR, "port": g[1]}],
                                "catalog-rest": [{"address": REST_SIDECAR, "port": r[1]}]}}
        procs["client sidecar"] = lab.sidecar(
            "client", outbound=(CLIENT, c[0]), inbound=(CLIENT, c[1]), admin=(CLIENT, c[2]),
            app=(CLIENT, 1), config=config)
        procs["grpc sidecar"] = lab.sidecar(
            "catalog-grpc", outbound=(GRPC_SIDECAR, g[0]), inbound=(GRPC_SIDECAR, g[1]),
            admin=(GRPC_SIDECAR, g[2]), app=(GRPC_APP, grpc_port), config={})
        procs["rest sidecar"] = lab.sidecar(
            "catalog-rest", outbound=(REST_SIDECAR, r[0]), inbound=(REST_SIDECAR, r[1]),
            admin=(REST_SIDECAR, r[2]), app=(REST_APP, rest_port), config={},
            app_protocol="http1")
        await asyncio.gather(
            wait_port(procs["grpc server"], GRPC_APP, grpc_port),
            wait_port(procs["rest server"], REST_APP, rest_port),
            wait_ready(procs["client sidecar"], (CLIENT, c[2])),
            wait_ready(procs["grpc sidecar"], (GRPC_SIDECAR, g[2])),
            wait_ready(procs["rest sidecar"], (REST_SIDECAR, r[2])))
        targets = {
            ("grpc", "direct"): ((GRPC_APP, grpc_port), None, "grpc server", []),
            ("grpc", "mesh"): ((CLIENT, c[0]), (GRPC_SIDECAR, g[1]), "grpc server",
                               ["client sidecar", "grpc sidecar"]),
            ("rest", "direct"): ((REST_APP, rest_port), None, "rest server", []),
            ("rest", "mesh"): ((CLIENT, c[0]), (REST_SIDECAR, r[1]), "rest server",
                               ["client sidecar", "rest sidecar"]),
        }
        cells = [(rate, protocol, path) for rate in plan.rates for protocol in PROTOCOLS
                 for path in PATHS]
        by_repeat = []
        for seed in seeds(plan.repeats):
            results = {}
            for rate, protocol, path in shuffled(cells, seed):
                first, hop, server, sidecars = targets[(protocol, path)]
                results[cell_key(rate, protocol, path)] = await run_cell(
                    protocol, path, rate, plan.seconds, first, hop,
                    {name: procs[name] for name in (server, *sidecars)}, server)
            by_repeat.append(results)
    return report(by_repeat, plan, quick)


async def run_cell(protocol: str, path: str, rate: float, seconds: float,
                   first: tuple[str, int], hop: tuple[str, int] | None,
                   procs: dict[str, Proc], server: str) -> dict[str, Any]:
    call, close = client_for(protocol, path, first)
    await call(0)  # connect before measuring, as a long-running client would be
    legs_before = wire_bytes(*first, LOAD), wire_bytes(*hop) if hop else {}
    with cpu_meter(procs) as cpu:
        started = time.monotonic()
        _, samples = await open_loop(call, rate=rate, duration=seconds)
        elapsed = time.monotonic() - started
    client_leg = wire_bytes(*first, LOAD)
    mesh_leg = wire_bytes(*hop) if hop else {}
    await close()
    ok = [s.latency for s in samples if s.ok]
    return {
        "protocol": protocol, "path": path, "rate": rate, "requests": len(samples),
        "errors": len(samples) - len(ok), "throughput": len(ok) / elapsed,
        "error_kinds": dict(Counter(s.tag for s in samples if not s.ok)),
        "p50": percentile(ok, 50), "p95": percentile(ok, 95), "p99": percentile(ok, 99),
        "cpu": dict(cpu), "server_cpu": cpu[server],
        "mesh_cpu": sum(v for k, v in cpu.items() if "sidecar" in k),
        "client_cpu": cpu["client"],
        "client_connections": len(client_leg),
        "client_bytes_per_request": delta(legs_before[0], client_leg) / max(1, len(samples)),
        "mesh_bytes_per_request": (delta(legs_before[1], mesh_leg) / max(1, len(samples))
                                   if hop else None),
    }


Call = Callable[[int], Awaitable[tuple[bool, str]]]


def client_for(protocol: str, path: str, first: tuple[str, int]
               ) -> tuple[Call, Callable[[], Awaitable[None]]]:
    """A call function for one cell, and how to close its connections."""
    host, port = first
    if protocol == "grpc":
        channel = Channel(host, port, authority="catalog-grpc" if path == "mesh" else None,
                          local_address=LOAD)
        get = channel.unary_unary(GET_PRODUCT, Product.FromString)

        async def grpc_call(index: int) -> tuple[bool, str]:
            reply = await get(ProductRequest(id=index + 1), timeout=5.0)
            return reply.id == index + 1, "ok"
        return grpc_call, channel.close

    connector = aiohttp.TCPConnector(limit=256, local_addr=(LOAD, 0))
    session = aiohttp.ClientSession(connector=connector,
                                    timeout=aiohttp.ClientTimeout(total=5.0))
    headers = {"Host": "catalog-rest"} if path == "mesh" else {}

    async def rest_call(index: int) -> tuple[bool, str]:
        async with session.get(f"http://{host}:{port}/products/{index + 1}",
                               headers=headers) as response:
            body = await response.json()
            return response.status == 200 and int(body["id"]) == index + 1, \
                str(response.status)
    return rest_call, session.close


def headlines(by_repeat: list[dict[str, dict[str, Any]]], plan: Plan) -> list[Headline]:
    def versus_rest(rate: float, path: str, key: str) -> Spread:
        return Spread.of(ratio(r[cell_key(rate, "grpc", path)][key],
                               r[cell_key(rate, "rest", path)][key]) for r in by_repeat)

    def count(value: float) -> str:
        return f"{value:.0f}"

    return [
        *(Headline(f"bytes_grpc_vs_rest_{path}_{rate:g}",
                   f"bytes per request on the client leg, gRPC ÷ REST, {path}, {rate:g}/s",
                   versus_rest(rate, path, "client_bytes_per_request"),
                   "below 1: protobuf and HPACK against JSON and HTTP/1.1 text")
          for rate in plan.rates for path in PATHS),
        Headline("grpc_connections", "gRPC client connections, every cell",
                 Spread.of(max(c["client_connections"] for key, c in r.items()
                               if key.startswith("grpc-")) for r in by_repeat),
                 "1: every call multiplexed on one", count),
        Headline("rest_connections", "REST client connections, the most in any cell",
                 Spread.of(max(c["client_connections"] for key, c in r.items()
                               if key.startswith("rest-")) for r in by_repeat),
                 "more than 1 at times: HTTP/1.1 needs one per request in flight", count),
    ]


def report(by_repeat: list[dict[str, dict[str, Any]]], plan: Plan, quick: bool) -> Report:
    def number(value: float) -> str:
        return f"{value:.0f}"

    def per_request(key: str) -> Callable[[dict[str, Any]], float]:
        return lambda c: c[key] * 1e6 / max(1, c["requests"])

    columns: list[tuple[str, Callable[[dict[str, Any]], float], Callable[[float], str]]] = [
        ("p50 ms", lambda c: c["p50"], ms), ("p95 ms", lambda c: c["p95"], ms),
        ("p99 ms", lambda c: c["p99"], ms),
        ("throughput req/s", lambda c: c["throughput"], number),
        ("errors", lambda c: c["errors"], number),
        ("server CPU µs/req", per_request("server_cpu"), number),
        ("client CPU µs/req", per_request("client_cpu"), number),
        ("sidecars CPU µs/req", per_request("mesh_cpu"), number),
        ("client leg bytes/req", lambda c: c["client_bytes_per_request"], number),
        ("sidecar↔sidecar bytes/req", lambda c: c["mesh_bytes_per_request"] or math.nan,
         number),
        ("client connections", lambda c: c["client_connections"], number),
    ]
    mesh_only = {"sidecars CPU µs/req", "sidecar↔sidecar bytes/req"}  # direct: no sidecars
    rows = []
    summary: list[dict[str, Any]] = []
    for rate in plan.rates:
        for protocol in PROTOCOLS:
            for path in PATHS:
                key = cell_key(rate, protocol, path)
                spreads = {header: Spread.of(value(r[key]) for r in by_repeat)
                           for header, value, _ in columns}
                cells = ["–" if path == "direct" and header in mesh_only
                         else spreads[header].cell(fmt) for header, _, fmt in columns]
                rows.append([f"{rate:g}", "gRPC" if protocol == "grpc" else "REST", path,
                             *cells])
                summary.append({"cell": key, "rate": rate, "protocol": protocol, "path": path,
                                **{h: spread.as_json() for h, spread in spreads.items()}})
    headers = ["req/s offered", "protocol", "path", *(header for header, _, _ in columns)]
    claims = headlines(by_repeat, plan)
    notes = [
        f"{'quick' if quick else 'full'} run: {plan.repeats} repeats (seeds "
        f"{', '.join(str(seed) for seed in seeds(plan.repeats))}), the cells in an order drawn "
        f"from each seed; {plan.seconds:g} s per cell and repeat, open loop; latency from the "
        f"scheduled send time. A cell of the table is the median over the repeats (min–max).",
        "CPU per request is each process's user + system time in the cell divided by the "
        "requests; 'sidecars' adds both sidecars. The client is the load generator itself "
        "(aiohttp for REST, mesh/grpc for gRPC).",
        "Bytes per request: both directions, TCP payload (headers, framing, TLS records), "
        "from the kernel's socket counters. The sidecar↔sidecar leg is HTTP/2 over mTLS for "
        "both protocols.",
        "Client connections: the HTTP/1.1 client needs one per request in flight; gRPC "
        "multiplexes every call on one.",
        "A rate past what two Python sidecars carry on this machine shows as latency climbing "
        "towards the 5 s call timeout; the calls that reach it are cancelled (errors column). "
        "Those cancellations come late in a stream's life, so the Rapid Reset guard, which "
        "counts only premature resets (mesh/http2/limits.py), leaves the connection open.",
        "The machine is shared and loaded: a repeat that met a busy moment shows in the "
        "min–max, not in the median.",
    ]

    def draw(figure: Any) -> None:
        left, middle, right = figure.subplots(1, 3)
        for protocol in PROTOCOLS:
            for path in PATHS:
                label = f"{'gRPC' if protocol == 'grpc' else 'REST'} {path}"
                style = "-" if path == "direct" else "--"
                cells = [c for c in summary if c["protocol"] == protocol and c["path"] == path]
                rates = [c["rate"] for c in cells]
                for axes, header, scale in ((left, "p99 ms", 1000), (right,
                                            "client leg bytes/req", 1)):
                    medians = [c[header]["median"] * scale for c in cells]
                    axes.errorbar(rates, medians, fmt=style, marker="o", capsize=3, label=label,
                                  yerr=[[m - c[header]["min"] * scale
                                         for m, c in zip(medians, cells, strict=True)],
                                        [c[header]["max"] * scale - m
                                         for m, c in zip(medians, cells, strict=True)]])
                cpu = [sum(c[h]["median"] for h in ("server CPU µs/req", "client CPU µs/req"))
                       + (c["sidecars CPU µs/req"]["median"] if path == "mesh" else 0)
                       for c in cells]
                middle.plot(rates, cpu, style, marker="o", label=label)
        left.set_title("p99 latency (median, bars: min–max)")
        left.set_ylabel("ms")
        middle.set_title("CPU per request, all processes")
        middle.set_ylabel("µs")
        right.set_title("bytes per request, client leg")
        right.set_ylabel("bytes")
        for axes in (left, middle, right):
            axes.set_xlabel("requests/s offered")
            axes.grid(alpha=0.3)
        left.legend(fontsize=8)

    return Report(NAME, TITLE, markdown_table(headers, rows), notes,
                  {"plan": asdict(plan), "cells": summary, "headlines": headlines_json(claims),
                   "repeats": by_repeat}, draw, headlines_table(claims))


if __name__ == "__main__":
    sys.exit(main(NAME, TITLE, run))

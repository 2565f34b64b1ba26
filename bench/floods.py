"""Benchmark: HTTP/2 floods over h2c and over mTLS, ``mesh/http2`` and ``nghttpd`` side by side.

A flood must cost its own connection and nothing else. For each flood of
``bench/flooder.py`` (rapid reset, MadeYouReset, CONTINUATION, SETTINGS, PING), on each
listener (h2c; TLS 1.3 with a client certificate, as the sidecar's inbound listener), against
each server (``bench/flood_server.py``, i.e. ``mesh/http2`` with a sidecar's limits; and
``nghttpd``, nghttp2's C server, as the reference), one trial:

    other caller ──h2c or mTLS──▶ server ◀──h2c or mTLS── flooder (its own process)
    (one request at a time,                               (writes as fast as the socket takes,
     from before the flood to after it)                    until GOAWAY or --duration)

Reported per trial: the frames the server took in from the flooder (``mesh/http2`` only:
nghttpd does not say) beside those its limit lets in by design, the GOAWAY it sent (or the
close, when the flooder could not read a GOAWAY) and how long after the first frame, and the
other caller's worst and p99 latency while the flood ran (each request timed from its
start). SETTINGS and PING floods whose answers are read have no limit in ``mesh/http2`` (a
peer that reads is served like any other); nghttp2 ends them when its answers queue up.

    python -m bench.floods              # every flood, both listeners, both servers (~1 min)
    python -m bench.floods --quick      # short floods: the form the test runs

``nghttpd -V`` asks for a client certificate but does not verify it; nghttp2 is Debian's
1.52 with the rapid reset and CONTINUATION fixes backported.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from bench.flooder import FLOODS
from bench.http2_server import free_port, wait_listening
from certs.pki import create_ca, issue_workload, write_ca, write_workload
from mesh.http2 import Http2Connection, Limits, connect, request
from mesh.identity import SpiffeId
from mesh.loop import run
from mesh.tls import client_context

TRUST_DOMAIN = "cluster.local"
BODY = b"x" * 100
LISTENERS = ("h2c", "mTLS")
SETTLE = 0.2  # seconds the other caller runs before the flood starts and after it ends
# (counted: the server may still be working through what the flood left in its buffers)
REPORT_TIMEOUT = 5.0  # seconds for the server to report a closed connection
# Frames a limit lets in by design, the one that trips it included, after the flooder's two
# of the handshake (SETTINGS, its ACK): what "frames in" is to be read against. Resets also
# refill at 33/s: a flood that lasts 0.1 s may take in 6 frames more.
_RESETS = Limits().reset_burst + 1
BY_DESIGN = {"rapid-reset": 2 + 2 * _RESETS, "made-you-reset": 2 + 2 * _RESETS,
             "continuation": 2 + 65, "settings": None, "ping": None}


@dataclass(frozen=True, slots=True, kw_only=True)
class Pki:
    ca: Path
    server: tuple[Path, Path]  # certificate, key
    client: tuple[Path, Path]


@dataclass
class Trial:
    """One flood against one server on one listener, and what was measured."""

    flood: str
    listener: str
    server: str
    frames_in: int | None = None  # taken in by the server from the flooder
    goaway: int | None = None  # its error code, None if none was seen
    cut_off: bool = False  # the server ended it (GOAWAY, or closed), in time or soon after
    seconds: float = 0.0  # from the first frame to the cut, or the flood's whole time
    latencies: list[float] = field(default_factory=list)  # the other caller's, seconds

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


class Server:
    """A server process; the ``mesh/http2`` one reports each closed connection's frames."""

    def __init__(self, name: str, port: int, process: asyncio.subprocess.Process) -> None:
        self.name = name
        self.port = port
        self.process = process
        self._reports: dict[int, asyncio.Future[dict[str, object]]] = {}  # by client port
        self._reading = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.process.stdout is not None
        while line := await self.process.stdout.readline():
            with contextlib.suppress(ValueError):
                report = json.loads(line)
                waiter = self._report(report["peer_port"])
                if not waiter.done():
                    waiter.set_result(report)

    def _report(self, port: int) -> asyncio.Future[dict[str, object]]:
        return self._reports.setdefault(port, asyncio.get_running_loop().create_future())

    async def report_for(self, port: int) -> dict[str, object] | None:
        """What the server said of the connection from ``port`` when it closed, if it did."""
        try:
            return await asyncio.wait_for(asyncio.shield(self._report(port)), REPORT_TIMEOUT)
        except TimeoutError:
            return None

    async def stop(self) -> None:
        if self.process.returncode is None:
            self.process.terminate()
            try:
                await asyncio.wait_for(self.process.wait(), 10)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
        self._reading.cancel()


def make_pki(root: Path) -> Pki:
    ca = create_ca(trust_domain=TRUST_DOMAIN)
    ca_cert, _ = write_ca(ca, root)

    def issue(service: str) -> tuple[Path, Path]:
        identity = SpiffeId(trust_domain=TRUST_DOMAIN, namespace="bench", service=service)
        return write_workload(issue_workload(ca, identity, timedelta(hours=1)), root)

    return Pki(ca=ca_cert, server=issue("server"), client=issue("client"))


async def start_server(name: str, listener: str, pki: Pki, root: Path) -> Server:
    port = free_port()
    mtls = listener == "mTLS"
    if name == "mesh/http2":
        command = [sys.executable, "-m", "bench.flood_server", "--port", str(port)]
        if mtls:
            command += ["--mtls", str(pki.server[0]), str(pki.server[1]), str(pki.ca)]
    elif mtls:  # nghttpd takes <PORT> <KEY> <CERT> with TLS, --no-tls <PORT> without
        command = ["nghttpd", "-d", str(root), "-V", str(port), str(pki.server[1]),
                   str(pki.server[0])]
    else:
        command = ["nghttpd", "-d", str(root), "--no-tls", str(port)]
    process = await asyncio.create_subprocess_exec(*command, stdout=asyncio.subprocess.PIPE)
    server = Server(name, port, process)
    await asyncio.to_thread(wait_listening, port)
    return server


async def other_caller(connection: Http2Connection, latencies: list[tuple[float, float]],
                       stop: asyncio.Event) -> None:
    """One request at a time until ``stop``; each one's (start, end) in monotonic seconds."""
    while not stop.is_set():
        started = time.monotonic()
        response = await request(connection, "GET", "/index.html", authority="bench")
        if response.status != 200:
            raise RuntimeError(f"the other caller got {response.status}")
        latencies.append((started, time.monotonic()))


async def trial(server: Server, listener: str, flood: str, pki: Pki,
                duration: float) -> Trial:
    mtls = listener == "mTLS"
    context = client_context(pki.client[0], pki.client[1], pki.ca) if mtls else None
    connection = await connect("127.0.0.1", server.port, ssl=context)
    latencies: list[tuple[float, float]] = []
    stop = asyncio.Event()
    calling = asyncio.create_task(other_caller(connection, latencies, stop))
    try:
        await asyncio.sleep(SETTLE)
        command = [sys.executable, "-m", "bench.flooder", flood, "--port", str(server.port),
                   "--duration", str(duration)]
        if mtls:
            command += ["--mtls", str(pki.client[0]), str(pki.client[1]), str(pki.ca)]
        flooder = await asyncio.create_subprocess_exec(*command, stdout=asyncio.subprocess.PIPE)
        out, _ = await asyncio.wait_for(flooder.communicate(), duration + 30)
        result = json.loads(out)
        await asyncio.sleep(SETTLE)
    finally:
        stop.set()
        await asyncio.wait_for(calling, 30)
        await connection.shutdown(grace=1.0)
    started, ended = float(result["started"]), float(result["ended"])
    measured = Trial(flood=flood, listener=listener, server=server.name,
                     goaway=result["goaway"], cut_off=bool(result["cut_off"]),
                     seconds=ended - started,
                     latencies=[end - start for start, end in latencies
                                if start < ended + SETTLE and end > started])
    if server.name == "mesh/http2":
        report = await server.report_for(int(result["local_port"]))
        if report is not None:  # what it sent, whether or not the flooder could read it
            measured.frames_in = int(str(report["frames"]))
            measured.goaway = None if report["code"] is None else int(str(report["code"]))
    return measured


async def run_all(floods: list[str], servers: list[str], duration: float,
                  root: Path) -> list[Trial]:
    pki = make_pki(root)
    (root / "index.html").write_bytes(BODY)
    trials: list[Trial] = []
    for listener in LISTENERS:
        for name in servers:
            server = await start_server(name, listener, pki, root)
            try:
                for flood in floods:
                    trials.append(await trial(server, listener, flood, pki, duration))
            finally:
                await server.stop()
    return trials


def cell(value: float | None, form: str) -> str:
    return "—" if value is None else format(value, form)


def cut(t: Trial) -> str:
    """How the flood ended: the server's GOAWAY (or a close, if the flooder saw no GOAWAY)
    and when, or "no" if it ran its whole time."""
    if not t.cut_off:
        return "no"
    how = "closed" if t.goaway is None else f"GOAWAY 0x{t.goaway:x}"
    return f"{how}, {t.seconds * 1e3:.0f} ms"


def report(trials: list[Trial], duration: float, load_before: float) -> None:
    print(f"\n## HTTP/2 floods ({duration:g} s at most each), h2c and mTLS side by side\n")
    print(f"Load average (1 min) before the run: {load_before:.2f}, after: "
          f"{os.getloadavg()[0]:.2f}, on {os.cpu_count()} CPUs; latencies are the other "
          "caller's, on its own connection, while the flood ran.\n")
    print("| flood | server | frames in: h2c | mTLS | by design | cut off: h2c | mTLS | "
          "worst ms: h2c | mTLS | p99 ms: h2c | mTLS |")
    print("|---" * 11 + "|")
    by_key = {(t.flood, t.listener, t.server): t for t in trials}
    rows = dict.fromkeys((t.flood, t.server) for t in trials)
    for flood, server in rows:
        h2c, mtls = (by_key[flood, listener, server] for listener in LISTENERS)
        print(f"| {flood} | {server} | {cell(h2c.frames_in, ',')} | {cell(mtls.frames_in, ',')} "
              f"| {cell(BY_DESIGN[flood], ',')} | {cut(h2c)} | {cut(mtls)} | "
              f"{h2c.percentile(1.0) * 1e3:.1f} | {mtls.percentile(1.0) * 1e3:.1f} | "
              f"{h2c.percentile(0.99) * 1e3:.1f} | {mtls.percentile(0.99) * 1e3:.1f} |")
    print()
    for flood in dict.fromkeys(flood for flood, _ in rows):
        h2c, mtls = (by_key[flood, listener, "mesh/http2"] for listener in LISTENERS)
        parts = [f"worst latency mTLS / h2c {ratio(mtls.percentile(1.0), h2c.percentile(1.0))}"]
        if h2c.frames_in and mtls.frames_in is not None:
            parts.insert(0, f"frames in mTLS / h2c {ratio(mtls.frames_in, h2c.frames_in)}")
        reference = by_key.get((flood, "mTLS", "nghttpd"))
        if reference is not None:
            parts.append(f"worst latency over mTLS, mesh / nghttpd "
                         f"{ratio(mtls.percentile(1.0), reference.percentile(1.0))}")
        print(f"- {flood} (mesh/http2): " + ", ".join(parts))


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b else "n/a"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--duration", type=float, default=2.0,
                        help="seconds a flood may run at most (default 2)")
    parser.add_argument("--flood", action="append", choices=sorted(FLOODS),
                        help="only this flood (repeatable)")
    parser.add_argument("--quick", action="store_true", help="0.5 s floods: what the test runs")
    args = parser.parse_args(argv)
    duration = 0.5 if args.quick else args.duration
    servers = ["mesh/http2"]
    if shutil.which("nghttpd") is not None:
        servers.append("nghttpd")
    else:
        print("nghttpd not found: the reference is left out (apt-get install nghttp2-server)")
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="floods-bench-") as tmp:
        trials = run(run_all(args.flood or list(FLOODS), servers, duration, Path(tmp)))
    report(trials, duration, load_before)
    missing = [t for t in trials if not t.latencies]
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark: the sidecar pair against a bare forwarding pair and an HAProxy pair, all in one run.

Every path ends at the same backend, ``nghttpd`` (C, h2c, a 100-byte file), so the backend
stays out of the comparison; ``h2load`` drives each path over h2c::

    direct    h2load ─────────────────────────────────────────────────────────▶ nghttpd
    sidecar   h2load ─h2c▶ sidecar A (outbound) ═HTTP/2+mTLS═▶ sidecar B (inbound) ─h2c▶ nghttpd
    bare      h2load ─h2c▶ bench.bare_pair hop  ═HTTP/2+mTLS═▶ bench.bare_pair hop ─h2c▶ nghttpd
    haproxy   h2load ─h2c▶ haproxy (1 thread)   ═HTTP/2+mTLS═▶ haproxy (1 thread)  ─h2c▶ nghttpd

The pairs use the same certificates (``python -m certs``, one CA, one workload certificate per
hop). Reported, as the median of interleaved rounds (so the machine's noise falls on all
alike): req/s with 100 streams in flight (``-c1 -m100``, and ``-c4 -m25``), p50 and p99 at one
stream (``-c1 -m1``, each request's time from ``h2load --log-file``), the latency each hop adds,
``(pair - direct) / 2``, the CPU time each hop spends per request at one stream (from
/proc/PID/stat: what a busy machine disturbs least), and the ratios sidecar / bare (target: at
least 0.90) and sidecar / haproxy. Then the sidecar's memory: VmRSS with idle downstream
connections and with streams in flight (a backend that holds every request keeps them open
across both sidecars).

    python -m bench.sidecar_pair                  # 3 rounds of 10 s per load, 10,000 requests
                                                  # (about 6 minutes)
    python -m bench.sidecar_pair --quick          # a few seconds: the form the test runs
    python -m bench.sidecar_pair --duration 5 --requests 5000 --rounds 1
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from h2.config import H2Configuration
from h2.connection import H2Connection

from bench.common import cpu_seconds
from bench.holding_backend import BODY, HoldingBackend
from bench.http2_server import free_port

NAMESPACE = "bench"
BENCH = Path(__file__).resolve().parent
# Loads: (h2load clients, streams per client): 100 streams in flight on one connection or on
# four, then 1,000 (on four connections: a sidecar allows 256 streams per connection).
LOADS = ((1, 100), (4, 25), (4, 250))
STREAMS_PER_CONNECTION = 100  # for the in-flight memory figure: h2load -c N/100 -m100

SIDECAR_A = """\
clusters:
- name: backend
  # the memory figure holds thousands of requests until all have arrived: lift the default
  # limit of 1024 and the 15 s timeout (slow to reach on a busy machine)
  circuit_breakers: {{max_pending_requests: 100000, max_requests: 100000}}
  timeout: 300s
routes:
- name: bench
  virtual_hosts:
  - name: any
    domains: ["*"]
    routes:
    - match: {{prefix: "/"}}
      route: {{cluster: backend}}
endpoints:
  backend:
  - {{address: 127.0.0.1, port: {port}}}
"""


@dataclass
class Contestant:
    """One path from h2load to the backend, and what was measured over it."""

    name: str
    port: int  # where h2load connects
    hops: list[int]  # the PIDs of the two hops (none for direct)
    rates: dict[tuple[int, int], list[float]] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)  # seconds, every request of every round
    hop_cpu: float = 0.0  # CPU seconds of both hops over the one-stream runs
    busy_cpu: list[float] = field(default_factory=list)  # per request and hop, -c1 -m100
    failures: int = 0

    def rate(self, load: tuple[int, int]) -> float:
        return statistics.median(self.rates[load])

    def percentile(self, q: float) -> float:
        """The ``q`` quantile of every request's time (nearest rank), in seconds."""
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
    except OSError:
        return False
    return True


class Processes:
    """The subprocesses of a run, each with its log file; :meth:`stop` ends them by PID."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.started: list[subprocess.Popen[bytes]] = []
        self.starting: list[tuple[str, subprocess.Popen[bytes], int]] = []  # (.., its port)

    def start(self, name: str, command: list[str], *, listens: int,
              env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """Start ``command``, which will listen on port ``listens`` (see :meth:`wait_ready`)."""
        with (self.logs / f"{name}.log").open("wb") as log:
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                       env=None if env is None else {**os.environ, **env})
        self.started.append(process)
        self.starting.append((name, process, listens))
        return process

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Return once everything started listens (they start side by side: Python's imports
        take a while).

        Raises:
            RuntimeError: one exited or never listened; the message ends with its log.
        """
        deadline = time.monotonic() + timeout
        for name, process, port in self.starting:
            while not listening(port):
                if process.poll() is not None or time.monotonic() > deadline:
                    log = (self.logs / f"{name}.log").read_text(errors="replace")[-2000:]
                    state = ("exited" if process.poll() is not None
                             else f"not listening on 127.0.0.1:{port} after {timeout:g} s")
                    raise RuntimeError(f"{name} did not start ({state}):\n{log}")
                time.sleep(0.05)
        self.starting.clear()

    def stop(self) -> None:
        for process in self.started:
            process.terminate()
        for process in self.started:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
        self.started.clear()


# -- h2load ---------------------------------------------------------------------------------

def h2load(args: list[str], url: str) -> tuple[float, int]:
    """Run h2load; return (req/s, requests that did not succeed)."""
    done = subprocess.run(["h2load", *args, url], capture_output=True, text=True, timeout=900)
    return parse_h2load(done.stdout + done.stderr, url)


def parse_h2load(out: str, url: str) -> tuple[float, int]:
    """(req/s, requests that did not succeed) from h2load's report.

    A request succeeds with a 2xx status only (h2load counts 4xx / 5xx as failed).

    Raises:
        RuntimeError: the report is not there (h2load could not run), with its output.
    """
    rate = re.search(r"finished in [\d.]+(?:us|ms|s), ([\d.]+) req/s", out)
    done = re.search(r"requests: (\d+) total, \d+ started, \d+ done, (\d+) succeeded", out)
    if rate is None or done is None:
        raise RuntimeError(f"could not read h2load's output for {url}:\n{out}")
    total, succeeded = int(done.group(1)), int(done.group(2))
    return float(rate.group(1)), (total - succeeded) if total else 1


def warm_up(path: Contestant) -> None:
    """Open the connections each load needs before anything is measured: the sidecar's pool
    opens one per 100 streams, but HAProxy dials one upstream connection (TCP + TLS) per
    request that finds none ready, so its first burst of 100 costs 100 handshakes."""
    for clients, streams in (*LOADS, (1, 1)):
        h2load(["-c", str(clients), "-m", str(streams), "-n", str(2 * clients * streams)],
               f"http://127.0.0.1:{path.port}/")


def measure_rate(path: Contestant, load: tuple[int, int], duration: float) -> None:
    clients, streams = load
    warm = min(1.0, duration / 5)  # a pool connection that idled out (60 s) is redialled here
    cpu = sum(cpu_seconds(pid) for pid in path.hops)
    rate, failed = h2load(["-c", str(clients), "-m", str(streams), "-D",
                           f"{duration * 1000:.0f}ms", "--warm-up-time",
                           f"{warm * 1000:.0f}ms"], f"http://127.0.0.1:{path.port}/")
    cpu = sum(cpu_seconds(pid) for pid in path.hops) - cpu
    path.rates.setdefault(load, []).append(rate)
    if rate and load == LOADS[0]:  # the CPU also covers the warm-up, assumed at the same rate
        path.busy_cpu.append(cpu / (rate * (duration + warm)) / 2)
    path.failures += failed


def measure_latency(path: Contestant, requests: int, logs: Path) -> None:
    url = f"http://127.0.0.1:{path.port}/"
    h2load(["-c1", "-m1", "-n", "50"], url)  # as above: redial what idled out
    log = logs / f"latency-{path.name}.tsv"
    cpu = sum(cpu_seconds(pid) for pid in path.hops)
    _, failed = h2load(["-c1", "-m1", "-n", str(requests), f"--log-file={log}"], url)
    path.hop_cpu += sum(cpu_seconds(pid) for pid in path.hops) - cpu
    path.failures += failed
    # One line per request: start (µs since the epoch), status, duration (µs).
    path.latencies += [int(line.split("\t")[2]) / 1e6
                       for line in log.read_text().splitlines() if line]


# -- the contestants -------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Pki:
    ca: Path
    a_cert: Path
    a_key: Path
    b_cert: Path
    b_key: Path


def make_pki(root: Path) -> Pki:
    """A mesh CA and one workload certificate per hop, through ``python -m certs``."""
    certs = [sys.executable, "-m", "certs"]
    subprocess.run([*certs, "init", "--dir", str(root / "ca")], check=True, capture_output=True)
    for service in ("client", "backend"):
        subprocess.run([*certs, "issue", "--dir", str(root / "ca"), "--service", service,
                        "--namespace", NAMESPACE, "--validity", "1d", "--out", str(root)],
                       check=True, capture_output=True)
    return Pki(ca=root / "ca" / "ca.crt", a_cert=root / "client.crt", a_key=root / "client.key",
               b_cert=root / "backend.crt", b_key=root / "backend.key")


def start_sidecar_pair(procs: Processes, pki: Pki, app_port: int, root: Path, tag: str,
                       engine: str | None = None
                       ) -> tuple[int, subprocess.Popen[bytes], subprocess.Popen[bytes]]:
    """Sidecar B in front of the app on ``app_port``, sidecar A routing everything to B, both
    on the HTTP/2 ``engine`` given (``MESH_HTTP2_ENGINE``; None: the default).

    Returns A's outbound port and both processes (A, B).
    """
    env = None if engine is None else {"MESH_HTTP2_ENGINE": engine}
    b_inbound, a_outbound = free_port(), free_port()
    config_a, config_b = root / f"{tag}-a.yaml", root / f"{tag}-b.yaml"
    config_a.write_text(SIDECAR_A.format(port=b_inbound))
    config_b.write_text("{}\n")  # B only serves its app: no clusters, allow every caller
    common = [sys.executable, "-m", "sidecar", "--namespace", NAMESPACE, "--ca", str(pki.ca),
              "--log-level", "WARNING"]
    b_admin, a_admin = free_port(), free_port()
    b = procs.start(f"{tag}-b", [
        *common, "--service", "backend", "--cert", str(pki.b_cert), "--key", str(pki.b_key),
        "--inbound", f"127.0.0.1:{b_inbound}", "--outbound", f"127.0.0.1:{free_port()}",
        "--admin", f"127.0.0.1:{b_admin}", "--app", f"127.0.0.1:{app_port}",
        "--app-protocol", "h2c", "--static-config", str(config_b)], listens=b_admin, env=env)
    a = procs.start(f"{tag}-a", [
        *common, "--service", "client", "--cert", str(pki.a_cert), "--key", str(pki.a_key),
        "--outbound", f"127.0.0.1:{a_outbound}", "--inbound", f"127.0.0.1:{free_port()}",
        "--admin", f"127.0.0.1:{a_admin}", "--static-config", str(config_a)], listens=a_admin,
        env=env)
    return a_outbound, a, b


def start_bare_pair(procs: Processes, pki: Pki, app_port: int) -> Contestant:
    inbound, outbound = free_port(), free_port()
    hop = [sys.executable, "-m", "bench.bare_pair", "--ca", str(pki.ca)]
    b = procs.start("bare-b", [*hop, "--listen", f"127.0.0.1:{inbound}", "--listen-tls",
                           "--upstream", f"127.0.0.1:{app_port}", "--cert", str(pki.b_cert),
                           "--key", str(pki.b_key)], listens=inbound)
    a = procs.start("bare-a", [*hop, "--listen", f"127.0.0.1:{outbound}", "--upstream-tls",
                           "--upstream", f"127.0.0.1:{inbound}", "--cert", str(pki.a_cert),
                           "--key", str(pki.a_key)], listens=outbound)
    return Contestant("bare", outbound, [a.pid, b.pid])


def start_haproxy_pair(procs: Processes, pki: Pki, app_port: int, root: Path) -> Contestant:
    """Two HAProxy processes from ``bench/haproxy_pair.cfg``; HAProxy wants cert + key in one
    PEM file."""
    inbound, outbound = free_port(), free_port()
    pems = []
    for name, cert, key in (("a", pki.a_cert, pki.a_key), ("b", pki.b_cert, pki.b_key)):
        pem = root / f"haproxy-{name}.pem"
        pem.write_text(cert.read_text() + key.read_text())
        pem.chmod(0o600)
        pems.append(pem)
    command = ["haproxy", "-db", "-f", str(BENCH / "haproxy_pair.cfg")]
    b = procs.start("haproxy-b", command, listens=inbound, env={
        "HOP": "inbound", "LISTEN": f"127.0.0.1:{inbound}", "UPSTREAM": f"127.0.0.1:{app_port}",
        "CERT": str(pems[1]), "CA": str(pki.ca)})
    a = procs.start("haproxy-a", command, listens=outbound, env={
        "HOP": "outbound", "LISTEN": f"127.0.0.1:{outbound}", "UPSTREAM": f"127.0.0.1:{inbound}",
        "CERT": str(pems[0]), "CA": str(pki.ca)})
    return Contestant("haproxy", outbound, [a.pid, b.pid])


# -- memory ----------------------------------------------------------------------------------

def rss_mib(pid: int) -> float:
    """The process's resident set (``VmRSS`` in /proc/PID/status), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS in /proc/{pid}/status")


@contextlib.contextmanager
def idle_connections(port: int, count: int) -> Iterator[None]:
    """``count`` HTTP/2 connections to ``port`` that finish the preface and SETTINGS exchange,
    then stay silent."""
    sockets: list[tuple[socket.socket, H2Connection]] = []
    try:
        for _ in range(count):
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            conn = H2Connection(H2Configuration(client_side=True))
            conn.initiate_connection()
            sock.sendall(conn.data_to_send())
            sockets.append((sock, conn))
        for sock, conn in sockets:  # the server's SETTINGS arrive; we acknowledge them
            conn.receive_data(sock.recv(65536))
            sock.sendall(conn.data_to_send())
        yield
    finally:
        for sock, _ in sockets:
            sock.close()


@dataclass
class Memory:
    idle: int  # the connections of the second row
    in_flight: int  # the streams of the third
    rows: list[tuple[str, float, float]] = field(default_factory=list)  # (state, A, B) in MiB
    fill_time: float = 0.0  # seconds until every stream had reached the app
    failures: int = 0


def measure_memory(pki: Pki, root: Path, idle: int, in_flight: int) -> Memory:
    """A fresh sidecar pair in front of a holding backend: VmRSS when ready, with ``idle``
    downstream connections open, and with ``in_flight`` streams held."""
    memory = Memory(idle=idle, in_flight=in_flight)
    procs = Processes(root)
    with HoldingBackend() as backend:
        try:
            port, a, b = start_sidecar_pair(procs, pki, backend.port, root, "memory")
            procs.wait_ready()
            time.sleep(0.5)
            memory.rows.append(("ready, nothing open", rss_mib(a.pid), rss_mib(b.pid)))
            with idle_connections(port, idle):
                time.sleep(0.5)
                memory.rows.append((f"{idle:,} idle downstream connections", rss_mib(a.pid),
                                    rss_mib(b.pid)))
            clients = max(1, in_flight // STREAMS_PER_CONNECTION)
            streams = in_flight // clients
            memory.in_flight = clients * streams
            url = f"http://127.0.0.1:{port}/"
            load = subprocess.Popen(["h2load", "-c", str(clients), "-m", str(streams), "-n",
                                     str(clients * streams), url],
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            try:
                started = time.monotonic()
                while backend.held < clients * streams and time.monotonic() < started + 120:
                    time.sleep(0.05)
                memory.fill_time = time.monotonic() - started
                memory.failures += clients * streams - backend.held  # never reached the app
                memory.rows.append((f"{backend.held:,} streams in flight", rss_mib(a.pid),
                                    rss_mib(b.pid)))
                backend.release()
                memory.failures += parse_h2load(load.communicate(timeout=120)[0], url)[1]
            finally:
                if load.poll() is None:
                    load.kill()
                    load.wait()
        finally:
            procs.stop()
    return memory


# -- the run ---------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0,
                        help="seconds of h2load per load and round (default 10)")
    parser.add_argument("--requests", type=int, default=10_000,
                        help="requests at one stream per round, for p50 / p99 (default 10,000)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--idle", type=int, default=1000,
                        help="idle downstream connections for the memory figure (default 1,000)")
    parser.add_argument("--in-flight", type=int, default=5000,
                        help="streams in flight for the memory figure (default 5,000)")
    parser.add_argument("--engines", default="jh2,h2", type=lambda text: text.split(","),
                        help="the HTTP/2 engines to run a sidecar pair on, the first as "
                             "\"sidecar\" (default jh2,h2; see mesh/http2/engine.py)")
    parser.add_argument("--quick", action="store_true",
                        help="a few seconds: 1 round of 1 s, 300 requests, 100 idle connections, "
                             "500 streams in flight")
    args = parser.parse_args(argv)
    load_before = os.getloadavg()[0]
    if args.quick:
        args.duration, args.requests, args.rounds, args.idle, args.in_flight = 1, 300, 1, 100, 500
    for tool, package in (("h2load", "nghttp2-client"), ("nghttpd", "nghttp2-server")):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} not found: apt-get install {package}")
    haproxy = shutil.which("haproxy") is not None
    if not haproxy:
        print("haproxy not found: the HAProxy pair is left out (apt-get install haproxy)")
    # Every idle connection is a file descriptor here and in the sidecar (which inherits this).
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, args.idle + 1024)), hard))

    with tempfile.TemporaryDirectory(prefix="sidecar-bench-") as tmp:
        root = Path(tmp)
        (root / "www").mkdir()
        (root / "www" / "index.html").write_bytes(BODY)
        pki = make_pki(root)
        procs = Processes(root)
        try:
            backend = free_port()
            procs.start("nghttpd", ["nghttpd", "-d", str(root / "www"), "--no-tls",
                                    str(backend)], listens=backend)
            paths = [Contestant("direct", backend, [])]
            for engine in args.engines:  # the first is "sidecar", the others named by engine
                port, a, b = start_sidecar_pair(procs, pki, backend, root, f"bench-{engine}",
                                                engine)
                name = "sidecar" if engine == args.engines[0] else f"sidecar ({engine})"
                paths.append(Contestant(name, port, [a.pid, b.pid]))
            paths.append(start_bare_pair(procs, pki, backend))
            if haproxy:
                paths.append(start_haproxy_pair(procs, pki, backend, root))
            procs.wait_ready()
            for path in paths:
                warm_up(path)
            for _ in range(args.rounds):
                for path in paths:
                    for load in LOADS:
                        measure_rate(path, load, args.duration)
                    measure_latency(path, args.requests, root)
        finally:
            procs.stop()
        memory = measure_memory(pki, root, args.idle, args.in_flight)

    report(paths, memory, args, load_before)
    return 1 if memory.failures or any(p.failures for p in paths) else 0


def ratio(a: float, b: float) -> str:
    return f"{a / b:.3f}" if b else "n/a"


def report(paths: list[Contestant], memory: Memory, args: argparse.Namespace,
           load_before: float) -> None:
    by_name = {p.name: p for p in paths}
    direct = by_name["direct"]
    print(f"\n## Sidecar pair: h2c in, HTTP/2 + mTLS between, h2c to nghttpd "
          f"({args.rounds} round(s); {args.duration:g} s per load; {args.requests:,} requests "
          f"at one stream; median req/s)\n")
    print(f"Load average (1 min) before the run: {load_before:.2f} on {os.cpu_count()} CPUs; "
          "whatever else runs makes req/s and latencies noisy (CPU per request much less).\n")
    loads = " | ".join(f"req/s -c{c} -m{m}" for c, m in LOADS)
    print(f"| path | {loads} | p50 ms | p99 ms | added per hop, p50 ms | "
          "added per hop, p99 ms | CPU per request per hop, µs: 100 streams, 1 stream | "
          "failed |")
    print("|---" * (len(LOADS) + 7) + "|")
    for p in paths:
        rates = " | ".join(f"{p.rate(load):,.0f}" for load in LOADS)
        p50, p99 = p.percentile(0.50) * 1e3, p.percentile(0.99) * 1e3
        if p is direct:
            added = "— | — | —"
        else:
            added = (f"{(p50 - direct.percentile(0.50) * 1e3) / 2:.3f} | "
                     f"{(p99 - direct.percentile(0.99) * 1e3) / 2:.3f} | "
                     f"{statistics.median(p.busy_cpu or [0]) * 1e6:.0f}, "
                     f"{p.hop_cpu / len(p.latencies) / 2 * 1e6:.0f}")
        print(f"| {p.name} | {rates} | {p50:.3f} | {p99:.3f} | {added} | {p.failures} |")
    print()
    sidecar = by_name["sidecar"]
    for other, note in (("bare", "target >= 0.90"), ("haproxy", "")):
        if other not in by_name:
            print(f"- sidecar / {other}: n/a ({other} not run)")
            continue
        ratios = ", ".join(f"{ratio(sidecar.rate(load), by_name[other].rate(load))} at "
                           f"-c{load[0]} -m{load[1]}" for load in LOADS)
        print(f"- sidecar / {other} req/s: {ratios}" + (f"   ({note})" if note else ""))
    for engine in (p for p in paths if p.name.startswith("sidecar (")):
        ratios = ", ".join(f"{ratio(engine.rate(load), sidecar.rate(load))} at "
                           f"-c{load[0]} -m{load[1]}" for load in LOADS)
        cpu = ratio(statistics.median(sidecar.busy_cpu or [0]),
                    statistics.median(engine.busy_cpu or [0]))
        print(f"- {engine.name} / sidecar req/s: {ratios}; CPU per request at -c1 -m100: "
              f"sidecar / {engine.name} {cpu}")
    if "bare" in by_name and sidecar.busy_cpu and by_name["bare"].busy_cpu:
        estimate = statistics.median(by_name["bare"].busy_cpu) / statistics.median(
            sidecar.busy_cpu)
        print(f"- bare / sidecar CPU per request at -c1 -m100: {estimate:.3f}   (the sidecar / "
              "bare req/s a quiet machine tends to, each hop being CPU-bound)")
    many, few = LOADS[-1], LOADS[0]
    flat = ", ".join(f"{p.name} {ratio(p.rate(many), p.rate(few))}" for p in paths
                     if p is not direct)
    print(f"- req/s with {many[0] * many[1]:,} streams in flight / with {few[0] * few[1]}: "
          f"{flat}   (target: within 10 %)")
    hop = (sidecar.percentile(0.50) - direct.percentile(0.50)) * 1e3 / 2
    print(f"- sidecar, added per hop at one stream (p50): {hop:.3f} ms   (target <= 0.5 ms)")
    if "bare" in by_name:
        # A busy machine slows every hop alike; what the sidecar adds over the bare pair moves
        # much less from run to run.
        over = (sidecar.percentile(0.50) - by_name["bare"].percentile(0.50)) * 1e3 / 2
        print(f"- sidecar - bare, per hop at one stream (p50): {over:.3f} ms   (what routing, "
              "policies, pooling and metrics cost over bare forwarding)")
    print("\n## Sidecar memory (VmRSS)\n")
    print("| state | sidecar A (outbound) MiB | sidecar B (inbound) MiB |")
    print("|---|---|---|")
    for state, a, b in memory.rows:
        print(f"| {state} | {a:.1f} | {b:.1f} |")
    if len(memory.rows) == 3:
        (_, ready_a, ready_b), (_, idle_a, _), (_, busy_a, busy_b) = memory.rows
        print(f"\n- per idle downstream connection (A): "
              f"{(idle_a - ready_a) * 1024 / memory.idle:.1f} KiB")
        print(f"- per stream in flight, its share of the connections included: "
              f"A {(busy_a - ready_a) * 1024 / memory.in_flight:.1f} KiB, "
              f"B {(busy_b - ready_b) * 1024 / memory.in_flight:.1f} KiB "
              f"(all {memory.in_flight:,} reached the app in {memory.fill_time:.1f} s)")
    if memory.failures:
        print(f"\n{memory.failures} request(s) of the memory run did not succeed")


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark: one sidecar with 1 worker and with 2 (``--concurrency``), side by side in one run.

    h2load -c32 -m10 ─h2c▶ sidecar outbound (1 or 2 workers) ═HTTP/2 + mTLS═▶ nghttpd (TLS)

The sidecar is the only Python on the path: the load generator (``h2load``) and the backend
(``nghttpd``, serving a 100-byte file over TLS with the backend's mesh certificate) are C, so
what the second worker adds is the sidecar's. Both sidecars run from the start and are
measured in interleaved rounds, so the machine's noise falls on both alike.

Reported, as medians over the rounds: req/s and its ratio (2 workers / 1), the sidecar's CPU
per request (parent and workers), and how the machine's cores were shared while it ran: the
cores each of the sidecar, h2load and nghttpd used on average (CPU seconds over wall
seconds), and each worker's part of the sidecar's CPU (SO_REUSEPORT spreads connections by
hash, not by load). On a 2-core machine two workers cannot have two whole cores: h2load and
nghttpd take their part, which the table shows.

    python -m bench.sidecar_workers                # 5 rounds of 10 s (about 2 minutes)
    python -m bench.sidecar_workers --quick        # a few seconds: the form the test runs
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import cpu_seconds, tree_cpu_seconds
from bench.holding_backend import BODY
from bench.http2_server import free_port
from bench.sidecar_pair import NAMESPACE, SIDECAR_A, Processes, make_pki, parse_h2load

WORKERS = (1, 2)
CLIENTS, STREAMS = 32, 10  # connections (SO_REUSEPORT spreads them), streams on each


@dataclass
class Sidecar:
    """One sidecar under test and what was measured of it, a list entry per round."""

    workers: int
    port: int
    pid: int
    rates: list[float] = field(default_factory=list)
    cpu_per_request: list[float] = field(default_factory=list)  # seconds
    cores: dict[str, list[float]] = field(default_factory=dict)  # who → cores used
    split: list[list[float]] = field(default_factory=list)  # each worker's part of its CPU
    failures: int = 0


def worker_pids(pid: int) -> list[int]:
    """The sidecar's worker processes (its children), oldest first."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return []
    return sorted(int(child) for child in children)


def run_h2load(args: list[str], url: str) -> tuple[float, int, float]:
    """h2load's (req/s, requests that did not succeed, CPU seconds it used)."""
    with tempfile.TemporaryFile() as out:
        process = subprocess.Popen(["h2load", *args, url], stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        rate, failed = parse_h2load(out.read().decode(errors="replace"), url)
    return rate, failed, usage.ru_utime + usage.ru_stime


def measure(sidecar: Sidecar, backend: int, duration: float) -> None:
    warm = min(1.0, duration / 5)
    workers = worker_pids(sidecar.pid) if sidecar.workers > 1 else [sidecar.pid]
    before = (tree_cpu_seconds(sidecar.pid), cpu_seconds(backend),
              [cpu_seconds(pid) for pid in workers])
    started = time.monotonic()
    rate, failed, load_cpu = run_h2load(
        ["-c", str(CLIENTS), "-m", str(STREAMS), "-D", f"{duration * 1000:.0f}ms",
         "--warm-up-time", f"{warm * 1000:.0f}ms"], f"http://127.0.0.1:{sidecar.port}/")
    wall = time.monotonic() - started
    sidecar_cpu = tree_cpu_seconds(sidecar.pid) - before[0]
    backend_cpu = cpu_seconds(backend) - before[1]
    parts = [cpu_seconds(pid) - was for pid, was in zip(workers, before[2], strict=True)]
    sidecar.rates.append(rate)
    sidecar.failures += failed
    if rate:  # the CPU also covers the warm-up, assumed at the same rate
        sidecar.cpu_per_request.append(sidecar_cpu / (rate * (duration + warm)))
    for who, cpu in (("sidecar", sidecar_cpu), ("h2load", load_cpu), ("nghttpd", backend_cpu)):
        sidecar.cores.setdefault(who, []).append(cpu / wall)
    sidecar.split.append([part / (sum(parts) or 1) for part in parts])


def start_sidecar(procs: Processes, root: Path, workers: int, upstream: int, cert: Path,
                  key: Path, ca: Path) -> Sidecar:
    config = root / f"sidecar-{workers}.yaml"
    config.write_text(SIDECAR_A.format(port=upstream))
    outbound, admin = free_port(), free_port()
    process = procs.start(f"sidecar-{workers}", [
        sys.executable, "-m", "sidecar", "--namespace", NAMESPACE, "--service", "client",
        "--cert", str(cert), "--key", str(key), "--ca", str(ca), "--log-level", "WARNING",
        "--outbound", f"127.0.0.1:{outbound}", "--inbound", f"127.0.0.1:{free_port()}",
        "--admin", f"127.0.0.1:{admin}", "--static-config", str(config),
        "--concurrency", str(workers)], listens=admin)
    return Sidecar(workers, outbound, process.pid)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--duration", type=float, default=10.0, help="seconds per measurement")
    p.add_argument("--quick", action="store_true", help="1 round of 2 s")
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.duration = 1, 2.0
    with tempfile.TemporaryDirectory(prefix="sidecar-workers-") as tmp:
        root = Path(tmp)
        (root / "www").mkdir()
        (root / "www" / "index.html").write_bytes(BODY)
        pki = make_pki(root)
        procs = Processes(root)
        try:
            upstream = free_port()
            backend = procs.start("nghttpd", [
                "nghttpd", "-d", str(root / "www"), str(upstream), str(pki.b_key),
                str(pki.b_cert)], listens=upstream)
            sidecars = [start_sidecar(procs, root, n, upstream, pki.a_cert, pki.a_key, pki.ca)
                        for n in WORKERS]
            procs.wait_ready()
            for sidecar in sidecars:  # connections and pools opened before anything counts
                run_h2load(["-c", str(CLIENTS), "-m", str(STREAMS), "-n", "5000"],
                           f"http://127.0.0.1:{sidecar.port}/")
            for _ in range(args.rounds):
                for sidecar in sidecars:
                    measure(sidecar, backend.pid, args.duration)
        finally:
            procs.stop()
    report(sidecars, args)
    return 1 if any(s.failures for s in sidecars) else 0


def report(sidecars: list[Sidecar], args: argparse.Namespace) -> None:
    def median(values: list[float]) -> float:
        return statistics.median(values) if values else 0.0

    print(f"## One sidecar, 1 and 2 workers: h2load -c{CLIENTS} -m{STREAMS} h2c in, "
          f"HTTP/2 + mTLS to nghttpd\n")
    print(f"{args.rounds} interleaved rounds of {args.duration:g} s; medians. "
          f"{os.cpu_count()} cores on this machine; 'cores' is CPU seconds over wall seconds.\n")
    print("| workers | req/s | CPU µs/req (sidecar) | cores: sidecar | cores: h2load | "
          "cores: nghttpd | each worker's part of the sidecar's CPU | failed |")
    print("|---|---|---|---|---|---|---|---|")
    for s in sidecars:
        parts = [median([split[i] for split in s.split]) for i in range(len(s.split[0]))] \
            if s.split and all(len(split) == len(s.split[0]) for split in s.split) else []
        print(f"| {s.workers} | {median(s.rates):,.0f} | "
              f"{median(s.cpu_per_request) * 1e6:.0f} | {median(s.cores['sidecar']):.2f} | "
              f"{median(s.cores['h2load']):.2f} | {median(s.cores['nghttpd']):.2f} | "
              f"{' / '.join(f'{part:.0%}' for part in parts)} | {s.failures} |")
    one, two = sidecars
    scaling = median(two.rates) / median(one.rates) if median(one.rates) else 0.0
    print(f"\nreq/s, 2 workers / 1: **{scaling:.2f}**")


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark: ``mesh/http2`` against the bare ``h2`` loop, Hypercorn and ``nghttpd`` (C).

Each contestant serves a 100-byte response; ``h2load`` drives them in interleaved rounds (so
the machine's noise falls on all alike) and the median req/s is reported with two ratios, and
beside it the server's CPU time per request (from ``/proc``), which a busy machine disturbs far
less than wall-clock rates:

- mesh / bare: what the ``mesh/http2`` abstraction costs over the pure-Python ceiling
  (target: at least 0.90);
- mesh / Hypercorn: against a server people run, also pure Python on ``h2`` (0.18, uvloop
  worker, its 1,000-requests-per-connection cap lifted: :mod:`bench.hypercorn_peer`);
- mesh / nghttpd: where pure Python stands against C.

    python -m bench.http2_server                 # h2c, 50,000 requests x 3 rounds
    python -m bench.http2_server --tls           # h2 over TLS 1.3 (server certificate only:
                                                 # h2load cannot present a client certificate)
    python -m bench.http2_server --requests 2000 --rounds 1   # the shortened form tests run
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import tree_cpu_seconds

BODY = b"x" * 100
ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Contestant:
    name: str
    command: list[str]
    port: int
    results: list[float] = field(default_factory=list)
    cpu_per_request: list[float] = field(default_factory=list)  # seconds
    failures: int = 0
    process: subprocess.Popen[bytes] | None = None
    env: dict[str, str] = field(default_factory=dict)  # set for it alone


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_listening(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def self_signed(directory: Path) -> tuple[Path, Path]:
    key, cert = directory / "bench.key", directory / "bench.crt"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-nodes", "-subj", "/CN=localhost", "-days", "1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key),
                    "-out", str(cert)], check=True, capture_output=True)
    return cert, key


def h2load(port: int, requests: int, tls: bool) -> tuple[float, int]:
    """Run h2load (-c10 -m10); return (req/s, requests that did not succeed)."""
    scheme = "https" if tls else "http"
    out = subprocess.run(["h2load", "-n", str(requests), "-c", "10", "-m", "10",
                          f"{scheme}://127.0.0.1:{port}/index.html"],
                         capture_output=True, text=True, timeout=600).stdout
    rate = re.search(r"finished in [\d.]+m?s, ([\d.]+) req/s", out)
    done = re.search(r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded", out)
    if rate is None or done is None:
        raise RuntimeError(f"could not read h2load's output:\n{out}")
    return float(rate.group(1)), requests - int(done.group(1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--requests", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tls", action="store_true")
    parser.add_argument("--engines", default="jh2,h2", type=lambda text: text.split(","),
                        help="HTTP/2 engines to run mesh/http2 on, the first as \"mesh/http2\" "
                             "(default jh2,h2; see mesh/http2/engine.py)")
    args = parser.parse_args(argv)
    for tool in ("h2load", "nghttpd", "openssl"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} not found: apt-get install nghttp2-client nghttp2-server openssl")

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "index.html").write_bytes(BODY)
        tls_args: list[str] = []
        nghttpd_tls: list[str] = ["--no-tls"]
        hypercorn_tls: list[str] = []
        if args.tls:
            cert, key = self_signed(root)
            tls_args = ["--tls-server-only", str(cert), str(key)]
            nghttpd_tls = [str(key), str(cert)]
            hypercorn_tls = ["--certfile", str(cert), "--keyfile", str(key)]
        python = [sys.executable, "-m"]
        ports = [free_port() for _ in range(3 + len(args.engines))]
        contestants = [
            Contestant("nghttpd (C)", ["nghttpd", "-d", str(root), *nghttpd_tls[:1],
                                       str(ports[0]), *nghttpd_tls[1:]], ports[0]),
            Contestant("bare h2 loop", [*python, "bench.bare_server", "--port", str(ports[1]),
                                        *tls_args], ports[1]),
            Contestant("hypercorn", [*python, "hypercorn", "--config",
                                     "python:bench.hypercorn_peer", "--worker-class", "uvloop",
                                     "--bind", f"127.0.0.1:{ports[2]}", *hypercorn_tls,
                                     "bench.hypercorn_peer:app"], ports[2]),
        ]
        for engine, port in zip(args.engines, ports[3:], strict=True):
            name = "mesh/http2" if engine == args.engines[0] else f"mesh/http2 ({engine})"
            contestants.append(Contestant(name, [*python, "bench.mesh_server", "--port",
                                                 str(port), *tls_args], port,
                                          env={"MESH_HTTP2_ENGINE": engine}))
        if args.tls:  # nghttpd takes <PORT> <KEY> <CERT> with TLS, --no-tls <PORT> without
            contestants[0].command = ["nghttpd", "-d", str(root), str(ports[0]), *nghttpd_tls]
        try:
            root_path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH"))
                                        if p)
            for c in contestants:
                c.process = subprocess.Popen(c.command, stdout=subprocess.DEVNULL,
                                             env={**os.environ, "PYTHONPATH": root_path,
                                                  **c.env})
            for c in contestants:
                wait_listening(c.port)
                h2load(c.port, min(2000, args.requests), args.tls)  # warm up
            for _ in range(args.rounds):
                for c in contestants:
                    assert c.process is not None
                    before = tree_cpu_seconds(c.process.pid)
                    rate, failed = h2load(c.port, args.requests, args.tls)
                    c.cpu_per_request.append((tree_cpu_seconds(c.process.pid) - before)
                                             / args.requests)
                    c.results.append(rate)
                    c.failures += failed
        finally:
            for c in contestants:
                if c.process is not None:
                    c.process.terminate()
                    c.process.wait(10)

    median = {c.name: statistics.median(c.results) for c in contestants}
    cpu = {c.name: statistics.median(c.cpu_per_request) for c in contestants}
    mode = "h2 over TLS 1.3" if args.tls else "h2c"
    print(f"# HTTP/2 server, {mode}: h2load -n {args.requests} -c10 -m10, "
          f"{args.rounds} round(s), median req/s")
    print(f"{'server':<16}{'req/s':>12}{'failed':>9}{'CPU us/req':>12}   rounds")
    for c in contestants:
        rounds = " ".join(f"{r:.0f}" for r in c.results)
        print(f"{c.name:<16}{median[c.name]:>12.0f}{c.failures:>9}{cpu[c.name] * 1e6:>12.1f}"
              f"   {rounds}")
    mesh, bare, ref = median["mesh/http2"], median["bare h2 loop"], median["nghttpd (C)"]
    print(f"mesh/http2 / bare h2 loop = {mesh / bare:.3f}   (target >= 0.90)")
    print(f"bare h2 loop / nghttpd    = {bare / ref:.3f}")
    print(f"mesh/http2 / nghttpd      = {mesh / ref:.3f}")
    print(f"mesh/http2 / hypercorn    = {mesh / median['hypercorn']:.3f}   (target >= 4)")
    for c in contestants:
        if c.name.startswith("mesh/http2 ("):
            print(f"{c.name} / mesh/http2 = {median[c.name] / mesh:.3f}; "
                  f"{c.name} / hypercorn = {median[c.name] / median['hypercorn']:.3f}; by CPU "
                  f"per request: {cpu['mesh/http2'] / cpu[c.name]:.3f}")
    print(f"by CPU per request: mesh/http2 / bare h2 loop = "
          f"{cpu['bare h2 loop'] / cpu['mesh/http2']:.3f}")
    return 1 if any(c.failures for c in contestants) else 0


if __name__ == "__main__":
    sys.exit(main())

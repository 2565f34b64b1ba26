"""Benchmark: how fast a registry change reaches every subscribed sidecar.

The control plane runs in its own process; N discovery clients (real ``sidecar.discovery``
clients, each on its own mTLS connection) are spread over a few worker processes. The driver
then makes C registry changes one after another — a second instance of a registered service
comes or goes, so each change is one ClusterLoadAssignment push per client — and, for each,
reads the control plane's own measurement: the time from the change to the last client's ACK
of it. Reported: p50 / p99 / max of that, and the control plane's CPU per change and per push
(its whole process: discovery, TLS, HTTP/2, and the status polls of the driver).

    python -m bench.discovery_fanout                       # 200 clients, 50 changes
    python -m bench.discovery_fanout --clients 12 --changes 4   # the shortened form tests run

Target (issue): p99 under 100 ms for 200 clients on a 2-core machine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import timedelta
from pathlib import Path
from typing import Any

from bench.http2_server import free_port, wait_listening
from certs.pki import create_ca, issue_workload, write_ca, write_workload
from mesh.grpc import Channel
from mesh.identity import SpiffeId
from mesh.loop import run
from mesh.proto.config_pb2 import Endpoint
from mesh.proto.discovery_pb2 import Node
from mesh.proto.registry_pb2 import (
    DeregisterRequest,
    DeregisterResponse,
    RegisterRequest,
    RegisterResponse,
)
from mesh.tls import client_context
from sidecar.discovery import DiscoveryClient

TRUST_DOMAIN = "cluster.local"
POLL_INTERVAL = 0.01  # seconds between the driver's looks at the control plane's status


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def api_status(api: str, pki: Path) -> dict[str, Any]:
    """The control plane's /status, asked with the operator token it made in ``pki``."""
    token = (pki / "operator.token").read_text().strip()
    request = urllib.request.Request(f"http://{api}/status?streams=0",
                                     headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=5) as response:
        status: dict[str, Any] = json.loads(response.read())
        return status


def workload(pki: Path, service: str) -> tuple[Path, Path]:
    from certs.pki import load_ca

    identity = SpiffeId(trust_domain=TRUST_DOMAIN, namespace="bench", service=service)
    return write_workload(issue_workload(load_ca(pki), identity, timedelta(hours=1)),
                          pki / service)


async def worker(port: int, pki: Path, clients: int, name: str) -> None:
    """Run ``clients`` discovery clients until stdin closes; print 'ready' once all synced."""
    cert, key = pki / "subscriber" / "subscriber.crt", pki / "subscriber" / "subscriber.key"
    tls = client_context(cert, key, pki / "ca.crt")
    subscribers = []
    for i in range(clients):
        channel = Channel("127.0.0.1", port, ssl=tls, authority="controlplane")
        # Every client proves the same identity: a node may claim no other (it would be cut off).
        client = DiscoveryClient(channel, Node(id=f"{name}-{i}", service="subscriber"),
                                 lambda *_: None, backoff=lambda: itertools.repeat(0.5))
        subscribers.append((client, asyncio.create_task(client.run())))
    await asyncio.gather(*(c.synced.wait() for c, _ in subscribers))
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    for _, task in subscribers:
        task.cancel()


async def converged(api: str, pki: Path, before: int, what: str) -> float:
    """Wait until the control plane counts a convergence after ``before``; its seconds."""
    deadline = time.monotonic() + 10
    while True:
        status = api_status(api, pki)["convergence"]
        if status["count"] > before and status["unacked"] == 0:
            return float(status["last_change_to_last_ack_ms"]) / 1000
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not converge in 10 s: {status}")
        # Not faster: every poll costs the control plane CPU that the push needs.
        await asyncio.sleep(POLL_INTERVAL)


async def drive(port: int, api: str, pki: Path, changes: int,
                pids: list[int]) -> tuple[list[float], list[float]]:
    """Make ``changes`` registry changes; the convergence time of each, and the CPU seconds
    each process of ``pids`` spent over them."""
    cert, key = workload(pki, "churn")
    channel = Channel("127.0.0.1", port, ssl=client_context(cert, key, pki / "ca.crt"),
                      authority="controlplane")
    register = channel.unary_unary("/mesh.v1.Registry/Register", RegisterResponse.FromString)
    deregister = channel.unary_unary("/mesh.v1.Registry/Deregister",
                                     DeregisterResponse.FromString)
    # A first instance that stays, so that the service (and its cluster) exists throughout
    # and each change is what a deployment makes: one endpoint more or less, one
    # ClusterLoadAssignment push per client.
    before = api_status(api, pki)["convergence"]["count"]
    await register(RegisterRequest(service="churn",
                                   endpoint=Endpoint(address="127.0.0.1", port=19999)))
    await converged(api, pki, before, "the first registration")
    results = []
    instance = ""
    cpu_before = [cpu_seconds(pid) for pid in pids]
    for change in range(changes):
        before = api_status(api, pki)["convergence"]["count"]
        if change % 2 == 0:
            response = await register(RegisterRequest(
                service="churn", endpoint=Endpoint(address="127.0.0.1", port=20000 + change)))
            instance = response.instance
        else:
            await deregister(DeregisterRequest(instance=instance))
        results.append(await converged(api, pki, before, f"change {change}"))
        await asyncio.sleep(0.02)  # let the machine settle between changes
    cpu = [cpu_seconds(pid) - before for pid, before in zip(pids, cpu_before, strict=True)]
    await channel.close()
    return results, cpu


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--changes", type=int, default=50)
    parser.add_argument("--workers", type=int, default=2)
    sub = parser.add_subparsers(dest="role")
    w = sub.add_parser("worker")
    w.add_argument("--port", type=int, required=True)
    w.add_argument("--pki", type=Path, required=True)
    w.add_argument("--count", type=int, required=True)
    w.add_argument("--name", required=True)
    args = parser.parse_args(argv)
    if args.role == "worker":
        run(worker(args.port, args.pki, args.count, args.name))
        return 0

    with tempfile.TemporaryDirectory() as tmp:
        pki = Path(tmp) / "pki"
        write_ca(create_ca(trust_domain=TRUST_DOMAIN), pki)
        workload(pki, "subscriber")
        port, api_port = free_port(), free_port()
        api = f"127.0.0.1:{api_port}"
        cp = subprocess.Popen([sys.executable, "-m", "controlplane", "--pki-dir", str(pki),
                               "--listen", f"127.0.0.1:{port}", "--api", api,
                               "--lease-ttl", "600", "--log-level", "WARNING"],
                              stdout=subprocess.DEVNULL)
        workers: list[subprocess.Popen[str]] = []
        try:
            wait_listening(port)
            wait_listening(api_port)
            share = [args.clients // args.workers + (1 if i < args.clients % args.workers else 0)
                     for i in range(args.workers)]
            for i, count in enumerate(share):
                workers.append(subprocess.Popen(
                    [sys.executable, "-m", "bench.discovery_fanout", "worker", "--port",
                     str(port), "--pki", str(pki), "--count", str(count), "--name", f"w{i}"],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
            for process in workers:
                assert process.stdout is not None
                if process.stdout.readline().strip() != "ready":
                    raise RuntimeError("a worker failed to subscribe")
            subscribers = api_status(api, pki)["subscribers"]
            convergence, (cpu, *clients_cpu) = run(drive(
                port, api, pki, args.changes, [cp.pid, *(w.pid for w in workers)]))
        finally:
            for process in workers:
                with contextlib.suppress(OSError):
                    assert process.stdin is not None
                    process.stdin.close()
            children: list[subprocess.Popen[Any]] = [*workers, cp]
            for child in children:
                child.terminate()
                child.wait(10)

    ms = sorted(c * 1000 for c in convergence)
    p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
    print(f"# discovery fan-out: {subscribers} subscribed clients ({args.workers} processes), "
          f"{args.changes} registry changes")
    print(f"change -> last ACK: p50 {statistics.median(ms):.1f} ms, p99 {p99:.1f} ms, "
          f"max {ms[-1]:.1f} ms   (target p99 < 100 ms)")
    print(f"control plane CPU: {cpu / args.changes * 1000:.1f} ms per change, "
          f"{cpu / (args.changes * subscribers) * 1e6:.0f} µs per push")
    print(f"clients' CPU: {sum(clients_cpu) / args.changes * 1000:.1f} ms per change "
          f"(all {args.workers} processes)")
    return 0 if subscribers == args.clients else 1


if __name__ == "__main__":
    sys.exit(main())

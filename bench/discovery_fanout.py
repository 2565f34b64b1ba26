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
    python -m bench.discovery_fanout --grpc-clients 200    # and 200 proxyless grpcio clients

With ``--grpc-clients N``, N unmodified grpcio xDS clients (:mod:`bench.grpc_xds_clients`, one
process, one ADS stream per channel target) subscribe too, through Envoy's xDS v3 from the same
control plane: each change is then also one ClusterLoadAssignment per grpcio client, and the
time to its last ACK (gRPC ACKs a resource once it has validated and taken it) is reported per
dialect, side by side. Their targets ``xds:///churn-<i>`` all reach the churn cluster through
a ``*`` virtual host.

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
from meshctl.proxyless import bootstrap_config
from sidecar.discovery import DiscoveryClient
from sidecar.identity import CertificateFiles

TRUST_DOMAIN = "cluster.local"
POLL_INTERVAL = 0.01  # seconds between the driver's looks at the control plane's status
DIALECTS = ("mesh.v1", "xds.v3")
# grpcio clients call xds:///churn-<i>: every name reaches the churn cluster (the instances
# spiffe://…/ns/bench/sa/churn registers) through one wildcard virtual host.
GRPC_POLICY = """\
clusters:
- {name: churn, namespace: bench}
routes:
- name: churn
  virtual_hosts:
  - name: any
    domains: ["*"]
    routes:
    - match: {prefix: /}
      route: {cluster: churn}
"""


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def api_status(api: str, pki: Path, *, streams: bool = False) -> dict[str, Any]:
    """The control plane's /status, asked with the operator token it made in ``pki``."""
    token = (pki / "operator.token").read_text().strip()
    request = urllib.request.Request(f"http://{api}/status{'' if streams else '?streams=0'}",
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


def convergences(api: str, pki: Path) -> dict[str, dict[str, Any]]:
    """Each dialect's convergence record from the control plane's status."""
    status = api_status(api, pki)
    return {"mesh.v1": status["convergence"], "xds.v3": status["xds"]["convergence"]}


async def converged(api: str, pki: Path, before: dict[str, int], what: str) -> dict[str, float]:
    """Wait until each dialect of ``before`` counts a convergence after its count there; the
    seconds from the change to its last ACK, by dialect."""
    deadline = time.monotonic() + 10
    while True:
        status = convergences(api, pki)
        if all(status[d]["count"] > count and status[d]["unacked"] == 0
               for d, count in before.items()):
            return {d: float(status[d]["last_change_to_last_ack_ms"]) / 1000 for d in before}
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not converge in 10 s: {status}")
        # Not faster: every poll costs the control plane CPU that the push needs.
        await asyncio.sleep(POLL_INTERVAL)


async def drive(port: int, api: str, pki: Path, changes: int, pids: list[int],
                dialects: list[str]) -> tuple[dict[str, list[float]], list[float]]:
    """Make ``changes`` registry changes; the convergence time of each by dialect, and the
    CPU seconds each process of ``pids`` spent over them."""
    cert, key = workload(pki, "churn")
    channel = Channel("127.0.0.1", port, ssl=client_context(cert, key, pki / "ca.crt"),
                      authority="controlplane")
    register = channel.unary_unary("/mesh.v1.Registry/Register", RegisterResponse.FromString)
    deregister = channel.unary_unary("/mesh.v1.Registry/Deregister",
                                     DeregisterResponse.FromString)

    def counts() -> dict[str, int]:
        status = convergences(api, pki)
        return {d: int(status[d]["count"]) for d in dialects}

    # A first instance that stays, so that the service (and its cluster) exists throughout
    # and each change is what a deployment makes: one endpoint more or less, one
    # ClusterLoadAssignment push per client.
    before = counts()
    await register(RegisterRequest(service="churn",
                                   endpoint=Endpoint(address="127.0.0.1", port=19999)))
    await converged(api, pki, before, "the first registration")
    if "xds.v3" in dialects:  # grpcio asks for the endpoints once it holds the cluster
        await converged(api, pki, {"xds.v3": 0}, "the grpcio clients' endpoint subscriptions")
    results: dict[str, list[float]] = {d: [] for d in dialects}
    instance = ""
    cpu_before = [cpu_seconds(pid) for pid in pids]
    for change in range(changes):
        before = counts()
        if change % 2 == 0:
            response = await register(RegisterRequest(
                service="churn", endpoint=Endpoint(address="127.0.0.1", port=20000 + change)))
            instance = response.instance
        else:
            await deregister(DeregisterRequest(instance=instance))
        for dialect, seconds in (await converged(api, pki, before, f"change {change}")).items():
            results[dialect].append(seconds)
        await asyncio.sleep(0.02)  # let the machine settle between changes
    cpu = [cpu_seconds(pid) - before for pid, before in zip(pids, cpu_before, strict=True)]
    await channel.close()
    return results, cpu


def grpc_bootstrap(pki: Path, control_plane: str) -> Path:
    """A bootstrap for the grpcio clients, with the subscribers' certificate."""
    folder = pki / "subscriber"
    files = CertificateFiles(folder / "subscriber.crt", folder / "subscriber.key",
                             pki / "ca.crt")
    path = pki / "bootstrap.json"
    path.write_text(json.dumps(bootstrap_config(
        service="subscriber", namespace="bench", zone="", control_plane=control_plane,
        files=files, node="bench/subscriber@grpcio")))
    return path


def percentiles(seconds: list[float]) -> str:
    ms = sorted(s * 1000 for s in seconds)
    p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
    return f"p50 {statistics.median(ms):.1f} ms, p99 {p99:.1f} ms, max {ms[-1]:.1f} ms"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--changes", type=int, default=50)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--grpc-clients", type=int, default=0,
                        help="proxyless grpcio xDS clients subscribing beside ours")
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
        policy = Path(tmp) / "policy.yaml"
        policy.write_text(GRPC_POLICY)
        cp = subprocess.Popen([sys.executable, "-m", "controlplane", "--pki-dir", str(pki),
                               "--listen", f"127.0.0.1:{port}", "--api", api,
                               *(["--policy", str(policy)] if args.grpc_clients else []),
                               "--lease-ttl", "600", "--log-level", "WARNING"],
                              stdout=subprocess.DEVNULL)
        workers: list[subprocess.Popen[str]] = []
        dialects = [d for d, n in zip(DIALECTS, (args.clients, args.grpc_clients),
                                      strict=True) if n]
        try:
            wait_listening(port)
            wait_listening(api_port)
            share = [args.clients // args.workers + (1 if i < args.clients % args.workers else 0)
                     for i in range(args.workers)]
            for i, count in enumerate(share):
                if not count:
                    continue
                workers.append(subprocess.Popen(
                    [sys.executable, "-m", "bench.discovery_fanout", "worker", "--port",
                     str(port), "--pki", str(pki), "--count", str(count), "--name", f"w{i}"],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
            if args.grpc_clients:
                workers.append(subprocess.Popen(
                    [sys.executable, "-m", "bench.grpc_xds_clients", "--count",
                     str(args.grpc_clients)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                    text=True, env={**os.environ, "GRPC_XDS_BOOTSTRAP": str(
                        grpc_bootstrap(pki, f"127.0.0.1:{port}"))}))
            for process in workers:
                assert process.stdout is not None
                if process.stdout.readline().strip() != "ready":
                    raise RuntimeError("a worker failed to subscribe")
            subscribed = run(subscribers(api, pki, args.clients, args.grpc_clients))
            convergence, (cpu, *clients_cpu) = run(drive(
                port, api, pki, args.changes, [cp.pid, *(w.pid for w in workers)], dialects))
        finally:
            for process in workers:
                with contextlib.suppress(OSError):
                    assert process.stdin is not None
                    process.stdin.close()
            children: list[subprocess.Popen[Any]] = [*workers, cp]
            for child in children:
                child.terminate()
                child.wait(10)

    grpc_cpu = clients_cpu.pop() if args.grpc_clients else 0.0
    pushes = args.changes * sum(subscribed.values())
    print(f"# discovery fan-out: {subscribed['mesh.v1']} subscribed clients ({len(clients_cpu)} "
          f"processes), {subscribed['xds.v3']} grpcio xDS clients, "
          f"{args.changes} registry changes")
    for dialect, label in (("mesh.v1", "mesh.v1 sidecar clients"),
                           ("xds.v3", "xds.v3 grpcio clients")):
        if dialect in convergence:
            print(f"change -> last ACK, {label}: {percentiles(convergence[dialect])}"
                  f"   (target p99 < 100 ms)")
    print(f"control plane CPU: {cpu / args.changes * 1000:.1f} ms per change, "
          f"{cpu / pushes * 1e6:.0f} µs per push")
    if clients_cpu:
        print(f"clients' CPU: {sum(clients_cpu) / args.changes * 1000:.1f} ms per change "
              f"(all {len(clients_cpu)} processes)")
    if args.grpc_clients:
        print(f"grpcio clients' CPU: {grpc_cpu / args.changes * 1000:.1f} ms per change "
              f"(one process)")
    return 0 if subscribed == {"mesh.v1": args.clients, "xds.v3": args.grpc_clients} else 1


async def subscribers(api: str, pki: Path, clients: int, grpc_clients: int) -> dict[str, int]:
    """Streams by dialect once the expected numbers are there (or after 20 s)."""
    deadline = time.monotonic() + 20
    while True:
        streams = api_status(api, pki, streams=True)["streams"]
        found = {d: sum(1 for s in streams if s["protocol"] == d) for d in DIALECTS}
        if found == {"mesh.v1": clients, "xds.v3": grpc_clients} or time.monotonic() > deadline:
            return found
        await asyncio.sleep(0.1)


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark: how fast a registry change reaches every subscribed sidecar, on one control-plane
replica or on several that share their state in etcd.

N discovery clients (real ``sidecar.discovery`` clients, each on its own mTLS connection) run in
a few worker processes (:mod:`bench.discovery_clients`), dealt evenly over the replicas. The
driver makes C registry changes one after another at replica 1 — a second instance of a
registered service comes or goes, so each change is one ClusterLoadAssignment push per client
— and measures, for each, the time from the write being sent (the Register or Deregister call;
replica 1 answers once the store has it and its own copy holds it) until the last client at
*every* replica has ACKed it. Reported, one row per run: p50 / p99 / max of that; CPU per
change of the control planes (summed over the replicas: discovery, TLS, HTTP/2, following the
store, and the driver's status polls) and per push, of etcd (summed over its members; the part
it would have spent idle in as long — raft heartbeats — measured beforehand and shown), and of
the clients.

    python -m bench.discovery_fanout                       # 200 clients, 50 changes, 1 replica
    python -m bench.discovery_fanout --replicas 3          # and the same on 3 replicas and etcd
    python -m bench.discovery_fanout --clients 12 --changes 4   # the shortened form tests run
    python -m bench.discovery_fanout --grpc-clients 200    # and 200 proxyless grpcio clients

Replicas (:mod:`bench.control_plane_replicas`): with ``--replicas N`` (N > 1) the state is in
etcd (``--store etcd``, the default then; the in-memory store is one replica's alone). A
3-member etcd cluster starts on loopback addresses of its own (the first free block of
127.0.41.x; data in the run's temporary folder; raft as :mod:`demo_services.etcd_cluster` runs
it), and N ``python -m controlplane --store etcd://...`` share it and one PKI folder; a
registration at replica 1 reaches replicas 2..N through their etcd watch. A run on etcd is
preceded by the same run on one replica with the in-memory store, and both rows are printed
side by side with their ratio: what sharing the state costs.

Measuring across replicas: a replica's own convergence record (``/status``) starts from its
own view of the change — at replicas 2..N, when their watch delivered it — so it cannot say
how long the change took from the write. The driver uses one clock instead: CLOCK_MONOTONIC,
the machine's, which the control planes' clock also reads. It notes the time before it sends
the write; each replica's ``/status`` says when its last client ACKed (``last_ack_monotonic``),
polled every ``POLL_INTERVAL`` only to know when every replica has converged. A change's
figure is the latest of those ACKs minus the time the write was sent: no polling error. The
replicas' own records are printed below the table.

With ``--grpc-clients N``, N unmodified grpcio xDS clients subscribe too, through Envoy's xDS
v3 (:mod:`bench.proxyless_subscribers`: one process per replica, as a bootstrap names one
control plane): each change is then also one ClusterLoadAssignment per grpcio client, and the
time to its last ACK (gRPC ACKs a resource once it has validated and taken it) is reported per
dialect, side by side. The policy they need is given to replica 1 and reaches the others
through the store.

Target (issue): p99 under 100 ms for 200 clients on a 2-core machine, on one replica and on
three.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp

from bench import discovery_clients, proxyless_subscribers
from bench.common import cpu_seconds
from bench.control_plane_replicas import (
    Replica,
    operator_session,
    replicas_ready,
    start_etcd,
    start_replicas,
    status,
    stop,
    stream_counts,
)
from bench.discovery_clients import shares
from certs.pki import create_ca, issue_workload, load_ca, write_ca, write_workload
from controlplane.operator import TOKEN_FILE, OperatorToken
from mesh.grpc import Channel
from mesh.identity import SpiffeId
from mesh.loop import run
from mesh.proto.config_pb2 import Endpoint
from mesh.proto.registry_pb2 import (
    DeregisterRequest,
    DeregisterResponse,
    RegisterRequest,
    RegisterResponse,
)
from mesh.tls import client_context

TRUST_DOMAIN = "cluster.local"
# Seconds between the driver's looks at each replica's status: the error of every figure.
# Not shorter: every poll costs the control plane CPU that the push needs.
POLL_INTERVAL = 0.01
CONVERGE_TIMEOUT = 10.0  # seconds a change may take to reach every client
SETTLE = 0.02  # seconds between changes: let the machine settle
ETCD_IDLE_WINDOW = 2.0  # seconds etcd's CPU is measured with no change: its idling (raft ticks)
TARGET_P99 = 0.1  # seconds (the issue's)
# What the processes of each group are, in the report: (one, several)
UNITS = {"controlplane": ("replica", "replicas"), "etcd": ("member", "members"),
         "sidecars": ("process", "processes"), "grpcio": ("process", "processes")}
DIALECTS = ("mesh.v1", "xds.v3")


@dataclass(frozen=True, slots=True, kw_only=True)
class Setup:
    """What one run measures: how many replicas, and where their state lives."""

    replicas: int
    store: str  # "memory" or "etcd"

    def __post_init__(self) -> None:
        if self.store not in ("memory", "etcd"):
            raise ValueError(f"store {self.store!r}: want 'memory' or 'etcd'")
        if self.replicas < 1 or (self.store == "memory" and self.replicas > 1):
            raise ValueError(f"{self.replicas} replicas with the {self.store} store: replicas "
                             f"share their state only in etcd")

    @property
    def label(self) -> str:
        return f"{self.replicas} replica{'s' if self.replicas > 1 else ''}, {self.store} store"


@dataclass(frozen=True, slots=True, kw_only=True)
class Measured:
    """What the driver saw of the changes of one run."""

    # By dialect, one figure per change: seconds from the write being sent to replica 1 to
    # the last ACK at any replica (the common clock), ...
    latency: dict[str, list[float]]
    # ... and the longest of the replicas' own records (each from its own view of the change).
    own: dict[str, list[float]]
    cpu: dict[str, float]  # CPU seconds over the changes, by group of processes
    etcd_idle: float  # of etcd's, what it spends in as long with no change (raft's ticks)


@dataclass(frozen=True, slots=True, kw_only=True)
class Run:
    """One run: its setup, what subscribed, the processes counted, what was measured."""

    setup: Setup
    subscribed: dict[str, list[int]]  # streams by dialect, by replica
    processes: dict[str, int]  # by group: "controlplane", "etcd", "sidecars", "grpcio"
    measured: Measured


def workload(pki: Path, service: str) -> tuple[Path, Path]:
    identity = SpiffeId(trust_domain=TRUST_DOMAIN, namespace="bench", service=service)
    return write_workload(issue_workload(load_ca(pki), identity, timedelta(hours=1)),
                          pki / service)


def convergences(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each dialect's convergence record in a replica's status."""
    return {"mesh.v1": status["convergence"], "xds.v3": status["xds"]["convergence"]}


async def converged(session: aiohttp.ClientSession, replicas: list[Replica],
                    before: list[dict[str, int]], since: float, what: str,
                    ) -> tuple[dict[str, float], dict[str, float]]:
    """Poll every replica until each dialect of its ``before`` counts a convergence after the
    count there, with nothing unACKed.

    Returns, by dialect, the seconds from ``since`` (on the machine's monotonic clock) to the
    last replica's last ACK, and the longest of the replicas' own records of it.

    Raises:
        RuntimeError: a replica did not converge within ``CONVERGE_TIMEOUT``.
    """
    seen: dict[tuple[int, str], tuple[float, float]] = {}
    while waiting := [r for r, dialects in enumerate(before)
                      if any((r, d) not in seen for d in dialects)]:
        answers = await asyncio.gather(*(status(session, replicas[r]) for r in waiting))
        for r, answer in zip(waiting, answers, strict=True):
            for dialect, record in convergences(answer).items():
                if (dialect in before[r] and record["count"] > before[r][dialect]
                        and record["unacked"] == 0):
                    own = float(record["last_change_to_last_ack_ms"]) / 1000
                    acked = float(record["last_ack_monotonic"]) - since
                    seen.setdefault((r, dialect), (acked, own))
        if time.monotonic() - since > CONVERGE_TIMEOUT:
            raise RuntimeError(f"{what} did not converge in {CONVERGE_TIMEOUT:.0f} s at "
                               f"replicas {[r + 1 for r in waiting]}: {answers}")
        await asyncio.sleep(POLL_INTERVAL)
    latest: dict[str, float] = {}
    longest: dict[str, float] = {}
    for (_, dialect), (seconds, own) in seen.items():
        latest[dialect] = max(latest.get(dialect, 0.0), seconds)
        longest[dialect] = max(longest.get(dialect, 0.0), own)
    return latest, longest


async def drive(replicas: list[Replica], pki: Path, changes: int,
                subscribed: list[list[str]], pids: dict[str, list[int]]) -> Measured:
    """Make ``changes`` registry changes at replica 1 and measure each at every replica.

    Args:
        subscribed: the dialects each replica holds streams of (only those converge there).
        pids: the processes whose CPU is counted, by group.
    """
    cert, key = workload(pki, "churn")
    channel = Channel("127.0.0.1", replicas[0].grpc_port,
                      ssl=client_context(cert, key, pki / "ca.crt"), authority="controlplane")
    register = channel.unary_unary("/mesh.v1.Registry/Register", RegisterResponse.FromString)
    deregister = channel.unary_unary("/mesh.v1.Registry/Deregister",
                                     DeregisterResponse.FromString)

    def cpu() -> dict[str, float]:
        return {group: sum(map(cpu_seconds, members)) for group, members in pids.items()}

    async with operator_session(pki) as session:

        async def counts() -> list[dict[str, int]]:
            answers = await asyncio.gather(*(status(session, r) for r in replicas))
            return [{d: int(convergences(a)[d]["count"]) for d in dialects}
                    for a, dialects in zip(answers, subscribed, strict=True)]

        # A first instance that stays, so that the service (and its cluster) exists throughout
        # and each change is what a deployment makes: one endpoint more or less, one
        # ClusterLoadAssignment push per client.
        before = await counts()
        await register(RegisterRequest(service="churn",
                                       endpoint=Endpoint(address="127.0.0.1", port=19999)))
        await converged(session, replicas, before, time.monotonic(), "the first registration")
        # grpcio asks for the endpoints once it holds the cluster
        await converged(session, replicas, [{"xds.v3": 0} if "xds.v3" in d else {}
                                            for d in subscribed],
                        time.monotonic(), "the grpcio clients' endpoint subscriptions")
        etcd_idle = 0.0  # CPU seconds per second
        if "etcd" in pids:
            idle_from = cpu()["etcd"]
            await asyncio.sleep(ETCD_IDLE_WINDOW)
            etcd_idle = (cpu()["etcd"] - idle_from) / ETCD_IDLE_WINDOW

        latency: dict[str, list[float]] = {d: [] for d in DIALECTS
                                           if any(d in s for s in subscribed)}
        own: dict[str, list[float]] = {d: [] for d in latency}
        instance = ""
        cpu_before, started = cpu(), time.monotonic()
        for change in range(changes):
            before = await counts()
            sent = time.monotonic()
            if change % 2 == 0:
                response = await register(RegisterRequest(
                    service="churn", endpoint=Endpoint(address="127.0.0.1",
                                                       port=20000 + change)))
                instance = response.instance
            else:
                await deregister(DeregisterRequest(instance=instance))
            seconds, records = await converged(session, replicas, before, sent,
                                               f"change {change}")
            for dialect in latency:
                latency[dialect].append(seconds[dialect])
                own[dialect].append(records[dialect])
            await asyncio.sleep(SETTLE)
        spent = {group: after - cpu_before[group] for group, after in cpu().items()}
        elapsed = time.monotonic() - started
    await channel.close()
    return Measured(latency=latency, own=own, cpu=spent,
                    etcd_idle=etcd_idle * elapsed)


def measure(setup: Setup, *, clients: int, grpc_clients: int, changes: int,
            workers: int) -> Run:
    """One run: start etcd (if the setup wants it), the replicas and the clients, make the
    changes, and stop every process started, by PID, whatever happens."""
    expected = {"mesh.v1": shares(clients, setup.replicas),
                "xds.v3": shares(grpc_clients, setup.replicas)}
    started: list[subprocess.Popen[Any]] = []
    with tempfile.TemporaryDirectory(prefix="discovery-fanout-") as tmp:
        pki = Path(tmp) / "pki"
        write_ca(create_ca(trust_domain=TRUST_DOMAIN), pki)
        workload(pki, "subscriber")
        OperatorToken.load_or_create(pki / TOKEN_FILE)  # before the replicas, which share it
        policy = Path(tmp) / "policy.yaml"
        policy.write_text(proxyless_subscribers.POLICY)
        try:
            pids: dict[str, list[int]] = {}
            store = "memory"
            if setup.store == "etcd":
                store = start_etcd(Path(tmp) / "etcd", started).store
                pids["etcd"] = [p.pid for p in started]
            replicas = start_replicas(setup.replicas, pki, store, started,
                                      policy=policy if grpc_clients else None)
            pids["controlplane"] = [r.process.pid for r in replicas]
            run(replicas_ready(replicas, pki, policy=bool(grpc_clients)))
            pids["sidecars"] = discovery_clients.start(pki, [r.grpc_port for r in replicas],
                                                       clients, workers, started)
            pids["grpcio"] = proxyless_subscribers.start(pki, replicas, expected["xds.v3"],
                                                         started)
            for process in started:
                if process.pid in pids["sidecars"] + pids["grpcio"]:
                    assert process.stdout is not None
                    if process.stdout.readline().strip() != "ready":
                        raise RuntimeError("a client process failed to subscribe")
            subscribed = run(stream_counts(replicas, pki, expected))
            dialects = [[d for d in DIALECTS if expected[d][r]] for r in range(setup.replicas)]
            measured = run(drive(replicas, pki, changes, dialects, pids))
        finally:
            stop(started)
    return Run(setup=setup, subscribed=subscribed, measured=measured,
               processes={group: len(members) for group, members in pids.items()})


def percentiles(seconds: list[float]) -> tuple[float, float, float]:
    """p50, p99 and max, in milliseconds."""
    ms = sorted(s * 1000 for s in seconds)
    return statistics.median(ms), ms[min(len(ms) - 1, int(len(ms) * 0.99))], ms[-1]


def p99(seconds: list[float]) -> float:
    return percentiles(seconds)[1]


def ratio(a: float, b: float) -> str:
    return f"x{a / b:.2f}" if b else "n/a"


def plural(count: int, unit: tuple[str, str]) -> str:
    return f"{count} {unit[count != 1]}"


def spread(seconds: list[float]) -> str:
    return " / ".join(f"{ms:.1f}" for ms in percentiles(seconds)) + " ms"


def report(runs: list[Run], changes: int, load_before: float) -> None:
    """The runs side by side, one row each, then what the figures mean."""
    dialects = list(runs[0].measured.latency)
    groups = ["controlplane", "etcd", "sidecars", *(["grpcio"] if "xds.v3" in dialects else [])]
    print(f"# discovery fan-out: {sum(runs[0].subscribed['mesh.v1'])} sidecar clients, "
          f"{sum(runs[0].subscribed['xds.v3'])} grpcio xDS clients, {changes} registry "
          f"changes made at replica 1\n")
    header = ["run", "clients per replica",
              *(f"change -> last ACK, {d}: p50 / p99 / max" for d in dialects),
              "CPU per change: control plane", "per push", "etcd (idle part)",
              "sidecar clients", *(["grpcio clients"] if "grpcio" in groups else [])]
    print("| " + " | ".join(header) + " |")
    print("|---" * len(header) + "|")
    for r in runs:
        m = r.measured
        pushes = changes * sum(sum(streams) for streams in r.subscribed.values())
        cells = [r.setup.label, " + ".join("/".join(map(str, r.subscribed[d])) for d in dialects)
                 + (" grpcio" if "grpcio" in groups else "")]
        cells += [spread(m.latency[d]) for d in dialects]
        for group in groups:
            if group not in m.cpu:
                cells.append("-")
                continue
            what = [plural(r.processes[group], UNITS[group])]
            if group == "etcd":
                what.insert(0, f"{m.etcd_idle / changes * 1000:.1f} ms idle")
            cells.append(f"{m.cpu[group] / changes * 1000:.1f} ms ({', '.join(what)})")
            if group == "controlplane":
                cells.append(f"{m.cpu[group] / pushes * 1e6:.0f} µs")
        print("| " + " | ".join(cells) + " |")
    print()
    for r in runs:
        print(f"- {r.setup.label}, each replica's own record (from its own view of the change"
              + ("; at replicas 2..N from their etcd watch" if r.setup.replicas > 1 else "")
              + "), the longest per change: "
              + ", ".join(f"{d} {spread(r.measured.own[d])}" for d in dialects))
    if len(runs) > 1:
        base, other = runs[0].measured, runs[-1].measured
        ratios = [f"{d} p99 {ratio(p99(other.latency[d]), p99(base.latency[d]))}"
                  for d in dialects]
        ratios.append("control plane CPU per change "
                      + ratio(other.cpu["controlplane"], base.cpu["controlplane"]))
        print(f"- {runs[-1].setup.label} / {runs[0].setup.label}: {', '.join(ratios)}")
    print(f"- change -> last ACK: from the write sent to replica 1 to the last ACK at any "
          f"replica, on the machine's monotonic clock. Target: p99 < "
          f"{TARGET_P99 * 1000:.0f} ms.")
    print(f"- load average (1 min) before: {load_before:.2f}, after: "
          f"{os.getloadavg()[0]:.2f}, on {os.cpu_count()} CPUs")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--changes", type=int, default=50)
    parser.add_argument("--workers", type=int, default=2,
                        help="processes the sidecar clients run in")
    parser.add_argument("--grpc-clients", type=int, default=0,
                        help="proxyless grpcio xDS clients subscribing beside ours")
    parser.add_argument("--replicas", type=int, default=1,
                        help="control-plane replicas, the clients spread evenly over them")
    parser.add_argument("--store", choices=("memory", "etcd"),
                        help="where the replicas' state lives; default: memory for one "
                             "replica, etcd for more")
    args = parser.parse_args(argv)
    try:
        setup = Setup(replicas=args.replicas,
                      store=args.store or ("memory" if args.replicas == 1 else "etcd"))
    except ValueError as error:
        parser.error(str(error))
    load_before = os.getloadavg()[0]
    runs = [measure(s, clients=args.clients, grpc_clients=args.grpc_clients,
                    changes=args.changes, workers=args.workers)
            for s in dict.fromkeys((Setup(replicas=1, store="memory"), setup))]
    report(runs, args.changes, load_before)
    expected = {"mesh.v1": args.clients, "xds.v3": args.grpc_clients}
    return 0 if all({d: sum(n) for d, n in r.subscribed.items()} == expected
                    for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())

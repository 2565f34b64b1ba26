"""Control-plane replicas for a benchmark: an etcd cluster on loopback, N ``python -m
controlplane`` processes sharing it and one PKI folder, and their operator APIs.

The etcd members listen on addresses of their own (the first block of ``ETCD_NETWORK`` whose
ports are free, so that two runs on one machine do not meet), keep their data in the run's
folder and run raft as :mod:`demo_services.etcd_cluster` says. The replicas listen on free
ports of 127.0.0.1. Every process is stopped by its PID, the last started first: clients, then
the replicas (which revoke their lease in etcd as they stop), then etcd.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from bench.http2_server import free_port, wait_listening
from controlplane.operator import TOKEN_FILE
from demo_services import etcd_cluster
from demo_services.etcd_cluster import CLIENT_PORT, PEER_PORT, EtcdCluster

ETCD_MEMBERS = 3  # a majority survives the loss of one, as in production
ETCD_NETWORK = "127.0.41"  # the benchmarks' loopback addresses for etcd members
ETCD_START_TIMEOUT = 15.0  # seconds for the cluster to elect a leader (the machine is shared)
READY_TIMEOUT = 20.0  # seconds for every replica to follow the store
SUBSCRIBE_TIMEOUT = 20.0  # seconds for every client to subscribe (TLS handshakes, 2 cores)
LEASE_TTL = 600  # seconds: no registration of the run lapses while it runs
POLL = 0.1  # seconds between looks at the replicas while waiting for them


@dataclass(frozen=True, slots=True, kw_only=True)
class Replica:
    """One control-plane process, on 127.0.0.1."""

    grpc_port: int
    api_port: int  # its operator API
    process: subprocess.Popen[bytes]

    @property
    def grpc(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def api(self) -> str:
        return f"127.0.0.1:{self.api_port}"


def etcd_hosts(members: int) -> dict[str, str]:
    """A name and loopback address for each member: the first block of ``ETCD_NETWORK`` whose
    client and peer ports are free (another run may hold the one before it).

    Raises:
        RuntimeError: every block is taken.
    """
    for first in range(1, 256 - members, members):
        hosts = [f"{ETCD_NETWORK}.{first + i}" for i in range(members)]
        if all(_bindable(host, port) for host in hosts for port in (CLIENT_PORT, PEER_PORT)):
            return {f"etcd-{i + 1}": host for i, host in enumerate(hosts)}
    raise RuntimeError(f"no {members} free addresses for etcd in {ETCD_NETWORK}.x")


def _bindable(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as etcd listens
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def start_etcd(folder: Path, started: list[subprocess.Popen[Any]]) -> EtcdCluster:
    """Start an etcd cluster with its data in ``folder``, adding each member to ``started`` as
    it starts; return once every member is healthy.

    Raises:
        EtcdError: etcd is not installed, or a member did not become healthy.
    """
    folder.mkdir(exist_ok=True)
    cluster = EtcdCluster.in_folder(folder, etcd_hosts(ETCD_MEMBERS),
                                    token=f"bench-{folder.parent.name}")
    binary = etcd_cluster.etcd_binary()
    members = {}
    for member in cluster.members:
        members[member] = etcd_cluster.start(cluster, member, binary=binary,
                                             log=folder / f"{member.name}.log")
        started.append(members[member][1])
    etcd_cluster.wait_until_healthy(members, timeout=ETCD_START_TIMEOUT)
    return cluster


def start_replicas(count: int, pki: Path, store: str, started: list[subprocess.Popen[Any]],
                   *, policy: Path | None) -> list[Replica]:
    """Start ``count`` replicas sharing ``pki`` (its operator token made already) and
    ``store`` (``memory`` or ``etcd://...``), adding each to ``started``; the first is given
    ``policy``, which reaches the others through the store. Return once they all listen."""
    replicas = []
    for index in range(count):
        grpc_port, api_port = free_port(), free_port()
        process = subprocess.Popen(
            [sys.executable, "-m", "controlplane", "--pki-dir", str(pki),
             "--listen", f"127.0.0.1:{grpc_port}", "--api", f"127.0.0.1:{api_port}",
             "--store", store,
             *(["--policy", str(policy)] if policy is not None and index == 0 else []),
             "--lease-ttl", str(LEASE_TTL), "--log-level", "WARNING"],
            stdout=subprocess.DEVNULL)
        started.append(process)
        replicas.append(Replica(grpc_port=grpc_port, api_port=api_port, process=process))
    for replica in replicas:
        wait_listening(replica.grpc_port)
        wait_listening(replica.api_port)
    return replicas


def stop(started: list[subprocess.Popen[Any]]) -> None:
    """Stop every process of ``started`` by its PID, the last started first."""
    for process in reversed(started):
        if process.stdin is not None:  # the clients' signal to leave
            process.stdin.close()
        process.terminate()  # sends nothing once the process has been reaped
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def operator_session(pki: Path) -> aiohttp.ClientSession:
    """An HTTP session carrying the operator token the replicas share."""
    token = (pki / TOKEN_FILE).read_text().strip()
    return aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"})


async def status(session: aiohttp.ClientSession, replica: Replica, *,
                 streams: bool = False) -> dict[str, Any]:
    """A replica's ``/status`` (``streams``: with every discovery stream)."""
    query = "" if streams else "?streams=0"
    async with session.get(f"http://{replica.api}/status{query}") as answer:
        answer.raise_for_status()
        found: dict[str, Any] = await answer.json()
        return found


async def replicas_ready(replicas: list[Replica], pki: Path, *, policy: bool) -> None:
    """Return once every replica follows the store, at one policy version (``policy``: the
    one given to the first replica, not the empty one before it).

    Raises:
        RuntimeError: they did not within ``READY_TIMEOUT``; says what each reported.
    """
    deadline = time.monotonic() + READY_TIMEOUT
    async with operator_session(pki) as session:
        while True:
            answers = await asyncio.gather(*(status(session, r) for r in replicas))
            versions = {a["policy_version"] for a in answers}
            if all(a["replica"]["ready"] for a in answers) and len(versions) == 1 and (
                    not policy or 0 not in versions):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"the replicas did not all follow the store within "
                                   f"{READY_TIMEOUT:.0f} s: {[a['replica'] for a in answers]}")
            await asyncio.sleep(POLL)


async def stream_counts(replicas: list[Replica], pki: Path,
                        expected: dict[str, list[int]]) -> dict[str, list[int]]:
    """The discovery streams each replica holds, by protocol (``mesh.v1``, ``xds.v3``), once
    they are as many as ``expected`` says, or after ``SUBSCRIBE_TIMEOUT``."""
    deadline = time.monotonic() + SUBSCRIBE_TIMEOUT
    async with operator_session(pki) as session:
        while True:
            answers = await asyncio.gather(*(status(session, r, streams=True)
                                             for r in replicas))
            found = {protocol: [sum(1 for s in a["streams"] if s["protocol"] == protocol)
                                for a in answers] for protocol in expected}
            if found == expected or time.monotonic() > deadline:
                return found
            await asyncio.sleep(POLL)

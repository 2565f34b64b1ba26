"""An etcd cluster on this machine: each member's command line, its process, and its health.

A replicated control plane keeps its shared state in etcd (``python -m controlplane --store
etcd://HOST:PORT,...``). etcd is a raft cluster: a write is committed once a majority of the
members has it, so three members keep working when any one of them is lost, and a cluster that
loses its leader elects another after an *election timeout* with no *heartbeat* from it.

Here every member listens on its own loopback address, as it would on its own machine —
clients on :2379, the other members on :2380 — keeps its data in a folder of its own, and finds
the others through ``--initial-cluster``, the full list written on every member's command line
(static bootstrapping: no discovery service). Raft runs fast: a heartbeat every 50 ms and an
election after 250 ms of silence (etcd's defaults are 100 ms and 1 s, sized for a network
between machines); this also lowers the shortest lease etcd grants to one second.

This module says what to run and runs it; the caller keeps the processes: the local demo records
them with the rest of the mesh (``meshctl demo up --ha``, :mod:`demo_services.local_mesh`) and
the store's tests hold them for as long as a test needs them
(``tests/integration/controlplane/store/etcd_cluster.py``). A member is healthy once its
``/health`` answers ``true``: it is part of a cluster that has a leader.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from demo_services.processes import Record, spawn, tail

CLIENT_PORT = 2379  # etcd's own port numbers, as in every etcd guide
PEER_PORT = 2380
HEARTBEAT_MS = 50  # raft on one machine: fast (etcd's defaults: 100 ms, 1000 ms)
ELECTION_TIMEOUT_MS = 250
HEALTH_TIMEOUT = 1.0  # seconds one /health request may take
POLL = 0.1  # seconds between health checks while waiting


class EtcdError(Exception):
    """etcd is not installed, or a member did not become healthy; the message says which."""


@dataclass(frozen=True, slots=True, kw_only=True)
class EtcdMember:
    """One member: its name in the cluster, its address, and its data folder."""

    name: str  # "etcd-1"
    host: str  # a loopback address of its own
    data: Path

    @property
    def endpoint(self) -> str:
        """Where clients (the control plane's store) reach it."""
        return f"{self.host}:{CLIENT_PORT}"

    @property
    def client_url(self) -> str:
        return f"http://{self.endpoint}"

    @property
    def peer_url(self) -> str:
        """Where the other members reach it (raft's messages)."""
        return f"http://{self.host}:{PEER_PORT}"


@dataclass(frozen=True, slots=True, kw_only=True)
class EtcdCluster:
    """The members of one cluster, bootstrapped together."""

    members: tuple[EtcdMember, ...]
    token: str  # --initial-cluster-token: members of another cluster are never taken for ours

    def __post_init__(self) -> None:
        names = [m.name for m in self.members]
        if not names or len(set(names)) != len(names):
            raise ValueError(f"an etcd cluster wants one or more members with distinct names, "
                             f"got {names}")

    @classmethod
    def in_folder(cls, folder: Path, hosts: Mapping[str, str], *, token: str) -> EtcdCluster:
        """A member per ``name: host`` of ``hosts``, each keeping its data in ``folder/name``."""
        return cls(members=tuple(EtcdMember(name=name, host=host, data=folder / name)
                                 for name, host in hosts.items()), token=token)

    @property
    def endpoints(self) -> list[str]:
        return [member.endpoint for member in self.members]

    @property
    def store(self) -> str:
        """The control plane's ``--store`` for this cluster: every member, so that a replica
        whose member is gone moves on to the next."""
        return "etcd://" + ",".join(self.endpoints)

    def argv(self, member: EtcdMember, binary: str) -> list[str]:
        """The command line that runs ``member`` with ``binary`` (the ``etcd`` program)."""
        initial = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        return [binary, "--name", member.name, "--data-dir", str(member.data),
                "--listen-client-urls", member.client_url,
                "--advertise-client-urls", member.client_url,
                "--listen-peer-urls", member.peer_url,
                "--initial-advertise-peer-urls", member.peer_url,
                "--initial-cluster", initial, "--initial-cluster-token", self.token,
                "--heartbeat-interval", str(HEARTBEAT_MS),
                "--election-timeout", str(ELECTION_TIMEOUT_MS)]


def etcd_binary() -> str:
    """The ``etcd`` program.

    Raises:
        EtcdError: it is not installed (the message says which package has it).
    """
    binary = shutil.which("etcd", path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
    if binary is None:
        raise EtcdError("etcd is not installed (Debian: apt-get install etcd-server; "
                        "scripts/test installs it, scripts/demo does not)")
    return binary


def start(cluster: EtcdCluster, member: EtcdMember, *, binary: str,
          log: Path) -> tuple[Record, subprocess.Popen[bytes]]:
    """Start ``member`` in a session of its own, its output in ``log``; its record and handle.

    The cluster answers once a majority of its members runs: start them all, then wait.
    """
    return spawn(member.name, cluster.argv(member, binary), log=log, env=dict(os.environ))


def healthy(member: EtcdMember) -> bool:
    """True when ``member`` says it is healthy: in a cluster that has a leader."""
    with contextlib.suppress(OSError, ValueError), urllib.request.urlopen(
            f"{member.client_url}/health", timeout=HEALTH_TIMEOUT) as answer:
        return bool(json.load(answer).get("health") == "true")
    return False


def wait_until_healthy(members: Mapping[EtcdMember, tuple[Record, subprocess.Popen[bytes]]],
                       *, timeout: float) -> None:
    """Return once every member is healthy.

    Raises:
        EtcdError: a member exited, or was not healthy within ``timeout`` seconds; the message
            names it and ends with its log.
    """
    deadline = time.monotonic() + timeout
    for member, (record, process) in members.items():
        while not healthy(member):
            if process.poll() is not None:
                raise EtcdError(f"etcd {member.name} exited with status {process.returncode}; "
                                f"the end of {record.log}:\n{tail(record.log)}")
            if time.monotonic() > deadline:
                raise EtcdError(f"etcd {member.name} was not healthy within {timeout:.0f} s; "
                                f"the end of {record.log}:\n{tail(record.log)}")
            time.sleep(POLL)

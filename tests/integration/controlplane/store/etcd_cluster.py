"""Real etcd members on loopback for the store's tests: start, wait until they answer, kill.

Each member listens on its own address of 127.0.36.x (clients :2379, peers :2380), keeps its
data under the test's tmp_path and is stopped by its PID. Raft runs fast (heartbeat 50 ms,
election 250 ms), which also lowers etcd's smallest lease to 1 s.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

START_TIMEOUT = 15.0  # seconds for a cluster to answer (the machine is shared)
CLIENT_PORT = 2379
PEER_PORT = 2380


@dataclass
class Member:
    name: str
    host: str
    data: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{CLIENT_PORT}"

    @property
    def peer_url(self) -> str:
        return f"http://{self.host}:{PEER_PORT}"

    def kill(self) -> None:
        """SIGKILL: the member is gone at once, as when its machine is."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=5)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)


@dataclass
class Cluster:
    members: list[Member] = field(default_factory=list)

    @property
    def endpoints(self) -> list[str]:
        return [member.endpoint for member in self.members]

    def stop(self) -> None:
        for member in self.members:
            member.stop()


def start_cluster(work: Path, hosts: Sequence[str]) -> Cluster:
    """One etcd member per host, in one cluster; returns once every member answers."""
    etcd = shutil.which("etcd")
    if etcd is None:
        pytest.skip("etcd is not installed (Debian: etcd-server; scripts/env.sh installs it)")
    cluster = Cluster([Member(f"m{n}", host, work / f"m{n}") for n, host in enumerate(hosts)])
    initial = ",".join(f"{m.name}={m.peer_url}" for m in cluster.members)
    for member in cluster.members:
        client_url = f"http://{member.endpoint}"
        log = (work / f"{member.name}.log").open("wb")
        member.process = subprocess.Popen(
            [etcd, "--name", member.name, "--data-dir", str(member.data),
             "--listen-client-urls", client_url, "--advertise-client-urls", client_url,
             "--listen-peer-urls", member.peer_url,
             "--initial-advertise-peer-urls", member.peer_url,
             "--initial-cluster", initial, "--initial-cluster-token", f"store-test-{work.name}",
             "--heartbeat-interval", "50", "--election-timeout", "250"],
            stdout=log, stderr=subprocess.STDOUT)
        log.close()
    try:
        _until_ready(cluster)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _until_ready(cluster: Cluster) -> None:
    """Each member's /health says true once the cluster has a leader."""
    deadline = time.monotonic() + START_TIMEOUT
    for member in cluster.members:
        while True:
            assert member.process is not None and member.process.poll() is None, (
                f"etcd {member.name} exited; see {member.data}.log")
            url = f"http://{member.endpoint}/health"
            with contextlib.suppress(OSError, ValueError), urllib.request.urlopen(
                    url, timeout=1) as answer:
                if json.load(answer).get("health") == "true":
                    break
            if time.monotonic() > deadline:
                raise TimeoutError(f"etcd {member.name} was not healthy within "
                                   f"{START_TIMEOUT:.0f}s; see {member.data}.log")
            time.sleep(0.1)

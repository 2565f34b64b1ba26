"""Real etcd members on loopback for the store's tests: start, wait until they answer, kill.

Each member listens on its own address of 127.0.36.x (clients :2379, peers :2380), keeps its
data under the test's tmp_path and is stopped by its PID. What runs is the demo's
(:mod:`demo_services.etcd_cluster`): raft runs fast (heartbeat 50 ms, election 250 ms), which
also lowers etcd's smallest lease to 1 s.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from demo_services import etcd_cluster
from demo_services.etcd_cluster import EtcdCluster, EtcdError, EtcdMember

START_TIMEOUT = 15.0  # seconds for a cluster to answer (the machine is shared)


@dataclass
class Member:
    """A running member of a test's cluster."""

    spec: EtcdMember  # its name, address, data folder
    process: subprocess.Popen[bytes]

    @property
    def endpoint(self) -> str:
        return self.spec.endpoint

    def kill(self) -> None:
        """SIGKILL: the member is gone at once, as when its machine is."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=5)

    def stop(self) -> None:
        if self.process.poll() is not None:
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
    try:
        binary = etcd_cluster.etcd_binary()
    except EtcdError as error:
        pytest.skip(str(error))
    plan = EtcdCluster.in_folder(work, {f"m{n}": host for n, host in enumerate(hosts)},
                                 token=f"store-test-{work.name}")
    started = {member: etcd_cluster.start(plan, member, binary=binary,
                                          log=work / f"{member.name}.log")
               for member in plan.members}
    cluster = Cluster([Member(member, process) for member, (_, process) in started.items()])
    try:
        etcd_cluster.wait_until_healthy(started, timeout=START_TIMEOUT)
    except BaseException:
        cluster.stop()
        raise
    return cluster

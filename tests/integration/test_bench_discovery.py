"""The discovery fan-out benchmark runs in its shortened form: every client subscribes, every
change converges at every replica, and the figures are printed, one row per run."""

from __future__ import annotations

import re

import pytest

from bench import discovery_fanout
from demo_services.etcd_cluster import EtcdError, etcd_binary

LATENCY = r"([\d.]+) / ([\d.]+) / ([\d.]+) ms"  # p50 / p99 / max
CPU = r"[\d.]+ ms"


def latencies(row: str) -> int:
    """How many p50 / p99 / max a report row has, each checked to be in order."""
    found = re.findall(LATENCY, row)
    for figures in found:
        p50, p99, worst = (float(f) for f in figures)
        assert 0 < p50 <= p99 <= worst, row
    return len(found)


def row(out: str, label: str) -> str:
    """The report's row for the run ``label``."""
    found = re.search(rf"^\| {label} \|.*$", out, re.MULTILINE)
    assert found is not None, out
    return found.group()


def test_benchmark_short_run(capsys: pytest.CaptureFixture[str]) -> None:
    # Non-zero when a client failed to subscribe; an exception when a change never converged.
    assert discovery_fanout.main(["--clients", "12", "--changes", "4", "--workers", "2"]) == 0
    out = capsys.readouterr().out
    assert ("# discovery fan-out: 12 sidecar clients, 0 grpcio xDS clients, 4 registry "
            "changes made at replica 1") in out
    one = row(out, "1 replica, memory store")
    assert latencies(one) == 1
    assert re.search(rf"\| 12 \| {LATENCY} \| {CPU} \(1 replica\) \| \d+ µs \| - \| "
                     rf"{CPU} \(2 processes\) \|$", one), one
    assert "etcd store" not in out  # one replica in memory is the whole run


def test_benchmark_short_run_on_replicas_sharing_etcd(
        capsys: pytest.CaptureFixture[str]) -> None:
    # Two replicas on a 3-member etcd cluster, the clients spread over both, the same run on
    # one replica with the in-memory store beside it.
    try:
        etcd_binary()
    except EtcdError as error:
        pytest.skip(str(error))
    assert discovery_fanout.main(["--replicas", "2", "--clients", "6", "--changes", "3"]) == 0
    out = capsys.readouterr().out
    assert latencies(row(out, "1 replica, memory store")) == 1
    two = row(out, "2 replicas, etcd store")
    assert latencies(two) == 1
    assert re.search(rf"\| 3/3 \| {LATENCY} \| {CPU} \(2 replicas\) \| \d+ µs \| "
                     rf"{CPU} \({CPU} idle, 3 members\) \| {CPU} \(2 processes\) \|$", two), two
    assert re.search(r"^- 2 replicas, etcd store / 1 replica, memory store: mesh.v1 p99 "
                     r"x[\d.]+, control plane CPU per change (x[\d.]+|n/a)$", out,
                     re.MULTILINE), out
    assert re.search(r"^- load average \(1 min\) before: [\d.]+, after: [\d.]+", out,
                     re.MULTILINE), out


def test_benchmark_short_run_with_grpcio_xds_clients(capsys: pytest.CaptureFixture[str]) -> None:
    # Proxyless grpcio clients beside ours: every one subscribes over xDS v3 and ACKs each change.
    assert discovery_fanout.main(["--clients", "4", "--changes", "2", "--workers", "1",
                                  "--grpc-clients", "6"]) == 0
    out = capsys.readouterr().out
    assert ("# discovery fan-out: 4 sidecar clients, 6 grpcio xDS clients, 2 registry "
            "changes made at replica 1") in out
    one = row(out, "1 replica, memory store")
    assert latencies(one) == 2  # mesh.v1, then xds.v3
    assert re.search(rf"\| 4 \+ 6 grpcio \| .* \| {CPU} \(1 process\) \| {CPU} \(1 process\) \|$",
                     one), one


def test_replicas_share_their_state_only_in_etcd(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        discovery_fanout.main(["--replicas", "2", "--store", "memory"])
    assert "replicas share their state only in etcd" in capsys.readouterr().err

"""The discovery fan-out benchmark runs in its shortened form: every client subscribes, every
change converges, and the figures are printed."""

from __future__ import annotations

import re

import pytest

from bench import discovery_fanout


def test_benchmark_short_run(capsys: pytest.CaptureFixture[str]) -> None:
    # Non-zero when a client failed to subscribe; an exception when a change never converged.
    assert discovery_fanout.main(["--clients", "12", "--changes", "4", "--workers", "2"]) == 0
    out = capsys.readouterr().out
    assert ("# discovery fan-out: 12 subscribed clients (2 processes), 0 grpcio xDS clients, "
            "4 registry changes") in out
    figures = re.search(r"change -> last ACK, mesh.v1 sidecar clients: p50 ([\d.]+) ms, "
                        r"p99 ([\d.]+) ms, max ([\d.]+) ms", out)
    assert figures is not None, out
    p50, p99, worst = (float(f) for f in figures.groups())
    assert 0 < p50 <= p99 <= worst
    assert re.search(r"control plane CPU: [\d.]+ ms per change, \d+ µs per push", out), out
    assert re.search(r"clients' CPU: [\d.]+ ms per change \(all 2 processes\)", out), out


def test_benchmark_short_run_with_grpcio_xds_clients(capsys: pytest.CaptureFixture[str]) -> None:
    # Proxyless grpcio clients beside ours: every one subscribes over xDS v3 and ACKs each change.
    assert discovery_fanout.main(["--clients", "4", "--changes", "2", "--workers", "1",
                                  "--grpc-clients", "6"]) == 0
    out = capsys.readouterr().out
    assert ("# discovery fan-out: 4 subscribed clients (1 processes), 6 grpcio xDS clients, "
            "2 registry changes") in out
    for label in ("mesh.v1 sidecar clients", "xds.v3 grpcio clients"):
        figures = re.search(rf"change -> last ACK, {label}: p50 ([\d.]+) ms, p99 ([\d.]+) ms, "
                            r"max ([\d.]+) ms", out)
        assert figures is not None, out
        p50, p99, worst = (float(f) for f in figures.groups())
        assert 0 < p50 <= p99 <= worst
    assert re.search(r"grpcio clients' CPU: [\d.]+ ms per change \(one process\)", out), out

"""A registration accepted by one replica reaches a sidecar connected to another, and how soon.

This process acts as a "catalog" workload at 127.0.38.50 (a certificate of the mesh CA, its
source address bound) and registers and deregisters that endpoint through one replica, a
hundred changes in turn. A client sidecar subscribed to another replica holds the change once
that replica's watch of etcd brought it and its discovery stream pushed it. Each change is
timed from the moment the writing replica answered the call (the write is accepted: in etcd,
and in that replica's copy) to

- the moment the serving replica had the ACK of every stream it serves
  (``last_ack_monotonic`` in its ``/status``: ``time.monotonic``, one clock for every process
  on the machine, so no polling error), and
- the moment the sidecar's admin endpoint showed it (polled back to back: one poll late at
  most);

the test prints the median and the 99th percentile of both.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import pytest

from mesh.proto.config_pb2 import Endpoint
from mesh.proto.registry_pb2 import (
    DeregisterRequest,
    DeregisterResponse,
    RegisterRequest,
    RegisterResponse,
)
from tests.integration.ha.conftest import HaMesh, Replica, Workload, endpoints_seen

pytestmark = [pytest.mark.asyncio(loop_scope="package"), pytest.mark.interop,
              pytest.mark.timeout(120)]

CATALOG = ("127.0.38.50", 8443)
CHANGES = 100  # registrations and deregistrations, in turn
WITHIN = 1.0  # seconds: the bound on the 99th percentile
GIVE_UP = 5.0  # seconds a change may take before the test fails on it


async def converged(replica: Replica) -> dict[str, Any]:
    """How the last change reached the replica's sidecars (its ``/status``)."""
    code, data = await replica.api("GET", "/status?streams=0")
    assert code == 200, data
    convergence: dict[str, Any] = data["convergence"]
    return convergence


def percentile(delays: list[float], q: float) -> float:
    """The nearest-rank percentile ``q`` (0.5, 0.99) of ``delays``."""
    return sorted(delays)[math.ceil(q * len(delays)) - 1]


def summary(delays: list[float]) -> str:
    return (f"p50 {percentile(delays, 0.5) * 1000:.1f} ms, p99 "
            f"{percentile(delays, 0.99) * 1000:.1f} ms, max {max(delays) * 1000:.1f} ms")


async def test_a_registration_at_one_replica_reaches_a_sidecar_at_another_within_a_second(
        ha: HaMesh, tmp_path: Path) -> None:
    sidecar = ha.clients[0]
    found = await ha.where(sidecar)
    assert found is not None
    serving = found[0]
    writer = next(r for r in ha.replicas if r is not serving)
    channel = Workload.issue(ha.pki, "catalog", CATALOG[0], tmp_path).channel(writer)
    register = channel.unary_unary("/mesh.v1.Registry/Register", RegisterResponse.FromString)
    deregister = channel.unary_unary("/mesh.v1.Registry/Deregister",
                                     DeregisterResponse.FromString)
    seen: list[float] = []
    acked: list[float] = []
    instance = ""
    try:
        for change in range(CHANGES):
            count = (await converged(serving))["count"]
            if change % 2 == 0:
                response = await register(RegisterRequest(
                    service="catalog", endpoint=Endpoint(address=CATALOG[0], port=CATALOG[1])),
                    timeout=5.0)
                instance, wanted = response.instance, {"{}:{}".format(*CATALOG)}
            else:
                await deregister(DeregisterRequest(instance=instance), timeout=5.0)
                instance, wanted = "", set()
            accepted = time.monotonic()
            while await endpoints_seen(sidecar, "catalog") != wanted:
                assert time.monotonic() - accepted < GIVE_UP, \
                    f"change {change + 1} not at {sidecar.name} within {GIVE_UP}s"
            seen.append(time.monotonic() - accepted)
            while (convergence := await converged(serving))["count"] == count:
                assert time.monotonic() - accepted < GIVE_UP, \
                    f"change {change + 1} not ACKed at {serving.host} within {GIVE_UP}s"
            acked.append(convergence["last_ack_monotonic"] - accepted)
    finally:
        if instance:
            await deregister(DeregisterRequest(instance=instance), timeout=5.0)
        await channel.close()

    print(f"\n{CHANGES} changes accepted at {writer.host}; ACKed at {serving.host} by every "
          f"sidecar there after {summary(acked)}; at {sidecar.name} (admin endpoint) after "
          f"{summary(seen)}")
    assert percentile(acked, 0.99) < WITHIN and percentile(seen, 0.99) < WITHIN

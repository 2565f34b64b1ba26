"""Sidecars given two control-plane replicas move to the other when theirs is killed.

    h2load ──▶ C "shopper" 127.0.37.11 ══mTLS══▶ S "orders" 127.0.37.12 ──▶ aiohttp
                 └─── --control-plane 127.0.37.1:15012,127.0.37.2:15012 ───┘

The two replicas share the mesh CA and the policy but, with the in-memory store, not their
registries: a sidecar that moves registers again at the replica it moves to (NOT_FOUND there),
at once, and resubscribes with the versions it holds. The replica the client talks to is
killed while h2load runs through the pair: the client is subscribed to the other replica
within twice its backoff cap, the other replica knows the server's endpoint, and traffic after
the move is served as before. *During* the move a few calls can fail: when the client reaches
the other replica before the server has registered there, it is told the server has no
endpoint, for the moment it takes the server to register. The test prints how many; replicas
sharing their registry in etcd close that window (tests/integration/ha/).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
import yaml

from tests.control_plane_process import ControlPlaneProcess
from tests.integration.sidecar.apps import WebApp, start_web
from tests.integration.sidecar.conftest import (
    INBOUND,
    OUTBOUND,
    SidecarProcess,
    h2load,
    spawn_sidecar,
    stopping,
)

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.interop,
              pytest.mark.timeout(90)]

REPLICAS = ("127.0.37.1", "127.0.37.2")
GRPC_PORT = 15012
C_HOST, S_HOST = "127.0.37.11", "127.0.37.12"
ORDERS_APP = ("127.0.37.112", 8080)
POLICY = {"clusters": [{"name": "orders", "app_protocol": "HTTP1"}]}
BACKOFF_CAP = 5.0  # seconds: the sidecar's discovery backoff cap (sidecar/sidecar.py)


class Replica(ControlPlaneProcess):
    """One of the two control planes."""

    async def streams_from(self, host: str) -> list[dict[str, Any]]:
        """The discovery streams of the sidecar whose node names ``host`` (none when the
        replica does not answer)."""
        with contextlib.suppress(aiohttp.ClientError, OSError):
            status, data = await self.api("GET", "/status")
            if status == 200:
                return [s for s in data["streams"] if f"@{host}:" in s["node"]]
        return []


@dataclass
class Mesh:
    replicas: tuple[Replica, Replica]
    client: SidecarProcess
    server: SidecarProcess


async def joining_sidecar(replicas: tuple[Replica, Replica], name: str, host: str,
                          service: str, *args: str) -> SidecarProcess:
    """A sidecar given both replicas; its token is minted at the first (where it joins)."""
    first = replicas[0]
    return spawn_sidecar(name, host, first.work, "--service", service,
                         "--control-plane", ",".join(r.grpc for r in replicas),
                         "--bootstrap-ca", str(first.pki / "ca.crt"),
                         "--join-token-file", str(await first.join_token_file(service)),
                         "--cert-dir", str(first.work / name), *args)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def mesh(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Mesh]:
    work = tmp_path_factory.mktemp("failover")
    (work / "policy.yaml").write_text(yaml.safe_dump(POLICY))
    runner = await start_web(WebApp("orders"), *ORDERS_APP)
    replicas = (Replica(work, REPLICAS[0]), Replica(work, REPLICAS[1]))
    try:
        for replica in replicas:  # one after the other: the first makes the mesh CA
            await replica.start()
        sidecars = [
            await joining_sidecar(replicas, "shopper", C_HOST, "shopper"),
            await joining_sidecar(replicas, "orders", S_HOST, "orders",
                                  "--app", "{}:{}".format(*ORDERS_APP)),
        ]
        with stopping(sidecars):
            await asyncio.gather(*(s.wait_ready() for s in sidecars))
            yield Mesh(replicas, sidecars[0], sidecars[1])
    finally:
        for replica in replicas:
            replica.stop()
        await runner.cleanup()


async def until(check: Any, what: str, timeout: float) -> float:
    loop = asyncio.get_running_loop()
    started = loop.time()
    while loop.time() - started < timeout:
        if await check():
            return loop.time() - started
        await asyncio.sleep(0.05)
    raise AssertionError(f"{what}: not within {timeout}s")


async def test_a_killed_replicas_sidecars_move_to_the_other_and_traffic_goes_on(
        mesh: Mesh) -> None:
    async def subscribed(replica: Replica, host: str) -> bool:
        streams = await replica.streams_from(host)
        return bool(streams) and all(
            t["acked"] == t["sent"] for s in streams for t in s["types"].values())

    async def on_either() -> bool:
        return any([await subscribed(r, C_HOST) for r in mesh.replicas])

    async def load(seconds: int) -> Any:
        return await h2load("orders", f"http://{C_HOST}:{OUTBOUND}/",
                            "-D", str(seconds), "-c", "2", "--rps", "50")

    await until(on_either, "the client subscribed to a replica", 10)
    held = [bool(await replica.streams_from(C_HOST)) for replica in mesh.replicas]
    theirs = mesh.replicas[held.index(True)]
    other = mesh.replicas[1 - mesh.replicas.index(theirs)]
    before = await load(2)
    during = asyncio.create_task(load(3))
    try:
        await asyncio.sleep(0.5)
        theirs.kill()
        moved = await until(lambda: subscribed(other, C_HOST),
                            "the client resubscribed to the other replica", 2 * BACKOFF_CAP)

        async def server_known() -> bool:
            status, endpoints = await other.api("GET", "/endpoints/orders")
            return status == 200 and any(e["port"] == INBOUND for e in endpoints)

        known = await until(server_known, "the other replica knows the server",
                            2 * BACKOFF_CAP)
        transition = await during
    finally:
        during.cancel()
    after = await load(2)

    print(f"client on {other.host} {moved:.2f}s after {theirs.host} was killed, the server "
          f"known there {known:.2f}s later; requests failed during the move: "
          f"{transition.failed + transition.errored + transition.timeout} of "
          f"{transition.succeeded + transition.failed + transition.errored + transition.timeout}")
    for result in (before, after):
        assert result.succeeded > 50, result.output
        assert (result.failed, result.errored, result.timeout) == (0, 0, 0), result.output
    assert f"control plane {theirs.host}:{GRPC_PORT} lost: moving to {other.host}:" \
           f"{GRPC_PORT}" in mesh.client.log_text()

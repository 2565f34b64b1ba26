"""Two control-plane replicas sharing one state store (here one in-memory store object, as two
replicas share an etcd cluster): what one accepts the other serves, each knows the other runs,
and ``meshctl status`` shows both — asked at either — with the revision each copy reached."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from aiohttp import web

from certs.pki import CertificateAuthority
from controlplane.api import start_api
from controlplane.server import ControlPlane
from controlplane.store.memory import MemoryStore
from mesh.clock import SYSTEM_CLOCK
from mesh.proto.config_pb2 import Endpoint
from mesh.proto.registry_pb2 import RegisterRequest, RegisterResponse
from tests.integration.controlplane.conftest import TRUST_DOMAIN, Mesh

ROOT = Path(__file__).resolve().parents[3]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
async def replicas(pki: tuple[Path, CertificateAuthority],
                   tmp_path: Path) -> AsyncIterator[list[tuple[Mesh, str, web.AppRunner]]]:
    """Two replicas on one store, each with its operator API: (mesh, API address, runner)."""
    pki_dir, ca = pki
    shared = MemoryStore(SYSTEM_CLOCK, trust_domain=TRUST_DOMAIN)
    started = []
    try:
        for _ in range(2):
            cp = ControlPlane(pki_dir, lease_ttl=2.0, store=shared)
            port = free_port()
            api = f"127.0.0.1:{port}"
            await cp.start("127.0.0.1", 0, api=api)
            started.append((Mesh(cp, ca, pki_dir, tmp_path), api,
                            await start_api(cp, "127.0.0.1", port)))
        yield started
    finally:
        for mesh, _, runner in reversed(started):
            await runner.cleanup()
            await mesh.cp.stop()


async def eventually_true(check: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.01)


async def meshctl(api: str, pki: Path, *args: str) -> str:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "meshctl", "--api", api, *args, cwd=ROOT,
        env={**os.environ, "MESH_PKI_DIR": str(pki)},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0, err.decode()
    return out.decode()


async def test_what_one_replica_accepts_the_other_serves_and_status_shows_both(
        replicas: list[tuple[Mesh, str, web.AppRunner]]) -> None:
    (first, first_api, _), (second, second_api, _) = replicas
    channel = first.channel("orders")
    try:
        register = channel.unary_unary("/mesh.v1.Registry/Register",
                                       RegisterResponse.FromString)
        await register(RegisterRequest(service="orders", endpoint=Endpoint(
            address="127.0.0.1", port=8080)))
    finally:
        await channel.close()
    await eventually_true(lambda: bool(second.cp.registry.endpoints("default", "orders")))
    version = await first.cp.policy.apply_text("clusters:\n- name: orders\n", "ops.yaml")
    await eventually_true(lambda: second.cp.policy.current[0] == version)
    await eventually_true(lambda: len(first.cp.replicas.running) == 2)
    assert first.cp.state.revision == second.cp.state.revision

    for api in (first_api, second_api):  # asked at either, it shows both
        status = await meshctl(api, first.pki, "status")
        assert "policy version 1, 1 instances" in status
        header = next(line for line in status.splitlines() if line.startswith("REPLICA"))
        assert header.split() == ["REPLICA", "API", "STORE", "REVISION", "READY", "POLICY",
                                  "STREAMS", "PROBLEM"]
        for mesh, address in ((first, first_api), (second, second_api)):
            row = next(line for line in status.splitlines() if line.startswith(mesh.cp.name))
            assert row.split() == [mesh.cp.name, address, "memory",
                                   str(mesh.cp.state.revision), "yes", "1", "0"]


async def test_a_replica_whose_api_is_gone_is_shown_unreachable(
        replicas: list[tuple[Mesh, str, web.AppRunner]]) -> None:
    (first, first_api, _), (second, _, second_runner) = replicas
    await eventually_true(lambda: len(first.cp.replicas.running) == 2)
    await second_runner.cleanup()  # the replica runs; its operator API does not answer
    status = await meshctl(first_api, first.pki, "status")
    row = next(line for line in status.splitlines() if line.startswith(second.cp.name))
    assert "cannot reach the control plane at" in row

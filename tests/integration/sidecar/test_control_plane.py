"""Sidecars with a real control plane: join, register, discover — and static stability.

    h2load ──▶ C "shopper" 127.0.20.21 ══mTLS══▶ S "orders" 127.0.20.22 ──HTTP/1.1──▶ aiohttp
                    └──────── control plane 127.0.20.20 (gRPC :15012, API :15014) ──┘

Each sidecar starts with nothing but the mesh CA and a one-time join token (``meshctl token
create``): it gets its certificate from the control plane, registers, and learns the mesh
from the discovery stream. Then the control plane is killed while h2load runs through the
pair — traffic carries on with the last good configuration — and started again: the sidecars
reconnect, register again and resync.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

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
    run_tool,
    spawn_sidecar,
    stopping,
)

pytestmark = [pytest.mark.asyncio(loop_scope="package"), pytest.mark.interop,
              pytest.mark.timeout(90)]

CP_HOST, C_HOST, S_HOST = "127.0.20.20", "127.0.20.21", "127.0.20.22"
CP_GRPC = f"{CP_HOST}:15012"
ORDERS_APP = ("127.0.20.122", 8080)
POLICY = {"clusters": [{"name": "orders", "app_protocol": "HTTP1"}]}


async def joining_sidecar(cp: ControlPlaneProcess, name: str, host: str, service: str,
                          *args: str) -> SidecarProcess:
    """A sidecar that joins with a token handed over in a file, as compose's mesh-init does."""
    return spawn_sidecar(name, host, cp.work, "--service", service,
                         "--control-plane", cp.grpc, "--bootstrap-ca", str(cp.pki / "ca.crt"),
                         "--join-token-file", str(await cp.join_token_file(service)),
                         "--cert-dir", str(cp.work / name), *args)


@dataclass
class Pair:
    cp: ControlPlaneProcess
    client: SidecarProcess
    server: SidecarProcess
    app: WebApp


@pytest_asyncio.fixture(scope="module", loop_scope="package")
async def pair(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Pair]:
    tmp_path = tmp_path_factory.mktemp("control-plane")
    (tmp_path / "policy.yaml").write_text(yaml.safe_dump(POLICY))
    app = WebApp("orders")
    runner = await start_web(app, *ORDERS_APP)
    cp = ControlPlaneProcess(tmp_path, CP_HOST)
    try:
        await cp.start()
        sidecars = [
            await joining_sidecar(cp, "shopper", C_HOST, "shopper"),
            await joining_sidecar(cp, "orders", S_HOST, "orders",
                                  "--app", "{}:{}".format(*ORDERS_APP)),
        ]
        with stopping(sidecars):
            await asyncio.gather(*(s.wait_ready() for s in sidecars))
            yield Pair(cp, sidecars[0], sidecars[1], app)
    finally:
        cp.stop()
        await runner.cleanup()


async def test_sidecars_join_register_and_route_from_discovery(pair: Pair) -> None:
    code, out, err = await run_tool("curl", "-sS", "-H", "Host: orders",
                                    f"http://{C_HOST}:{OUTBOUND}/echo")
    status, services = await pair.cp.api("GET", "/endpoints/orders")

    assert code == 0, err
    echoed = json.loads(out)
    assert echoed["app"] == "orders"
    # The certificates came from the control plane, for the identities the tokens named.
    assert echoed["headers"]["x-forwarded-client-cert"].startswith(
        "By=spiffe://cluster.local/ns/default/sa/orders;")
    assert echoed["headers"]["x-forwarded-client-cert"].endswith(
        ";URI=spiffe://cluster.local/ns/default/sa/shopper")
    assert status == 200
    assert f"{S_HOST}:{INBOUND}" in json.dumps(services)


async def test_traffic_survives_a_control_plane_restart_and_the_sidecars_resync(
        pair: Pair) -> None:
    # 4 s of steady load (2 connections × 50 req/s) while the control plane dies and returns.
    load = asyncio.create_task(h2load("orders", f"http://{C_HOST}:{OUTBOUND}/",
                                      "-D", "4", "-c", "2", "--rps", "50"))
    try:
        await asyncio.sleep(0.5)
        pair.cp.kill()
        await asyncio.sleep(1.5)
        still_ready = [await s.admin("/ready") for s in (pair.client, pair.server)]
        await pair.cp.start()
        result = await load
    finally:
        load.cancel()  # a no-op once it is done; else h2load is killed

    assert result.succeeded > 100, result.output
    assert (result.failed, result.errored, result.timeout) == (0, 0, 0), result.output
    # While the control plane was gone, both kept serving what they had.
    assert [status for status, _ in still_ready] == [200, 200]

    # Resync: both sidecars registered again with the new control plane, and both discovery
    # streams are back, every type ACKed at the version sent.
    await _until(lambda: _resynced(pair), what="the sidecars to resync")
    code, out, _ = await run_tool("curl", "-sS", "-H", "Host: orders",
                                  f"http://{C_HOST}:{OUTBOUND}/")
    assert (code, out) == (0, "orders\n")


async def _resynced(pair: Pair) -> bool:
    status, data = await pair.cp.api("GET", "/status")
    assert status == 200 and isinstance(data, dict)
    nodes = {stream["service"] for stream in data["streams"]
             if all(t["acked"] == t["sent"] for t in stream["types"].values())}
    return data["instances"] == 2 and nodes == {"shopper", "orders"}


async def _until(check: object, *, what: str, timeout: float = 20.0) -> None:
    assert callable(check)
    loop = asyncio.get_running_loop()
    give_up = loop.time() + timeout
    while loop.time() < give_up:
        if await check():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


LATE_HOST, LATE_CP_HOST = "127.0.20.23", "127.0.20.24"


async def test_a_sidecar_started_before_its_control_plane_is_reachable_joins_later(
        pair: Pair, tmp_path: Path) -> None:
    """Nothing listens yet at the control-plane address the sidecar is given: it keeps trying
    for its first certificate, with backoff, and joins once a forwarder to the control plane
    opens there."""
    sidecar = spawn_sidecar(
        "late", LATE_HOST, tmp_path, "--service", "late",
        "--control-plane", f"{LATE_CP_HOST}:15012",
        "--bootstrap-ca", str(pair.cp.work / "pki/ca.crt"), "--cert-dir", str(tmp_path / "late"),
        env={"MESH_JOIN_TOKEN": await pair.cp.join_token("late")})
    pipes: list[asyncio.StreamWriter] = []

    async def forward(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(CP_HOST, 15012)
        pipes.extend((writer, up_writer))
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer),
                             return_exceptions=True)

    async def tried_twice() -> bool:
        return sidecar.log_text().count("cannot join the mesh yet") >= 2

    async def joined() -> bool:
        return "joined the mesh as spiffe://cluster.local/ns/default/sa/late" in \
            sidecar.log_text()

    with stopping([sidecar]):
        await _until(tried_twice, what="two attempts to join")
        assert sidecar.alive(), sidecar.log_text()
        assert "Connect call failed" in sidecar.log_text() or \
            "refused" in sidecar.log_text(), sidecar.log_text()
        forwarder = await asyncio.start_server(forward, LATE_CP_HOST, 15012)
        try:
            await _until(joined, what="the sidecar to join")
            assert (tmp_path / "late" / "cert.pem").exists()
        finally:
            forwarder.close()
            for writer in pipes:
                writer.close()


async def test_a_refused_join_token_ends_the_sidecar_at_once(pair: Pair, tmp_path: Path) -> None:
    sidecar = spawn_sidecar(
        "bogus", LATE_HOST, tmp_path, "--service", "bogus", "--control-plane", CP_GRPC,
        "--bootstrap-ca", str(pair.cp.work / "pki/ca.crt"), "--cert-dir", str(tmp_path / "bogus"),
        env={"MESH_JOIN_TOKEN": "not-a-token"})
    with stopping([sidecar]):
        code = await asyncio.to_thread(sidecar.process.wait, 20)
    assert code != 0
    assert "cannot join the mesh yet" not in sidecar.log_text()  # no retry: the token is bad
    assert "token" in sidecar.log_text().lower(), sidecar.log_text()


@pytest.mark.parametrize("content", [None, "", "\n"], ids=["missing", "empty", "blank"])
async def test_a_join_token_file_without_a_token_is_named_at_start(
        tmp_path: Path, content: str | None) -> None:
    token_file = tmp_path / "token"
    if content is not None:
        token_file.write_text(content)

    code, _, err = await run_tool(
        sys.executable, "-m", "sidecar", "--service", "x", "--control-plane", CP_GRPC,
        "--bootstrap-ca", str(tmp_path / "ca.crt"), "--join-token-file", str(token_file),
        "--cert-dir", str(tmp_path / "certs"))

    reason = "No such file or directory" if content is None else "is empty"
    assert code == 2
    assert err.startswith(f"sidecar: --join-token-file {token_file}"), err
    assert reason in err and "first certificate" in err, err


async def test_a_join_token_is_never_taken_from_the_command_line(tmp_path: Path) -> None:
    """A command line is public (``ps``, /proc/PID/cmdline): there is no flag for the token,
    and no abbreviation of --join-token-file stands in for one."""
    code, _, err = await run_tool(
        sys.executable, "-m", "sidecar", "--service", "x", "--control-plane", CP_GRPC,
        "--bootstrap-ca", str(tmp_path / "ca.crt"), "--join-token=a-secret")

    assert code == 2
    assert "unrecognized arguments: --join-token=a-secret" in err, err


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    finally:
        writer.close()

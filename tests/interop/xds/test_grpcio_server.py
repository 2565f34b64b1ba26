"""A proxyless grpcio server in the mesh: registered while it asks for its Listener, called by
our sidecars over mTLS, and guarding itself with the RBAC the control plane sent it.

    test ─h2c─▶ sidecar "friend"   127.0.34.2 ══mTLS══▶ grpcio xDS server "greeter"
    test ─h2c─▶ sidecar "stranger" 127.0.34.3 ══mTLS══▶   127.0.0.1:<free port>
                  └───────── control plane 127.0.34.1 (gRPC :15012, API :15014) ─────────┘

The server is :mod:`server_apps` (grpcio and the generated hello stubs only), enrolled with
``meshctl proxyless greeter`` and a join token, as an operator would. It asks for the Listener
``mesh/inbound/127.0.0.1:<port>``; the control plane answers with TLS that requires a mesh
client certificate and RBAC from the policy (only ``friend`` may call ``greeter``), and
registers it as an endpoint of ``greeter`` while the stream asks for that Listener.

Why the server listens on 127.0.0.1 when everything else is on 127.0.34.x: a registration must
name the address its stream comes from, and grpcio cannot choose the source address of its xDS
stream. The kernel gives a connection to 127.0.34.1 the source 127.0.0.1 (the loopback route's
preferred source), so 127.0.0.1 is the only address a server here can register; its port is
one the kernel had free a moment before.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio

from certs.pki import issue_workload, load_ca, write_workload
from demo_services.proto import hello_pb2_grpc
from demo_services.proto.hello_pb2 import HelloReply, HelloRequest
from mesh.identity import SpiffeId
from tests.control_plane_process import ControlPlaneProcess
from tests.integration.sidecar.conftest import (
    OUTBOUND,
    ROOT,
    SidecarProcess,
    run_tool,
    spawn_sidecar,
    stopping,
)
from tests.interop.xds.harness import until

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.interop,
              pytest.mark.timeout(90)]

NET = "127.0.34"  # this file's loopback addresses
CP_HOST, FRIEND_HOST, STRANGER_HOST = f"{NET}.1", f"{NET}.2", f"{NET}.3"
CP_GRPC, CP_API = f"{CP_HOST}:15012", f"{CP_HOST}:15014"
SERVER_HOST = "127.0.0.1"  # where a proxyless server here can register (module docstring)
ELSEWHERE = "127.0.0.99"  # an address the attacker's stream does not come from
LEASE_TTL = 2.0  # seconds; a stopped server's endpoint goes within 1.25 × this
START_TIMEOUT = 20.0  # seconds for a process to come up (the machine is shared)
SERVICE_SCRIPT = Path(__file__).with_name("server_apps.py")
TRUST_DOMAIN, NAMESPACE = "cluster.local", "default"
POLICY = {
    "clusters": [{"name": "greeter"}],
    "authorization": [{"service": "greeter",
                       "rules": [{"principals": [f"{TRUST_DOMAIN}/ns/{NAMESPACE}/sa/friend"]}]}],
}


def spiffe_id(service: str) -> str:
    return f"spiffe://{TRUST_DOMAIN}/ns/{NAMESPACE}/sa/{service}"


def free_port(host: str) -> int:
    """A port nothing listens on at ``host`` now (an xDS server must be given its port)."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL if it does not go within a few seconds."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


# -- the control plane and what an operator does with it -------------------------------------


class ControlPlane(ControlPlaneProcess):
    """``python -m controlplane`` on 127.0.34.1 with a short lease, and its operator API."""

    def __init__(self, work: Path) -> None:
        super().__init__(work, CP_HOST, lease_ttl=LEASE_TTL)
        self.write_policy(POLICY)

    async def endpoints(self, service: str) -> list[dict[str, Any]]:
        code, rows = await self.api("GET", f"/endpoints/{service}")
        assert code == 200, rows
        assert isinstance(rows, list)
        return rows

    async def streams(self, service: str) -> list[dict[str, Any]]:
        """The discovery streams of ``service``'s workloads, from ``GET /status``."""
        code, status = await self.api("GET", "/status")
        assert code == 200, status
        return [s for s in status["streams"] if s["service"] == service]


@dataclass
class ProxylessServer:
    """A :mod:`server_apps` process: grpcio's xDS server, enrolled by ``meshctl proxyless``."""

    address: str
    process: subprocess.Popen[bytes]
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


async def start_server(cp: ControlPlane, name: str, host: str, *,
                       trace: bool = False) -> ProxylessServer:
    """Enroll a ``greeter`` in ``work/name`` with a join token, then start it on ``host``
    (with ``trace``, gRPC logs what its xDS client sends and receives)."""
    folder = cp.work / name
    code, out, err = await run_tool(
        sys.executable, "-m", "meshctl", "--api", CP_API, "proxyless", "greeter",
        "--namespace", NAMESPACE, "--control-plane", CP_GRPC,
        "--bootstrap-ca", str(cp.pki / "ca.crt"),
        "--join-token-file", str(await cp.join_token_file("greeter")), "--out", str(folder))
    assert code == 0, f"meshctl proxyless failed:\n{out}\n{err}"
    return spawn_server(folder, f"{host}:{free_port(host)}", cp.work / f"{name}.log",
                        trace=trace)


def spawn_server(folder: Path, address: str, log: Path, *, trace: bool) -> ProxylessServer:
    """:mod:`server_apps` on ``address`` with the bootstrap in ``folder``."""
    env = {**os.environ, "GRPC_XDS_BOOTSTRAP": str(folder / "bootstrap.json"),
           "PYTHONPATH": str(ROOT)}
    if trace:
        env.update(GRPC_TRACE="xds_client", GRPC_VERBOSITY="debug")
    with log.open("ab") as output:
        process = subprocess.Popen(
            [sys.executable, str(SERVICE_SCRIPT), "--service", "greeter", "--listen", address],
            cwd=ROOT, stdout=output, stderr=subprocess.STDOUT, env=env)
    return ProxylessServer(address, process, log)


async def caller_sidecar(cp: ControlPlane, service: str, host: str) -> SidecarProcess:
    """A sidecar with no app for ``service``, joined with a join token."""
    return spawn_sidecar(service, host, cp.work, "--service", service,
                         "--control-plane", CP_GRPC, "--bootstrap-ca", str(cp.pki / "ca.crt"),
                         "--join-token-file", str(await cp.join_token_file(service)),
                         "--cert-dir", str(cp.work / f"{service}-certs"))


# -- the mesh --------------------------------------------------------------------------------


@dataclass
class Mesh:
    cp: ControlPlane
    server: ProxylessServer
    friend: SidecarProcess
    stranger: SidecarProcess


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def mesh(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Mesh]:
    cp = ControlPlane(tmp_path_factory.mktemp("proxyless-server"))
    server: ProxylessServer | None = None
    try:
        await cp.start()
        server = await start_server(cp, "greeter", SERVER_HOST)
        sidecars = [await caller_sidecar(cp, "friend", FRIEND_HOST),
                    await caller_sidecar(cp, "stranger", STRANGER_HOST)]
        with stopping(sidecars):
            await asyncio.gather(*(s.wait_ready() for s in sidecars))
            the_mesh = Mesh(cp, server, *sidecars)

            async def registered() -> bool:
                assert server is not None and server.process.poll() is None, server.log_text()
                return bool(await cp.endpoints("greeter"))
            await until(registered, what="the proxyless server to register",
                        timeout=START_TIMEOUT)

            async def serving() -> bool:  # a few ms after it registered (xds/proxyless.py)
                with contextlib.suppress(grpc.aio.AioRpcError):
                    return bool(await through(the_mesh.friend))
                return False
            await until(serving, what="the friend's sidecar to reach the server",
                        timeout=START_TIMEOUT, every=0.1)
            yield the_mesh
    finally:
        if server is not None:
            stop_process(server.process)
        cp.stop()


async def say_hello(target: str, credentials: grpc.ChannelCredentials | None = None,
                    authority: str | None = None) -> HelloReply:
    """One SayHello to ``target`` (h2c without ``credentials``)."""
    options: list[tuple[str, Any]] = [("grpc.enable_http_proxy", 0)]
    if authority is not None:
        options.append(("grpc.default_authority", authority))
    async with (grpc.aio.insecure_channel(target, options) if credentials is None
                else grpc.aio.secure_channel(target, credentials, options)) as channel:
        stub = hello_pb2_grpc.GreeterStub(channel)
        reply: HelloReply = await stub.SayHello(HelloRequest(name="test"), timeout=5)
        return reply


async def through(sidecar: SidecarProcess) -> HelloReply:
    """SayHello to ``greeter`` through ``sidecar``'s outbound port, as its app would."""
    return await say_hello(f"{sidecar.host}:{OUTBOUND}", authority="greeter")


def mesh_credentials(cp: ControlPlane, service: str | None) -> grpc.ChannelCredentials:
    """grpcio TLS credentials that trust the mesh CA, with a client certificate for
    ``service`` (None: without one)."""
    root = (cp.pki / "ca.crt").read_bytes()
    if service is None:
        return grpc.ssl_channel_credentials(root)
    identity = SpiffeId(trust_domain=TRUST_DOMAIN, namespace=NAMESPACE, service=service)
    cert, key = write_workload(issue_workload(load_ca(cp.pki), identity, timedelta(hours=1)),
                               cp.work / f"grpcio-{service}")
    return grpc.ssl_channel_credentials(root, key.read_bytes(), cert.read_bytes())


# -- the tests -------------------------------------------------------------------------------


async def test_the_server_is_registered_and_its_stream_acked_the_listener(mesh: Mesh) -> None:
    host, port = mesh.server.address.rsplit(":", 1)
    (endpoint,) = await mesh.cp.endpoints("greeter")
    assert (endpoint["address"], endpoint["port"]) == (host, int(port))
    assert endpoint["identity"] == endpoint["owner"] == spiffe_id("greeter")
    assert endpoint["health"] == "HEALTHY"

    (stream,) = await mesh.cp.streams("greeter")
    assert stream["protocol"] == "xds.v3"
    assert stream["identity"] == spiffe_id("greeter")
    listener = stream["types"]["Listener"]
    assert listener["acked"] and listener["acked"] == listener["sent"]
    assert listener["nacks"] == 0, listener["last_nack"]


async def test_a_sidecar_calls_the_proxyless_server_over_mtls(mesh: Mesh) -> None:
    reply = await through(mesh.friend)

    # The sidecar found the server from discovery, checked its certificate proves greeter's
    # SPIFFE ID (the endpoint's identity), and presented its own: gRPC read it from the TLS
    # handshake the Listener's DownstreamTlsContext asked for.
    assert reply.message == f"hello test from greeter at {mesh.server.address}"
    assert reply.peer == spiffe_id("friend")


async def test_rbac_in_grpc_refuses_a_caller_the_policy_does_not_allow(mesh: Mesh) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await through(mesh.stranger)

    # Refused by gRPC's RBAC filter in the server (its message), not by a sidecar: no sidecar
    # stands in front of the proxyless server.
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert refused.value.details() == "Unauthorized RPC rejected"
    assert (await through(mesh.friend)).peer == spiffe_id("friend")


async def test_a_caller_without_a_client_certificate_fails_the_handshake(mesh: Mesh) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await say_hello(mesh.server.address, mesh_credentials(mesh.cp, None))

    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    # The same TLS channel with a mesh certificate gets in: only the certificate was missing.
    reply = await say_hello(mesh.server.address, mesh_credentials(mesh.cp, "friend"))
    assert reply.peer == spiffe_id("friend")


async def test_a_server_asking_for_a_listener_at_another_address_is_refused(
        mesh: Mesh) -> None:
    before = {row["address"] for row in await mesh.cp.endpoints("greeter")}
    attacker = await start_server(mesh.cp, "attacker", ELSEWHERE, trace=True)
    try:
        async def refused() -> bool:
            assert attacker.process.poll() is None, attacker.log_text()
            return f"not {ELSEWHERE!r}" in mesh.cp.log_text()
        await until(refused, what="the control plane to refuse the attacker's stream",
                    timeout=START_TIMEOUT)
        await asyncio.sleep(0.2)  # a registration, had there been one, would show by now
        rows = await mesh.cp.endpoints("greeter")
    finally:
        stop_process(attacker.process)

    refusal = next(line for line in mesh.cp.log_text().splitlines()
                   if f"not {ELSEWHERE!r}" in line)
    assert "StreamAggregatedResources" in refusal and "PERMISSION_DENIED" in refusal
    assert spiffe_id("greeter") in refusal
    # gRPC's xDS client in the attacker saw its ADS stream end with that status and reason.
    assert any("PERMISSION_DENIED" in line and f"not {ELSEWHERE!r}" in line
               for line in attacker.log_text().splitlines())
    assert {row["address"] for row in rows} == before == {SERVER_HOST}


async def test_a_stopped_server_leaves_the_endpoints(mesh: Mesh) -> None:
    stop_process(mesh.server.process)

    async def gone() -> bool:
        return not await mesh.cp.endpoints("greeter")
    took = await until(gone, what="the stopped server's endpoint to go",
                       timeout=1.25 * LEASE_TTL + 1.0, every=0.05)
    print(f"\nendpoint gone {took:.2f} s after the server stopped (lease TTL {LEASE_TTL} s)")
    assert not await mesh.cp.streams("greeter")
    status, _ = await mesh.friend.admin("/ready")
    assert status == 200
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await through(mesh.friend)
    assert failed.value.code() == grpc.StatusCode.UNAVAILABLE

"""A control plane, backends behind sidecars, and grpcio's xDS client, on 127.0.33.x.

    grpcio_client.py ══xDS v3 (ADS, mTLS)══▶ control plane 127.0.33.1 (gRPC :15012, API :15014)
      │  xds:///echo, xds:///canary, ...           ▲ register, discover (mesh.v1)
      └══mTLS══▶ sidecar "echo" 127.0.33.11-14 ───┤──h2c──▶ backend b1-b4 127.0.33.111-114
      └══mTLS══▶ sidecar "canary" 127.0.33.15 ────┘──h2c──▶ backend c1    127.0.33.115

The client is :mod:`grpcio_client`, a subprocess with grpcio only, enrolled as an operator
would enroll any grpcio workload (``meshctl proxyless``: a certificate and a bootstrap). It
finds the backends' sidecars from the control plane's Listener → RouteConfiguration → Cluster →
ClusterLoadAssignment and calls their inbound mTLS ports itself; each sidecar joined with a
join token and registered its inbound address. The backends are grpcio servers in the test's
own event loop, so a test sees what reached them: how many calls, how many at once. Every
process is stopped by its PID.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import yaml

from tests.control_plane_process import ControlPlaneProcess
from tests.integration.sidecar.conftest import INBOUND, SidecarProcess, run_tool, spawn_sidecar

ROOT = Path(__file__).resolve().parents[3]
CLIENT_SCRIPT = Path(__file__).with_name("grpcio_client.py")
NET = "127.0.33"  # this folder's loopback addresses
CP_HOST = f"{NET}.1"
CP_GRPC, CP_API = f"{CP_HOST}:15012", f"{CP_HOST}:15014"
APP_PORT = 50051
NAMESPACE = "default"
START_TIMEOUT = 20.0  # seconds for a process to come up (the machine is shared)
COMMAND_TIMEOUT = 30.0  # seconds for one client command, whatever it asked for
LEASE_TTL = 3.0  # seconds: also the control plane's warm-up after a start


# -- backends --------------------------------------------------------------------------------


class Backend:
    """``/test.Echo/Who`` in grpcio: answers with its name, unless the request's order
    (JSON) says otherwise: ``{"fail": [names]}`` answer UNAVAILABLE, ``{"slow": [names],
    "sleep_ms": N}`` wait N ms first. Counts calls, and the most it held at once."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.calls = 0
        self.in_flight = 0
        self.most_in_flight = 0

    def reset(self) -> None:
        self.calls = self.most_in_flight = 0

    async def who(self, request: bytes, context: grpc.aio.ServicerContext[bytes, bytes],
                  ) -> bytes:
        order = json.loads(request or b"{}")
        self.calls += 1
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            if self.name in order.get("slow", ()):
                await asyncio.sleep(order["sleep_ms"] / 1000)
            if self.name in order.get("fail", ()):
                await context.abort(grpc.StatusCode.UNAVAILABLE, f"{self.name} was told to fail")
            return self.name.encode()
        finally:
            self.in_flight -= 1


async def start_backend(backend: Backend, host: str) -> grpc.aio.Server:
    """Serve ``backend`` (h2c) on ``host``:APP_PORT; stop it with ``stop(None)``."""
    handler = grpc.method_handlers_generic_handler(
        "test.Echo", {"Who": grpc.unary_unary_rpc_method_handler(backend.who)})
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"{host}:{APP_PORT}")
    await server.start()
    return server


# -- the control plane -----------------------------------------------------------------------


class ControlPlane(ControlPlaneProcess):
    """``python -m controlplane`` on ``CP_HOST`` with a policy file, and what an operator
    does with it."""

    def __init__(self, work: Path) -> None:
        super().__init__(work, CP_HOST, lease_ttl=LEASE_TTL)

    async def start(self, policy: dict[str, Any] | None = None) -> None:
        """Start it with ``policy`` in its policy file; wait until its API answers."""
        if policy is not None:
            self.write_policy(policy)
        await super().start()

    async def post_policy(self, policy: dict[str, Any]) -> tuple[int, Any]:
        """``POST /policy``: (HTTP status, answer)."""
        return await self.api("POST", "/policy", yaml.safe_dump(policy, sort_keys=False))

    async def apply(self, policy: dict[str, Any]) -> None:
        """Apply ``policy`` and wait until every xDS stream ACKed what it was sent.

        The control plane wakes the streams while it applies a policy, before it answers the
        POST: the status read after it shows what was pushed as sent and not yet ACKed.
        """
        code, answer = await self.post_policy(policy)
        assert code == 200, answer

        async def acked() -> bool:
            return bool((await self.status())["xds"]["convergence"]["unacked"] == 0)
        await until(acked, what=f"the xDS streams to ACK policy version {answer['version']}")

    async def token(self, service: str) -> str:
        code, answer = await self.api("POST", "/tokens",
                                      json.dumps({"service": service, "namespace": NAMESPACE}))
        assert code == 200, answer
        return str(answer["token"])

    async def endpoints(self, service: str) -> list[str]:
        """``host:port`` of each registered instance of ``service``."""
        code, rows = await self.api("GET", f"/endpoints/{service}")
        assert code == 200, rows
        return [f"{row['address']}:{row['port']}" for row in rows]

    async def stream(self, node: str) -> dict[str, Any]:
        """The status of the one discovery stream of ``node`` (its bootstrap's node id).

        grpcio keeps an xDS client, and so an ADS stream, per channel target: a client
        process has one stream per target it called, all with the node id of its bootstrap.
        """
        streams = [s for s in (await self.status())["streams"] if s["node"] == node]
        assert len(streams) == 1, f"{len(streams)} streams of node {node!r}"
        stream: dict[str, Any] = streams[0]
        return stream


async def backend_sidecar(cp: ControlPlane, name: str, host: str, service: str,
                          app_host: str) -> SidecarProcess:
    """A sidecar in front of the backend at ``app_host`` that joins with a join token and
    registers its inbound ``host``:15006 as an instance of ``service`` (not waited for)."""
    return spawn_sidecar(name, host, cp.work, "--service", service,
                         "--control-plane", CP_GRPC, "--bootstrap-ca", str(cp.pki / "ca.crt"),
                         "--cert-dir", str(cp.work / name), "--app", f"{app_host}:{APP_PORT}",
                         "--app-protocol", "h2c",
                         env={"MESH_JOIN_TOKEN": await cp.token(service)})


async def registered(cp: ControlPlane, sidecar: SidecarProcess, service: str) -> None:
    """Until ``sidecar`` is an instance of ``service`` at the control plane."""
    async def listed() -> bool:
        assert sidecar.alive(), sidecar.log_text()
        return f"{sidecar.host}:{INBOUND}" in await cp.endpoints(service)
    await until(listed, what=f"sidecar {sidecar.name} to register", timeout=START_TIMEOUT)


# -- grpcio's xDS client ---------------------------------------------------------------------


async def enroll(cp: ControlPlane, service: str, directory: Path) -> tuple[Path, str]:
    """``meshctl proxyless SERVICE --out DIRECTORY``, as an operator enrolls a grpcio workload:
    a certificate bought with a join token, and a bootstrap (gRFC A27, A29, A65) naming it.

    Returns:
        The bootstrap's path and the node id it gives the client.
    """
    code, _, err = await run_tool(sys.executable, "-m", "meshctl", "--api", CP_API, "proxyless",
                                  service, "--out", str(directory),
                                  env={**os.environ, "MESH_PKI_DIR": str(cp.pki)})
    assert code == 0, err
    bootstrap = directory / "bootstrap.json"
    return bootstrap, str(json.loads(bootstrap.read_text())["node"]["id"])


@dataclass(frozen=True, slots=True)
class Call:
    """One call as the client saw it."""

    value: str  # the header value it carried ("" without a header)
    backend: str  # who answered; "" when it failed
    code: str  # grpc.StatusCode name
    ms: float
    details: str  # the status's message; "" for OK


@dataclass(frozen=True, slots=True)
class Calls:
    """The calls of one command, in order."""

    calls: list[Call]

    def backends(self) -> Counter[str]:
        """Answers per backend (failed calls not counted)."""
        return Counter(call.backend for call in self.calls if call.code == "OK")

    def codes(self) -> Counter[str]:
        return Counter(call.code for call in self.calls)


@dataclass
class GrpcioClient:
    """``grpcio_client.py`` as a subprocess, driven one command at a time."""

    process: asyncio.subprocess.Process
    log: Path
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def csds(self, host: str) -> int:
        """Start CSDS in the client on ``host`` (any free port); the port."""
        answer = await self._command({"csds": f"{host}:0"})
        return int(answer["csds_port"])

    async def _command(self, command: dict[str, Any]) -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        async with self.lock:
            self.process.stdin.write(json.dumps(command).encode() + b"\n")
            await self.process.stdin.drain()
            try:
                line = await asyncio.wait_for(self.process.stdout.readline(), COMMAND_TIMEOUT)
            except TimeoutError:
                raise AssertionError(f"no answer to {command} within {COMMAND_TIMEOUT}s:\n"
                                     f"{self.log_text()[-5000:]}") from None
        assert line, f"the client exited ({self.process.returncode}):\n{self.log_text()[-5000:]}"
        answer: dict[str, Any] = json.loads(line)
        return answer

    async def calls(self, target: str, calls: int = 1, *, concurrency: int = 1,
                    order: dict[str, Any] | None = None, header: str | None = None,
                    values: list[str] | None = None, timeout: float = 5.0) -> Calls:
        """Make ``calls`` calls to ``xds:///target`` (see :mod:`grpcio_client`)."""
        command = {"target": target, "calls": calls, "concurrency": concurrency,
                   "order": order or {}, "header": header, "values": values, "timeout": timeout}
        answer = await self._command(command)
        return Calls([Call(*result) for result in answer["results"]])

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    async def stop(self) -> None:
        """Ask it to quit; kill it (by its PID) if it does not within a few seconds."""
        if self.process.returncode is not None:
            return
        with contextlib.suppress(ConnectionError):
            assert self.process.stdin is not None
            self.process.stdin.write(b'{"quit": true}\n')
            await self.process.stdin.drain()
        try:
            await asyncio.wait_for(self.process.wait(), 5)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()


async def start_client(bootstrap: Path, log: Path) -> GrpcioClient:
    """Start the client with ``GRPC_XDS_BOOTSTRAP=bootstrap``; its stderr goes to ``log``.

    It inherits the test's environment: run the tests with ``GRPC_TRACE=xds_client,xds_resolver
    GRPC_VERBOSITY=debug`` and the log shows every xDS message the client sends and receives.
    """
    env = {**os.environ, "GRPC_XDS_BOOTSTRAP": str(bootstrap)}
    with log.open("ab") as err:
        process = await asyncio.create_subprocess_exec(
            sys.executable, str(CLIENT_SCRIPT), cwd=ROOT, env=env, stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=err)
    return GrpcioClient(process, log)


# -- waiting ---------------------------------------------------------------------------------


async def until(check: Callable[[], Awaitable[bool]], *, what: str,
                timeout: float = 10.0, every: float = 0.02) -> float:
    """Await ``check()`` every ``every`` seconds until it is true; returns the time taken.

    Raises:
        AssertionError: it was not true within ``timeout`` seconds.
    """
    loop = asyncio.get_running_loop()
    started = loop.time()
    while loop.time() - started < timeout:
        if await check():
            return loop.time() - started
        await asyncio.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")

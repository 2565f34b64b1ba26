"""Real sidecars and fault-injecting backends on loopback, and a load generator to drive them.

Each test builds its own little mesh with :class:`Mesh`::

    client app (this test) ─HTTP/1.1─▶ client sidecar ══mTLS══▶ backend sidecar ─▶ replica
                                      (policy under test)     (one per replica)

Every sidecar is a ``python -m sidecar --static-config FILE`` process on its own loopback IP
(``127.0.30.x``, standard ports 15000/15001/15006), or, for live policy changes, one that joins
a ``python -m controlplane --policy FILE`` process with a join token. The replicas run in one
``tests.integration.policies.backend`` process, each on its sidecar's address. Every process is
stopped by its PID when the test ends; their output goes to files under the test's
``tmp_path``, quoted if one fails to start.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import math
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.pki_fixtures import MeshPki
from tests.pki_fixtures import mesh_pki as mesh_pki  # a fixture, used by name

ROOT = Path(__file__).resolve().parents[3]
APP_PORT = 8080
ADMIN_PORT, OUTBOUND_PORT, INBOUND_PORT = 15000, 15001, 15006
CP_GRPC_PORT, CP_API_PORT = 15012, 15014
START_TIMEOUT = 20.0  # seconds for a process to be ready; generous, the machine is shared

# 127.0.30.x is this folder's: each process of the session gets an address of its own, so a
# test never waits for the previous one's ports to be released.
_hosts = (f"127.0.30.{n}" for n in itertools.count(10))


def next_host() -> str:
    host = next(_hosts)
    if int(host.rsplit(".", 1)[1]) > 254:
        raise RuntimeError("policy tests ran out of 127.0.30.x addresses")
    return host


@dataclass
class Process:
    """A child process and the file its output goes to."""

    name: str
    proc: asyncio.subprocess.Process
    log: Path

    def tail(self, lines: int = 30) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


@dataclass
class Sidecar:
    """A running sidecar: where its listeners are."""

    host: str
    process: Process

    @property
    def outbound(self) -> str:
        return f"http://{self.host}:{OUTBOUND_PORT}"

    @property
    def admin(self) -> str:
        return f"http://{self.host}:{ADMIN_PORT}"

    @property
    def endpoint_config(self) -> dict[str, Any]:
        """This sidecar as an endpoint in a caller's static config."""
        return {"address": self.host, "port": INBOUND_PORT}


@dataclass
class ControlPlane:
    """A running control plane: its mTLS gRPC address, operator API and mesh CA."""

    host: str
    process: Process
    ca: Path
    policy: Path  # the policy file it watches: rewrite it to change the policy live

    @property
    def grpc(self) -> str:
        return f"{self.host}:{CP_GRPC_PORT}"

    @property
    def api(self) -> str:
        return f"http://{self.host}:{CP_API_PORT}"

    def operator(self) -> dict[str, str]:
        """The operator's credential, for the API: the token written next to the CA."""
        token = (self.ca.parent / "operator.token").read_text().strip()
        return {"Authorization": f"Bearer {token}"}


@dataclass
class Replica:
    """A backend replica (its app, and the sidecar in front of it)."""

    name: str
    sidecar: Sidecar

    @property
    def stats_url(self) -> str:
        return f"http://{self.sidecar.host}:{APP_PORT}/_stats"

    @property
    def endpoint(self) -> str:
        """The address a caller's sidecar knows it by ("ip:port", as in /clusters)."""
        return f"{self.sidecar.host}:{INBOUND_PORT}"


@dataclass(frozen=True, slots=True)
class Result:
    """One request as the client saw it."""

    id: int
    status: int
    replica: str  # x-replica of the answer; "" when the mesh answered itself
    latency: float  # seconds
    overloaded: str  # x-mesh-overloaded, "" when absent


@dataclass
class Mesh:
    """Starts the processes of one test and stops them all afterwards."""

    pki: MeshPki
    tmp: Path
    http: aiohttp.ClientSession
    processes: list[Process] = field(default_factory=list)
    _seeds: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    async def _spawn(self, name: str, *args: str) -> Process:
        log = self.tmp / f"{name}.log"
        with log.open("wb") as out:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, *args, cwd=ROOT, stdout=out, stderr=asyncio.subprocess.STDOUT,
                env={**os.environ, "PYTHONPATH": str(ROOT)})
        process = Process(name, proc, log)
        self.processes.append(process)
        return process

    async def _wait_ready(self, process: Process, url: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if process.proc.returncode is not None:
                break
            with contextlib.suppress(aiohttp.ClientError, OSError, asyncio.TimeoutError):
                async with self.http.get(url, timeout=aiohttp.ClientTimeout(total=1)) as r:
                    if r.status == 200:
                        return
            await asyncio.sleep(0.05)
        raise RuntimeError(f"{process.name} not ready at {url} (exit code "
                           f"{process.proc.returncode}); its log:\n{process.tail()}")

    async def control_plane(self, policy: dict[str, Any]) -> ControlPlane:
        """Start a control plane (with a CA of its own) watching a file holding ``policy``."""
        host = next_host()
        path = self.tmp / "policy.yaml"
        path.write_text(yaml.safe_dump(policy, sort_keys=False))
        pki_dir = self.tmp / "cp-pki"
        process = await self._spawn(
            "controlplane", "-m", "controlplane", "--pki-dir", str(pki_dir), "--init-pki",
            "--listen", f"{host}:{CP_GRPC_PORT}", "--api", f"{host}:{CP_API_PORT}",
            "--policy", str(path), "--log-level", "WARNING")
        cp = ControlPlane(host, process, pki_dir / "ca.crt", path)
        await self._wait_ready(process, f"{cp.api}/healthz")
        return cp

    async def sidecar(self, name: str, config: dict[str, Any] | None, *, client: bool,
                      host: str | None = None, control_plane: ControlPlane | None = None
                      ) -> Sidecar:
        """Start a sidecar on ``host`` (a fresh address if None); its app is expected at
        ``host:8080``.

        Without ``control_plane`` it runs on ``config`` as its static configuration file, with
        the client's certificate (``client``) or the server's. With one it joins it as the
        service "client" or "backend" with a join token, registers and takes its configuration
        from discovery.
        """
        host = host or next_host()
        if control_plane is None:
            path = self.tmp / f"{name}.yaml"
            path.write_text(yaml.safe_dump(config or {}, sort_keys=False))
            workload = self.pki.client if client else self.pki.server
            service = workload.spiffe_id.service
            mode = ["--static-config", str(path), "--cert", str(workload.cert),
                    "--key", str(workload.key), "--ca", str(self.pki.ca_cert)]
        else:
            service = "client" if client else "backend"
            async with self.http.post(f"{control_plane.api}/tokens", json={"service": service},
                                      headers=control_plane.operator()) as response:
                token_file = self.tmp / f"{name}.token"
                token_file.write_text((await response.json())["token"])
            mode = ["--control-plane", control_plane.grpc, "--bootstrap-ca",
                    str(control_plane.ca), "--join-token-file", str(token_file),
                    "--cert-dir", str(self.tmp / f"{name}-certs")]
        process = await self._spawn(
            name, "-m", "sidecar", "--service", service,
            "--outbound", f"{host}:{OUTBOUND_PORT}", "--inbound", f"{host}:{INBOUND_PORT}",
            "--admin", f"{host}:{ADMIN_PORT}", "--app", f"{host}:{APP_PORT}",
            "--app-protocol", "http1", *mode, "--seed", str(next(self._seeds)),
            "--log-level", "WARNING")
        sidecar = Sidecar(host, process)
        await self._wait_ready(process, f"{sidecar.admin}/ready")
        return sidecar

    async def replicas(self, *settings: dict[str, Any],
                       control_plane: ControlPlane | None = None) -> list[Replica]:
        """Start one backend process serving ``settings`` (see ``backend.py``), each replica
        behind its own sidecar on the replica's address (as if each were a pod)."""
        hosts = [next_host() for _ in settings]
        listed = [{**s, "host": h, "port": APP_PORT} for s, h in zip(settings, hosts, strict=True)]
        backend = await self._spawn("backend", "-m", "tests.integration.policies.backend",
                                    "--replicas", json.dumps(listed))
        sidecars = await asyncio.gather(*(
            self.sidecar(f"sidecar-{s['name']}", {}, client=False, host=h,
                         control_plane=control_plane)
            for s, h in zip(settings, hosts, strict=True)))
        replicas = [Replica(s["name"], sc) for s, sc in zip(settings, sidecars, strict=True)]
        for replica in replicas:
            await self._wait_ready(backend, replica.stats_url)
        return replicas

    async def stats(self, replica: Replica) -> dict[str, Any]:
        """What the replica has seen: ``requests`` and ``seen`` [(x-test-id, x-mesh-attempt)]."""
        async with self.http.get(replica.stats_url) as response:
            data: dict[str, Any] = await response.json()
            return data

    async def admin(self, sidecar: Sidecar, path: str) -> Any:
        async with self.http.get(f"{sidecar.admin}{path}") as response:
            assert response.status == 200, f"{path}: {response.status}"
            if path == "/metrics":
                return await response.text()
            return await response.json()

    async def stop(self) -> None:
        """SIGTERM every process (by PID), SIGKILL those still running 5 s later."""

        async def end(process: Process) -> None:
            with contextlib.suppress(ProcessLookupError):
                process.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.proc.wait(), 5.0)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    process.proc.kill()
                await process.proc.wait()

        await asyncio.gather(*(end(p) for p in self.processes if p.proc.returncode is None))


@pytest.fixture
async def mesh(mesh_pki: MeshPki, tmp_path: Path) -> AsyncIterator[Mesh]:
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as http:
        m = Mesh(mesh_pki, tmp_path, http)
        try:
            yield m
        finally:
            await m.stop()


# -- the load generator ------------------------------------------------------------------------


async def drive(sidecar: Sidecar, *, requests: int, concurrency: int, cluster: str = "backend",
                first_id: int = 0, timeout: float = 10.0) -> list[Result]:
    """Send ``requests`` GETs for ``cluster`` through ``sidecar``, ``concurrency`` at a time
    (closed loop: each worker sends its next request when the last one is answered)."""
    ids = iter(range(first_id, first_id + requests))
    results: list[Result] = []
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    async with aiohttp.ClientSession(connector=connector,
                                     timeout=aiohttp.ClientTimeout(total=timeout)) as http:

        async def one(request_id: int) -> Result:
            started = time.perf_counter()
            async with http.get(f"{sidecar.outbound}/work",
                                headers={"Host": cluster, "x-test-id": str(request_id)}) as r:
                await r.read()
                return Result(request_id, r.status, r.headers.get("x-replica", ""),
                              time.perf_counter() - started,
                              r.headers.get("x-mesh-overloaded", ""))

        async def worker() -> None:
            for request_id in ids:
                results.append(await one(request_id))

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return results


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (nearest rank) of ``values``."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of the samples called ``name`` whose labels include ``labels`` (0 if none)."""
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v
                                           for k, v in labels.items()):
                total += sample.value
    return total

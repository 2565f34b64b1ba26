"""A mesh on loopback for the sidecar's end-to-end tests: real sidecar processes, real apps.

    test (grpcio, curl, h2load)
      └─▶ A "client" 127.0.20.1
            ══mTLS══▶ B  "greeter"    127.0.20.2 ──h2c──────▶ grpcio  127.0.20.102
            ══mTLS══▶ W1 "web"        127.0.20.3 ──HTTP/1.1─▶ aiohttp 127.0.20.103
            ══mTLS══▶ W2 "web-canary" 127.0.20.4 ──HTTP/1.1─▶ aiohttp 127.0.20.104

Every sidecar is ``python -m sidecar`` with a static configuration and its own certificate,
on its own loopback address (outbound :15001, inbound :15006, admin :15000). The apps run in
the tests' event loop, so a test can see what reached them. The mesh is built once for the
package (one event loop for all its tests) and every process is stopped by its PID.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
import yaml

from certs import pki
from mesh.identity import SpiffeId
from tests.integration.sidecar.apps import Greeter, WebApp, start_greeter, start_web

ROOT = Path(__file__).resolve().parents[3]
TRUST_DOMAIN = "cluster.local"
NAMESPACE = "default"
OUTBOUND, INBOUND, ADMIN = 15001, 15006, 15000
READY_TIMEOUT = 20.0  # seconds for a sidecar to answer /ready (the machine is shared)

A_HOST, B_HOST, W1_HOST, W2_HOST = "127.0.20.1", "127.0.20.2", "127.0.20.3", "127.0.20.4"
GHOST_HOST = "127.0.20.9"  # nothing listens here
GREETER_APP = ("127.0.20.102", 50051)
WEB_APP = ("127.0.20.103", 8080)
CANARY_APP = ("127.0.20.104", 8080)
STRICT_TIMEOUT = 0.5  # seconds: the route timeout of the "-strict" virtual hosts


def principal(service: str) -> str:
    return f"{TRUST_DOMAIN}/ns/{NAMESPACE}/sa/{service}"


# -- PKI -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Pki:
    """A mesh CA and a certificate per service, written under ``directory``."""

    directory: Path
    ca: pki.CertificateAuthority

    @property
    def ca_cert(self) -> Path:
        return self.directory / "ca.crt"

    def cert(self, service: str) -> Path:
        return self.directory / f"{service}.crt"

    def key(self, service: str) -> Path:
        return self.directory / f"{service}.key"

    def spiffe_id(self, service: str) -> SpiffeId:
        return SpiffeId(trust_domain=TRUST_DOMAIN, namespace=NAMESPACE, service=service)

    def issue(self, service: str) -> None:
        workload = pki.issue_workload(self.ca, self.spiffe_id(service), timedelta(hours=1))
        pki.write_workload(workload, self.directory)


SERVICES = ("client", "greeter", "web", "web-canary", "intruder")


@pytest.fixture(scope="session")
def mesh_pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("sidecar-pki")
    ca = pki.create_ca(trust_domain=TRUST_DOMAIN)
    pki.write_ca(ca, directory)
    made = Pki(directory, ca)
    for service in SERVICES:
        made.issue(service)
    return made


# -- sidecar processes -----------------------------------------------------------------------


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text as ``{'name{labels}': value}`` (labels exactly as printed)."""
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


@dataclass
class SidecarProcess:
    """One ``python -m sidecar`` process and how to reach it."""

    name: str
    host: str
    process: subprocess.Popen[bytes]
    log: Path
    argv: list[str] = field(default_factory=list)

    def url(self, path: str = "/") -> str:
        """A URL on the outbound listener (the app-facing side)."""
        return f"http://{self.host}:{OUTBOUND}{path}"

    def admin_url(self, path: str) -> str:
        return f"http://{self.host}:{ADMIN}{path}"

    async def admin(self, path: str) -> tuple[int, str]:
        async with aiohttp.ClientSession() as session, \
                session.get(self.admin_url(path), timeout=aiohttp.ClientTimeout(5)) as response:
            return response.status, await response.text()

    async def metrics(self) -> dict[str, float]:
        status, text = await self.admin("/metrics")
        assert status == 200, text
        return parse_metrics(text)

    async def metric(self, name: str, **labels: str) -> float:
        """One sample (0 when absent): ``metric("x_total", cluster="web")``."""
        wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        for sample, value in (await self.metrics()).items():
            sample_name, _, rest = sample.partition("{")
            got = ",".join(sorted(rest.rstrip("}").split(","))) if rest else ""
            if sample_name == name and got == wanted:
                return value
        return 0.0

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def alive(self) -> bool:
        return self.process.poll() is None

    async def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        """Until ``/ready`` answers 200; fails with the log if the process dies or never is."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + timeout
        last = "no answer"
        while loop.time() < give_up:
            if not self.alive():
                raise AssertionError(f"sidecar {self.name} exited ({self.process.returncode}):\n"
                                     f"{self.log_text()}")
            with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
                status, last = await self.admin("/ready")
                if status == 200:
                    return
            await asyncio.sleep(0.05)
        raise AssertionError(f"sidecar {self.name} not ready after {timeout}s ({last.strip()}):"
                             f"\n{self.log_text()}")

    def restart(self) -> None:
        """Stop the process and start it again with the same arguments (not waiting)."""
        self.stop()
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(self.argv, cwd=ROOT, stdout=out,
                                            stderr=subprocess.STDOUT, env=dict(os.environ))

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it does not go within a few seconds."""
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)


def spawn_sidecar(name: str, host: str, log_dir: Path, *args: str,
                  env: dict[str, str] | None = None) -> SidecarProcess:
    """Start ``python -m sidecar`` on ``host`` (ports 15001/15006/15000) with ``args``."""
    argv = [sys.executable, "-m", "sidecar",
            "--outbound", f"{host}:{OUTBOUND}", "--inbound", f"{host}:{INBOUND}",
            "--admin", f"{host}:{ADMIN}", "--seed", "7", *args]
    log = log_dir / f"sidecar-{name}.log"
    with log.open("ab") as out:
        process = subprocess.Popen(argv, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                   env={**os.environ, **(env or {})})
    return SidecarProcess(name=name, host=host, process=process, log=log, argv=argv)


def static_sidecar(name: str, host: str, service: str, config: dict[str, Any],
                   mesh_pki: Pki, work: Path, *args: str) -> SidecarProcess:
    """A sidecar for ``service`` with ``config`` as its static configuration file."""
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return spawn_sidecar(name, host, work, "--service", service, "--static-config", str(path),
                         "--cert", str(mesh_pki.cert(service)),
                         "--key", str(mesh_pki.key(service)), "--ca", str(mesh_pki.ca_cert),
                         *args)


@contextlib.contextmanager
def stopping(processes: list[SidecarProcess]) -> Iterator[list[SidecarProcess]]:
    """Stop every process on the way out, whatever happened."""
    try:
        yield processes
    finally:
        for process in processes:
            process.stop()


# -- the mesh's configuration ----------------------------------------------------------------


def client_config() -> dict[str, Any]:
    """Sidecar A's view of the mesh: where each service is, and the routes."""
    def strict(name: str, cluster: str) -> dict[str, Any]:
        return {"name": name, "domains": [name],
                "routes": [{"match": {"prefix": "/"},
                            "route": {"cluster": cluster, "timeout": f"{STRICT_TIMEOUT}s"}}]}

    return {
        "clusters": [
            {"name": "greeter"},
            {"name": "web", "app_protocol": "HTTP1"},
            {"name": "web-canary", "app_protocol": "HTTP1"},
            # W1 again, under a name only the pooling test uses: its connections count apart.
            {"name": "pooled", "app_protocol": "HTTP1"},
            {"name": "ghost", "connect_timeout": "0.3s"},
            # W1 again, for the pool tests: connections that idle out, and few streams each.
            {"name": "idle", "app_protocol": "HTTP1", "pool": {"idle_timeout": "0.5s"}},
            {"name": "narrow", "app_protocol": "HTTP1",
             "pool": {"max_streams_per_connection": 2}},
        ],
        "routes": [{"name": "mesh", "virtual_hosts": [
            {"name": "shop", "domains": ["shop"], "routes": [
                {"match": {"prefix": "/"},
                 "route": {"weighted_clusters": {"clusters": [{"name": "web", "weight": 90},
                                                              {"name": "web-canary",
                                                               "weight": 10}]}}}]},
            strict("greeter-strict", "greeter"),
            strict("web-strict", "web"),
            *route_policy_hosts(),
        ]}],
        "endpoints": {
            "greeter": [{"address": B_HOST, "port": INBOUND}],
            "web": [{"address": W1_HOST, "port": INBOUND}],
            "web-canary": [{"address": W2_HOST, "port": INBOUND}],
            "pooled": [{"address": W1_HOST, "port": INBOUND}],
            "ghost": [{"address": GHOST_HOST, "port": INBOUND}],
            "idle": [{"address": W1_HOST, "port": INBOUND}],
            "narrow": [{"address": W1_HOST, "port": INBOUND}],
        },
    }


def route_policy_hosts() -> list[dict[str, Any]]:
    """Virtual hosts whose routes inject faults or limit the rate (test_route_policies.py)."""
    def to(cluster: str, **policy: Any) -> list[dict[str, Any]]:
        return [{"match": {"prefix": "/"}, "route": {"cluster": cluster}, **policy}]

    only_chaos = [{"name": "x-chaos", "exact": "yes"}]
    return [
        {"name": "web-abort", "domains": ["web-abort"], "routes": to(
            "web", fault={"abort": {"http_status": 503, "percentage": 100},
                          "headers": only_chaos})},
        {"name": "web-delay", "domains": ["web-delay"], "routes": [
            {"match": {"prefix": "/"}, "route": {"cluster": "web", "timeout": "0.5s"},
             "fault": {"delay": {"fixed_delay": "0.2s", "percentage": 100},
                       "headers": only_chaos}},
            ]},
        {"name": "web-stall", "domains": ["web-stall"], "routes": [
            {"match": {"prefix": "/"}, "route": {"cluster": "web", "timeout": "0.3s"},
             "fault": {"delay": {"fixed_delay": "5s", "percentage": 100}}}]},
        {"name": "web-limited", "domains": ["web-limited"], "routes": to(
            "web", rate_limit={"max_tokens": 3, "fill_interval": "3600s"})},
        {"name": "greeter-abort", "domains": ["greeter-abort"], "routes": to(
            "greeter", fault={"abort": {"grpc_status": 14, "percentage": 100}})},
        {"name": "greeter-limited", "domains": ["greeter-limited"], "routes": to(
            "greeter", rate_limit={"max_tokens": 2, "fill_interval": "3600s"})},
    ]


def greeter_config() -> dict[str, Any]:
    """Sidecar B: the greeter's own cluster (gRPC app) and who may call it."""
    return {
        "clusters": [{"name": "greeter", "app_protocol": "GRPC"}],
        "authorization": [
            {"service": "greeter", "action": "DENY",
             "rules": [{"principals": [principal("client")],
                        "paths": ["/hello.Greeter/SayHelloToAll"]}]},
            {"service": "greeter", "action": "ALLOW",
             "rules": [{"principals": [principal("client")]}]},
        ],
    }


def web_config(service: str) -> dict[str, Any]:
    """Sidecars W1 and W2: an HTTP/1.1 app; ``/admin/*`` is denied to everyone."""
    return {
        "clusters": [{"name": service, "app_protocol": "HTTP1"}],
        "authorization": [
            {"service": service, "action": "DENY", "rules": [{"paths": ["/admin/*"]}]},
        ],
    }


# -- the mesh --------------------------------------------------------------------------------


@dataclass
class Mesh:
    """The running sidecars and the apps behind them."""

    a: SidecarProcess
    b: SidecarProcess
    w1: SidecarProcess
    w2: SidecarProcess
    greeter: Greeter
    web: WebApp
    canary: WebApp
    pki: Pki


@pytest_asyncio.fixture(scope="package", loop_scope="package")
async def mesh(mesh_pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Mesh]:
    work = tmp_path_factory.mktemp("sidecar-mesh")
    grpc_server, greeter = await start_greeter(*GREETER_APP)
    web, canary = WebApp("web"), WebApp("web-canary")
    runners = [await start_web(web, *WEB_APP), await start_web(canary, *CANARY_APP)]
    sidecars = [
        static_sidecar("a", A_HOST, "client", client_config(), mesh_pki, work),
        static_sidecar("b", B_HOST, "greeter", greeter_config(), mesh_pki, work,
                       "--app", "{}:{}".format(*GREETER_APP)),
        # No --app-protocol: W1 learns from its configuration that its app speaks HTTP/1.1.
        static_sidecar("w1", W1_HOST, "web", web_config("web"), mesh_pki, work,
                       "--app", "{}:{}".format(*WEB_APP)),
        static_sidecar("w2", W2_HOST, "web-canary", web_config("web-canary"), mesh_pki, work,
                       "--app", "{}:{}".format(*CANARY_APP), "--app-protocol", "http1"),
    ]
    try:
        with stopping(sidecars):
            await asyncio.gather(*(s.wait_ready() for s in sidecars))
            a, b, w1, w2 = sidecars
            yield Mesh(a=a, b=b, w1=w1, w2=w2, greeter=greeter, web=web, canary=canary,
                       pki=mesh_pki)
    finally:
        await grpc_server.stop(None)
        for runner in runners:
            await runner.cleanup()


async def run_tool(*argv: str, timeout: float = 30.0,
                   env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """Run curl, h2load, ... and return (exit code, stdout, stderr); killed after ``timeout``."""
    process = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE,
                                                   stderr=asyncio.subprocess.PIPE, cwd=ROOT,
                                                   env=env)
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        raise AssertionError(f"{argv[0]} did not finish within {timeout}s: {argv}") from None
    finally:
        if process.returncode is None:  # timed out, or the test gave up on it (cancelled)
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return process.returncode, out.decode(errors="replace"), err.decode(errors="replace")


@dataclass(frozen=True, slots=True)
class H2loadResult:
    """h2load's request counts (a request "failed" when its stream did not end well)."""

    succeeded: int
    failed: int
    errored: int
    timeout: int
    status_2xx: int
    output: str


async def h2load(authority: str, url: str, *options: str) -> H2loadResult:
    """h2load (h2c, prior knowledge) against ``url``, calling ``authority``."""
    code, out, err = await run_tool("h2load", *options, "-H", f":authority: {authority}", url,
                                    timeout=60)
    assert code == 0, f"h2load failed ({code}):\n{out}\n{err}"
    counts = re.search(r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded, "
                       r"(\d+) failed, (\d+) errored, (\d+) timeout", out)
    statuses = re.search(r"status codes: (\d+) 2xx", out)
    assert counts is not None and statuses is not None, out
    succeeded, failed, errored, timeout = map(int, counts.groups())
    return H2loadResult(succeeded, failed, errored, timeout, int(statuses[1]), out)

"""``python -m controlplane`` as a real process for a test, and its operator API.

One class for every test that needs the control plane in its own process (sidecars joining it,
proxyless gRPC workloads, replicas being killed): it makes the mesh CA on first start
(``--init-pki``), reads its policy from a file (hot-reloaded), and is asked things through the
operator API with the operator token it wrote into its PKI folder.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yaml

ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT = 20.0  # seconds for it to answer (the machine is shared)


@dataclass
class ControlPlaneProcess:
    """A control plane on ``host`` (gRPC ``grpc_port``, API ``api_port``), its files in
    ``work`` (``pki/``, ``policy.yaml``, one log per start). Restartable."""

    work: Path
    host: str
    lease_ttl: float = 3.0
    grpc_port: int = 15012
    api_port: int = 15014
    store: str = ""  # --store: '' for the default (memory), or 'etcd://HOST:PORT,...'
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def pki(self) -> Path:
        return self.work / "pki"

    @property
    def grpc(self) -> str:
        """``host:port`` of its gRPC (mTLS) listener: what sidecars are given."""
        return f"{self.host}:{self.grpc_port}"

    @property
    def api_address(self) -> str:
        return f"{self.host}:{self.api_port}"

    @property
    def policy_file(self) -> Path:
        return self.work / "policy.yaml"

    def write_policy(self, policy: dict[str, Any]) -> None:
        self.policy_file.write_text(yaml.safe_dump(policy, sort_keys=False))

    def spawn(self) -> subprocess.Popen[bytes]:
        self.starts += 1
        if not self.policy_file.exists():
            self.write_policy({})
        with (self.work / f"controlplane-{self.host}-{self.starts}.log").open("ab") as log:
            return subprocess.Popen(
                [sys.executable, "-m", "controlplane", "--pki-dir", str(self.pki), "--init-pki",
                 "--listen", self.grpc, "--api", self.api_address,
                 "--lease-ttl", str(self.lease_ttl), "--policy", str(self.policy_file),
                 *(["--store", self.store] if self.store else [])],
                cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ))

    async def start(self) -> None:
        """Start it (again) and wait until its API answers."""
        self.process = self.spawn()
        loop = asyncio.get_running_loop()
        give_up = loop.time() + START_TIMEOUT
        while loop.time() < give_up:
            assert self.process.poll() is None, self.log_text()
            with contextlib.suppress(aiohttp.ClientError, OSError):
                # (OSError too: the operator token is written at the first start.)
                if (await self.api("GET", "/status"))[0] == 200:
                    return
            await asyncio.sleep(0.05)
        raise AssertionError(f"control plane {self.grpc} not up:\n{self.log_text()}")

    def kill(self) -> None:
        """Gone at once, without saying goodbye (SIGKILL): the worst case for its clients."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=5)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it does not go within a few seconds."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)

    async def api(self, method: str, path: str, body: str | None = None) -> tuple[int, Any]:
        """A call to the operator API, as the operator (the token from the PKI folder)."""
        token = (self.pki / "operator.token").read_text().strip()
        async with aiohttp.ClientSession() as session, session.request(
                method, f"http://{self.api_address}{path}", data=body,
                timeout=aiohttp.ClientTimeout(5),
                headers={"Authorization": f"Bearer {token}"}) as response:
            return response.status, await response.json()

    async def status(self) -> dict[str, Any]:
        code, data = await self.api("GET", "/status")
        assert code == 200 and isinstance(data, dict), data
        return data

    async def join_token(self, service: str, namespace: str = "default") -> str:
        """A join token from the operator's tool: ``meshctl token create SERVICE`` (it finds
        the operator token in the PKI folder)."""
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "meshctl", "--api", self.api_address, "token", "create",
            service, "--namespace", namespace, cwd=ROOT,
            env={**os.environ, "MESH_PKI_DIR": str(self.pki)},
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(process.communicate(), 30)
        assert process.returncode == 0, err.decode(errors="replace")
        return out.decode().strip()

    async def join_token_file(self, service: str, namespace: str = "default") -> Path:
        """A join token handed over in a file, as compose's mesh-init does."""
        path = self.work / f"{namespace}-{service}-{len(list(self.work.glob('*.token')))}.token"
        path.write_text(await self.join_token(service, namespace))
        return path

    def log_text(self) -> str:
        return "\n".join(p.read_text(errors="replace")
                         for p in sorted(self.work.glob(f"controlplane-{self.host}-*.log")))

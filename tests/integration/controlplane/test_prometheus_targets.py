"""``GET /prometheus/targets``: Prometheus finds every sidecar's ``/metrics`` in the registry.

    Prometheus 127.0.63.1:9090 ──http_sd (Bearer operator token)──▶ operator API 127.0.63.1:15014
        └──scrapes /metrics──▶ sidecars orders 127.0.63.10, payments 127.0.63.11 (admin :15000)
    inventory 127.0.63.12 (admin on 127.0.63.99: not at its address, so not published)

The real Prometheus (Debian's, 2.42) reads the control plane's targets over HTTP service
discovery with the operator token from its file, and scrapes what it found; the route refuses
whoever does not hold that token, a workload's credential included.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import yaml
from aiohttp.test_utils import TestClient, TestServer

from controlplane.api import make_app
from controlplane.operator import OperatorToken
from demo_services import prometheus
from mesh.proto.config_pb2 import Endpoint
from tests.control_plane_process import ControlPlaneProcess
from tests.integration.controlplane.conftest import Mesh
from tests.integration.sidecar.conftest import SidecarProcess, spawn_sidecar, stopping
from tests.interop.xds.harness import until

NET = "127.0.63"
CP_HOST, PROMETHEUS = f"{NET}.1", f"{NET}.1:9090"
SIDECARS = {"orders": f"{NET}.10", "payments": f"{NET}.11"}  # admin on their own address
HIDDEN = ("inventory", f"{NET}.12", f"{NET}.99:15000")  # service, address, admin elsewhere
DISCOVERED_WITHIN = 30.0  # seconds for Prometheus to discover and scrape both (shared machine)


async def joining_sidecar(cp: ControlPlaneProcess, service: str, host: str,
                          *args: str) -> SidecarProcess:
    return spawn_sidecar(service, host, cp.work, "--service", service, "--namespace", "shop",
                         "--control-plane", cp.grpc, "--bootstrap-ca", str(cp.pki / "ca.crt"),
                         "--join-token-file", str(await cp.join_token_file(service, "shop")),
                         "--cert-dir", str(cp.work / service), *args)


@contextlib.contextmanager
def prometheus_server(work: Path, api: str, token_file: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Prometheus discovering its targets at ``api``'s /prometheus/targets; stopped by PID."""
    config = work / "prometheus.yml"
    config.write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
        "scrape_configs": [{"job_name": "mesh", "http_sd_configs": [{
            "url": f"http://{api}/prometheus/targets", "refresh_interval": "1s",
            "authorization": {"type": "Bearer", "credentials_file": str(token_file)}}]}],
    }))
    binary = shutil.which("prometheus")
    assert binary is not None
    with (work / "prometheus.log").open("ab") as log:
        process = subprocess.Popen(
            prometheus.argv(binary, str(config), str(work / "prometheus-data"), PROMETHEUS),
            stdout=log, stderr=subprocess.STDOUT)
    try:
        yield process
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


@pytest_asyncio.fixture
async def cp(tmp_path: Path) -> AsyncIterator[ControlPlaneProcess]:
    process = ControlPlaneProcess(tmp_path, CP_HOST)
    await process.start()
    try:
        yield process
    finally:
        process.stop()


@pytest.mark.interop
@pytest.mark.timeout(120)
async def test_prometheus_discovers_and_scrapes_every_published_sidecar(
        cp: ControlPlaneProcess, tmp_path: Path) -> None:
    if shutil.which("prometheus") is None:
        pytest.skip("Debian's prometheus is not installed (scripts/env.sh installs it)")
    service, host, admin = HIDDEN
    sidecars = [await joining_sidecar(cp, name, address) for name, address in SIDECARS.items()]
    sidecars.append(await joining_sidecar(cp, service, host, "--admin", admin))
    with stopping(sidecars):
        await asyncio.gather(*(s.wait_ready() for s in sidecars[:2]))

        async def all_registered() -> bool:
            rows = [(await cp.api("GET", f"/endpoints/{name}"))[1]
                    for name in (*SIDECARS, service)]
            return all(len(found) == 1 for found in rows)

        await until(all_registered, what="every sidecar registered", timeout=20)
        (orders,) = (await cp.api("GET", "/endpoints/orders"))[1]
        assert (orders["address"], orders["port"], orders["admin_port"]) == \
            (SIDECARS["orders"], 15006, 15000)
        (hidden,) = (await cp.api("GET", f"/endpoints/{service}"))[1]
        assert hidden["admin_port"] == 0  # its admin is not at its address

        with prometheus_server(tmp_path, cp.api_address, cp.pki / "operator.token") as server:
            async def both_up() -> bool:
                assert server.poll() is None, (tmp_path / "prometheus.log").read_text()
                with contextlib.suppress(OSError, ValueError):
                    found = await asyncio.to_thread(prometheus.targets, PROMETHEUS)
                    return len(found) == 2 and all(t["health"] == "up" for t in found)
                return False

            try:
                await until(both_up, what="Prometheus scraping both sidecars",
                            timeout=DISCOVERED_WITHIN, every=0.5)
            except AssertionError:
                raise AssertionError((tmp_path / "prometheus.log").read_text()) from None
            found = await asyncio.to_thread(prometheus.targets, PROMETHEUS)

    scraped = {(t["scrapeUrl"], t["labels"]["service"], t["labels"]["namespace"],
                t["labels"]["mesh_instance"]) for t in found}
    assert scraped == {(f"http://{address}:15000/metrics", name, "shop",
                        f"shop/{name}@{address}:15006") for name, address in SIDECARS.items()}


async def test_the_targets_are_every_instance_that_published_an_admin_port(mesh: Mesh) -> None:
    registry = mesh.cp.registry
    for service, address, port, admin_port in [("orders", "127.0.0.1", 15006, 15000),
                                               ("orders", "::1", 15006, 15000),
                                               ("payments", "127.0.0.1", 15007, 0)]:
        await registry.register(service, Endpoint(address=address, port=port,
                                                  admin_port=admin_port),
                                mesh.identity(service, "shop"), address)
    async with TestClient(TestServer(make_app(mesh.cp), host="127.0.0.1"),
                          headers=mesh.operator_headers) as http:
        response = await http.get("/prometheus/targets")
        assert response.status == 200
        targets: list[dict[str, Any]] = await response.json()
    assert targets == [
        {"targets": ["127.0.0.1:15000"], "labels": {
            "service": "orders", "namespace": "shop",
            "mesh_instance": "shop/orders@127.0.0.1:15006"}},
        {"targets": ["[::1]:15000"], "labels": {
            "service": "orders", "namespace": "shop", "mesh_instance": "shop/orders@::1:15006"}},
    ]


async def test_the_targets_are_refused_without_the_operator_token(
        mesh: Mesh, tmp_path: Path) -> None:
    async with TestClient(TestServer(make_app(mesh.cp), host="127.0.0.1")) as http:
        join_token = (await (await http.post("/tokens", json={"service": "orders"},
                                             headers=mesh.operator_headers)).json())["token"]
        other_mesh = tmp_path / "other-mesh-operator.token"
        OperatorToken.load_or_create(other_mesh)
        attempts = {
            "no token": {},
            "a wrong token": {"Authorization": "Bearer not-the-token"},
            # Someone else's credentials: a workload's join token, another mesh's operator's.
            "a join token": {"Authorization": f"Bearer {join_token}"},
            "another mesh's operator token": {
                "Authorization": f"Bearer {other_mesh.read_text().strip()}"},
        }
        for who, headers in attempts.items():
            response = await http.get("/prometheus/targets", headers=headers)
            assert response.status == 401, who
            assert "the operator API needs 'Authorization: Bearer <operator token>'" in \
                (await response.json())["error"]
        metrics = await (await http.get("/metrics")).text()
    assert 'mesh_controlplane_refused_total{call="OperatorAPI",reason="wrong_credential"} 3.0' \
        in metrics
    assert await mesh.cp.tokens.redeem(join_token) is not None  # not spent by the attempt

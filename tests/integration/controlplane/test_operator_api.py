"""The operator API over real HTTP, and meshctl against a real control-plane process."""

from __future__ import annotations

import logging
import os
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from certs.pki import create_ca, issue_workload, load_ca, write_workload
from controlplane.api import make_app
from controlplane.operator import OperatorCredentialError, OperatorToken
from mesh.grpc import Channel, GrpcError, StatusCode
from mesh.identity import SpiffeId
from mesh.proto.config_pb2 import Endpoint
from mesh.proto.registry_pb2 import RegisterRequest, RegisterResponse
from mesh.tls import client_context
from tests.integration.controlplane.conftest import Mesh

ROOT = Path(__file__).resolve().parents[3]
GOOD = "clusters:\n- name: orders\n  lb_policy: PEAK_EWMA\n"
BAD = ("clusters:\n- name: orders\n  retry_budget: {retry_ratio: 1.5}\n"
       "routes:\n- name: shop\n  virtual_hosts:\n  - domains: ['*']\n"
       "    routes: [{match: {prefix: /}, route: {cluster: ordres}}]\n")


async def test_a_change_based_on_an_old_version_is_refused_with_both_versions(
        mesh: Mesh) -> None:
    async with TestClient(TestServer(make_app(mesh.cp), host="127.0.0.1"),
                          headers=mesh.operator_headers) as http:
        assert (await http.post("/policy", data=GOOD)).status == 200  # version 1
        response = await http.post("/policy", data=GOOD.replace("PEAK_EWMA", "LEAST_REQUEST"),
                                   headers={"If-Match": '"1"'})
        assert response.status == 200 and await response.json() == {"version": 2}
        # Another operator, who read version 1 too, applies theirs: refused, nothing lost.
        response = await http.post("/policy", data=GOOD.replace("PEAK_EWMA", "RANDOM"),
                                   headers={"If-Match": "1"})
        assert response.status == 409
        assert await response.json() == {
            "error": "policy changed: this change was based on version 1, the policy is now at "
                     "version 2; read it and apply again", "version": 2}
        assert mesh.cp.policy.current[0] == 2
        response = await http.post("/policy", data=GOOD, headers={"If-Match": "two"})
        assert response.status == 400 and "If-Match 'two'" in (await response.json())["error"]


async def test_readyz_says_whether_the_replica_follows_its_store(mesh: Mesh) -> None:
    async with TestClient(TestServer(make_app(mesh.cp), host="127.0.0.1")) as http:
        response = await http.get("/readyz")  # no credential needed, as /healthz
        assert response.status == 200 and await response.text() == "ready\n"
        status = await (await http.get("/status", headers=mesh.operator_headers)).json()
        assert status["replica"]["store"] == "memory" and status["replica"]["ready"]
        assert [r["name"] for r in status["replicas"]] == [mesh.cp.name]


async def test_post_policy_applies_a_good_one_and_explains_a_bad_one(mesh: Mesh) -> None:
    async with TestClient(TestServer(make_app(mesh.cp), host="127.0.0.1"),
                          headers=mesh.operator_headers) as http:
        response = await http.post("/policy?source=shop.yaml", data=GOOD)
        assert response.status == 200 and await response.json() == {"version": 1}
        response = await http.post("/policy?source=shop.yaml", data=BAD)
        assert response.status == 400
        error = (await response.json())["error"]
        assert error.splitlines() == [
            "shop.yaml: clusters[0].retry_budget.retry_ratio: 1.5 is outside 0..1 (a fraction "
            "of requests)",
            "shop.yaml: routes[0].virtual_hosts[0].routes[0].route.cluster: unknown cluster "
            "'ordres' (the policy declares: orders)"]
        response = await http.post("/policy", data="clusters: [\n")
        assert response.status == 400
        assert (await response.json())["error"].startswith("api: YAML syntax error at line 2")

        policy = await (await http.get("/policy")).text()  # the good one is still in force
        assert policy.startswith("# version 1\n") and "lb_policy: PEAK_EWMA" in policy
        status = await (await http.get("/status")).json()
        assert status["policy_version"] == 1
        assert status["policy_error"].startswith("api: YAML syntax error")
        metrics = await (await http.get("/metrics")).text()
        assert "mesh_controlplane_policy_rejections_total 2.0" in metrics
        assert await (await http.get("/services")).json() == [
            {"service": "orders", "namespace": "default", "instances": 0, "healthy": 0}]


async def test_tokens_are_made_for_a_valid_service_account_only(mesh: Mesh) -> None:
    async with TestClient(TestServer(make_app(mesh.cp), host="127.0.0.1"),
                          headers=mesh.operator_headers) as http:
        response = await http.post("/tokens", json={"service": "orders", "namespace": "shop"})
        body = await response.json()
        assert body["identity"] == "spiffe://cluster.local/ns/shop/sa/orders"
        assert await mesh.cp.tokens.redeem(body["token"]) == \
            mesh.identity("orders", "shop")
        response = await http.post("/tokens", json={"service": "or/ders"})
        assert response.status == 400
        assert "service='or/ders'" in (await response.json())["error"]


@pytest.mark.parametrize("credential", [None, "Bearer not-the-token", "Basic b3A6b3A=",
                                        "Bearer ", "the-token-without-its-scheme"])
async def test_the_operator_api_refuses_a_caller_without_the_operator_token(
        mesh: Mesh, credential: str | None, caplog: pytest.LogCaptureFixture) -> None:
    headers = {} if credential is None else {"Authorization": credential}
    if credential == "the-token-without-its-scheme":
        headers["Authorization"] = mesh.operator_headers["Authorization"].split()[1]
    async with TestClient(TestServer(make_app(mesh.cp), host="127.0.0.1"),
                          headers=headers) as http:
        with caplog.at_level(logging.WARNING, "controlplane"):
            for method, path in (("POST", "/tokens"), ("POST", "/policy"), ("GET", "/status"),
                                 ("GET", "/policy"), ("GET", "/services"),
                                 ("GET", "/endpoints/orders"), ("GET", "/nothing")):
                response = await http.request(method, path, data=GOOD)
                assert response.status == 401, (method, path)
                assert response.headers["WWW-Authenticate"].startswith("Bearer")
                error = (await response.json())["error"]
                assert "the operator API needs 'Authorization: Bearer <operator token>'" in error
                assert str(mesh.cp.operator_token_file) in error  # where to find it
                if credential:
                    assert credential.split()[-1] not in error or credential == "Bearer "
            # What anyone may read: the metrics and a liveness probe.
            assert (await http.get("/healthz")).status == 200
            metrics = await (await http.get("/metrics")).text()
    assert await mesh.cp.tokens.outstanding() == 0 and mesh.cp.policy.current[0] == 0
    reason = "no_credential" if credential in (None, "Basic b3A6b3A=", "Bearer ",
                                               "the-token-without-its-scheme") \
        else "wrong_credential"
    assert f'mesh_controlplane_refused_total{{call="OperatorAPI",reason="{reason}"}} 7.0' \
        in metrics
    assert "POST '/tokens' from 127.0.0.1 refused" in caplog.text


async def test_every_accepted_change_is_audited_with_the_credential_that_made_it(
        mesh: Mesh, caplog: pytest.LogCaptureFixture) -> None:
    async with TestClient(TestServer(make_app(mesh.cp), host="127.0.0.1"),
                          headers=mesh.operator_headers) as http:
        with caplog.at_level(logging.INFO, "controlplane.audit"):
            token = (await (await http.post("/tokens", json={"service": "orders",
                                                              "ttl": 30})).json())["token"]
            assert (await http.post("/policy?source=ops.yaml", data=GOOD)).status == 200
    fingerprint = mesh.cp.operator.fingerprint
    assert fingerprint.startswith("sha256:") and len(fingerprint) == 19
    lines = [r.getMessage() for r in caplog.records if r.name == "controlplane.audit"]
    assert lines == [
        f"join token minted for spiffe://cluster.local/ns/default/sa/orders (valid 30s) by "
        f"operator token {fingerprint} from 127.0.0.1",
        f"policy version 1 applied from ops.yaml by operator token {fingerprint} from "
        f"127.0.0.1"]
    assert token not in caplog.text
    assert mesh.cp.operator_token_file.read_text().strip() not in caplog.text


def test_the_operator_token_is_made_private_and_a_readable_one_is_refused(
        tmp_path: Path) -> None:
    token_file = tmp_path / "operator.token"
    made = OperatorToken.load_or_create(token_file)
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert OperatorToken.load_or_create(token_file).fingerprint == made.fingerprint  # kept
    assert made.accepts(token_file.read_text().strip()) and not made.accepts("guess")
    token_file.chmod(0o644)
    with pytest.raises(OperatorCredentialError, match=r"may be read by others .* chmod 600"):
        OperatorToken.load_or_create(token_file)
    token_file.chmod(0o600)
    token_file.write_text("\n")
    with pytest.raises(OperatorCredentialError, match="empty"):
        OperatorToken.load_or_create(token_file)
    link = tmp_path / "planted.token"
    link.symlink_to(token_file)  # a token file planted as a link to one of ours, say
    with pytest.raises(OperatorCredentialError, match="a symlink is refused"):
        OperatorToken.load_or_create(link)


@pytest.mark.parametrize("ttl", ["NaN", "Infinity", "1e999", "0", "-5", "86401"])
async def test_a_join_token_always_expires(mesh: Mesh, ttl: str) -> None:
    async with TestClient(TestServer(make_app(mesh.cp), host="127.0.0.1"),
                          headers=mesh.operator_headers) as http:
        response = await http.post("/tokens", data=f'{{"service": "orders", "ttl": {ttl}}}')
        assert response.status == 400
        assert "a join token lives more than 0 and at most 86400 seconds" in \
            (await response.json())["error"]
    assert await mesh.cp.tokens.outstanding() == 0


# ------------------------------------------------------------------ a real control plane

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Process:
    """A ``python -m controlplane`` process and its addresses."""

    popen: subprocess.Popen[str]
    grpc_port: int
    api: str
    pki: Path


def start_controlplane(tmp: Path, policy: Path) -> Process:
    api = f"127.0.0.1:{free_port()}"
    popen = subprocess.Popen(
        [sys.executable, "-m", "controlplane", "--pki-dir", str(tmp / "pki"), "--init-pki",
         "--listen", "127.0.0.1:0", "--api", api, "--policy", str(policy),
         "--log-level", "WARNING"],
        cwd=tmp, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    assert popen.stdout is not None
    line = popen.stdout.readline()  # "control plane: gRPC on 127.0.0.1:PORT, API on http://..."
    if not line.startswith("control plane: gRPC on"):
        popen.kill()
        raise AssertionError(f"the control plane did not start: {line}{popen.communicate()}")
    grpc_port = int(line.split(",")[0].rsplit(":", 1)[1])
    return Process(popen, grpc_port, api, tmp / "pki")


@pytest.fixture
def controlplane(tmp_path: Path) -> Iterator[Process]:
    policy = tmp_path / "policy"
    policy.mkdir()
    (policy / "10-clusters.yaml").write_text(GOOD)
    process = start_controlplane(tmp_path, policy)
    try:
        yield process
    finally:
        process.popen.terminate()
        try:
            process.popen.wait(10)
        except subprocess.TimeoutExpired:
            process.popen.kill()
            process.popen.wait(5)


def meshctl(process: Process, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "meshctl", "--api", process.api, *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=30,
                          env={**os.environ, "MESH_PKI_DIR": str(process.pki)})


def test_meshctl_apply_shows_every_problem_with_file_and_field(controlplane: Process,
                                                               tmp_path: Path) -> None:
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text(GOOD + "- name: payments\n")
    bad.write_text(BAD)
    applied = meshctl(controlplane, "apply", "-f", str(good))
    assert applied.returncode == 0, applied.stderr
    assert applied.stdout == f"applied {good}: policy version 2\n"

    refused = meshctl(controlplane, "apply", "-f", str(bad))
    assert refused.returncode == 1
    assert f"{bad}: clusters[0].retry_budget.retry_ratio: 1.5 is outside 0..1" in refused.stderr
    assert f"{bad}: routes[0].virtual_hosts[0].routes[0].route.cluster: unknown cluster " \
           f"'ordres'" in refused.stderr
    assert "HTTP 400" in refused.stderr

    policy = meshctl(controlplane, "policy")
    assert policy.stdout.startswith("# version 2\n") and "name: payments" in policy.stdout
    status = meshctl(controlplane, "status")
    assert "policy version 2" in status.stdout
    assert f"last policy rejected:\n{bad}: clusters[0].retry_budget" in status.stdout


def test_the_process_hot_reloads_its_policy_folder(controlplane: Process,
                                                   tmp_path: Path) -> None:
    folder = tmp_path / "policy"
    (folder / "20-more.yaml").write_text("clusters:\n- name: payments\n")
    deadline = time.monotonic() + 10
    while "name: payments" not in meshctl(controlplane, "policy").stdout:
        assert time.monotonic() < deadline, "the new file was not picked up"
        time.sleep(0.1)
    (folder / "20-more.yaml").write_text("clusters:\n- name: payments\n  timeout: -5s\n")
    while "last policy rejected" not in (status := meshctl(controlplane, "status").stdout):
        assert time.monotonic() < deadline, "the bad file was not noticed"
        time.sleep(0.1)
    assert f"{folder / '20-more.yaml'}: clusters[0].timeout: must be positive, not -5s" in status
    assert "policy version 2" in status  # the good one stays in force
    services = meshctl(controlplane, "services")
    assert services.stdout.split() == ["SERVICE", "NAMESPACE", "INSTANCES", "HEALTHY",
                                       "orders", "default", "0", "0",
                                       "payments", "default", "0", "0"]


def test_meshctl_token_create_prints_a_single_use_token(controlplane: Process) -> None:
    created = meshctl(controlplane, "token", "create", "orders", "--namespace", "shop")
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()
    assert len(token) >= 32
    assert "(single use, for spiffe://cluster.local/ns/shop/sa/orders)" in created.stderr


def test_a_bad_policy_stops_the_control_plane_at_start(tmp_path: Path) -> None:
    policy = tmp_path / "mesh.yaml"
    policy.write_text("clusters:\n- name: orders\n  lb_policy: LEAST_CONN\n")
    result = subprocess.run(
        [sys.executable, "-m", "controlplane", "--pki-dir", str(tmp_path / "pki"),
         "--init-pki", "--listen", "127.0.0.1:0", "--api", f"127.0.0.1:{free_port()}",
         "--policy", str(policy)],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True,
        text=True, timeout=30)
    assert result.returncode == 2
    assert f"controlplane: policy rejected:\n{policy}: clusters[0].lb_policy: unknown value " \
           f"'LEAST_CONN'" in result.stderr


def test_meshctl_explains_an_unreachable_control_plane() -> None:
    result = subprocess.run([sys.executable, "-m", "meshctl", "--api",
                             f"127.0.0.1:{free_port()}", "status"],
                            cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert "meshctl: cannot reach the control plane at 127.0.0.1:" in result.stderr


async def test_the_process_registers_over_mtls_and_logs_a_refused_handshake(
        controlplane: Process, tmp_path: Path) -> None:
    ca = load_ca(controlplane.pki)
    identity = SpiffeId(trust_domain=ca.trust_domain, namespace="shop", service="orders")
    cert, key = write_workload(issue_workload(ca, identity, timedelta(hours=1)),
                               tmp_path / "orders")
    channel = Channel("127.0.0.1", controlplane.grpc_port, authority="controlplane",
                      ssl=client_context(cert, key, controlplane.pki / "ca.crt"))
    try:
        register = channel.unary_unary("/mesh.v1.Registry/Register",
                                       RegisterResponse.FromString)
        response = await register(RegisterRequest(
            service="orders", endpoint=Endpoint(address="127.0.0.1", port=15006)), timeout=5)
        assert response.instance == "shop/orders@127.0.0.1:15006"
    finally:
        await channel.close()
    endpoints = meshctl(controlplane, "endpoints", "orders").stdout.splitlines()
    assert endpoints[0].split()[:5] == ["INSTANCE", "NAMESPACE", "ADDRESS", "PORT", "WEIGHT"]
    assert endpoints[1].split()[:5] == ["shop/orders@127.0.0.1:15006", "shop", "127.0.0.1",
                                        "15006", "1"]

    rogue = create_ca(trust_domain=ca.trust_domain)
    cert, key = write_workload(issue_workload(rogue, identity, timedelta(hours=1)),
                               tmp_path / "rogue")
    channel = Channel("127.0.0.1", controlplane.grpc_port, authority="controlplane",
                      ssl=client_context(cert, key, controlplane.pki / "ca.crt"))
    try:
        register = channel.unary_unary("/mesh.v1.Registry/Register",
                                       RegisterResponse.FromString)
        with pytest.raises(GrpcError) as refused:
            await register(RegisterRequest(
                service="orders", endpoint=Endpoint(address="127.0.0.1", port=15007)),
                timeout=5)
        assert refused.value.code == StatusCode.UNAVAILABLE
    finally:
        await channel.close()
    assert len(meshctl(controlplane, "endpoints", "orders").stdout.splitlines()) == 2  # unchanged
    controlplane.popen.terminate()
    _, stderr = controlplane.popen.communicate(timeout=10)
    assert "TLS handshake from 127.0.0.1:" in stderr
    assert "failed: client certificate refused: not issued by the mesh CA" in stderr

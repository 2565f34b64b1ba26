"""``meshctl proxyless`` for real: a join token from the operator API (or an operator), a
certificate from the control plane's gRPC port, and its renewal into the files gRPC watches."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import stat
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from certs.pki import CertificateAuthority
from controlplane.api import start_api
from controlplane.server import ControlPlane
from mesh.grpc import GrpcError, StatusCode
from sidecar.identity import CertificateFiles
from tests.integration.controlplane.conftest import Mesh

ROOT = Path(__file__).resolve().parents[3]


@dataclass
class Meshctl:
    """``meshctl proxyless`` against one control plane and its operator API."""

    cp: ControlPlane
    api: str
    ca: Path
    cwd: Path

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "meshctl", "--api", self.api, "proxyless", *args,
                "--control-plane", f"127.0.0.1:{self.cp.port}", "--bootstrap-ca", str(self.ca)]

    def env(self, *, operator: bool = True, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MESH_", "DEMO_"))}
        if operator:
            env["MESH_OPERATOR_TOKEN_FILE"] = str(self.cp.operator_token_file)
        return {**env, "PYTHONPATH": str(ROOT), **extra}

    async def run(self, *args: str, operator: bool = True,
                  **extra: str) -> tuple[int, str, str]:
        process = await asyncio.create_subprocess_exec(
            *self.argv(*args), cwd=self.cwd, env=self.env(operator=operator, **extra),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        stdout, stderr = await asyncio.wait_for(process.communicate(), 30)
        assert process.returncode is not None
        return process.returncode, stdout.decode(), stderr.decode()


@asynccontextmanager
async def operator_api(cp: ControlPlane, cwd: Path) -> AsyncIterator[Meshctl]:
    """``cp``'s operator API on a free loopback port, and meshctl aimed at both."""
    runner = await start_api(cp, "127.0.0.1", 0)
    host, port = runner.addresses[0][:2]
    try:
        yield Meshctl(cp, f"{host}:{port}", cp.pki_dir / "ca.crt", cwd)
    finally:
        await runner.cleanup()


@pytest.fixture
async def meshctl(mesh: Mesh, tmp_path: Path) -> AsyncIterator[Meshctl]:
    async with operator_api(mesh.cp, tmp_path) as meshctl:
        yield meshctl


@pytest.fixture
async def short_lived(pki: tuple[Path, CertificateAuthority],
                      tmp_path: Path) -> AsyncIterator[Meshctl]:
    """A control plane whose certificates expire 3 s after they are issued (the issuer
    starts them a minute early, for clock skew, so they are 63 s long): past 70 % of their
    lifetime at once, so renewed every second (``Rotation``'s shortest wait)."""
    cp = ControlPlane(pki[0], cert_validity=timedelta(seconds=3))
    await cp.start("127.0.0.1", 0)
    try:
        async with operator_api(cp, tmp_path) as meshctl:
            yield meshctl
    finally:
        await cp.stop()


def check_pair(files: CertificateFiles, ca: CertificateAuthority,
               identity: str) -> x509.Certificate:
    """The certificate proves ``identity``, was issued by the mesh CA, and is the key's."""
    certificate = x509.load_pem_x509_certificate(files.cert.read_bytes())
    assert str(files.identity()) == identity
    certificate.verify_directly_issued_by(ca.certificate)
    key = serialization.load_pem_private_key(files.key.read_bytes(), password=None)
    assert key.public_key() == certificate.public_key()
    assert files.ca.read_bytes() == ca.certificate.public_bytes(serialization.Encoding.PEM)
    return certificate


async def enroll_billing(meshctl: Meshctl, mesh: Mesh,
                         tmp_path: Path) -> tuple[Path, int, str]:
    """``meshctl proxyless billing --out billing`` with a token an operator handed over in a
    file: the file, the exit code and stderr."""
    token_file = tmp_path / "join.token"
    token_file.write_text(await mesh.cp.tokens.create(mesh.identity("billing")) + "\n")
    code, _, stderr = await meshctl.run("billing", "--join-token-file", str(token_file),
                                        "--out", "billing", operator=False)
    return token_file, code, stderr


async def test_proxyless_mints_a_token_and_writes_what_grpcio_needs(
        meshctl: Meshctl, mesh: Mesh, tmp_path: Path) -> None:
    code, stdout, stderr = await meshctl.run("orders", "--namespace", "shop", "--zone", "z1")
    assert code == 0, stderr
    out = tmp_path / ".mesh/proxyless/shop/orders"
    assert stdout.splitlines()[1:] == [
        f"export GRPC_XDS_BOOTSTRAP={out}/bootstrap.json",
        "# target: xds:///orders (a server: grpc.server(executor, xds=True) with "
        "grpc.xds_server_credentials)"]
    files = CertificateFiles(out / "cert.pem", out / "key.pem", out / "ca.pem")
    check_pair(files, mesh.ca, "spiffe://cluster.local/ns/shop/sa/orders")
    assert stat.S_IMODE(files.key.stat().st_mode) == 0o600
    assert await mesh.cp.tokens.outstanding() == 0  # the token it minted was spent

    bootstrap = json.loads((out / "bootstrap.json").read_text())
    server = bootstrap["xds_servers"][0]
    assert server["server_uri"] == f"127.0.0.1:{mesh.cp.port}"
    assert server["channel_creds"][0]["config"]["certificate_file"] == str(files.cert)
    assert bootstrap["certificate_providers"]["mesh"]["config"]["private_key_file"] == \
        str(files.key)
    node = bootstrap["node"]
    assert (node["cluster"], node["metadata"], node["locality"]) == \
        ("orders", {"NAMESPACE": "shop"}, {"zone": "z1"})
    assert node["id"].startswith("shop/orders@proxyless-")


async def test_a_token_handed_over_is_spent_and_refused_the_second_time(
        meshctl: Meshctl, mesh: Mesh, tmp_path: Path) -> None:
    token_file, code, stderr = await enroll_billing(meshctl, mesh, tmp_path)
    assert code == 0, stderr
    out = tmp_path / "billing"
    check_pair(CertificateFiles(out / "cert.pem", out / "key.pem", out / "ca.pem"), mesh.ca,
               "spiffe://cluster.local/ns/default/sa/billing")
    with pytest.raises(GrpcError) as spent:  # single use
        await mesh.cp.tokens.redeem(token_file.read_text().strip())
    assert spent.value.code == StatusCode.PERMISSION_DENIED

    code, stdout, stderr = await meshctl.run("billing", "--join-token-file", str(token_file),
                                             "--out", "again", operator=False)
    assert code == 1 and stdout == ""
    assert f"meshctl proxyless: the control plane at 127.0.0.1:{mesh.cp.port} refused the " \
           f"join token: PERMISSION_DENIED: join token unknown or already used" in stderr
    assert "Traceback" not in stderr
    assert not (tmp_path / "again" / "cert.pem").exists()


async def test_a_restart_keeps_a_valid_certificate_instead_of_a_spent_token(
        meshctl: Meshctl, mesh: Mesh, tmp_path: Path) -> None:
    # An agent restarted with the environment it started with (its token long spent): the
    # certificate in its folder is still good, so it is kept and no token is asked for.
    token_file, code, stderr = await enroll_billing(meshctl, mesh, tmp_path)
    assert code == 0, stderr
    files = CertificateFiles(*(tmp_path / "billing" / n for n in ("cert.pem", "key.pem",
                                                                  "ca.pem")))
    first = files.cert.read_bytes()
    code, stdout, stderr = await meshctl.run("billing", "--join-token-file", str(token_file),
                                             "--out", "billing", operator=False)
    assert code == 0, stderr
    assert "keeping the certificate of spiffe://cluster.local/ns/default/sa/billing" in stderr
    assert files.cert.read_bytes() == first and "export GRPC_XDS_BOOTSTRAP=" in stdout
    # Another identity's folder is not taken for this one's: that needs a token (spent here).
    code, _, stderr = await meshctl.run("orders", "--join-token-file", str(token_file),
                                        "--out", "billing", operator=False)
    assert code == 1 and "refused the join token" in stderr


async def test_a_wrong_token_is_refused_and_the_token_is_read_from_the_environment(
        meshctl: Meshctl, tmp_path: Path) -> None:
    code, _, stderr = await meshctl.run("orders", operator=False, MESH_JOIN_TOKEN="f" * 48)
    assert code == 1
    assert "refused the join token: PERMISSION_DENIED" in stderr and "Traceback" not in stderr
    assert not (tmp_path / ".mesh/proxyless/default/orders/cert.pem").exists()


async def test_without_an_operator_token_it_says_how_to_join_instead(
        meshctl: Meshctl, mesh: Mesh, tmp_path: Path) -> None:
    code, stdout, stderr = await meshctl.run("orders", operator=False)
    assert code == 1 and stdout == ""
    # (The control plane under test is on 127.0.0.1, which every workload certificate names:
    # meshctl says so first.)
    assert stderr.splitlines()[0].startswith(
        "meshctl proxyless: grpcio checks the control plane at 127.0.0.1:")
    assert stderr.split("\n", 1)[1] == (
        f"meshctl proxyless: no operator token to ask the operator API at {meshctl.api} for "
        f"a join token: set MESH_OPERATOR_TOKEN_FILE, or have an operator run `meshctl token "
        f"create orders --namespace default` and pass that token with --join-token-file FILE "
        f"or MESH_JOIN_TOKEN\n")
    wrong = tmp_path / "wrong.token"
    wrong.write_text("not-the-operator-token\n")
    code, _, stderr = await meshctl.run("orders", operator=False,
                                        MESH_OPERATOR_TOKEN_FILE=str(wrong))
    assert code == 1
    assert "meshctl proxyless: no join token from the operator API: POST /tokens: HTTP 401" \
        in stderr
    assert f"(meshctl sent the token in {wrong})" in stderr and "Traceback" not in stderr
    assert await mesh.cp.tokens.outstanding() == 0 and not (tmp_path / ".mesh").exists()


async def test_renew_replaces_the_pair_before_it_expires_until_sigterm(
        short_lived: Meshctl, pki: tuple[Path, CertificateAuthority], tmp_path: Path) -> None:
    process = await asyncio.create_subprocess_exec(
        *short_lived.argv("orders", "--renew", "--out", "out"), cwd=tmp_path,
        env=short_lived.env(), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out = tmp_path / "out"
    files = CertificateFiles(out / "cert.pem", out / "key.pem", out / "ca.pem")
    try:
        seen: list[int] = []
        async with asyncio.timeout(20):
            while len(seen) < 3:  # the first certificate and two renewals
                await asyncio.sleep(0.05)
                if files.cert.exists():  # every pair read is whole, and the mesh's
                    certificate = check_pair(files, pki[1],
                                             "spiffe://cluster.local/ns/default/sa/orders")
                    if certificate.serial_number not in seen:
                        seen.append(certificate.serial_number)
        generations = [p.name for p in out.iterdir() if p.is_dir() and not p.is_symlink()]
        assert len(generations) == 2  # the current one and the one before
    finally:
        process.send_signal(signal.SIGTERM)
        stdout, stderr = await asyncio.wait_for(process.communicate(), 10)
    assert process.returncode == 0, stderr
    assert b"export GRPC_XDS_BOOTSTRAP=" in stdout
    assert stderr.count(b"certificate renewed") >= 2
    assert b"stopped; the certificate stays valid until" in stderr

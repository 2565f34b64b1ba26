"""Tests for certs.pki: the CA, workload certificates, CSR signing, and the files on disk."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from datetime import timedelta
from ipaddress import IPv4Address
from pathlib import Path
from typing import TypeVar

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store

from certs import pki
from mesh.identity import SpiffeId
from tests.unit.certs.conftest import NOW

ROOT = Path(__file__).resolve().parents[3]
E = TypeVar("E", bound=x509.ExtensionType)


def extension(cert: x509.Certificate, kind: type[E]) -> x509.Extension[E]:
    return cert.extensions.get_extension_for_class(kind)


def uris(cert: x509.Certificate) -> list[str]:
    """The certificate's URI SANs."""
    sans = extension(cert, x509.SubjectAlternativeName).value
    return sans.get_values_for_type(x509.UniformResourceIdentifier)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# The CA


def test_ca_is_a_self_signed_p256_certificate_authority(ca: pki.CertificateAuthority) -> None:
    cert = ca.certificate
    cert.verify_directly_issued_by(cert)
    assert isinstance(ca.private_key.curve, ec.SECP256R1)
    assert cert.subject == cert.issuer
    constraints = extension(cert, x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca
    usage = extension(cert, x509.KeyUsage)
    assert usage.critical and usage.value.key_cert_sign and not usage.value.digital_signature
    assert uris(cert) == ["spiffe://cluster.local"]
    assert ca.trust_domain == "cluster.local"


def test_ca_validity_starts_at_now_and_lasts_seven_days_by_default(
    ca: pki.CertificateAuthority,
) -> None:
    assert ca.certificate.not_valid_before_utc == NOW
    assert ca.certificate.not_valid_after_utc == NOW + timedelta(days=7)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"trust_domain": "Cluster.Local"}, "invalid trust domain 'Cluster.Local': may hold only"),
        ({"validity": timedelta(0)}, "validity 0s is not positive"),
        ({"now": NOW.replace(tzinfo=None)}, "is naive"),
    ],
)
def test_create_ca_rejects_bad_input(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        pki.create_ca(**kwargs)  # type: ignore[arg-type]


# Workload certificates


def test_workload_certificate_is_signed_by_the_ca(
    ca: pki.CertificateAuthority, checkout: SpiffeId
) -> None:
    workload = pki.issue_workload(ca, checkout, timedelta(hours=1), now=NOW)
    workload.certificate.verify_directly_issued_by(ca.certificate)
    assert workload.spiffe_id == checkout
    assert isinstance(workload.private_key.curve, ec.SECP256R1)
    assert workload.certificate.public_key() == workload.private_key.public_key()
    assert not extension(workload.certificate, x509.BasicConstraints).value.ca


def test_workload_certificate_names_the_spiffe_id_and_loopback(
    ca: pki.CertificateAuthority, checkout: SpiffeId
) -> None:
    cert = pki.issue_workload(ca, checkout, timedelta(hours=1), now=NOW).certificate
    sans = extension(cert, x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.UniformResourceIdentifier) == [str(checkout)]
    assert sans.get_values_for_type(x509.DNSName) == ["checkout", "localhost"]
    assert sans.get_values_for_type(x509.IPAddress) == [IPv4Address("127.0.0.1")]
    eku = extension(cert, x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]


@pytest.mark.parametrize("validity", [timedelta(seconds=30), timedelta(hours=1), timedelta(days=1)])
def test_workload_validity_is_exactly_now_plus_validity(
    ca: pki.CertificateAuthority, checkout: SpiffeId, validity: timedelta
) -> None:
    later = NOW + timedelta(hours=5)
    cert = pki.issue_workload(ca, checkout, validity, now=later).certificate
    assert cert.not_valid_before_utc == later
    assert cert.not_valid_after_utc == later + validity


def test_workload_certificate_passes_a_strict_verifier_as_server_and_client(
    ca: pki.CertificateAuthority, checkout: SpiffeId
) -> None:
    cert = pki.issue_workload(ca, checkout, timedelta(hours=1), now=NOW).certificate
    policy = PolicyBuilder().store(Store([ca.certificate])).time(NOW + timedelta(minutes=1))
    policy.build_server_verifier(x509.DNSName("checkout")).verify(cert, [])
    policy.build_server_verifier(x509.IPAddress(IPv4Address("127.0.0.1"))).verify(cert, [])
    verified = policy.build_client_verifier().verify(cert, [])
    assert verified.subjects is not None
    assert x509.UniformResourceIdentifier(str(checkout)) in verified.subjects


# CSRs: the CA decides the identity

ADMIN = "spiffe://cluster.local/ns/kube-system/sa/admin"
EVIL = "evil.example"


def test_sign_csr_ignores_what_the_csr_claims(
    ca: pki.CertificateAuthority, checkout: SpiffeId
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    greedy = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "admin")]))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(ADMIN), x509.DNSName(EVIL)]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert = pki.sign_csr(ca, greedy, checkout, timedelta(hours=1), now=NOW)
    sans = extension(cert, x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.UniformResourceIdentifier) == [str(checkout)]
    assert EVIL not in sans.get_values_for_type(x509.DNSName)
    assert not extension(cert, x509.BasicConstraints).value.ca
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "checkout"
    assert cert.public_key() == key.public_key()


def test_make_csr_claims_the_spiffe_id_and_proves_the_key(checkout: SpiffeId) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = pki.make_csr(key, checkout)
    assert csr.is_signature_valid
    assert csr.public_key() == key.public_key()
    sans = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.UniformResourceIdentifier) == [str(checkout)]


def test_sign_csr_refuses_a_csr_whose_signature_is_wrong(
    ca: pki.CertificateAuthority, checkout: SpiffeId
) -> None:
    csr = pki.make_csr(ec.generate_private_key(ec.SECP256R1()), checkout)
    der = bytearray(csr.public_bytes(serialization.Encoding.DER))
    der[-1] ^= 0x01  # the last byte belongs to the signature
    tampered = x509.load_der_x509_csr(bytes(der))
    with pytest.raises(ValueError, match="signature does not match its public key"):
        pki.sign_csr(ca, tampered, checkout, timedelta(hours=1), now=NOW)


@pytest.mark.parametrize(
    ("curve", "trust_domain", "validity", "message"),
    [
        (ec.SECP384R1(), "cluster.local", timedelta(hours=1), "ECDSA P-256 keys only"),
        (ec.SECP256R1(), "example.org", timedelta(hours=1), "for trust domain 'cluster.local'"),
        (ec.SECP256R1(), "cluster.local", timedelta(hours=-1), "validity -3600s is not positive"),
    ],
)
def test_sign_csr_refuses_what_the_mesh_does_not_issue(
    ca: pki.CertificateAuthority,
    curve: ec.EllipticCurve,
    trust_domain: str,
    validity: timedelta,
    message: str,
) -> None:
    spiffe_id = SpiffeId(trust_domain=trust_domain, namespace="shop", service="checkout")
    csr = pki.make_csr(ec.generate_private_key(curve), spiffe_id)
    with pytest.raises(ValueError, match=re.escape(message)):
        pki.sign_csr(ca, csr, spiffe_id, validity, now=NOW)


@pytest.mark.parametrize(
    ("offset", "validity"),
    [
        (timedelta(seconds=-1), timedelta(hours=1)),  # before the CA exists
        (timedelta(0), timedelta(days=8)),  # would outlive the CA
        (timedelta(days=7), timedelta(seconds=1)),  # the CA has expired
    ],
)
def test_sign_csr_keeps_certificates_inside_the_ca_validity(
    ca: pki.CertificateAuthority, checkout: SpiffeId, offset: timedelta, validity: timedelta
) -> None:
    with pytest.raises(ValueError, match=r"cannot issue .* the CA is valid from"):
        pki.issue_workload(ca, checkout, validity, now=NOW + offset)


# Validity strings


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90s", timedelta(seconds=90)),
        ("15m", timedelta(minutes=15)),
        ("1h", timedelta(hours=1)),
        ("7d", timedelta(days=7)),
    ],
)
def test_parse_validity(text: str, expected: timedelta) -> None:
    assert pki.parse_validity(text) == expected


@pytest.mark.parametrize("text", ["", "1", "h", "0h", "-1h", "1.5h", "1w", "1H", " 1h", "1h30m"])
def test_parse_validity_rejects_and_names_the_input(text: str) -> None:
    with pytest.raises(ValueError, match=f"invalid validity {text!r}: expected a positive"):
        pki.parse_validity(text)


# Files


def test_write_and_load_ca_round_trip(ca: pki.CertificateAuthority, tmp_path: Path) -> None:
    cert_path, key_path = pki.write_ca(ca, tmp_path / "pki")
    assert (cert_path.name, key_path.name) == ("ca.crt", "ca.key")
    assert mode(key_path) == 0o600
    loaded = pki.load_ca(tmp_path / "pki")
    assert loaded.certificate == ca.certificate
    assert loaded.trust_domain == "cluster.local"
    assert loaded.private_key.private_numbers() == ca.private_key.private_numbers()
    assert sorted(p.name for p in (tmp_path / "pki").iterdir()) == ["ca.crt", "ca.key"]


def test_write_ca_refuses_to_replace_a_ca_unless_told(
    ca: pki.CertificateAuthority, tmp_path: Path
) -> None:
    pki.write_ca(ca, tmp_path)
    other = pki.create_ca(now=NOW)
    with pytest.raises(FileExistsError, match=r"ca.crt: a mesh CA already exists"):
        pki.write_ca(other, tmp_path)
    assert pki.load_ca(tmp_path).certificate == ca.certificate
    pki.write_ca(other, tmp_path, overwrite=True)
    assert pki.load_ca(tmp_path).certificate == other.certificate


def test_write_workload_writes_service_files_with_a_private_key(
    ca: pki.CertificateAuthority, checkout: SpiffeId, tmp_path: Path
) -> None:
    workload = pki.issue_workload(ca, checkout, timedelta(hours=1), now=NOW)
    cert_path, key_path = pki.write_workload(workload, tmp_path / "out")
    assert (cert_path.name, key_path.name) == ("checkout.crt", "checkout.key")
    assert mode(key_path) == 0o600
    assert x509.load_pem_x509_certificate(cert_path.read_bytes()) == workload.certificate


def test_a_renewed_key_is_private_even_if_the_old_file_was_not(
    ca: pki.CertificateAuthority, checkout: SpiffeId, tmp_path: Path
) -> None:
    old = tmp_path / "checkout.key"
    old.write_text("old key")
    old.chmod(0o644)
    workload = pki.issue_workload(ca, checkout, timedelta(hours=1), now=NOW)
    _, key_path = pki.write_workload(workload, tmp_path)
    assert key_path == old
    assert mode(key_path) == 0o600
    assert key_path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")


def test_load_ca_explains_a_missing_ca(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"ca.crt: no mesh CA in .*python -m certs init"):
        pki.load_ca(tmp_path)


def test_load_ca_refuses_a_key_that_is_not_the_cas(
    ca: pki.CertificateAuthority, tmp_path: Path
) -> None:
    pki.write_ca(ca, tmp_path)
    _, other_key = pki.write_ca(pki.create_ca(now=NOW), tmp_path / "other")
    other_key.replace(tmp_path / "ca.key")
    with pytest.raises(
        ValueError, match=r"ca.key are not a mesh CA: the private key does not belong"
    ):
        pki.load_ca(tmp_path)


def test_load_ca_refuses_a_workload_certificate(
    ca: pki.CertificateAuthority, checkout: SpiffeId, tmp_path: Path
) -> None:
    workload = pki.issue_workload(ca, checkout, timedelta(hours=1), now=NOW)
    cert_path, key_path = pki.write_workload(workload, tmp_path)
    cert_path.rename(tmp_path / "ca.crt")
    key_path.rename(tmp_path / "ca.key")
    with pytest.raises(ValueError, match=r"are not a mesh CA: not a CA certificate"):
        pki.load_ca(tmp_path)


# The CLI, as a user runs it: ``python -m certs`` in a working directory of their own


def certs_cli(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "certs", *args]
    return subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=30, check=False
    )


def load_cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_cli_init_then_issue(tmp_path: Path) -> None:
    init = certs_cli(tmp_path, "init", "--dir", "pki", "--trust-domain", "prod.mesh")
    assert init.returncode == 0, init.stderr
    assert "CA for trust domain prod.mesh" in init.stdout
    assert mode(tmp_path / "pki" / "ca.key") == 0o600

    issue = certs_cli(tmp_path, "issue", "--dir", "pki", "--service", "checkout")
    assert issue.returncode == 0, issue.stderr
    assert "spiffe://prod.mesh/ns/default/sa/checkout" in issue.stdout
    assert mode(tmp_path / "pki" / "checkout.key") == 0o600
    cert = load_cert(tmp_path / "pki" / "checkout.crt")
    cert.verify_directly_issued_by(load_cert(tmp_path / "pki" / "ca.crt"))
    assert uris(cert) == ["spiffe://prod.mesh/ns/default/sa/checkout"]
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == timedelta(hours=1)


def test_cli_issue_honours_namespace_validity_and_out(tmp_path: Path) -> None:
    assert certs_cli(tmp_path, "init", "--dir", "pki", "--validity", "2d").returncode == 0
    ca = load_cert(tmp_path / "pki" / "ca.crt")
    assert ca.not_valid_after_utc - ca.not_valid_before_utc == timedelta(days=2)

    issue = certs_cli(
        tmp_path, "issue", "--dir", "pki", "--service", "cart",
        "--namespace", "shop", "--validity", "90s", "--out", "workloads/cart",
    )  # fmt: skip
    assert issue.returncode == 0, issue.stderr
    cert = load_cert(tmp_path / "workloads" / "cart" / "cart.crt")
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == timedelta(seconds=90)
    assert uris(cert) == ["spiffe://cluster.local/ns/shop/sa/cart"]
    assert mode(tmp_path / "workloads" / "cart" / "cart.key") == 0o600
    assert not (tmp_path / "pki" / "cart.crt").exists()


def test_cli_init_refuses_to_replace_a_ca_without_force(tmp_path: Path) -> None:
    assert certs_cli(tmp_path, "init", "--dir", "pki").returncode == 0
    first = (tmp_path / "pki" / "ca.crt").read_bytes()

    again = certs_cli(tmp_path, "init", "--dir", "pki")
    assert again.returncode == 1
    assert "a mesh CA already exists" in again.stderr and "--force" in again.stderr
    assert (tmp_path / "pki" / "ca.crt").read_bytes() == first

    forced = certs_cli(tmp_path, "init", "--dir", "pki", "--force")
    assert forced.returncode == 0, forced.stderr
    assert (tmp_path / "pki" / "ca.crt").read_bytes() != first
    assert mode(tmp_path / "pki" / "ca.key") == 0o600


@pytest.mark.parametrize(
    ("args", "status", "message"),
    [
        (["issue", "--dir", "nowhere", "--service", "a"], 1, "no mesh CA in nowhere"),
        (["issue", "--dir", "ca", "--service", "a/b"], 1, "service='a/b': may hold only"),
        (["init", "--dir", "pki", "--validity", "1y"], 2, "invalid validity '1y'"),
        (["init", "--dir", "pki", "--trust-domain", "A:1"], 1, "invalid trust domain 'A:1'"),
        (["init"], 2, "--dir"),
    ],
)
def test_cli_errors_name_the_input(
    tmp_path: Path, args: list[str], status: int, message: str
) -> None:
    assert certs_cli(tmp_path, "init", "--dir", "ca").returncode == 0
    result = certs_cli(tmp_path, *args)
    assert result.returncode == status
    assert message in result.stderr
    assert "Traceback" not in result.stderr

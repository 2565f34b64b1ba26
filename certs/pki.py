"""The mesh PKI library: create a CA, issue workload certificates, sign CSRs, read and write files.

The CA is a self-signed ECDSA P-256 certificate whose URI SAN is the trust domain
(``spiffe://cluster.local``), as the SPIFFE X.509-SVID spec recommends; every sidecar trusts it
and nothing else. A workload certificate carries exactly one SPIFFE ID in its URI SAN, is valid
for hours rather than months (Istio and Linkerd issue for about 24 h and renew before expiry),
and serves both ends of mTLS (EKU serverAuth and clientAuth).

Issuing always goes through a CSR, as a control plane will: the workload proves it holds the
private key by signing the CSR, and the CA writes the SPIFFE ID *it* decided on. What the CSR
claims (subject, SANs, extensions) is ignored, so a workload cannot name itself.

The functions that stamp a validity take ``now`` (a timezone-aware ``datetime``; the wall clock
when omitted), so tests can issue certificates at a fixed instant. Keys are written unencrypted,
PKCS#8 PEM, protected by their file mode: created 0600 from the start, never loosened then
tightened.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mesh.identity import SCHEME, SpiffeId, check_trust_domain

CA_CERT = "ca.crt"
CA_KEY = "ca.key"
KEY_MODE = 0o600  # owner read/write only: a key that others can read is a leaked identity
CERT_MODE = 0o644  # certificates are public
LOOPBACK = ipaddress.IPv4Address("127.0.0.1")

_DURATION = re.compile(r"([1-9][0-9]*)([smhd])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


@dataclass(frozen=True, slots=True, kw_only=True)
class CertificateAuthority:
    """The mesh CA: its certificate and the private key that signs workload certificates.

    ``trust_domain`` is read from the certificate's URI SAN, ``spiffe://<trust-domain>``.

    Raises:
        ValueError: the certificate is not a CA's, names no trust domain, or is not the key's.
    """

    certificate: x509.Certificate
    private_key: ec.EllipticCurvePrivateKey
    trust_domain: str = field(init=False)

    def __post_init__(self) -> None:
        extensions = self.certificate.extensions
        try:
            is_ca = extensions.get_extension_for_class(x509.BasicConstraints).value.ca
            sans = extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound as exc:
            raise ValueError(f"not a mesh CA certificate: {exc}") from exc
        if not is_ca:
            raise ValueError("not a CA certificate: basicConstraints CA is false")
        uris = sans.get_values_for_type(x509.UniformResourceIdentifier)
        if len(uris) != 1 or not uris[0].startswith(SCHEME):
            raise ValueError(f"the CA's URI SANs are {uris}, not one spiffe://<trust-domain>")
        object.__setattr__(self, "trust_domain", check_trust_domain(uris[0][len(SCHEME) :]))
        if self.private_key.public_key() != self.certificate.public_key():
            raise ValueError("the private key does not belong to the certificate")


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkloadCertificate:
    """A workload's certificate (an X.509-SVID), its private key and the identity it proves."""

    certificate: x509.Certificate
    private_key: ec.EllipticCurvePrivateKey
    spiffe_id: SpiffeId


def parse_validity(text: str) -> timedelta:
    """Parse a validity such as ``30s``, ``15m``, ``1h`` or ``7d``.

    Raises:
        ValueError: ``text`` is not a positive whole number followed by s, m, h or d.
    """
    match = _DURATION.fullmatch(text)
    if not match:
        raise ValueError(
            f"invalid validity {text!r}: expected a positive whole number and a unit "
            "s, m, h or d (e.g. 90s, 15m, 1h, 7d)"
        )
    return timedelta(**{_UNITS[match[2]]: int(match[1])})


def create_ca(
    *,
    trust_domain: str = "cluster.local",
    validity: timedelta = timedelta(days=7),
    now: datetime | None = None,
) -> CertificateAuthority:
    """Create a self-signed mesh CA for ``trust_domain``.

    Raises:
        ValueError: the trust domain is not a valid SPIFFE trust domain, ``validity`` is not
            positive, or ``now`` is naive.
    """
    check_trust_domain(trust_domain)
    start = _aware(now)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{trust_domain} mesh CA")])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + _positive(validity))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(key_cert_sign=True), critical=True)
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(SCHEME + trust_domain)]),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return CertificateAuthority(certificate=certificate, private_key=key)


def issue_workload(
    ca: CertificateAuthority,
    spiffe_id: SpiffeId,
    validity: timedelta,
    *,
    now: datetime | None = None,
    hosts: Sequence[str] = (),
) -> WorkloadCertificate:
    """Generate a key for ``spiffe_id`` and have ``ca`` certify it, through a CSR.

    ``hosts`` are more names (or IP addresses) it answers to, as :func:`sign_csr` says.

    Raises:
        ValueError: as :func:`sign_csr`.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    certificate = sign_csr(ca, make_csr(key, spiffe_id), spiffe_id, validity, now=now,
                           hosts=hosts)
    return WorkloadCertificate(certificate=certificate, private_key=key, spiffe_id=spiffe_id)


def make_csr(
    private_key: ec.EllipticCurvePrivateKey, spiffe_id: SpiffeId
) -> x509.CertificateSigningRequest:
    """Build the CSR a workload sends to ask for ``spiffe_id``, signed with its own key."""
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, spiffe_id.service)]))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(str(spiffe_id))]),
            critical=False,
        )
        .sign(private_key, hashes.SHA256())
    )


def check_csr(csr: x509.CertificateSigningRequest, what: str = "CSR") -> None:
    """That the requester holds the key (the CSR's signature verifies) and that it is one the
    mesh certifies (ECDSA P-256): what can be refused before anything is spent on it.

    Raises:
        ValueError: either is not so.
    """
    if not csr.is_signature_valid:
        raise ValueError(f"{what}: its signature does not match its public key")
    public_key = csr.public_key()
    if not (
        isinstance(public_key, ec.EllipticCurvePublicKey)
        and isinstance(public_key.curve, ec.SECP256R1)
    ):
        raise ValueError(f"{what}: the mesh issues ECDSA P-256 keys only")


def sign_csr(
    ca: CertificateAuthority,
    csr: x509.CertificateSigningRequest,
    spiffe_id: SpiffeId,
    validity: timedelta,
    *,
    now: datetime | None = None,
    hosts: Sequence[str] = (),
) -> x509.Certificate:
    """Certify the CSR's public key as ``spiffe_id``; the CSR's own claims are ignored.

    The certificate names ``spiffe_id`` in its URI SAN, and ``spiffe_id.service`` and
    ``localhost`` as DNS SANs and 127.0.0.1 as an IP SAN so that curl and openssl, which check
    host names, can be pointed at a sidecar too. ``hosts`` adds DNS or IP SANs: the control
    plane names the address it serves on, which grpcio's xDS client checks (it verifies host
    names, not SPIFFE IDs).

    Raises:
        ValueError: the CSR's signature is wrong (the requester does not hold the key), its key
            is not ECDSA P-256, ``spiffe_id`` is outside the CA's trust domain, ``validity`` is
            not positive, ``now`` is naive, or the certificate would not fit inside the CA's
            own validity.
    """
    check_csr(csr, f"CSR for {spiffe_id}")
    public_key = csr.public_key()
    if spiffe_id.trust_domain != ca.trust_domain:
        raise ValueError(
            f"cannot issue {spiffe_id}: the CA signs for trust domain {ca.trust_domain!r} only"
        )
    start = _aware(now)
    end = start + _positive(validity)
    ca_cert = ca.certificate
    if start < ca_cert.not_valid_before_utc or end > ca_cert.not_valid_after_utc:
        raise ValueError(
            f"cannot issue {spiffe_id} from {start.isoformat()} to {end.isoformat()}: the CA is "
            f"valid from {ca_cert.not_valid_before_utc.isoformat()} "
            f"to {ca_cert.not_valid_after_utc.isoformat()}"
        )
    sans: list[x509.GeneralName] = [
        x509.UniformResourceIdentifier(str(spiffe_id)),
        x509.DNSName(spiffe_id.service),
        x509.DNSName("localhost"),
        x509.IPAddress(LOOPBACK),
    ]
    for host in hosts:
        try:
            name: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(host))
        except ValueError:
            name = x509.DNSName(host)
        if name not in sans:
            sans.append(name)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, spiffe_id.service)]))
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(digital_signature=True), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.private_key.public_key()),
            critical=False,
        )
        .sign(ca.private_key, hashes.SHA256())
    )


def write_ca(
    ca: CertificateAuthority, directory: Path, *, overwrite: bool = False
) -> tuple[Path, Path]:
    """Write ``ca.crt`` and ``ca.key`` into ``directory``; return their paths.

    Raises:
        FileExistsError: a CA is already there and ``overwrite`` is false; replacing it makes
            every certificate it issued untrusted.
    """
    cert_path, key_path = directory / CA_CERT, directory / CA_KEY
    if not overwrite:
        for path in (cert_path, key_path):
            if path.exists():
                raise FileExistsError(
                    f"{path}: a mesh CA already exists in {directory}; replacing it would "
                    "untrust every certificate it issued"
                )
    _write_pair(directory, CA_CERT, CA_KEY, ca.certificate, ca.private_key)
    return cert_path, key_path


def write_workload(workload: WorkloadCertificate, directory: Path) -> tuple[Path, Path]:
    """Write ``<service>.crt`` and ``<service>.key`` into ``directory``, replacing old ones."""
    service = workload.spiffe_id.service
    return _write_pair(
        directory, f"{service}.crt", f"{service}.key", workload.certificate, workload.private_key
    )


def load_ca(directory: Path) -> CertificateAuthority:
    """Read the CA that ``write_ca`` wrote into ``directory``.

    Raises:
        FileNotFoundError: there is no CA in ``directory``.
        ValueError: the files are not a mesh CA certificate and its ECDSA key.
    """
    cert_path, key_path = directory / CA_CERT, directory / CA_KEY
    for path in (cert_path, key_path):
        if not path.exists():
            raise FileNotFoundError(
                f"{path}: no mesh CA in {directory} (create one with "
                f"`python -m certs init --dir {directory}`)"
            )
    certificate = x509.load_pem_x509_certificate(cert_path.read_bytes())
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{key_path}: not an ECDSA private key")
    try:
        return CertificateAuthority(certificate=certificate, private_key=key)
    except ValueError as exc:
        raise ValueError(f"{cert_path} and {key_path} are not a mesh CA: {exc}") from exc


def _write_pair(
    directory: Path,
    cert_name: str,
    key_name: str,
    certificate: x509.Certificate,
    key: ec.EllipticCurvePrivateKey,
) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    cert_path, key_path = directory / cert_name, directory / key_name
    _write_file(key_path, key_pem, KEY_MODE)
    _write_file(cert_path, certificate.public_bytes(serialization.Encoding.PEM), CERT_MODE)
    return cert_path, key_path


def _write_file(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to a fresh file created with ``mode``, then rename it over ``path``.

    A fresh file gets ``mode`` at creation (``O_TRUNC`` on an existing file would keep that
    file's mode), and the rename means a reader sees the old contents or the new, never half.
    """
    temporary = path.with_name(path.name + ".tmp")
    temporary.unlink(missing_ok=True)
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as file:
        file.write(data)
    os.replace(temporary, path)


def _key_usage(*, key_cert_sign: bool = False, digital_signature: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=key_cert_sign,
        crl_sign=key_cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _aware(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(UTC)
    if now.tzinfo is None:
        raise ValueError(f"now={now.isoformat()} is naive; pass a timezone-aware datetime")
    return now


def _positive(validity: timedelta) -> timedelta:
    if validity <= timedelta(0):
        raise ValueError(f"validity {validity.total_seconds():g}s is not positive")
    return validity

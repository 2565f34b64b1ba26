"""Identity: join tokens, and the CA that turns a CSR into a short-lived workload certificate.

A new sidecar has no certificate, so it cannot prove anything over mTLS yet. An operator gives
it a *join token* (``meshctl token create orders``): a random, single-use secret bound to one
service account and valid for a few minutes. The sidecar makes its own key pair (the private
key never leaves it), sends a CSR with the token, and gets a certificate whose SPIFFE ID comes
from the token — never from what the CSR claims. Before that certificate expires the sidecar
renews it over mTLS, presenting the current one instead of a token.

Tokens are kept as SHA-256 digests, so a dump of the control plane's memory or state does not
reveal usable tokens.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TypeVar

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from certs.pki import CertificateAuthority, sign_csr
from controlplane.errors import IdentityError
from mesh.clock import Clock
from mesh.grpc import StatusCode
from mesh.identity import CONTROL_PLANE_NAMESPACE, SpiffeId

log = logging.getLogger("controlplane.identity")

T = TypeVar("T")

DEFAULT_TOKEN_TTL = 600.0  # seconds: long enough to start a sidecar by hand
MAX_TOKEN_TTL = 86400.0  # seconds: a token that outlives a day is a credential, not a bootstrap
DEFAULT_CERT_VALIDITY = timedelta(hours=1)


@dataclass(frozen=True, slots=True)
class _Token:
    identity: SpiffeId
    expires_at: float  # on the control plane's clock


class JoinTokens:
    """Single-use, expiring tokens, each bound to one SPIFFE ID."""

    def __init__(self, clock: Clock, *, ttl: float = DEFAULT_TOKEN_TTL) -> None:
        self._clock = clock
        self.ttl = ttl
        self._tokens: dict[str, _Token] = {}

    def create(self, identity: SpiffeId, ttl: float | None = None) -> str:
        """A new token for ``identity``; it is shown once and stored only as a digest.

        Raises:
            ValueError: ``ttl`` is not a number of seconds in (0, MAX_TOKEN_TTL] (NaN and
                infinity would make a token that never expires).
        """
        if ttl is not None and not 0 < ttl <= MAX_TOKEN_TTL:  # False for NaN too
            raise ValueError(f"ttl {ttl}: a join token lives more than 0 and at most "
                             f"{MAX_TOKEN_TTL:.0f} seconds")
        self._forget_expired()
        # Hex, not urlsafe base64: a token that starts with '-' is awkward in any shell.
        token = secrets.token_hex(24)
        lifetime = self.ttl if ttl is None else ttl
        self._tokens[_digest(token)] = _Token(identity, self._clock.now() + lifetime)
        log.info("join token created for %s, valid %.0fs", identity, lifetime)
        return token

    def redeem(self, token: str, spend: Callable[[SpiffeId], T]) -> T:
        """What ``spend`` makes of the identity the token grants; the token is then spent.

        A token is spent only by a request that succeeds: a CSR that does not verify leaves
        it usable, so a sidecar with a bug can try again. Nothing awaits between the check and
        the spending, so two requests racing with one token cannot both succeed.

        Raises:
            IdentityError: PERMISSION_DENIED for an unknown, already used or expired token;
                whatever ``spend`` raises (the token is kept).
        """
        digest = _digest(token)
        entry = self._tokens.get(digest)
        if entry is None:
            raise IdentityError(StatusCode.PERMISSION_DENIED,
                                "join token unknown or already used (tokens are single use)",
                                "token_unknown_or_used")
        if self._clock.now() >= entry.expires_at:
            del self._tokens[digest]
            raise IdentityError(StatusCode.PERMISSION_DENIED,
                                f"join token for {entry.identity} expired", "token_expired")
        result = spend(entry.identity)
        del self._tokens[digest]
        return result

    def __len__(self) -> int:
        return len(self._tokens)

    def _forget_expired(self) -> None:
        now = self._clock.now()
        for digest in [d for d, t in self._tokens.items() if now >= t.expires_at]:
            del self._tokens[digest]


@dataclass(frozen=True, slots=True)
class IssuedCertificate:
    certificate_pem: bytes
    ca_pem: bytes
    not_after: datetime


class CertificateIssuer:
    """Signs CSRs with the mesh CA for a fixed, short validity."""

    def __init__(self, ca: CertificateAuthority, *, validity: timedelta = DEFAULT_CERT_VALIDITY,
                 now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.ca = ca
        self.validity = validity
        self._now = now
        self.ca_pem = ca.certificate.public_bytes(Encoding.PEM)

    def issue(self, csr_pem: bytes, identity: SpiffeId) -> IssuedCertificate:
        """Certify the CSR's key as ``identity`` (whatever the CSR itself claims).

        Raises:
            IdentityError: INVALID_ARGUMENT for a CSR that does not parse or verify.
        """
        if identity.namespace == CONTROL_PLANE_NAMESPACE or identity.service == "controlplane":
            # Its certificate names the DNS name ``controlplane``, which grpcio's xDS client
            # (and compose's name for the control plane) checks: no workload may carry it.
            raise IdentityError(StatusCode.PERMISSION_DENIED,
                                f"{identity} is reserved: namespace {CONTROL_PLANE_NAMESPACE!r} "
                                f"and the account 'controlplane' are the control plane's",
                                "reserved_identity")
        try:
            csr = x509.load_pem_x509_csr(csr_pem)
            # Start a minute early: clocks of the mesh's machines are never exactly equal.
            # The validity still counts from now: a 30 s certificate is good for 30 s.
            ca_cert = self.ca.certificate
            now = self._now()
            start = max(now - timedelta(minutes=1), ca_cert.not_valid_before_utc)
            end = min(now + self.validity, ca_cert.not_valid_after_utc)
            certificate = sign_csr(self.ca, csr, identity, end - start, now=start)
        except ValueError as error:
            raise IdentityError(StatusCode.INVALID_ARGUMENT, f"CSR refused: {error}",
                                "bad_csr") from None
        log.info("issued certificate for %s until %s", identity,
                 certificate.not_valid_after_utc.isoformat())
        return IssuedCertificate(certificate.public_bytes(Encoding.PEM), self.ca_pem,
                                 certificate.not_valid_after_utc)


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()

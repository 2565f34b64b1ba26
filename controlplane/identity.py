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
import json
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from certs.pki import CertificateAuthority, check_csr, sign_csr
from controlplane.errors import IdentityError
from controlplane.store import TOKENS, Store
from mesh.clock import Clock
from mesh.grpc import StatusCode
from mesh.identity import CONTROL_PLANE_NAMESPACE, SpiffeId, parse

log = logging.getLogger("controlplane.identity")

DEFAULT_TOKEN_TTL = 600.0  # seconds: long enough to start a sidecar by hand
MAX_TOKEN_TTL = 86400.0  # seconds: a token that outlives a day is a credential, not a bootstrap
EXPIRED_KEPT = 60.0  # seconds an expired token stays in the store, to be refused as expired
DEFAULT_CERT_VALIDITY = timedelta(hours=1)


class JoinTokens:
    """Single-use, expiring tokens, each bound to one SPIFFE ID, kept in the state store.

    The store holds each token's digest with its identity and expiry, on a lease a little
    longer than its life (so that a late redemption is told "expired", not "unknown"). A
    redemption *takes* it from the store atomically (:meth:`Store.redeem_token`): with several
    control-plane replicas on one etcd, a token redeemed at two of them at once is issued
    once.
    """

    def __init__(self, store: Store, clock: Clock, *, ttl: float = DEFAULT_TOKEN_TTL) -> None:
        self._store = store
        self._clock = clock
        self.ttl = ttl

    async def create(self, identity: SpiffeId, ttl: float | None = None) -> str:
        """A new token for ``identity``; it is shown once and stored only as a digest.

        Raises:
            ValueError: ``ttl`` is not a number of seconds in (0, MAX_TOKEN_TTL] (NaN and
                infinity would make a token that never expires).
            StoreUnavailable: the state store cannot be reached.
        """
        if ttl is not None and not 0 < ttl <= MAX_TOKEN_TTL:  # False for NaN too
            raise ValueError(f"ttl {ttl}: a join token lives more than 0 and at most "
                             f"{MAX_TOKEN_TTL:.0f} seconds")
        # Hex, not urlsafe base64: a token that starts with '-' is awkward in any shell.
        token = secrets.token_hex(24)
        lifetime = self.ttl if ttl is None else ttl
        record = json.dumps({"identity": str(identity),
                             "expires_at": self._clock.now() + lifetime}).encode()
        await self._store.put_token(_digest(token), record, ttl=lifetime + EXPIRED_KEPT)
        log.info("join token created for %s, valid %.0fs", identity, lifetime)
        return token

    async def outstanding(self) -> int:
        """How many tokens are in the store, not yet redeemed (expired ones included until
        the store drops them)."""
        async with self._store.watch() as watch:
            return sum(1 for key in watch.listing.entries if key.startswith(TOKENS))

    async def redeem(self, token: str) -> SpiffeId:
        """The identity the token grants; the token is spent.

        Check what can be refused before (the CSR: :meth:`CertificateIssuer.check`): a request
        refused after the token is taken has spent it.

        Raises:
            IdentityError: PERMISSION_DENIED for an unknown, already used or expired token.
            StoreUnavailable: the state store cannot be reached.
        """
        record = await self._store.redeem_token(_digest(token))
        if record is None:
            raise IdentityError(StatusCode.PERMISSION_DENIED,
                                "join token unknown or already used (tokens are single use)",
                                "token_unknown_or_used")
        fields = json.loads(record)
        identity = parse(fields["identity"])
        if self._clock.now() >= float(fields["expires_at"]):
            raise IdentityError(StatusCode.PERMISSION_DENIED,
                                f"join token for {identity} expired", "token_expired")
        return identity


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

    def check(self, csr_pem: bytes) -> None:
        """Refuse a CSR that does not parse or verify, before a join token is spent on it.

        Raises:
            IdentityError: INVALID_ARGUMENT.
        """
        try:
            check_csr(x509.load_pem_x509_csr(csr_pem))
        except ValueError as error:
            raise IdentityError(StatusCode.INVALID_ARGUMENT, f"CSR refused: {error}",
                                "bad_csr") from None

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

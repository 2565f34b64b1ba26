"""The sidecar's identity: its first certificate from a join token, then renewal before expiry.

The private key is made here and never leaves the sidecar: only a CSR travels. The first
certificate is bought with a one-time join token over TLS that authenticates the control plane
(the sidecar has no certificate to show yet); later ones are renewed over mTLS with the current
certificate, at 70 % of its lifetime (Linkerd's rule).

A sidecar may start before its control plane can be reached (containers start in any order):
the first certificate is then tried for again, with backoff and jitter, for as long as it
takes; only a refused token ends the attempt.

Rotation never drops a connection: the same ``SSLContext`` objects load the new certificate,
so new handshakes present it and established connections carry on.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import random
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from certs.pki import make_csr
from mesh.grpc import Channel, GrpcError, StatusCode
from mesh.identity import SpiffeId, control_plane_id, parse
from mesh.proto.registry_pb2 import SignCertificateRequest, SignCertificateResponse
from mesh.tls import bootstrap_context, client_context
from sidecar.backoff import Backoff

log = logging.getLogger("sidecar.identity")

SIGN = "/mesh.v1.Identity/SignCertificate"
RENEW_AT = 0.7  # of the certificate's lifetime
JOIN_BACKOFF = Backoff(base_interval=0.5, max_interval=10.0)  # first certificate, retried
_TRY_AGAIN = frozenset({StatusCode.UNAVAILABLE, StatusCode.DEADLINE_EXCEEDED})


@dataclass(frozen=True, slots=True)
class CertificateFiles:
    cert: Path
    key: Path
    ca: Path

    def identity(self) -> SpiffeId:
        """The SPIFFE ID in the certificate (what the mesh knows us as)."""
        certificate = x509.load_pem_x509_certificate(self.cert.read_bytes())
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        return parse(san.value.get_values_for_type(x509.UniformResourceIdentifier)[0])

    def not_after(self) -> datetime:
        return x509.load_pem_x509_certificate(self.cert.read_bytes()).not_valid_after_utc


async def obtain(channel: Channel, files: CertificateFiles, request_id: SpiffeId,
                 join_token: str = "") -> None:
    """Get a certificate (with ``join_token``, or by renewal over ``channel``'s mTLS).

    The CSR names ``request_id``, but the control plane decides the identity.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    csr = make_csr(key, request_id).public_bytes(serialization.Encoding.PEM)
    sign = channel.unary_unary(SIGN, SignCertificateResponse.FromString)
    response: SignCertificateResponse = await sign(
        SignCertificateRequest(csr_pem=csr, join_token=join_token), timeout=10.0)
    files.cert.parent.mkdir(parents=True, exist_ok=True)
    _write(files.key, key.private_bytes(serialization.Encoding.PEM,
                                        serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption()), 0o600)
    _write(files.cert, response.certificate_pem, 0o644)
    _write(files.ca, response.ca_pem, 0o644)


def _write(path: Path, data: bytes, mode: int) -> None:
    temporary = path.with_name(path.name + ".new")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.replace(temporary, path)


async def bootstrap(host: str, port: int, bootstrap_ca: Path, files: CertificateFiles,
                    request_id: SpiffeId, join_token: str, *, backoff: Backoff = JOIN_BACKOFF,
                    rng: random.Random | None = None,
                    fallbacks: Sequence[tuple[str, int]] = ()) -> None:
    """The first certificate, for a join token; tried for again while the control plane
    cannot be reached — at the next of ``fallbacks`` (other replicas) each time, if any.

    Raises:
        GrpcError: the control plane refused (an unknown, used or expired token).
    """
    delays = backoff.delays(rng or random.Random())
    replicas = itertools.cycle([(host, port), *fallbacks])
    while True:
        host, port = next(replicas)
        # The token goes only to the control plane: its certificate must prove so.
        channel = Channel(host, port, ssl=bootstrap_context(bootstrap_ca),
                          authority="controlplane",
                          peer_identity=str(control_plane_id(request_id.trust_domain)))
        try:
            await obtain(channel, files, request_id, join_token)
            break
        except GrpcError as error:
            if error.code not in _TRY_AGAIN:
                raise
            reason = error
        finally:
            await channel.close()
        delay = next(delays)
        log.warning("cannot join the mesh yet: control plane %s:%d: %s; trying again in %.1fs",
                    host, port, reason, delay)
        await asyncio.sleep(delay)
    log.info("joined the mesh as %s (certificate until %s)", files.identity(),
             files.not_after().isoformat())


class Rotation:
    """Renews the certificate before it expires and reloads it into the live contexts."""

    def __init__(self, host: str, port: int, files: CertificateFiles,
                 contexts: list[ssl.SSLContext], *,
                 address: Callable[[], tuple[str, int]] | None = None,
                 renewed: Callable[[], None] | None = None) -> None:
        """``address``, if given, says which control-plane replica to renew at, each time
        (the one the sidecar talks to now); else always ``host:port``. ``renewed`` is called
        after each renewal (the sidecar's workers load the new files)."""
        self.host, self.port = host, port
        self._address = address
        self._renewed = renewed
        self.files = files
        self.contexts = contexts
        self.renewals = 0

    def seconds_until_renewal(self) -> float:
        certificate = x509.load_pem_x509_certificate(self.files.cert.read_bytes())
        start, end = certificate.not_valid_before_utc, certificate.not_valid_after_utc
        renew_at = start + (end - start) * RENEW_AT
        return max(1.0, (renew_at - datetime.now(UTC)).total_seconds())

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.seconds_until_renewal())
            try:
                await self.renew()
            except Exception as error:  # keep the current one; try again in a while
                log.warning("certificate renewal failed (%s); retrying in 10s", error)
                await asyncio.sleep(10)

    async def renew(self) -> None:
        tls = client_context(self.files.cert, self.files.key, self.files.ca)
        identity = self.files.identity()
        if self._address is not None:
            self.host, self.port = self._address()
        channel = Channel(self.host, self.port, ssl=tls, authority="controlplane",
                          peer_identity=str(control_plane_id(identity.trust_domain)))
        try:
            await obtain(channel, self.files, identity)
        finally:
            await channel.close()
        for context in self.contexts:
            context.load_cert_chain(self.files.cert, self.files.key)
        if self._renewed is not None:
            self._renewed()
        self.renewals += 1
        log.info("certificate renewed (until %s)", self.files.not_after().isoformat())

"""A real control plane on loopback, and clients with whatever identity a test needs."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from certs.pki import CertificateAuthority, create_ca, issue_workload, write_ca, write_workload
from controlplane.server import ControlPlane
from mesh.grpc import Channel
from mesh.identity import SpiffeId
from mesh.tls import bootstrap_context, client_context

TRUST_DOMAIN = "cluster.local"


@dataclass
class Mesh:
    """The control plane under test and the means to dial it as anyone."""

    cp: ControlPlane
    ca: CertificateAuthority
    pki: Path
    tmp: Path

    def identity(self, service: str, namespace: str = "default") -> SpiffeId:
        return SpiffeId(trust_domain=TRUST_DOMAIN, namespace=namespace, service=service)

    def context_for(self, service: str, *, ca: CertificateAuthority | None = None,
                    now: datetime | None = None, namespace: str = "default") -> ssl.SSLContext:
        """An mTLS client context with a certificate for ``service`` (from ``ca``)."""
        issuer = ca or self.ca
        workload = issue_workload(issuer, self.identity(service, namespace), timedelta(hours=1),
                                  now=now)
        folder = self.tmp / f"{namespace}-{service}-{id(issuer)}-{now.timestamp() if now else 0}"
        cert, key = write_workload(workload, folder)
        return client_context(cert, key, self.pki / "ca.crt")

    @property
    def operator_headers(self) -> dict[str, str]:
        """What an operator sends the operator API: the operator token."""
        return {"Authorization": f"Bearer {self.cp.operator_token_file.read_text().strip()}"}

    def channel(self, service: str | None, **options: object) -> Channel:
        """A channel to the control plane as ``service`` (None: no client certificate)."""
        tls = (bootstrap_context(self.pki / "ca.crt") if service is None
               else self.context_for(service, **options))  # type: ignore[arg-type]
        return Channel("127.0.0.1", self.cp.port, ssl=tls, authority="controlplane")


@pytest.fixture
def pki(tmp_path: Path) -> Iterator[tuple[Path, CertificateAuthority]]:
    # Made three hours in the past so tests can also issue certificates that already expired.
    ca = create_ca(trust_domain=TRUST_DOMAIN, now=datetime.now(UTC) - timedelta(hours=3))
    write_ca(ca, tmp_path / "pki")
    yield tmp_path / "pki", ca


@pytest.fixture
async def mesh(pki: tuple[Path, CertificateAuthority], tmp_path: Path) -> AsyncIterator[Mesh]:
    pki_dir, ca = pki
    cp = ControlPlane(pki_dir, lease_ttl=0.6, token_ttl=5.0)
    await cp.start("127.0.0.1", 0)
    try:
        yield Mesh(cp, ca, pki_dir, tmp_path)
    finally:
        await cp.stop()

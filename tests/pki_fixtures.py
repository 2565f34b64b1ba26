"""A ready-made mesh PKI on disk for tests: a CA, workload certificates, and a rogue CA.

Import the fixture into a ``conftest.py`` (or a test module) to use it::

    from tests.pki_fixtures import mesh_pki as mesh_pki  # a pytest fixture, used by name

It is session-scoped: keys are generated once per test run. Certificates are issued at the real
"now" (handshakes check validity against the wall clock) and are valid for an hour.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest

from certs import pki
from mesh.identity import SpiffeId

TRUST_DOMAIN = "cluster.local"
VALIDITY = timedelta(hours=1)


@dataclass(frozen=True, slots=True, kw_only=True)
class Workload:
    """One workload's files and the identity its certificate proves."""

    cert: Path
    key: Path
    spiffe_id: SpiffeId


@dataclass(frozen=True, slots=True, kw_only=True)
class MeshPki:
    """Paths to a mesh CA and certificates issued by it, plus one that is not.

    ``rogue`` claims the same SPIFFE ID as ``client`` but was signed by ``rogue_ca``, an
    unrelated CA for the same trust domain name: the mesh must refuse it.
    """

    ca_cert: Path
    ca_key: Path
    client: Workload
    server: Workload
    rogue: Workload
    rogue_ca_cert: Path


def build_mesh_pki(directory: Path) -> MeshPki:
    """Create the CAs and certificates of :class:`MeshPki` under ``directory``."""
    ca = pki.create_ca(trust_domain=TRUST_DOMAIN)
    ca_cert, ca_key = pki.write_ca(ca, directory / "mesh")
    rogue_ca = pki.create_ca(trust_domain=TRUST_DOMAIN)
    rogue_ca_cert, _ = pki.write_ca(rogue_ca, directory / "rogue")

    def issue(authority: pki.CertificateAuthority, service: str, out: Path) -> Workload:
        spiffe_id = SpiffeId(trust_domain=TRUST_DOMAIN, namespace="default", service=service)
        cert, key = pki.write_workload(pki.issue_workload(authority, spiffe_id, VALIDITY), out)
        return Workload(cert=cert, key=key, spiffe_id=spiffe_id)

    return MeshPki(
        ca_cert=ca_cert,
        ca_key=ca_key,
        client=issue(ca, "client", directory / "mesh"),
        server=issue(ca, "server", directory / "mesh"),
        rogue=issue(rogue_ca, "client", directory / "rogue"),
        rogue_ca_cert=rogue_ca_cert,
    )


@pytest.fixture(scope="session")
def mesh_pki(tmp_path_factory: pytest.TempPathFactory) -> MeshPki:
    """A :class:`MeshPki` shared by the whole test session."""
    return build_mesh_pki(tmp_path_factory.mktemp("mesh-pki"))

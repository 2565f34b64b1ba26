"""The issuer's validity window: back-dated for clock skew, counted from now."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding

from certs.pki import create_ca, make_csr
from controlplane.errors import IdentityError
from controlplane.identity import CertificateIssuer
from mesh.grpc import StatusCode
from mesh.identity import SpiffeId

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
ORDERS = SpiffeId(trust_domain="cluster.local", namespace="shop", service="orders")


def test_a_short_validity_is_counted_from_now_not_from_the_back_dated_start() -> None:
    ca = create_ca(trust_domain="cluster.local", now=NOW - timedelta(days=1))
    issuer = CertificateIssuer(ca, validity=timedelta(seconds=30), now=lambda: NOW)
    csr = make_csr(ec.generate_private_key(ec.SECP256R1()), ORDERS).public_bytes(Encoding.PEM)
    issued = issuer.issue(csr, ORDERS)
    assert issued.not_after == NOW + timedelta(seconds=30)  # was already expired, a minute early


@pytest.mark.parametrize("identity", [
    SpiffeId(trust_domain="cluster.local", namespace="shop", service="controlplane"),
    SpiffeId(trust_domain="cluster.local", namespace="mesh-system", service="controlplane"),
    SpiffeId(trust_domain="cluster.local", namespace="mesh-system", service="orders"),
])
def test_the_control_planes_names_are_never_issued_to_a_workload(identity: SpiffeId) -> None:
    # grpcio checks the control plane by host name: a workload certificate naming
    # "controlplane" would pass for it.
    ca = create_ca(trust_domain="cluster.local", now=NOW - timedelta(days=1))
    issuer = CertificateIssuer(ca, now=lambda: NOW)
    csr = make_csr(ec.generate_private_key(ec.SECP256R1()), identity).public_bytes(Encoding.PEM)
    with pytest.raises(IdentityError) as refused:
        issuer.issue(csr, identity)
    assert (refused.value.code, refused.value.reason) == (StatusCode.PERMISSION_DENIED,
                                                          "reserved_identity")

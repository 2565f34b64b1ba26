"""Fixtures for the PKI tests: a CA created at a fixed instant, so validity is exact."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from certs import pki
from mesh.identity import SpiffeId

NOW = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)


@pytest.fixture
def ca() -> pki.CertificateAuthority:
    """A mesh CA for cluster.local, valid for 7 days from NOW."""
    return pki.create_ca(trust_domain="cluster.local", now=NOW)


@pytest.fixture
def checkout() -> SpiffeId:
    return SpiffeId(trust_domain="cluster.local", namespace="shop", service="checkout")

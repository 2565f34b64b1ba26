"""Join tokens in etcd: two control-plane replicas, one token, one certificate.

Two control planes in this process share the mesh CA and one real etcd member (127.0.36.20,
Debian's ``etcd``) as their store (``--store etcd://...``). A token minted at one is redeemed
at the other; the same token sent to both at once gets exactly one certificate, and the
other caller PERMISSION_DENIED.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding

from certs.pki import create_ca, make_csr, write_ca
from controlplane.server import ControlPlane
from controlplane.store.etcd import EtcdStore
from mesh.grpc import Channel, GrpcError, StatusCode
from mesh.identity import SpiffeId
from mesh.proto.registry_pb2 import SignCertificateRequest, SignCertificateResponse
from mesh.tls import bootstrap_context
from tests.integration.controlplane.store.etcd_cluster import Cluster, start_cluster

pytestmark = [pytest.mark.interop, pytest.mark.timeout(60)]

ETCD_HOST = "127.0.36.20"
SIGN = "/mesh.v1.Identity/SignCertificate"
ORDERS = SpiffeId(trust_domain="cluster.local", namespace="shop", service="orders")
RACES = 10


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    cluster = start_cluster(tmp_path_factory.mktemp("etcd"), [ETCD_HOST])
    yield cluster
    cluster.stop()


@pytest.fixture
async def replicas(etcd: Cluster, tmp_path: Path) -> AsyncIterator[list[ControlPlane]]:
    pki = tmp_path / "pki"
    write_ca(create_ca(trust_domain="cluster.local",
                       now=datetime.now(UTC) - timedelta(hours=1)), pki)
    started = []
    try:
        for _ in range(2):
            cp = ControlPlane(pki, store=EtcdStore(etcd.endpoints, trust_domain="cluster.local"))
            await cp.start("127.0.0.1", 0)
            started.append(cp)
        yield started
    finally:
        for cp in started:
            await cp.stop()


async def sign(cp: ControlPlane, token: str) -> SignCertificateResponse:
    """SignCertificate at ``cp`` with ``token`` and a fresh key's CSR, as a joining sidecar."""
    channel = Channel("127.0.0.1", cp.port, ssl=bootstrap_context(cp.pki_dir / "ca.crt"),
                      authority="controlplane")
    csr = make_csr(ec.generate_private_key(ec.SECP256R1()), ORDERS).public_bytes(Encoding.PEM)
    try:
        call = channel.unary_unary(SIGN, SignCertificateResponse.FromString)
        response: SignCertificateResponse = await call(
            SignCertificateRequest(csr_pem=csr, join_token=token), timeout=10.0)
        return response
    finally:
        await channel.close()


async def test_a_token_minted_at_one_replica_is_redeemed_at_the_other(
        replicas: list[ControlPlane]) -> None:
    one, two = replicas
    token = await one.tokens.create(ORDERS)
    assert (await sign(two, token)).certificate_pem
    with pytest.raises(GrpcError) as spent:
        await sign(one, token)
    assert spent.value.code == StatusCode.PERMISSION_DENIED


async def test_one_token_sent_to_both_replicas_at_once_gets_one_certificate(
        replicas: list[ControlPlane]) -> None:
    one, two = replicas
    for _ in range(RACES):
        token = await one.tokens.create(ORDERS)
        outcomes = await asyncio.gather(sign(one, token), sign(two, token),
                                        return_exceptions=True)
        issued = [o for o in outcomes if isinstance(o, SignCertificateResponse)]
        refused = [o for o in outcomes if isinstance(o, GrpcError)]
        assert len(issued) == 1 and len(refused) == 1, outcomes
        assert refused[0].code == StatusCode.PERMISSION_DENIED
        assert "already used" in refused[0].message
    assert await one.tokens.outstanding() == 0 == await two.tokens.outstanding()

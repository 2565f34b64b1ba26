"""Identity: a join token buys one certificate, whose SPIFFE ID comes from the token."""

from __future__ import annotations

import asyncio
import logging

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding

from certs.pki import make_csr
from mesh.grpc import GrpcError, StatusCode
from mesh.identity import SpiffeId
from mesh.proto.registry_pb2 import SignCertificateRequest, SignCertificateResponse
from tests.integration.controlplane.conftest import TRUST_DOMAIN, Mesh

SIGN = "/mesh.v1.Identity/SignCertificate"


def csr_claiming(service: str) -> bytes:
    claimed = SpiffeId(trust_domain=TRUST_DOMAIN, namespace="kube-system", service=service)
    csr = make_csr(ec.generate_private_key(ec.SECP256R1()), claimed)
    return csr.public_bytes(Encoding.PEM)


async def sign(mesh: Mesh, caller: str | None, token: str = "") -> SignCertificateResponse:
    channel = mesh.channel(caller)
    try:
        call = channel.unary_unary(SIGN, SignCertificateResponse.FromString)
        response: SignCertificateResponse = await call(
            SignCertificateRequest(csr_pem=csr_claiming("admin"), join_token=token),
            timeout=5.0)
        return response
    finally:
        await channel.close()


def uri_of(pem: bytes) -> str:
    certificate = x509.load_pem_x509_certificate(pem)
    san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    uris: list[str] = san.value.get_values_for_type(x509.UniformResourceIdentifier)
    assert len(uris) == 1
    return uris[0]


async def test_join_token_gives_the_tokens_identity_not_the_csrs(mesh: Mesh) -> None:
    token = await mesh.cp.tokens.create(mesh.identity("orders"))
    response = await sign(mesh, None, token)
    assert uri_of(response.certificate_pem) == f"spiffe://{TRUST_DOMAIN}/ns/default/sa/orders"
    assert b"BEGIN CERTIFICATE" in response.ca_pem


def refused_certificates(mesh: Mesh) -> float:
    value = mesh.cp.metrics.registry.get_sample_value(
        "mesh_controlplane_certificates_total", {"result": "permission_denied"})
    return value or 0.0


async def test_a_token_is_single_use(mesh: Mesh, caplog: pytest.LogCaptureFixture) -> None:
    token = await mesh.cp.tokens.create(mesh.identity("orders"))
    await sign(mesh, None, token)
    with caplog.at_level(logging.WARNING, "controlplane"), \
            pytest.raises(GrpcError) as refused:
        await sign(mesh, None, token)
    assert refused.value.code == StatusCode.PERMISSION_DENIED
    assert "already used" in refused.value.message
    assert "SignCertificate from 127.0.0.1 refused (PERMISSION_DENIED): join token unknown or " \
           "already used" in caplog.text
    assert token not in caplog.text and token not in refused.value.message
    assert refused_certificates(mesh) == 1
    assert mesh.cp.registry.instances() == [] and mesh.cp.registry.version == 0


async def test_an_expired_token_is_refused(mesh: Mesh, caplog: pytest.LogCaptureFixture) -> None:
    token = await mesh.cp.tokens.create(mesh.identity("orders"), ttl=0.05)
    await asyncio.sleep(0.1)
    with caplog.at_level(logging.WARNING, "controlplane"), \
            pytest.raises(GrpcError) as refused:
        await sign(mesh, None, token)
    assert refused.value.code == StatusCode.PERMISSION_DENIED
    assert "expired" in refused.value.message
    assert f"join token for spiffe://{TRUST_DOMAIN}/ns/default/sa/orders expired" in caplog.text
    assert refused_certificates(mesh) == 1
    assert await mesh.cp.tokens.outstanding() == 0  # spent: it cannot be tried again
    assert mesh.cp.registry.instances() == [] and mesh.cp.registry.version == 0


async def test_a_running_sidecar_renews_with_its_current_certificate(mesh: Mesh) -> None:
    response = await sign(mesh, "payments")
    assert uri_of(response.certificate_pem) == f"spiffe://{TRUST_DOMAIN}/ns/default/sa/payments"


async def test_no_token_and_no_certificate_is_unauthenticated(mesh: Mesh) -> None:
    with pytest.raises(GrpcError) as refused:
        await sign(mesh, None)
    assert refused.value.code == StatusCode.UNAUTHENTICATED


async def test_a_token_is_spent_only_by_a_request_that_succeeds(mesh: Mesh) -> None:
    """A CSR that does not parse is refused without spending the token: the sidecar may try
    again with a good one (and only once more)."""
    token = await mesh.cp.tokens.create(mesh.identity("orders"))
    channel = mesh.channel(None)
    try:
        call = channel.unary_unary(SIGN, SignCertificateResponse.FromString)
        with pytest.raises(GrpcError) as refused:
            await call(SignCertificateRequest(csr_pem=b"not a CSR", join_token=token),
                       timeout=5.0)
        assert refused.value.code == StatusCode.INVALID_ARGUMENT
        assert token not in refused.value.message
    finally:
        await channel.close()
    assert await mesh.cp.tokens.outstanding() == 1
    response = await sign(mesh, None, token)
    assert uri_of(response.certificate_pem) == f"spiffe://{TRUST_DOMAIN}/ns/default/sa/orders"
    assert await mesh.cp.tokens.outstanding() == 0

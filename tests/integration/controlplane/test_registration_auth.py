"""Registration is authenticated: only the right identity, from its own address, registers.

Each refusal must be a clear gRPC status, a log line, and leave the registry unchanged.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import pytest

from certs.pki import create_ca
from mesh.grpc import GrpcError, StatusCode
from mesh.proto.config_pb2 import Endpoint
from mesh.proto.registry_pb2 import RegisterRequest, RegisterResponse
from tests.integration.controlplane.conftest import TRUST_DOMAIN, Mesh

REGISTER = "/mesh.v1.Registry/Register"


async def register(mesh: Mesh, caller: str | None, service: str = "orders",
                   address: str = "127.0.0.1", **context: object) -> RegisterResponse:
    channel = mesh.channel(caller, **context)
    try:
        call = channel.unary_unary(REGISTER, RegisterResponse.FromString)
        response: RegisterResponse = await call(
            RegisterRequest(service=service, endpoint=Endpoint(address=address, port=15006)),
            timeout=5.0)
        return response
    finally:
        await channel.close()


async def test_the_service_itself_registers(mesh: Mesh) -> None:
    response = await register(mesh, "orders")
    assert response.instance == "orders@127.0.0.1:15006"
    assert [e.address for e in mesh.cp.registry.endpoints("orders")] == ["127.0.0.1"]


async def test_another_services_identity_is_refused(mesh: Mesh,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, "controlplane.registry"), \
            pytest.raises(GrpcError) as refused:
        await register(mesh, "frontend")
    assert refused.value.code == StatusCode.PERMISSION_DENIED
    assert "may not register service 'orders'" in refused.value.message
    assert f"spiffe://{TRUST_DOMAIN}/ns/shop/sa/frontend" in refused.value.message
    assert "registration refused (PERMISSION_DENIED)" in caplog.text
    assert mesh.cp.registry.instances() == []


async def test_no_client_certificate_is_unauthenticated(mesh: Mesh) -> None:
    with pytest.raises(GrpcError) as refused:
        await register(mesh, None)
    assert refused.value.code == StatusCode.UNAUTHENTICATED
    assert "no client certificate" in refused.value.message
    assert mesh.cp.registry.instances() == []


async def test_certificate_from_another_ca_is_refused_at_the_handshake(mesh: Mesh) -> None:
    rogue = create_ca(trust_domain=TRUST_DOMAIN)
    with pytest.raises(GrpcError) as refused:
        await register(mesh, "orders", ca=rogue)
    assert refused.value.code == StatusCode.UNAVAILABLE  # the TLS handshake failed
    assert mesh.cp.registry.instances() == []


async def test_expired_certificate_is_refused_at_the_handshake(mesh: Mesh) -> None:
    two_hours_ago = datetime.now(UTC) - timedelta(hours=2)  # valid for 1 h: expired 1 h ago
    with pytest.raises(GrpcError) as refused:
        await register(mesh, "orders", now=two_hours_ago)
    assert refused.value.code == StatusCode.UNAVAILABLE
    assert mesh.cp.registry.instances() == []


async def test_an_address_that_is_not_the_callers_is_refused(mesh: Mesh) -> None:
    with pytest.raises(GrpcError) as refused:
        await register(mesh, "orders", address="10.1.2.3")
    assert refused.value.code == StatusCode.PERMISSION_DENIED
    assert "its own address 127.0.0.1 only, not 10.1.2.3" in refused.value.message
    assert mesh.cp.registry.instances() == []


async def test_a_registration_grant_widens_who_may_register(mesh: Mesh) -> None:
    mesh.cp.policy.apply_text(
        "registration:\n- service: orders\n  principals: [cluster.local/ns/shop/sa/deployer]\n",
        "test")
    response = await register(mesh, "deployer")
    assert response.instance == "orders@127.0.0.1:15006"


async def test_only_the_owner_renews_or_deregisters(mesh: Mesh) -> None:
    await register(mesh, "orders")
    channel = mesh.channel("frontend")
    try:
        from mesh.proto.registry_pb2 import DeregisterRequest, DeregisterResponse

        deregister = channel.unary_unary("/mesh.v1.Registry/Deregister",
                                         DeregisterResponse.FromString)
        with pytest.raises(GrpcError) as refused:
            await deregister(DeregisterRequest(instance="orders@127.0.0.1:15006"))
        assert refused.value.code == StatusCode.PERMISSION_DENIED
    finally:
        await channel.close()
    assert len(mesh.cp.registry.instances()) == 1

"""Registration is authenticated: only the right identity, from its own address, registers.

Each refusal must be a clear gRPC status, a log line, and leave the registry unchanged.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from certs.pki import create_ca
from mesh.grpc import GrpcError, StatusCode
from mesh.proto.config_pb2 import Endpoint
from mesh.proto.registry_pb2 import (
    DeregisterRequest,
    DeregisterResponse,
    RegisterRequest,
    RegisterResponse,
)
from tests.integration.controlplane.conftest import TRUST_DOMAIN, Mesh

REGISTER = "/mesh.v1.Registry/Register"


async def register(mesh: Mesh, caller: str | None, service: str = "orders",
                   address: str = "127.0.0.1", **context: object) -> RegisterResponse:
    """Register ``service`` at ``address`` over a fresh channel as ``caller``."""
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
    assert response.instance == "default/orders@127.0.0.1:15006"
    assert [e.address for e in mesh.cp.registry.endpoints("default", "orders")] == ["127.0.0.1"]
    # Callers' sidecars will check the endpoint's certificate for the identity that registered.
    assert [e.identity for e in mesh.cp.registry.endpoints("default", "orders")] == [
        f"spiffe://{TRUST_DOMAIN}/ns/default/sa/orders"]


async def refused(mesh: Mesh, caplog: pytest.LogCaptureFixture, caller: str | None,
                  **options: Any) -> GrpcError:
    """Register ``orders`` as ``caller``, expecting a refusal; the registry must not change."""
    before = mesh.cp.registry.version
    with caplog.at_level(logging.WARNING, "controlplane"), pytest.raises(GrpcError) as refusal:
        await register(mesh, caller, **options)
    assert mesh.cp.registry.instances() == []
    assert mesh.cp.registry.version == before
    return refusal.value


def refused_registrations(mesh: Mesh) -> float:
    value = mesh.cp.metrics.registry.get_sample_value(
        "mesh_controlplane_registrations_total", {"result": "refused"})
    return value or 0.0


async def test_another_services_identity_is_refused(mesh: Mesh,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    error = await refused(mesh, caplog, "frontend")
    assert error.code == StatusCode.PERMISSION_DENIED
    assert "may not register service 'orders'" in error.message
    assert f"spiffe://{TRUST_DOMAIN}/ns/default/sa/frontend" in error.message
    assert "Register from 127.0.0.1 refused (PERMISSION_DENIED)" in caplog.text
    assert "sa/frontend may not register service 'orders'" in caplog.text
    assert refused_registrations(mesh) == 1


async def test_no_client_certificate_is_unauthenticated(mesh: Mesh,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    error = await refused(mesh, caplog, None)
    assert error.code == StatusCode.UNAUTHENTICATED
    assert "no client certificate" in error.message
    assert "Register from 127.0.0.1 refused (UNAUTHENTICATED): Register needs a certificate " \
           "of the mesh CA (mTLS): no client certificate was presented" in caplog.text
    assert refused_registrations(mesh) == 1


def handshakes_failed(mesh: Mesh) -> float:
    value = mesh.cp.metrics.registry.get_sample_value(
        "mesh_controlplane_tls_handshakes_failed_total")
    return value or 0.0


async def test_certificate_from_another_ca_is_refused_at_the_handshake(
        mesh: Mesh, caplog: pytest.LogCaptureFixture) -> None:
    rogue = create_ca(trust_domain=TRUST_DOMAIN)  # same trust domain, different key
    error = await refused(mesh, caplog, "orders", ca=rogue)
    assert error.code == StatusCode.UNAVAILABLE  # no call was ever made: no TLS session
    assert "TLS handshake from 127.0.0.1:" in caplog.text
    assert "client certificate refused: not issued by the mesh CA" in caplog.text
    assert handshakes_failed(mesh) == 1


async def test_expired_certificate_is_refused_at_the_handshake(
        mesh: Mesh, caplog: pytest.LogCaptureFixture) -> None:
    two_hours_ago = datetime.now(UTC) - timedelta(hours=2)  # valid for 1 h: expired 1 h ago
    error = await refused(mesh, caplog, "orders", now=two_hours_ago)
    assert error.code == StatusCode.UNAVAILABLE
    assert "client certificate refused: expired (certificate has expired)" in caplog.text
    assert handshakes_failed(mesh) == 1


async def test_an_address_that_is_not_the_callers_is_refused(
        mesh: Mesh, caplog: pytest.LogCaptureFixture) -> None:
    error = await refused(mesh, caplog, "orders", address="10.1.2.3")
    assert error.code == StatusCode.PERMISSION_DENIED
    assert "its own address 127.0.0.1 only, not '10.1.2.3'" in error.message
    assert "Register from 127.0.0.1 refused (PERMISSION_DENIED)" in caplog.text
    assert "not '10.1.2.3'" in caplog.text


async def test_a_refused_caller_can_still_register_what_it_owns(mesh: Mesh) -> None:
    """The refusals above are about the caller, not a lock-out: the right call still works."""
    with pytest.raises(GrpcError):
        await register(mesh, "orders", address="10.1.2.3")
    response = await register(mesh, "orders")
    assert response.instance == "default/orders@127.0.0.1:15006"


async def test_a_registration_grant_widens_who_may_register(mesh: Mesh) -> None:
    await mesh.cp.policy.apply_text(
        "registration:\n- service: orders\n"
        "  identities: [spiffe://cluster.local/ns/default/sa/deployer]\n",
        "test")
    response = await register(mesh, "deployer")
    assert response.instance == "default/orders@127.0.0.1:15006"


async def test_only_the_owner_renews_or_deregisters(mesh: Mesh) -> None:
    await register(mesh, "orders")
    channel = mesh.channel("frontend")
    try:
        deregister = channel.unary_unary("/mesh.v1.Registry/Deregister",
                                         DeregisterResponse.FromString)
        with pytest.raises(GrpcError) as refused:
            await deregister(DeregisterRequest(instance="default/orders@127.0.0.1:15006"))
        assert refused.value.code == StatusCode.PERMISSION_DENIED
    finally:
        await channel.close()
    assert len(mesh.cp.registry.instances()) == 1


async def test_the_same_account_name_in_another_namespace_is_another_workload(
        mesh: Mesh, caplog: pytest.LogCaptureFixture) -> None:
    """ns/evil/sa/orders is not ns/shop/sa/orders: it may not register orders in shop."""
    channel = mesh.channel("orders", namespace="evil")
    try:
        call = channel.unary_unary(REGISTER, RegisterResponse.FromString)
        with caplog.at_level(logging.WARNING, "controlplane"), pytest.raises(GrpcError) as error:
            await call(RegisterRequest(service="orders", namespace="shop",
                                       endpoint=Endpoint(address="127.0.0.1", port=15006)),
                       timeout=5.0)
        assert error.value.code == StatusCode.PERMISSION_DENIED
        assert (f"spiffe://{TRUST_DOMAIN}/ns/evil/sa/orders may not register service 'orders' "
                f"in namespace 'shop' (only spiffe://{TRUST_DOMAIN}/ns/shop/sa/orders")\
            in error.value.message
        assert mesh.cp.registry.instances() == []
        # Its own namespace's orders is its to register, and is another service.
        await call(RegisterRequest(service="orders",
                                   endpoint=Endpoint(address="127.0.0.1", port=15006)),
                   timeout=5.0)
    finally:
        await channel.close()
    assert mesh.cp.registry.services() == [("evil", "orders")]
    assert mesh.cp.registry.endpoints("shop", "orders") == []


@pytest.mark.parametrize("identities", [
    ["spiffe://cluster.local/ns/ops/sa/*"],
    ["spiffe://cluster.local/ns/ops/sa/deployer"],
])
async def test_a_grant_names_identities_in_full(mesh: Mesh, identities: list[str]) -> None:
    """A grant to ops/deployer (or all of ops) opens shop/orders to ops only, never to a
    'deployer' account of another namespace."""
    await mesh.cp.policy.apply_text(
        f"registration:\n- service: orders\n  namespace: shop\n  identities: {identities}\n",
        "test")
    for namespace in ("shop", "evil"):
        channel = mesh.channel("deployer", namespace=namespace)
        try:
            call = channel.unary_unary(REGISTER, RegisterResponse.FromString)
            with pytest.raises(GrpcError) as error:
                await call(RegisterRequest(service="orders", namespace="shop",
                                           endpoint=Endpoint(address="127.0.0.1", port=15006)),
                           timeout=5.0)
            assert error.value.code == StatusCode.PERMISSION_DENIED
        finally:
            await channel.close()
    channel = mesh.channel("deployer", namespace="ops")
    try:
        call = channel.unary_unary(REGISTER, RegisterResponse.FromString)
        response = await call(RegisterRequest(service="orders", namespace="shop",
                                              endpoint=Endpoint(address="127.0.0.1",
                                                                port=15006)), timeout=5.0)
    finally:
        await channel.close()
    assert response.instance == "shop/orders@127.0.0.1:15006"

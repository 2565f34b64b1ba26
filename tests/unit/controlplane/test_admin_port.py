"""An endpoint's admin port: kept in the registry for operators, never sent to the mesh — a
sidecar restarted with another admin port pushes nothing to anyone, in either dialect."""

from __future__ import annotations

import pytest

from controlplane.errors import RegistrationError
from controlplane.registry import Registry
from controlplane.snapshot import build
from controlplane.state import StoreState
from controlplane.store.memory import MemoryStore
from controlplane.xds.resources import CLUSTER_LOAD_ASSIGNMENT
from controlplane.xds.translate import translate
from mesh.clock import FakeClock
from mesh.grpc import StatusCode
from mesh.identity import SpiffeId
from mesh.proto.config_pb2 import ClusterLoadAssignment, Endpoint, MeshPolicy
from mesh.proto.resources import ENDPOINTS, unpack
from tests.unit.controlplane.conftest import Follow

ORDERS = SpiffeId(trust_domain="cluster.local", namespace="default", service="orders")


def registered(admin_port: int) -> dict[tuple[str, str], list[Endpoint]]:
    return {("default", "orders"): [Endpoint(address="10.0.0.1", port=15006,
                                             admin_port=admin_port)]}


def test_sidecars_are_sent_endpoints_without_their_admin_port() -> None:
    published, other, none = (build(MeshPolicy(), registered(port), policy_version=1)
                              for port in (15000, 16000, 0))
    assert published.endpoints.version == other.endpoints.version == none.endpoints.version
    (assignment,) = unpack(ENDPOINTS, list(published.endpoints.packed))
    assert isinstance(assignment, ClusterLoadAssignment)
    assert [(e.address, e.port, e.admin_port) for e in assignment.endpoints] == [
        ("10.0.0.1", 15006, 0)]


def test_proxyless_grpc_is_sent_the_same_with_or_without_an_admin_port() -> None:
    published, none = (translate(MeshPolicy(), registered(port), policy_version=1)
                       for port in (15000, 0))
    assert published.view(CLUSTER_LOAD_ASSIGNMENT, ORDERS, None).version == \
        none.view(CLUSTER_LOAD_ASSIGNMENT, ORDERS, None).version


async def test_the_registry_keeps_the_admin_port_and_refuses_an_impossible_one(
        follow: Follow) -> None:
    state = StoreState(MemoryStore(FakeClock(), trust_domain="cluster.local"))
    registry = Registry(state, trust_domain="cluster.local")
    await follow(state, [registry])

    await registry.register("orders", Endpoint(address="10.0.0.1", port=15006,
                                               admin_port=15000), ORDERS, "10.0.0.1")

    (instance,) = registry.instances()
    assert instance.endpoint.admin_port == 15000
    with pytest.raises(RegistrationError) as refused:
        await registry.register("orders", Endpoint(address="10.0.0.1", port=15007,
                                                   admin_port=70000), ORDERS, "10.0.0.1")
    assert (refused.value.code, refused.value.message) == (
        StatusCode.INVALID_ARGUMENT, "admin_port 70000 is invalid")

"""The registry on the state store: what one replica registers every replica serves, any
replica renews a lease, a lapsed lease removes the instance everywhere, and a store that cannot
be reached refuses writes with UNAVAILABLE while the last state stays served."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from controlplane.errors import RegistrationError
from controlplane.registry import Registry
from controlplane.state import StoreState
from controlplane.store import LeaseExpired, StoreUnavailable
from controlplane.store.memory import MemoryStore
from mesh.clock import FakeClock
from mesh.grpc import StatusCode
from mesh.identity import SpiffeId
from mesh.proto.config_pb2 import Endpoint
from tests.unit.controlplane.conftest import Follow

TTL = 3.0
ORDERS = SpiffeId(trust_domain="cluster.local", namespace="default", service="orders")
PAYMENTS = SpiffeId(trust_domain="cluster.local", namespace="default", service="payments")
ADDRESS = "10.0.0.1"

Replica = Callable[[], Awaitable[Registry]]


class Unreachable(MemoryStore):
    """A store whose every request fails, as etcd does when no member answers."""

    reachable = True

    async def grant_lease(self, ttl: float) -> int:
        self._check()
        return await super().grant_lease(ttl)

    async def keep_alive(self, lease: int) -> None:
        self._check()
        await super().keep_alive(lease)

    def _check(self) -> None:
        if not self.reachable:
            raise StoreUnavailable(["10.9.9.9:2379"], "connection refused")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(clock: FakeClock) -> Unreachable:
    return Unreachable(clock, trust_domain="cluster.local")


@pytest.fixture
def replica(store: Unreachable, follow: Follow) -> Replica:
    """``await replica()``: a registry whose copy follows ``store``, as a replica's does."""
    async def start() -> Registry:
        state = StoreState(store)
        registry = Registry(state, trust_domain="cluster.local", lease_ttl=TTL)
        await follow(state, [registry])
        return registry

    return start


def at(port: int = 8080) -> Endpoint:
    return Endpoint(address=ADDRESS, port=port)


async def eventually(check: Callable[[], bool]) -> None:
    async with asyncio.timeout(5):
        while not check():
            await asyncio.sleep(0.001)


async def test_a_registration_is_served_by_the_replica_as_soon_as_it_answers(
        replica: Replica) -> None:
    registry = await replica()
    instance = await registry.register("orders", at(), ORDERS, ADDRESS)
    assert instance.id == "default/orders@10.0.0.1:8080"
    (endpoint,) = registry.endpoints("default", "orders")
    assert endpoint.identity == str(ORDERS) and endpoint.instance == instance.id
    assert registry.version == 1


async def test_what_one_replica_registers_every_replica_serves(replica: Replica) -> None:
    first, second = await replica(), await replica()
    await first.register("orders", at(), ORDERS, ADDRESS)
    await eventually(lambda: bool(second.endpoints("default", "orders")))
    assert second.instances() == first.instances()


async def test_any_replica_renews_a_lease_and_a_lapsed_one_is_gone_everywhere(
        replica: Replica, store: MemoryStore, clock: FakeClock) -> None:
    first, second = await replica(), await replica()
    instance = await first.register("orders", at(), ORDERS, ADDRESS)
    await eventually(lambda: bool(second.instances()))
    clock.advance(TTL * 0.9)
    await second.heartbeat(instance.id, None, ORDERS)  # the lease is the store's
    clock.advance(TTL * 0.9)
    await store.expire()
    assert first.instances() and second.instances()
    clock.advance(TTL)
    await store.expire()
    await eventually(lambda: not first.instances() and not second.instances())
    with pytest.raises(RegistrationError) as lapsed:
        await first.heartbeat(instance.id, None, ORDERS)
    assert lapsed.value.code == StatusCode.NOT_FOUND
    assert "register again" in lapsed.value.message


async def test_readiness_in_a_heartbeat_reaches_every_replica(replica: Replica) -> None:
    first, second = await replica(), await replica()
    instance = await first.register("orders", at(), ORDERS, ADDRESS)
    await second.heartbeat(instance.id, Endpoint.UNHEALTHY, ORDERS)
    assert second.endpoints("default", "orders")[0].health == Endpoint.UNHEALTHY
    await eventually(lambda: first.endpoints("default", "orders")[0].health
                     == Endpoint.UNHEALTHY)
    assert first.version == second.version == 2


async def test_registering_again_keeps_the_lease_and_tells_no_one(replica: Replica) -> None:
    registry = await replica()
    first = await registry.register("orders", at(), ORDERS, ADDRESS)
    again = await registry.register("orders", at(), ORDERS, ADDRESS)
    assert again.lease == first.lease and registry.version == 1


async def test_someone_elses_instance_cannot_be_taken_renewed_or_removed(
        replica: Replica) -> None:
    registry = await replica()
    instance = await registry.register("orders", at(), ORDERS, ADDRESS)
    grant_free = SpiffeId(trust_domain="cluster.local", namespace="default", service="orders2")
    for attempt in (registry.heartbeat(instance.id, None, PAYMENTS),
                    registry.deregister(instance.id, PAYMENTS),
                    registry.register("orders", at(), grant_free, ADDRESS)):
        with pytest.raises(RegistrationError) as refused:
            await attempt
        assert refused.value.code == StatusCode.PERMISSION_DENIED
    with pytest.raises(RegistrationError) as refused:
        await registry.deregister(instance.id, None)
    assert refused.value.code == StatusCode.UNAUTHENTICATED
    assert len(registry.instances()) == 1


async def test_deregistering_removes_it_from_every_replica(replica: Replica) -> None:
    first, second = await replica(), await replica()
    instance = await first.register("orders", at(), ORDERS, ADDRESS)
    await eventually(lambda: bool(second.instances()))
    await second.deregister(instance.id, ORDERS)
    assert not second.instances()
    await eventually(lambda: not first.instances())


async def test_a_store_out_of_reach_refuses_writes_and_the_last_state_stays(
        replica: Replica, store: Unreachable) -> None:
    registry = await replica()
    instance = await registry.register("orders", at(), ORDERS, ADDRESS)
    store.reachable = False
    for attempt in (registry.heartbeat(instance.id, None, ORDERS),
                    registry.register("orders", at(8081), ORDERS, ADDRESS)):
        with pytest.raises(RegistrationError) as refused:
            await attempt
        assert refused.value.code == StatusCode.UNAVAILABLE
        assert refused.value.reason == "store_unavailable"
        assert refused.value.message == ("state store unavailable: tried 10.9.9.9:2379: "
                                         "connection refused")
    assert [i.id for i in registry.instances()] == [instance.id]  # still served


async def test_deregistering_ends_the_lease_so_a_stale_copy_cannot_take_it_for_a_renewal(
        replica: Replica, store: Unreachable) -> None:
    # A replica whose copy has not seen the removal yet finds the lease gone, and writes the
    # registration again instead of taking a renewal of the old lease for one.
    registry = await replica()
    first = await registry.register("orders", at(), ORDERS, ADDRESS)
    await registry.deregister(first.id, ORDERS)
    with pytest.raises(LeaseExpired):
        await store.keep_alive(first.lease)

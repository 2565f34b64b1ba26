"""The policy history a replica keeps: each version it had in force, oldest first, with where it
came from and when — its own writes, another replica's, and the one in force when it started."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable

import pytest

from controlplane.policy import PolicyError, PolicyStore, to_yaml
from controlplane.policy_history import HISTORY, STORE
from controlplane.state import StoreState
from controlplane.store import Store
from controlplane.store.memory import MemoryStore
from mesh.clock import FakeClock
from tests.unit.controlplane.conftest import Follow

START = 1_800_000_000.0  # Unix seconds of the first tick of the fake wall clock

Replica = Callable[[Store], Awaitable[PolicyStore]]


@pytest.fixture
def replica(follow: Follow) -> Replica:
    """``await replica(store)``: a policy store following ``store``, as a replica's does,
    with a wall clock that ticks one second per reading."""
    async def start(store: Store) -> PolicyStore:
        state = StoreState(store)
        ticks = itertools.count(START)
        policies = PolicyStore(state, wall_clock=lambda: float(next(ticks)))
        await follow(state, [policies])
        return policies

    return start


def memory() -> MemoryStore:
    return MemoryStore(FakeClock(), trust_domain="cluster.local")


def clusters(*names: str) -> str:
    return "clusters:\n" + "".join(f"- name: {name}\n" for name in names)


async def test_three_policies_applied_are_three_versions_in_order(replica: Replica) -> None:
    policies = await replica(memory())
    assert list(policies.history) == []  # version 0, the empty policy, was never applied

    for i, source in enumerate(["a.yaml", "api", "policy/"], start=1):
        assert await policies.apply_text(clusters(*(f"s{n}" for n in range(i))), source) == i

    history = list(policies.history)
    assert [(v.version, v.source, v.applied_at) for v in history] == [
        (1, "a.yaml", START), (2, "api", START + 1), (3, "policy/", START + 2)]
    assert [to_yaml(v.policy) for v in history] == [
        "clusters:\n- name: s0\n",
        "clusters:\n- name: s0\n- name: s1\n",
        "clusters:\n- name: s0\n- name: s1\n- name: s2\n"]


async def test_an_unchanged_or_refused_policy_is_no_new_version(replica: Replica) -> None:
    policies = await replica(memory())
    await policies.apply_text(clusters("orders"), "a.yaml")
    await policies.apply_text(clusters("orders"), "a.yaml")  # the same again
    with pytest.raises(PolicyError, match="unknown value"):
        await policies.apply_text("clusters:\n- name: x\n  lb_policy: LEAST_CONN\n", "b.yaml")
    assert [v.version for v in policies.history] == [1]


async def test_the_history_keeps_the_last_versions_only(replica: Replica) -> None:
    policies = await replica(memory())
    for i in range(HISTORY + 5):
        await policies.apply_text(clusters(f"s{i}"), "api")
    history = list(policies.history)
    assert len(history) == HISTORY
    assert [v.version for v in history] == list(range(6, HISTORY + 6))
    assert [c.name for c in history[-1].policy.clusters] == [f"s{HISTORY + 4}"]


async def test_a_replica_remembers_what_it_started_with_and_what_others_wrote(
        replica: Replica) -> None:
    shared = memory()
    first = await replica(shared)
    await first.apply_text(clusters("orders"), "a.yaml")
    second = await replica(shared)  # started after version 1 was written
    await first.apply_text(clusters("orders", "payments"), "b.yaml")
    async with asyncio.timeout(5):
        while second.current[0] != 2:
            await asyncio.sleep(0.01)

    # What it found in force at start: since when, the store does not say. What another
    # replica wrote: when its watch brought it.
    assert [(v.version, v.source, v.applied_at) for v in second.history] == [
        (1, STORE, None), (2, STORE, START)]
    assert [(v.version, v.source) for v in first.history] == [(1, "a.yaml"), (2, "b.yaml")]


class SlowAnswers(MemoryStore):
    """A store whose watch tells of a policy write before the write's answer comes back, as
    etcd's may."""

    async def write_policy(self, document: bytes, *, based_on: int) -> int:
        version = await super().write_policy(document, based_on=based_on)
        await asyncio.sleep(0.05)
        return version


async def test_an_own_write_the_watch_brought_first_keeps_its_source(replica: Replica) -> None:
    policies = await replica(SlowAnswers(FakeClock(), trust_domain="cluster.local"))
    assert await policies.apply_text(clusters("orders"), "a.yaml") == 1
    assert [(v.version, v.source) for v in policies.history] == [(1, "a.yaml")]

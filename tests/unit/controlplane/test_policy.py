"""The policy store: versions, folders merged in name order, refusals that keep the old
policy, hot reload of good and bad files, and the policy shared by replicas through the state
store (compare-and-swap on the version, every replica's copy following the store)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from controlplane.policy import PolicyError, PolicyStore, to_yaml
from controlplane.state import StoreState
from controlplane.store import Conflict, Store
from controlplane.store.memory import MemoryStore
from mesh.clock import FakeClock
from mesh.proto.config_pb2 import Cluster, MeshPolicy
from tests.unit.controlplane.conftest import Follow

ORDERS = "clusters:\n- name: orders\n"
ROUTE_TO_ORDERS = ("routes:\n- name: shop\n  virtual_hosts:\n  - domains: ['*']\n"
                   "    routes: [{match: {prefix: /}, route: {cluster: orders}}]\n")
POLL = 0.02  # seconds between polls of the watched files in these tests


Make = Callable[..., Awaitable[PolicyStore]]


@pytest.fixture
def make(follow: Follow) -> Make:
    """``await make(on_reject=None, store=None)``: a policy store whose copy follows ``store``
    (default: a new one in memory), as a replica's does."""
    async def policy_store(on_reject: Callable[[PolicyError], None] | None = None,
                           store: Store | None = None) -> PolicyStore:
        state = StoreState(store or MemoryStore(FakeClock(), trust_domain="cluster.local"))
        policies = PolicyStore(state, on_reject=on_reject)
        await follow(state, [policies])
        return policies

    return policy_store


class Recorder:
    """A subscriber that remembers every change it was told of."""

    def __init__(self, store: PolicyStore) -> None:
        self.changes: list[tuple[int, list[str]]] = []
        store.subscribe(lambda version, policy: self.changes.append(
            (version, [c.name for c in policy.clusters])))


def names(store: PolicyStore) -> list[str]:
    return [c.name for c in store.current[1].clusters]


async def test_the_store_starts_empty_at_version_0(make: Make) -> None:
    store = await make()
    assert store.current == (0, MeshPolicy())
    assert store.last_error is None


async def test_every_accepted_change_gets_the_next_version_and_is_told(make: Make) -> None:
    store = await make()
    seen = Recorder(store)
    assert await store.apply_text(ORDERS, "a.yaml") == 1
    assert await store.apply_text(ORDERS + "- name: payments\n", "b.yaml") == 2
    assert seen.changes == [(1, ["orders"]), (2, ["orders", "payments"])]
    assert store.current[0] == 2 and names(store) == ["orders", "payments"]


async def test_the_same_content_again_keeps_the_version_and_tells_no_one(make: Make) -> None:
    store = await make()
    await store.apply_text(ORDERS, "a.yaml")
    seen = Recorder(store)
    # Reformatted, but the same policy: no new version, so no push to any sidecar.
    assert await store.apply_text("clusters: [{name: orders}]  # same\n", "a.yaml") == 1
    assert seen.changes == []


async def test_a_refused_change_keeps_the_old_policy_and_says_why(make: Make) -> None:
    rejected: list[PolicyError] = []
    store = await make(rejected.append)
    await store.apply_text(ORDERS, "good.yaml")
    seen = Recorder(store)
    with pytest.raises(PolicyError) as refused:
        await store.apply_text(
            ORDERS + "  timeout: -1s\n" + ROUTE_TO_ORDERS.replace("orders}", "x}"), "bad.yaml")
    assert str(refused.value) == (
        "bad.yaml: clusters[0].timeout: must be positive, not -1s\n"
        "bad.yaml: routes[0].virtual_hosts[0].routes[0].route.cluster: unknown cluster 'x' "
        "(the policy declares: orders)")
    assert store.current[0] == 1 and names(store) == ["orders"]
    assert store.current[1].clusters[0] == Cluster(name="orders")
    assert store.last_error is refused.value and rejected == [refused.value]
    assert seen.changes == []
    await store.apply_text(ORDERS + "- name: payments\n", "fixed.yaml")
    assert store.last_error is None and store.current[0] == 2


async def test_a_folder_is_merged_in_name_order(tmp_path: Path, make: Make) -> None:
    (tmp_path / "20-routes.yml").write_text(ROUTE_TO_ORDERS)  # names a cluster of 10-
    (tmp_path / "10-clusters.yaml").write_text(ORDERS + "- name: payments\n")
    (tmp_path / "30-more.yaml").write_text("clusters:\n- name: billing\n")
    (tmp_path / ".10-draft.yaml").write_text("clusters: [{name: draft}]\n")  # hidden: skipped
    (tmp_path / "README.md").write_text("not a policy")
    store = await make()
    assert await store.load_path(tmp_path) == 1
    assert names(store) == ["orders", "payments", "billing"]
    assert [r.name for r in store.current[1].routes] == ["shop"]


async def test_problems_in_a_folder_name_their_file_and_its_own_index(tmp_path: Path,
                                                                     make: Make) -> None:
    (tmp_path / "a.yaml").write_text("clusters:\n- name: payments\n- name: orders\n")
    (tmp_path / "b.yaml").write_text("clusters:\n- name: billing\n- name: orders\n"
                                     "  retry_budget: {retry_ratio: 3}\n")
    with pytest.raises(PolicyError) as refused:
        await (await make()).load_path(tmp_path)
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    assert [str(p) for p in refused.value.problems] == [
        f"{b}: clusters[1].name: duplicate cluster name 'orders' (first declared in {a} "
        f"clusters[1])",
        f"{b}: clusters[1].retry_budget.retry_ratio: 3.0 is outside 0..1 (a fraction of "
        f"requests)"]


async def test_a_file_that_does_not_parse_stops_the_rules(tmp_path: Path, make: Make) -> None:
    # The routes of 20- name a cluster of 10-; with 10- broken, only its own error is shown.
    (tmp_path / "10-clusters.yaml").write_text("clusters:\n- name: orders\n  timeout: [\n")
    (tmp_path / "20-routes.yaml").write_text(ROUTE_TO_ORDERS)
    with pytest.raises(PolicyError) as refused:
        await (await make()).load_path(tmp_path)
    assert len(refused.value.problems) == 1
    assert refused.value.problems[0].file == str(tmp_path / "10-clusters.yaml")
    assert "YAML syntax error at line 4" in refused.value.problems[0].reason


async def test_a_missing_path_is_refused(tmp_path: Path, make: Make) -> None:
    store = await make()
    with pytest.raises(PolicyError) as refused:
        await store.load_path(tmp_path / "nope.yaml")
    assert str(refused.value) == f"{tmp_path / 'nope.yaml'}: no such file or folder"
    assert store.last_error is refused.value


async def test_to_yaml_writes_what_apply_reads_back(make: Make) -> None:
    store = await make()
    await store.apply_text(ORDERS + "  lb_policy: PEAK_EWMA\n  timeout: 1.5s\n" + ROUTE_TO_ORDERS,
                     "a.yaml")
    text = to_yaml(store.current[1])
    assert "lb_policy: PEAK_EWMA" in text and "timeout: 1.500s" in text
    again = await make()
    await again.apply_text(text, "dump.yaml")
    assert again.current[1] == store.current[1]
    assert to_yaml(MeshPolicy()) == "{}\n"


# ------------------------------------------------------------------------------- hot reload

async def eventually(check: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(POLL / 2)


@contextlib.asynccontextmanager
async def watching(store: PolicyStore, path: Path) -> AsyncIterator[None]:
    task = asyncio.create_task(store.watch(path, interval=POLL))
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_an_edited_file_is_reloaded(tmp_path: Path, make: Make) -> None:
    policy = tmp_path / "mesh.yaml"
    policy.write_text(ORDERS)
    store = await make()
    await store.load_path(policy)
    seen = Recorder(store)
    async with watching(store, policy):
        await asyncio.sleep(POLL * 5)
        assert seen.changes == []  # the loaded content is not applied a second time
        policy.write_text(ORDERS + "- name: payments\n")
        await eventually(lambda: store.current[0] == 2)
        assert seen.changes == [(2, ["orders", "payments"])]


async def test_a_bad_edit_is_refused_once_and_the_old_policy_stays(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, make: Make) -> None:
    policy = tmp_path / "mesh.yaml"
    policy.write_text(ORDERS)
    rejected: list[PolicyError] = []
    store = await make(rejected.append)
    await store.load_path(policy)
    async with watching(store, policy):
        with caplog.at_level(logging.WARNING, "controlplane.policy"):
            policy.write_text(ORDERS + "  retry_budget: {retry_ratio: 1.5}\n")
            await eventually(lambda: store.last_error is not None)
            await asyncio.sleep(POLL * 5)  # more polls of the same bad file
        assert len(rejected) == 1  # reported once, not at every poll
        assert f"policy from {policy} rejected, version 1 stays in force: {policy}: " \
               f"clusters[0].retry_budget.retry_ratio: 1.5 is outside 0..1" in caplog.text
        assert store.current[0] == 1 and store.current[1].clusters[0] == Cluster(name="orders")
        policy.write_text(ORDERS + "  retry_budget: {retry_ratio: 0.5}\n")  # fixed
        await eventually(lambda: store.current[0] == 2)
        assert store.last_error is None
        assert store.current[1].clusters[0].retry_budget.retry_ratio == 0.5


async def test_a_watched_folder_picks_up_new_and_removed_files(tmp_path: Path, make: Make) -> None:
    (tmp_path / "10-clusters.yaml").write_text(ORDERS)
    store = await make()
    await store.load_path(tmp_path)
    async with watching(store, tmp_path):
        (tmp_path / "20-routes.yaml").write_text(ROUTE_TO_ORDERS)
        await eventually(lambda: store.current[0] == 2)
        assert [r.name for r in store.current[1].routes] == ["shop"]
        (tmp_path / "20-routes.yaml").unlink()
        await eventually(lambda: store.current[0] == 3)
        assert list(store.current[1].routes) == []


async def test_a_deleted_policy_file_keeps_the_policy(tmp_path: Path, make: Make) -> None:
    policy = tmp_path / "mesh.yaml"
    policy.write_text(ORDERS)
    store = await make()
    async with watching(store, policy):  # no load_path first: the watcher loads at once
        await eventually(lambda: store.current[0] == 1)
        policy.unlink()
        await eventually(lambda: store.last_error is not None)
        assert str(store.last_error) == f"{policy}: no such file or folder"
        assert names(store) == ["orders"] and store.current[0] == 1
        policy.write_text(ORDERS)  # back as it was: valid again, nothing changed
        await eventually(lambda: store.last_error is None)
        assert store.current[0] == 1


# ------------------------------------------------------------------- shared by replicas

async def test_a_policy_applied_at_one_replica_is_in_force_at_the_other(make: Make) -> None:
    shared = MemoryStore(FakeClock(), trust_domain="cluster.local")
    first, second = await make(store=shared), await make(store=shared)
    seen = Recorder(second)
    assert await first.apply_text(ORDERS, "a.yaml") == 1
    await eventually(lambda: second.current[0] == 1)
    assert names(second) == ["orders"] and seen.changes == [(1, ["orders"])]
    # The replica that wrote took it at once; its watch bringing it back changes nothing.
    await asyncio.sleep(POLL)
    assert first.current[0] == 1


async def test_two_changes_based_on_one_version_one_wins_the_other_names_both(make: Make) -> None:
    shared = MemoryStore(FakeClock(), trust_domain="cluster.local")
    first, second = await make(store=shared), await make(store=shared)
    await first.apply_text(ORDERS, "a.yaml")
    await eventually(lambda: second.current[0] == 1)
    won = await first.apply_text(ORDERS + "- name: payments\n", "a.yaml", based_on=1)
    with pytest.raises(Conflict) as lost:
        await second.apply_text(ORDERS + "- name: billing\n", "b.yaml", based_on=1)
    assert won == 2
    assert str(lost.value) == ("policy changed: this change was based on version 1, the "
                               "policy is now at version 2; read it and apply again")
    await eventually(lambda: second.current[0] == 2)
    assert names(second) == ["orders", "payments"]  # the winner's, everywhere


async def test_a_replica_that_lists_the_store_takes_the_policy_in_it(make: Make) -> None:
    shared = MemoryStore(FakeClock(), trust_domain="cluster.local")
    await (await make(store=shared)).apply_text(ORDERS, "a.yaml")
    second = await make(store=shared)  # started after the change: its listing has it
    assert second.current[0] == 1 and names(second) == ["orders"]


async def test_an_unreadable_policy_in_the_store_keeps_the_one_in_force(
        caplog: pytest.LogCaptureFixture, make: Make) -> None:
    store = await make()
    await store.apply_text(ORDERS, "a.yaml")
    with caplog.at_level(logging.ERROR, "controlplane.policy"):
        store.adopt(b"\xff\xff not a policy", 2)
    assert store.current[0] == 1 and names(store) == ["orders"]
    assert "the policy in the state store (version 2) cannot be read, version 1 stays in " \
           "force" in caplog.text

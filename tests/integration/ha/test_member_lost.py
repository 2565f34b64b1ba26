"""One etcd member of three killed: joining, registration, discovery and policy go on.

etcd commits a write once a majority of its members has it, so two members of three keep the
store working; each replica's store moves on to the next endpoint when its own is gone. The
member killed is the first of every replica's endpoints, the one their requests and watches
go to. With it gone, a new sidecar joins with a join token minted through a replica, registers,
and reaches every caller; a policy applied at a replica is ACKed by every sidecar.
"""

from __future__ import annotations

import asyncio
import functools
import json
from typing import Any

import pytest
import yaml

from demo_services import etcd_cluster
from tests.integration.ha.conftest import POLICY, HaMesh, in_sync
from tests.integration.sidecar.conftest import SidecarProcess, stopping
from tests.interop.xds.harness import until

pytestmark = [pytest.mark.asyncio(loop_scope="package"), pytest.mark.interop,
              pytest.mark.timeout(120)]

NEW_SERVER_HOST = "127.0.38.33"
CONNECT_TIMEOUT = 0.7  # seconds: what the new policy sets for orders (the default is not it)


async def connect_timeout(sidecar: SidecarProcess) -> float | None:
    """The connect timeout in force at ``sidecar`` for orders (admin ``/config_dump``)."""
    status, text = await sidecar.admin("/config_dump")
    assert status == 200, text
    settings: dict[str, Any] = json.loads(text)["effective_cluster_settings"].get("orders", {})
    return settings.get("connect_timeout")


async def test_with_an_etcd_member_killed_a_sidecar_joins_and_a_policy_is_applied(
        ha: HaMesh) -> None:
    member, *others = ha.etcd.members
    await asyncio.to_thread(member.kill)

    async def quorum() -> bool:
        return all([await asyncio.to_thread(etcd_cluster.healthy, m.spec) for m in others])

    await until(quorum, what="the two members left have a leader", timeout=10)
    await until(ha.ready, what="every replica follows the store", timeout=10)

    # A new sidecar: its token minted through the second replica, its registration where its
    # seeded choice puts it (the third).
    newcomer = await ha.join_orders("orders-3", NEW_SERVER_HOST, first=1)
    with stopping([newcomer]):
        await newcomer.wait_ready()
        seen = await until(functools.partial(ha.clients_hold, ha.server.host, NEW_SERVER_HOST),
                           what="every client holds the new endpoint", timeout=10)
        await until(lambda: ha.registered([newcomer]), what="every replica lists it",
                    timeout=5)

        # A policy applied at the third replica, in force at every sidecar.
        policy = {"clusters": [{**c, "connect_timeout": f"{CONNECT_TIMEOUT}s"}
                               if c["name"] == "orders" else c for c in POLICY["clusters"]]}
        status, body = await ha.replicas[2].api("POST", "/policy", yaml.safe_dump(policy))
        assert status == 200, body
        everyone = [*ha.sidecars, newcomer]

        async def applied_everywhere() -> bool:
            return await ha.policy_in_force(body["version"]) \
                and await ha.subscribed(everyone) \
                and all([await connect_timeout(s) == CONNECT_TIMEOUT for s in everyone])

        applied = await until(applied_everywhere, what="every sidecar took the new policy",
                              timeout=10)
        await until(ha.in_step, what="every replica's copy at the store's revision",
                    timeout=5)
    print(f"\nwith etcd member {member.spec.name} ({member.endpoint}) killed: the new sidecar "
          f"at every client {seen:.2f}s after it was ready, policy version {body['version']} "
          f"ACKed by all {len(everyone)} sidecars {applied:.2f}s after it was applied")
    assert all([in_sync(s) for r in ha.replicas for s in await r.streams()])

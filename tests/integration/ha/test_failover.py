"""A replica killed (SIGKILL) under load: its sidecars move to the others and lose nothing.

The replicas share their registry in etcd, so the replicas a sidecar moves to already know
every endpoint and lease: the calls made while the replica dies all succeed, each of its
sidecars is subscribed to another replica within twice its backoff cap, and a sidecar that
registers afterwards reaches every caller.
"""

from __future__ import annotations

import asyncio
import functools

import pytest

from tests.integration.ha.conftest import BACKOFF_CAP, HaMesh, load, loaded, lost, succeeded
from tests.integration.sidecar.conftest import stopping
from tests.interop.xds.harness import until

pytestmark = [pytest.mark.asyncio(loop_scope="package"), pytest.mark.interop,
              pytest.mark.timeout(120)]

NEW_SERVER_HOST = "127.0.38.32"


async def test_a_killed_replicas_sidecars_move_and_no_request_fails(ha: HaMesh) -> None:
    victim, streams = await ha.busiest()
    group = [s for s in ha.sidecars if s.name in streams]
    client = next(s for s in group if s in ha.clients)
    async with loaded(client) as rounds:
        await asyncio.sleep(1.0)
        await asyncio.to_thread(victim.kill)
        moved = await asyncio.gather(*(
            until(functools.partial(ha.away_from, victim, s),
                  what=f"{s.name} resubscribed to another replica", timeout=2 * BACKOFF_CAP)
            for s in group))
    print(f"\nkilled {victim.host} holding {len(group)} sidecars "
          f"({', '.join(s.name for s in group)}); resubscribed to another replica after "
          f"{', '.join(f'{t:.2f}' for t in moved)} s; requests through {client.name} while it "
          f"died: {lost(rounds)} failed of {succeeded(rounds) + lost(rounds)}")
    assert lost(rounds) == 0 and succeeded(rounds) > 100, [r.output for r in rounds]

    # A registration made now, at a surviving replica, reaches every caller.
    newcomer = await ha.join_orders("orders-2", NEW_SERVER_HOST,
                                    first=(ha.replicas.index(victim) + 1) % len(ha.replicas))
    with stopping([newcomer]):
        await newcomer.wait_ready()
        seen = await until(functools.partial(ha.clients_hold, ha.server.host, NEW_SERVER_HOST),
                           what="every client holds the new endpoint", timeout=10)
        after = [await load(client, 2)]
        served = await newcomer.metric("mesh_sidecar_requests_total", direction="inbound",
                                       cluster="orders", code="2xx")
    print(f"new server registered after the kill: at every client {seen:.2f}s after it was "
          f"ready; it served {served:.0f} of {succeeded(after)} requests after")
    assert lost(after) == 0 and served > 0, after[0].output


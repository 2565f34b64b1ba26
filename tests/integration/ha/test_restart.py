"""Every control-plane replica restarted, one after another: no registration lost, no endpoint
gone.

The registry is in etcd, not in the replicas: a restarted replica lists every instance before it
serves, and while it is down its sidecars heartbeat at another replica, renewing their leases
there. So while the three replicas are stopped (SIGTERM) and started again in turn, h2load runs
through a client sidecar and every client sidecar's endpoints for orders are looked at all the
time: none disappears, no request fails, and afterwards every replica lists the instances listed
before, on the same leases.
"""

from __future__ import annotations

import asyncio

import pytest

from tests.integration.ha.conftest import HaMesh, loaded, looking, lost, succeeded
from tests.integration.sidecar.conftest import INBOUND
from tests.interop.xds.harness import until

pytestmark = [pytest.mark.asyncio(loop_scope="package"), pytest.mark.interop,
              pytest.mark.timeout(120)]

SERVICES = ("orders", "shopper")


async def test_every_replica_restarted_in_turn_loses_no_registration_and_no_endpoint(
        ha: HaMesh) -> None:
    before = {service: await ha.replicas[0].leases(service) for service in SERVICES}
    assert len(before["shopper"]) == len(ha.clients) and len(before["orders"]) == 1, before
    wanted = {f"{ha.server.host}:{INBOUND}"}
    took = []
    loop = asyncio.get_running_loop()
    async with looking(ha.clients, "orders") as looks, loaded(ha.clients[0]) as rounds:
        for replica in ha.replicas:
            started = loop.time()
            await asyncio.to_thread(replica.stop)
            stopped = replica.process.returncode if replica.process is not None else None
            await replica.start()
            await until(replica.ready, what=f"{replica.host} ready again", timeout=10)
            took.append(f"{replica.host} {loop.time() - started:.2f}s (exit {stopped})")
        resubscribed = await until(lambda: ha.subscribed(ha.sidecars),
                                   what="every sidecar subscribed", timeout=10)
    after = [{service: await r.leases(service) for service in SERVICES} for r in ha.replicas]
    print(f"\nreplicas stopped and started again, one after another: {', '.join(took)}; every "
          f"sidecar subscribed {resubscribed:.2f}s after the last; {len(looks)} looks at the "
          f"clients' endpoints, {sum(1 for seen in looks if seen != wanted)} without the "
          f"server; requests failed: {lost(rounds)} of {succeeded(rounds) + lost(rounds)}")
    assert after == [before] * len(ha.replicas)
    assert [seen for seen in looks if seen != wanted] == []
    assert lost(rounds) == 0 and succeeded(rounds) > 300, [r.output for r in rounds]

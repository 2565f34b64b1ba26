"""A sidecar that moves to another replica is not sent again what it holds.

Discovery versions are digests of the resources, the same at every replica for the same state,
and a sidecar resubscribes with the versions it holds. So when the replica holding a group of
sidecars is killed, the replicas they move to have nothing to send them: each sidecar's
versions there are those it had, no NACK, no response sent (the replicas' ``mesh_controlplane
_pushes_total``) and no update taken (the sidecars' ``mesh_sidecar_config_updates_total``).
"""

from __future__ import annotations

import asyncio
import functools

import pytest

from tests.integration.ha.conftest import BACKOFF_CAP, HaMesh
from tests.integration.sidecar.conftest import SidecarProcess
from tests.interop.xds.harness import until

pytestmark = [
    pytest.mark.asyncio(loop_scope="package"), pytest.mark.interop, pytest.mark.timeout(120),
]


async def config_updates(sidecar: SidecarProcess) -> dict[str, float]:
    """Discovery responses the sidecar took, by result (ack, nack), every type."""
    taken: dict[str, float] = {}
    for sample, value in (await sidecar.metrics()).items():
        if sample.startswith("mesh_sidecar_config_updates_total{"):
            result = "nack" if 'result="nack"' in sample else "ack"
            taken[result] = taken.get(result, 0) + value
    return taken


async def test_a_sidecar_that_moves_is_not_sent_again_what_it_holds(ha: HaMesh) -> None:
    victim, before = await ha.busiest()
    group = [s for s in ha.sidecars if s.name in before]
    survivors = [r for r in ha.replicas if r is not victim]
    pushed = [await r.pushes() for r in survivors]
    taken = [await config_updates(s) for s in group]
    await asyncio.to_thread(victim.kill)
    await asyncio.gather(*(until(functools.partial(ha.away_from, victim, s),
                                 what=f"{s.name} resubscribed to another replica",
                                 timeout=2 * BACKOFF_CAP) for s in group))
    after = {s.name: await ha.where(s) for s in group}
    resent = [await r.pushes() - p for r, p in zip(survivors, pushed, strict=True)]
    retaken = [{k: v - t.get(k, 0) for k, v in (await config_updates(s)).items()}
               for s, t in zip(group, taken, strict=True)]
    print(f"\n{len(group)} sidecars moved from {victim.host}: responses sent by the others "
          f"{resent}, updates the sidecars took {retaken}")
    for sidecar in group:
        moved = after[sidecar.name]
        assert moved is not None
        old = {t: s["acked"] for t, s in before[sidecar.name]["types"].items()}
        new = {t: s["acked"] for t, s in moved[1]["types"].items()}
        assert new == old, f"{sidecar.name} holds other versions at {moved[0].host}"
        assert all(s["nacks"] == 0 for s in moved[1]["types"].values()), moved[1]
    assert resent == [0] * len(survivors), "a moved sidecar was sent again what it holds"
    assert all(not any(r.values()) for r in retaken), retaken

"""Ring hash end to end: the same ``x-user`` reaches the same replica, every time.

The client's sidecar balances the ``backend`` cluster with ``RING_HASH`` on the ``x-user``
header: each user's requests hash to one point on the ring and so to one replica (its cache
stays warm there), while different users spread over all three. A request without the header
has no key and goes to a random point, as in Envoy.
"""

from __future__ import annotations

from collections import defaultdict

from tests.integration.policies.conftest import Mesh, Sidecar

USERS = 30  # with three equal replicas, all three get a user but for a ~1e-5 chance
REQUESTS_PER_USER = 4


async def answered_by(mesh: Mesh, client: Sidecar, headers: dict[str, str]) -> str:
    async with mesh.http.get(f"{client.outbound}/work",
                             headers={"Host": "backend", **headers}) as response:
        assert response.status == 200, await response.text()
        return response.headers["x-replica"]


async def test_the_same_header_value_reaches_the_same_replica(mesh: Mesh) -> None:
    replicas = await mesh.replicas({"name": "r1"}, {"name": "r2"}, {"name": "r3"})
    client = await mesh.sidecar("client", {
        "clusters": [{"name": "backend", "lb_policy": "RING_HASH",
                      "ring_hash": {"hash_header": "X-User"}}],  # names are case-insensitive
        "endpoints": {"backend": [r.sidecar.endpoint_config for r in replicas]},
    }, client=True)

    seen: dict[str, set[str]] = defaultdict(set)
    for _ in range(REQUESTS_PER_USER):  # round after round, so the picks interleave
        for user in range(USERS):
            seen[f"user-{user}"].add(await answered_by(mesh, client, {"x-user": f"user-{user}"}))
    keyless = {await answered_by(mesh, client, {}) for _ in range(30)}

    scattered = {user: replicas for user, replicas in seen.items() if len(replicas) > 1}
    assert not scattered, f"users whose requests reached more than one replica: {scattered}"
    owners = {next(iter(replicas)) for replicas in seen.values()}
    print(f"\nring hash: {USERS} users x {REQUESTS_PER_USER} requests, each user always on "
          f"one replica; users per replica: "
          f"{ {r: sum(seen[u] == {r} for u in seen) for r in sorted(owners)} }")
    assert owners == {"r1", "r2", "r3"}
    assert len(keyless) > 1  # no key: a random point each time

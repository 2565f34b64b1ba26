"""Clusters that come and go while routes stay: the client's sidecar follows the control plane.

Two things a live mesh does that a static file never shows:

- A service registers after the client's sidecar got its routes. The control plane pushes a
  cluster for it, and nothing else changes; the sidecar must route ``Host: backend`` to it at
  once (its router's fallback), not answer 404 until some route changes.
- The policy drops a cluster and the route that names it. The control plane sends clusters
  first (make before break), while the sidecar still holds the old route; it must accept them
  (the old route answers 503 for the moment) rather than NACK — a NACKed version is not sent
  again, so the cluster would linger for good.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import yaml

from tests.integration.policies.conftest import Mesh, Sidecar, metric

WAIT = 10.0  # seconds for a change to reach the sidecar; generous, the machine is shared


def policy(*, extra: bool) -> dict[str, Any]:
    if not extra:
        return {"clusters": [], "routes": []}
    return {"clusters": [{"name": "extra"}],
            "routes": [{"name": "mesh", "virtual_hosts": [
                {"name": "extra", "domains": ["extra"],
                 "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "extra"}}]}]}]}


async def clusters(mesh: Mesh, client: Sidecar) -> dict[str, Any]:
    found: dict[str, Any] = await mesh.admin(client, "/clusters")
    return found


async def routes(mesh: Mesh, client: Sidecar) -> list[Any]:
    """The route configurations in force (none before the first routes update)."""
    dump = await mesh.admin(client, "/config_dump")
    found: list[Any] = dump["resources"].get("RouteConfiguration", [])
    return found


async def status_of(mesh: Mesh, client: Sidecar, host: str) -> int:
    async with mesh.http.get(f"{client.outbound}/work", headers={"Host": host}) as response:
        await response.read()
        return response.status


async def test_clusters_that_come_and_go_are_followed_without_a_nack(mesh: Mesh) -> None:
    cp = await mesh.control_plane(policy(extra=True))
    client = await mesh.sidecar("client", None, client=True, control_plane=cp)
    deadline = time.monotonic() + WAIT
    while "extra" not in await clusters(mesh, client) or not await routes(mesh, client):
        assert time.monotonic() < deadline, "the policy never reached the client"
        await asyncio.sleep(0.05)
    assert await status_of(mesh, client, "backend") == 404  # not registered yet

    # The backend registers now: a new cluster, and the routes unchanged.
    await mesh.replicas({"name": "late"}, control_plane=cp)
    deadline = time.monotonic() + WAIT
    while not (await clusters(mesh, client)).get("backend", {}).get("endpoints"):
        assert time.monotonic() < deadline, "the backend's endpoint never reached the client"
        await asyncio.sleep(0.05)
    assert await status_of(mesh, client, "backend") == 200

    # The policy drops the cluster and its route together.
    cp.policy.write_text(yaml.safe_dump(policy(extra=False)))
    deadline = time.monotonic() + WAIT
    while "extra" in await clusters(mesh, client):
        assert time.monotonic() < deadline, "the dropped cluster stayed on the client"
        await asyncio.sleep(0.05)
    while await routes(mesh, client):
        assert time.monotonic() < deadline, "the dropped route stayed on the client"
        await asyncio.sleep(0.05)

    text = await mesh.admin(client, "/metrics")
    assert metric(text, "mesh_sidecar_config_updates_total", result="nack") == 0
    assert await status_of(mesh, client, "extra") == 404  # neither a route nor a cluster
    assert await status_of(mesh, client, "backend") == 200

"""A policy's rollout as an operator sees it: ``GET /policy/history`` lists the versions, and
``GET /status`` says which version each real discovery stream runs, and which NACK holds it
back."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from aiohttp.test_utils import TestClient, TestServer
from google.protobuf.message import Message

from controlplane.api import make_app
from mesh.proto.config_pb2 import Cluster
from mesh.proto.discovery_pb2 import Node
from mesh.proto.resources import CLUSTERS
from sidecar.discovery import DiscoveryClient
from tests.integration.controlplane.conftest import Mesh

ORDERS = "clusters:\n- name: orders\n"


@contextlib.asynccontextmanager
async def operator(mesh: Mesh) -> AsyncIterator[TestClient[Any, Any]]:
    async with TestClient(TestServer(make_app(mesh.cp), host="127.0.0.1"),
                          headers=mesh.operator_headers) as http:
        yield http


def refuse_a_cluster_named_bad(type_url: str, resources: list[Message]) -> None:
    if type_url == CLUSTERS and any(isinstance(c, Cluster) and c.name == "bad"
                                    for c in resources):
        raise ValueError("cluster 'bad' is not acceptable here")


@contextlib.asynccontextmanager
async def frontend_sidecar(mesh: Mesh) -> AsyncIterator[DiscoveryClient]:
    """A discovery client standing in for frontend's sidecar; it NACKs a cluster "bad"."""
    channel = mesh.channel("frontend")
    client = DiscoveryClient(channel, Node(id="frontend-1", service="frontend"),
                             refuse_a_cluster_named_bad, backoff=lambda: itertools.repeat(0.05))
    task = asyncio.create_task(client.run())
    try:
        await asyncio.wait_for(client.synced.wait(), 5)
        yield client
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await channel.close()


async def stream_at(http: TestClient[Any, Any], wanted: Callable[[dict[str, Any]], bool],
                    ) -> dict[str, Any]:
    """The (only) stream in ``GET /status``, once ``wanted`` says it is as expected."""
    async with asyncio.timeout(5):
        while True:
            (stream,) = (await (await http.get("/status")).json())["streams"]
            if wanted(stream):
                return dict(stream)
            await asyncio.sleep(0.01)


async def test_the_history_lists_every_version_applied_oldest_first(mesh: Mesh) -> None:
    started = time.time()
    async with operator(mesh) as http:
        for source, text in [("a.yaml", ORDERS), ("api", ORDERS + "- name: payments\n"),
                             ("b.yaml", "clusters:\n- name: payments\n")]:
            assert (await http.post(f"/policy?source={source}", data=text)).status == 200
        response = await http.get("/policy/history")
        assert response.status == 200
        versions = (await response.json())["versions"]
    assert [(v["version"], v["source"], v["policy"]) for v in versions] == [
        (1, "a.yaml", "clusters:\n- name: orders\n"),
        (2, "api", "clusters:\n- name: orders\n- name: payments\n"),
        (3, "b.yaml", "clusters:\n- name: payments\n")]
    times = [v["applied_at"] for v in versions]
    assert times == sorted(times) and started - 1 <= times[0] <= times[-1] <= time.time() + 1


async def test_each_stream_shows_the_version_it_runs_and_the_nack_holding_it_back(
        mesh: Mesh) -> None:
    await mesh.cp.policy.apply_text(ORDERS, "v1")
    async with frontend_sidecar(mesh), operator(mesh) as http:
        stream = await stream_at(http, lambda s: s["policy_version"] == 1)
        assert stream["nack"] is None

        await mesh.cp.policy.apply_text(ORDERS + "- name: bad\n", "v2")

        stream = await stream_at(http, lambda s: s["nack"] is not None)
        assert stream["policy_version"] == 1
        assert stream["nack"] == {"type": "Cluster",
                                  "message": "cluster 'bad' is not acceptable here",
                                  "policy_version": 2}

        await mesh.cp.policy.apply_text(ORDERS + "- name: fixed\n", "v3")

        stream = await stream_at(http, lambda s: s["policy_version"] == 3)
        assert stream["nack"] is None
        assert stream["types"]["Cluster"]["nacks"] == 1  # the per-type record stays

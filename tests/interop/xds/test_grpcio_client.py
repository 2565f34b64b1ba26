"""grpcio's own xDS client against the control plane: what a proxyless caller applies.

One mesh for the module (:mod:`tests.interop.xds.harness`): backends b1-b3 of ``echo`` and c1 of
``canary``, each behind a sidecar that joined the control plane, and one ``grpcio_client.py``
process with a channel per target (``xds:///echo``, ``xds:///split``, ...); grpcio keeps an
xDS client, so an ADS stream, per target. Each test applies the policy it is about through the
operator API, waits until the streams ACKed it, and then makes real calls: an ACK alone proves
nothing (a config can be ACKed and route nowhere). The gRFCs named are the ones grpcio
implements each behaviour by. Tests that read one stream's status start a client of their
own, whose node id no other stream has.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
from envoy.admin.v3.config_dump_shared_pb2 import ClientResourceStatus
from envoy.service.status.v3 import csds_pb2, csds_pb2_grpc

from tests.integration.sidecar.conftest import SidecarProcess, run_tool, stopping
from tests.interop.xds.harness import (
    CP_API,
    NET,
    Backend,
    ControlPlane,
    GrpcioClient,
    backend_sidecar,
    enroll,
    registered,
    start_backend,
    start_client,
    until,
)

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.interop,
              pytest.mark.timeout(60)]

ECHO = ("b1", "b2", "b3")  # the instances of "echo" from the start
LATE = "b4"  # an instance of "echo" that registers during a test
CANARY = "c1"  # the one instance of "canary"
HOSTS = {name: n for n, name in enumerate((*ECHO, LATE, CANARY), start=11)}  # 127.0.33.<n>


def sidecar_host(backend: str) -> str:
    return f"{NET}.{HOSTS[backend]}"


def app_host(backend: str) -> str:
    return f"{NET}.{100 + HOSTS[backend]}"


def policy(*, echo: dict[str, Any] | None = None, canary: dict[str, Any] | None = None,
           virtual_hosts: tuple[dict[str, Any], ...] = ()) -> dict[str, Any]:
    """The mesh policy: both clusters (with ``echo``'s and ``canary``'s settings), and
    ``virtual_hosts`` in one route configuration."""
    document: dict[str, Any] = {"clusters": [
        {"name": "echo", "app_protocol": "GRPC", **(echo or {})},
        {"name": "canary", "app_protocol": "GRPC", **(canary or {})},
    ]}
    if virtual_hosts:
        document["routes"] = [{"name": "mesh", "virtual_hosts": list(virtual_hosts)}]
    return document


def virtual_host(name: str, route: dict[str, Any], match: dict[str, Any] | None = None,
                 ) -> dict[str, Any]:
    """A virtual host for the target ``xds:///name`` with one route."""
    return {"name": name, "domains": [name],
            "routes": [{"match": match or {"prefix": "/"}, "route": route}]}


@dataclass
class Mesh:
    cp: ControlPlane
    client: GrpcioClient
    backends: dict[str, Backend]
    work: Path

    @contextlib.asynccontextmanager
    async def own_client(self, name: str) -> AsyncIterator[tuple[GrpcioClient, str]]:
        """Another client process, and its node id: its streams are the only ones of that
        node (one per target it calls)."""
        bootstrap, node = await enroll(self.cp, "shopper", self.work / name)
        client = await start_client(bootstrap, self.work / name / "client.log")
        try:
            yield client, node
        finally:
            await client.stop()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def mesh(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Mesh]:
    work = tmp_path_factory.mktemp("xds-interop")
    backends = {name: Backend(name) for name in HOSTS}
    servers = [await start_backend(backend, app_host(name)) for name, backend in backends.items()]
    cp = ControlPlane(work)
    sidecars: list[SidecarProcess] = []
    client: GrpcioClient | None = None
    try:
        await cp.start(policy())
        with stopping(sidecars):
            for name in (*ECHO, CANARY):
                service = "canary" if name == CANARY else "echo"
                sidecars.append(await backend_sidecar(cp, name, sidecar_host(name), service,
                                                      app_host(name)))
            for sidecar in sidecars:
                await registered(cp, sidecar, "canary" if sidecar.name == CANARY else "echo")
            bootstrap, _ = await enroll(cp, "shopper", work / "client")
            client = await start_client(bootstrap, work / "client.log")
            yield Mesh(cp, client, backends, work)
    finally:
        if client is not None:
            await client.stop()
        cp.stop()
        for server in servers:
            await server.stop(None)


async def test_the_first_call_succeeds(mesh: Mesh) -> None:
    """Listener → RouteConfiguration → Cluster → ClusterLoadAssignment, then an mTLS call to
    a sidecar whose SPIFFE ID the Cluster's TLS context names (gRFC A27, A29)."""
    first = await mesh.client.calls("echo", timeout=10)

    call = first.calls[0]
    assert (call.code, call.backend in ECHO) == ("OK", True), (call, mesh.client.log_text())
    print(f"first call, from a new channel: {call.ms:.0f} ms")


async def test_an_endpoint_registered_later_receives_calls_within_a_second(mesh: Mesh) -> None:
    await mesh.client.calls("echo")  # the channel is up
    loop = asyncio.get_running_loop()
    late = await backend_sidecar(mesh.cp, LATE, sidecar_host(LATE), "echo", app_host(LATE))
    with stopping([late]):
        await registered(mesh.cp, late, "echo")
        registered_at = loop.time()

        async def called() -> bool:
            return LATE in (await mesh.client.calls("echo", 4, concurrency=2)).backends()
        await until(called, what=f"{LATE} to be called", timeout=5.0, every=0)
        took = loop.time() - registered_at
    print(f"an endpoint registered took {took * 1000:.0f} ms to be called")
    assert took < 1.0

    async def gone() -> bool:
        return f"{late.host}:15006" not in await mesh.cp.endpoints("echo")
    await until(gone, what=f"{LATE} to deregister")


async def test_a_weighted_split_holds_within_five_percent_over_2000_calls(mesh: Mesh) -> None:
    """gRFC A28: weighted clusters, picked per call."""
    await mesh.cp.apply(policy(virtual_hosts=(virtual_host("split", {"weighted_clusters": {
        "clusters": [{"name": "echo", "weight": 80}, {"name": "canary", "weight": 20}]}}),)))

    split = await mesh.client.calls("split", 2000, concurrency=20)

    assert split.codes() == {"OK": 2000}, split.codes()
    canary = split.backends()[CANARY] / 2000
    print(f"canary share: {canary:.3f} (of 0.20)")
    assert abs(canary - 0.20) <= 0.05, split.backends()


async def test_a_live_route_that_starts_naming_another_cluster_sends_it_calls(
        mesh: Mesh) -> None:
    """A canary rollout on a channel already in use: the route to echo becomes 80/20 with
    canary, and gRPC subscribes to canary's Cluster in a request that also ACKs the last
    Cluster response; the control plane must answer the grown subscription (ADS, SotW)."""
    def rollout(route: dict[str, Any]) -> dict[str, Any]:
        return policy(virtual_hosts=(virtual_host("rollout", route),))

    await mesh.cp.apply(rollout({"cluster": "echo"}))
    assert (await mesh.client.calls("rollout", 3)).backends().keys() <= set(ECHO)
    await mesh.cp.apply(rollout({"weighted_clusters": {
        "clusters": [{"name": "echo", "weight": 80}, {"name": "canary", "weight": 20}]}}))

    async def canary_called() -> bool:
        return CANARY in (await mesh.client.calls("rollout", 10, concurrency=5)).backends()
    await until(canary_called, what="the canary to be called", timeout=5.0, every=0)
    split = await mesh.client.calls("rollout", 1000, concurrency=20)

    assert split.codes() == {"OK": 1000}, split.codes()
    assert abs(split.backends()[CANARY] / 1000 - 0.20) <= 0.05, split.backends()


async def test_ring_hash_keeps_a_header_value_on_one_endpoint(mesh: Mesh) -> None:
    """gRFC A42: the route hashes the header our cluster's ring_hash names."""
    await mesh.cp.apply(policy(echo={"lb_policy": "RING_HASH",
                                     "ring_hash": {"hash_header": "x-user"}}))
    users = [f"user-{n}" for n in range(20)]

    hashed = await mesh.client.calls("echo", 100, concurrency=5, header="x-user", values=users)

    assert hashed.codes() == {"OK": 100}, hashed.codes()
    chosen: dict[str, set[str]] = {}
    for call in hashed.calls:
        chosen.setdefault(call.value, set()).add(call.backend)
    assert all(len(backends) == 1 for backends in chosen.values()), chosen
    assert len(set().union(*chosen.values())) >= 2, chosen  # different values spread


async def test_retries_on_unavailable_hide_a_failing_endpoint(mesh: Mesh) -> None:
    """gRFC A44: with ``retry_on: [unavailable]`` every call succeeds although b3 always
    answers UNAVAILABLE; without a retry policy a third of the calls fail. One call at a time:
    round robin then sends each retry to the next endpoint, never to b3 again."""
    await mesh.cp.apply(policy(virtual_hosts=(
        virtual_host("echo-retry", {"cluster": "echo", "retry_policy": {
            "retry_on": ["unavailable"], "num_retries": 2}}),
        virtual_host("echo-once", {"cluster": "echo"}))))
    b3_fails = {"fail": ["b3"]}
    mesh.backends["b3"].reset()

    retried = await mesh.client.calls("echo-retry", 60, order=b3_fails)
    tried_b3 = mesh.backends["b3"].calls
    once = await mesh.client.calls("echo-once", 60, order=b3_fails)

    assert retried.codes() == {"OK": 60}, retried.codes()
    assert tried_b3 >= 10  # b3 was called, and failed, and the calls were retried
    assert set(retried.backends()) == {"b1", "b2"}
    assert once.codes()["UNAVAILABLE"] >= 10, once.codes()


async def test_outlier_detection_ejects_a_failing_endpoint(mesh: Mesh) -> None:
    """gRFC A50: failure percentage. b3 fails every call; at the next sweep with enough calls
    it is ejected, and then gets none."""
    await mesh.cp.apply(policy(echo={"outlier_detection": {
        "interval": "0.5s", "base_ejection_time": "30s", "max_ejection_percent": 50,
        "failure_percentage_threshold": 50, "failure_percentage_minimum_hosts": 2,
        "failure_percentage_request_volume": 3, "enforcing_failure_percentage": 100}}))
    b3_fails = {"fail": ["b3"]}

    async def ejected() -> bool:
        batch = await mesh.client.calls("echo", 15, concurrency=3, order=b3_fails)
        return "UNAVAILABLE" not in batch.codes()
    await until(ejected, what="b3 to be ejected", timeout=10.0, every=0.1)
    mesh.backends["b3"].reset()
    after = await mesh.client.calls("echo", 60, concurrency=3, order=b3_fails)

    assert after.codes() == {"OK": 60}, after.codes()
    assert mesh.backends["b3"].calls == 0
    assert set(after.backends()) == {"b1", "b2"}


async def test_a_circuit_breaker_caps_the_calls_in_flight(mesh: Mesh) -> None:
    """gRFC A32: ``max_requests`` counts the calls in flight to the cluster; a call over it
    fails at once with UNAVAILABLE instead of waiting."""
    await mesh.cp.apply(policy(canary={"circuit_breakers": {"max_requests": 3}}))
    await mesh.client.calls("canary")  # connected
    c1 = mesh.backends[CANARY]
    c1.reset()

    burst = await mesh.client.calls("canary", 10, concurrency=10, timeout=10,
                                    order={"slow": [CANARY], "sleep_ms": 1500})

    assert burst.codes() == {"OK": 3, "UNAVAILABLE": 7}, burst.codes()
    assert c1.most_in_flight == 3
    assert c1.calls == 3
    refused = [call.ms for call in burst.calls if call.code == "UNAVAILABLE"]
    assert max(refused) < 1000, refused  # at once, not after a slow call made room


async def test_a_route_grpc_cannot_apply_is_nacked_and_the_last_good_one_kept(
        mesh: Mesh) -> None:
    """Our validation compiles a route's ``safe_regex`` with Python's ``re``; gRPC compiles it
    with RE2, which has no lookahead. The control plane accepts the policy, gRPC NACKs the
    RouteConfiguration with its reason, shown in the status and by ``meshctl status``, and
    keeps routing with the last RouteConfiguration it accepted."""
    def regex_host(regex: str) -> dict[str, Any]:
        return virtual_host("echo-regex", {"cluster": "echo"}, {"safe_regex": regex})

    await mesh.cp.apply(policy(virtual_hosts=(regex_host(r"/test\.Echo/W.*"),)))
    async with mesh.own_client("regex") as (client, node):
        assert (await client.calls("echo-regex")).codes() == {"OK": 1}
        code, answer = await mesh.cp.post_policy(
            policy(virtual_hosts=(regex_host(r"/test\.Echo/(?=Who)\w+"),)))
        assert code == 200, answer  # a Python regex: our validation lets it through

        async def nacked() -> bool:
            return bool((await mesh.cp.stream(node))["types"]["RouteConfiguration"]["nacks"])
        await until(nacked, what="gRPC to NACK the RouteConfiguration")
        routes = (await mesh.cp.stream(node))["types"]["RouteConfiguration"]
        kept = await client.calls("echo-regex", 20, concurrency=4)
        status_code, shown, err = await run_tool(
            sys.executable, "-m", "meshctl", "--api", CP_API, "status",
            env={**os.environ, "MESH_PKI_DIR": str(mesh.cp.pki)})

    print(f"gRPC's NACK: {routes['last_nack']}")
    assert "regex" in routes["last_nack"].lower(), routes
    assert routes["acked"] != routes["sent"], routes
    assert kept.codes() == {"OK": 20}, kept.codes()
    assert status_code == 0, err
    row = next(line for line in shown.splitlines()
               if line.startswith(node) and "RouteConfiguration" in line)
    assert "xds.v3" in row and " NO " in row and routes["last_nack"][:40] in row, shown


async def test_the_client_stream_shows_xds_v3_with_every_type_acked(mesh: Mesh) -> None:
    await mesh.cp.apply(policy())  # also heals the NACK above, if it ran
    async with mesh.own_client("status") as (client, node):
        assert (await client.calls("echo")).codes() == {"OK": 1}
        stream = await mesh.cp.stream(node)

    assert stream["protocol"] == "xds.v3"
    assert stream["service"] == "shopper" and stream["namespace"] == "default"
    assert stream["identity"] == "spiffe://cluster.local/ns/default/sa/shopper"
    assert set(stream["types"]) == {"Listener", "RouteConfiguration", "Cluster",
                                    "ClusterLoadAssignment"}
    for name, state in stream["types"].items():
        assert state["sent"] and state["acked"] == state["sent"], (name, state)


async def test_an_xds_client_without_a_mesh_certificate_is_refused(mesh: Mesh) -> None:
    """The ADS stream needs a client certificate of the mesh CA: a bootstrap whose TLS channel
    credentials have only the CA gets UNAUTHENTICATED, which gRPC passes to its calls."""
    bootstrap, node = await enroll(mesh.cp, "shopper", mesh.work / "anonymous")
    config = json.loads(bootstrap.read_text())
    tls = config["xds_servers"][0]["channel_creds"][0]["config"]
    del tls["certificate_file"], tls["private_key_file"]
    bootstrap.write_text(json.dumps(config))
    client = await start_client(bootstrap, mesh.work / "anonymous" / "client.log")
    try:
        refused = (await client.calls("echo", timeout=10)).calls[0]
    finally:
        await client.stop()

    print(f"gRPC's error: {refused.details}")
    assert refused.code == "UNAVAILABLE", refused
    assert "UNAUTHENTICATED" in refused.details, refused
    assert node not in {stream["node"] for stream in (await mesh.cp.status())["streams"]}


async def test_csds_shows_what_the_client_holds_as_the_control_plane_sent_it(mesh: Mesh) -> None:
    """gRPC's own account of its xDS configuration (CSDS, gRFC A40, ``grpcio-csds``): every
    resource of the chain is ACKED, at the version the control plane's status says it sent."""
    await mesh.cp.apply(policy())
    async with mesh.own_client("csds") as (client, node):
        assert (await client.calls("echo")).codes() == {"OK": 1}
        port = await client.csds(NET + ".1")
        channel = grpc.aio.insecure_channel(f"{NET}.1:{port}")
        try:
            status = await csds_pb2_grpc.ClientStatusDiscoveryServiceStub(
                channel).FetchClientStatus(csds_pb2.ClientStatusRequest(), timeout=10)
        finally:
            await channel.close()
        stream = await mesh.cp.stream(node)

    held = {(config.type_url.rsplit(".", 1)[-1], config.name):
            (config.version_info, ClientResourceStatus.Name(config.client_status))
            for client_config in status.config for config in client_config.generic_xds_configs}
    for kind, name in (("Listener", "echo"), ("Cluster", "echo"),
                       ("ClusterLoadAssignment", "echo")):
        assert held[kind, name] == (stream["types"][kind]["acked"], "ACKED"), held
    routes = [key for key in held if key[0] == "RouteConfiguration"]
    assert routes and all(held[key][1] == "ACKED" for key in routes), held

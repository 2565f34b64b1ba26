"""etcd gone (all three members killed): the replicas serve what they have and refuse writes.

A replica that cannot reach its store keeps serving discovery from its last state (static
stability) but is not ready: ``/readyz`` answers 503 naming the store, and every write — a
registration, a policy, a join token — is refused at once with UNAVAILABLE (HTTP 503) and the
same reason. Its sidecars keep their configuration and their traffic; told UNAVAILABLE, they
move from replica to replica, each of which serves them the versions they hold. When the
members come back on their data folders, the replicas follow the store again by themselves (no
restart), and every registration is still there on its lease (etcd renews leases when a leader
is elected).
"""

from __future__ import annotations

import asyncio
import functools
import json
from pathlib import Path

import pytest

from mesh.grpc import GrpcError, StatusCode
from mesh.proto.config_pb2 import Endpoint
from mesh.proto.registry_pb2 import RegisterRequest, RegisterResponse
from tests.integration.ha.conftest import (
    HaMesh,
    Replica,
    Workload,
    loaded,
    looking,
    lost,
    succeeded,
)
from tests.integration.sidecar.conftest import INBOUND, SidecarProcess
from tests.interop.xds.harness import until

pytestmark = [pytest.mark.asyncio(loop_scope="package"), pytest.mark.interop,
              pytest.mark.timeout(120)]

CATALOG = ("127.0.38.51", 8443)
SERVICES = ("orders", "shopper")
NOTICED_WITHIN = 15.0  # seconds for every replica to say it lost the store
STATIC = 4.0  # seconds the sidecars are watched serving without a store
SHOWN = 100  # characters of a refusal printed


async def register(workload: Workload, replica: Replica) -> RegisterResponse:
    channel = workload.channel(replica)
    try:
        call = channel.unary_unary("/mesh.v1.Registry/Register", RegisterResponse.FromString)
        response: RegisterResponse = await call(RegisterRequest(
            service=workload.service, endpoint=Endpoint(address=CATALOG[0], port=CATALOG[1])),
            timeout=5.0)
        return response
    finally:
        await channel.close()


async def test_a_replica_without_its_store_serves_what_it_has_and_refuses_writes(
        ha: HaMesh, tmp_path: Path) -> None:
    store = ha.etcd.endpoints
    leases = {service: await ha.replicas[0].leases(service) for service in SERVICES}
    held: dict[str, dict[str, str]] = {}
    for sidecar in ha.sidecars:
        found = await ha.where(sidecar)
        assert found is not None
        held[sidecar.name] = {t: s["acked"] for t, s in found[1]["types"].items()}
    pids = [r.process.pid for r in ha.replicas if r.process is not None]
    wanted = {f"{ha.server.host}:{INBOUND}"}
    workload = Workload.issue(ha.pki, "catalog", CATALOG[0], tmp_path)

    async def not_ready() -> bool:
        answers = [await r.open_get("/readyz") for r in ha.replicas]
        return all(status == 503 and all(e in text for e in store) for status, text in answers)

    async def served_as_before(sidecar: SidecarProcess) -> bool:
        found = await ha.where(sidecar)
        return found is not None and \
            {t: s["acked"] for t, s in found[1]["types"].items()} == held[sidecar.name]

    async with looking(ha.clients, "orders") as looks:
        await asyncio.gather(*(asyncio.to_thread(m.kill) for m in ha.etcd.members))
        async with loaded(ha.clients[0]) as rounds:
            noticed = await until(not_ready, what="every replica not ready, naming the store",
                                  timeout=NOTICED_WITHIN)
            _, reason = await ha.replicas[0].open_get("/readyz")

            # Every kind of write is refused, naming the store.
            with pytest.raises(GrpcError) as refused:
                await register(workload, ha.replicas[0])
            policy = ha.replicas[1].policy_file.read_text().replace("HTTP1", "GRPC")
            version = (await ha.replicas[1].status())["policy_version"]
            policy_answer = await ha.replicas[1].apply_policy(policy, based_on=version)
            token_answer = await ha.replicas[2].api("POST", "/tokens",
                                                    json.dumps({"service": "catalog"}))

            # Discovery goes on: wherever a sidecar is now, it holds what it held.
            for sidecar in ha.sidecars:
                await until(functools.partial(served_as_before, sidecar),
                            what=f"{sidecar.name} served its versions", timeout=STATIC)
            await asyncio.sleep(STATIC)  # sidecars moving from replica to replica, told
            # UNAVAILABLE at each heartbeat
        await ha.restart_members(range(len(ha.etcd.members)))
        back = await until(ha.ready, what="every replica ready again", timeout=NOTICED_WITHIN)
        token_back = await ha.replicas[2].api("POST", "/tokens",
                                              json.dumps({"service": "catalog"}))
    print(f"\netcd killed: every replica not ready {noticed:.2f}s later, /readyz: "
          f"{reason.strip()[:SHOWN]}...; refused: Register {refused.value.code.name} "
          f"{refused.value.message[:SHOWN]!r}..., POST /policy {policy_answer[0]}, POST /tokens "
          f"{token_answer[0]}; requests through {ha.clients[0].name} meanwhile: {lost(rounds)} "
          f"failed of {succeeded(rounds) + lost(rounds)}; {len(looks)} looks at the clients' "
          f"endpoints, {sum(1 for seen in looks if seen != wanted)} without the server; etcd "
          f"back: every replica ready {back:.2f}s after its members were healthy")
    assert refused.value.code == StatusCode.UNAVAILABLE, refused.value
    assert all(e in refused.value.message for e in store), refused.value
    for status, body in (policy_answer, token_answer):
        assert status == 503 and all(e in body["error"] for e in store), body
    assert lost(rounds) == 0 and succeeded(rounds) > 300, [r.output for r in rounds]
    assert [seen for seen in looks if seen != wanted] == []
    assert token_back[0] == 200, token_back
    assert [r.process.pid for r in ha.replicas if r.process is not None] == pids, \
        "a replica was restarted"
    for replica in ha.replicas:
        assert {service: await replica.leases(service) for service in SERVICES} == leases

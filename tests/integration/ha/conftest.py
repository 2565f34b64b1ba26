"""A replicated control plane on real processes: three etcd members, three replicas, sidecars.

    h2load ─▶ shopper-1..4 127.0.38.21-24 ══mTLS══▶ orders 127.0.38.31 ──▶ aiohttp 127.0.38.131
                  └─ --control-plane 127.0.38.1:15012,127.0.38.2:15012,127.0.38.3:15012 ─┘
    replicas 127.0.38.1-3 (gRPC :15012, operator API :15014) ─ --store etcd://127.0.39.1-3:2379
    etcd members 127.0.39.1-3 (clients :2379, raft between them on :2380)

Everything but the app is a process of its own — Debian's ``etcd``, ``python -m controlplane``,
``python -m sidecar`` — stopped by its PID. The replicas share one mesh CA and one policy file
(``policy.yaml`` in the work folder) and, through etcd, the registry, the join tokens and the
policy in force. Every sidecar is given all three replicas, ordered so that its seeded first
choice is the first replica: the mesh starts with its five sidecars on one replica, the group a
killed replica takes with it.

The mesh is built once for the package. A test may kill what it likes: after each test
:meth:`HaMesh.heal` starts again whatever is down (an etcd member on its own data folder, a
replica on its files), puts back the policy of the file, and waits until every replica follows
the store and every sidecar is subscribed and registered. Every test talks to peers we did not
write (etcd, h2load, grpcio's core under aetcd): they are marked interop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
import yaml

from certs.pki import issue_workload, load_ca, write_workload
from demo_services import etcd_cluster
from demo_services.etcd_cluster import EtcdCluster
from mesh.grpc import Channel
from mesh.identity import SpiffeId, control_plane_id
from mesh.proto.resources import instance_name
from mesh.tls import client_context
from tests.control_plane_process import ControlPlaneProcess
from tests.integration.controlplane.store.etcd_cluster import Cluster, Member, start_cluster
from tests.integration.sidecar.apps import WebApp, start_web
from tests.integration.sidecar.conftest import (
    INBOUND,
    OUTBOUND,
    H2loadResult,
    SidecarProcess,
    h2load,
    parse_metrics,
    spawn_sidecar,
    stopping,
)
from tests.interop.xds.harness import until

TRUST_DOMAIN = "cluster.local"
NAMESPACE = "default"
ETCD_HOSTS = ("127.0.39.1", "127.0.39.2", "127.0.39.3")
REPLICA_HOSTS = ("127.0.38.1", "127.0.38.2", "127.0.38.3")
CLIENT_HOSTS = ("127.0.38.21", "127.0.38.22", "127.0.38.23", "127.0.38.24")
SERVER_HOST = "127.0.38.31"
ORDERS_APP = ("127.0.38.131", 8080)
# "catalog" has no sidecar: the propagation test registers it from this process.
POLICY = {"clusters": [{"name": "orders", "app_protocol": "HTTP1"},
                       {"name": "catalog", "app_protocol": "HTTP1"}]}
LEASE_TTL = 10.0  # seconds, the product's default: an etcd outage of a few seconds fits in it
BACKOFF_CAP = 5.0  # seconds: the sidecar's discovery backoff cap (sidecar/sidecar.py)
SEED = 7  # every sidecar's --seed (spawn_sidecar)
SETTLE_TIMEOUT = 30.0  # seconds for the mesh to be whole again after a test (busy machine)
ETCD_TIMEOUT = 15.0  # seconds for restarted etcd members to be healthy
LOAD_ROUND = 2  # seconds of each h2load run while a test breaks something


def node_of(sidecar: SidecarProcess, service: str) -> str:
    """The sidecar's node and instance id (it registers its inbound address)."""
    return instance_name(NAMESPACE, service, sidecar.host, INBOUND)


def in_sync(stream: dict[str, Any]) -> bool:
    """A discovery stream whose sidecar ACKed every type at the version it was sent, or holds
    it already (a stream that resubscribes with the current versions need not be sent them)."""
    types = stream["types"].values()
    return len(types) == 4 and all(t["acked"] and t["sent"] in (t["acked"], "") for t in types)


def lost(rounds: Sequence[H2loadResult]) -> int:
    """Requests of h2load runs that did not succeed."""
    return sum(r.failed + r.errored + r.timeout for r in rounds)


def succeeded(rounds: Sequence[H2loadResult]) -> int:
    return sum(r.succeeded for r in rounds)


async def load(client: SidecarProcess, seconds: int) -> H2loadResult:
    """h2load through ``client``'s outbound listener to orders: 2 connections, 50 requests/s
    each."""
    return await h2load("orders", f"http://{client.host}:{OUTBOUND}/", "-D", str(seconds),
                        "-c", "2", "--rps", "50")


@contextlib.asynccontextmanager
async def loaded(client: SidecarProcess) -> AsyncIterator[list[H2loadResult]]:
    """Load through ``client`` for as long as the block runs (h2load in rounds of
    ``LOAD_ROUND`` seconds, the last one finished after it): the rounds' results."""
    rounds: list[H2loadResult] = []
    done = asyncio.Event()

    async def run() -> None:
        while not done.is_set():
            rounds.append(await load(client, LOAD_ROUND))

    task = asyncio.create_task(run())
    try:
        yield rounds
        done.set()
        await task
    finally:
        task.cancel()


async def endpoints_seen(sidecar: SidecarProcess, cluster: str) -> set[str] | None:
    """The endpoints ``sidecar`` holds for ``cluster`` (admin ``/clusters``); None if it does
    not answer."""
    with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
        status, text = await sidecar.admin("/clusters")
        if status == 200:
            held = json.loads(text).get(cluster, {"endpoints": []})
            return {e["address"] for e in held["endpoints"]}
    return None


@contextlib.asynccontextmanager
async def looking(sidecars: Sequence[SidecarProcess],
                  cluster: str) -> AsyncIterator[list[set[str] | None]]:
    """What ``sidecars`` hold for ``cluster``, looked at in turn every 20 ms while the block
    runs: the list of every look."""
    looks: list[set[str] | None] = []
    done = asyncio.Event()

    async def look() -> None:
        while not done.is_set():
            looks.extend([await endpoints_seen(s, cluster) for s in sidecars])
            await asyncio.sleep(0.02)

    task = asyncio.create_task(look())
    try:
        yield looks
    finally:
        done.set()
        await task


class Replica(ControlPlaneProcess):
    """One of the three control-plane replicas, and what its operator API tells."""

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    async def open_get(self, path: str) -> tuple[int, str]:
        """GET a path that needs no credential (``/readyz``, ``/metrics``); (0, why) if the
        replica does not answer."""
        try:
            async with aiohttp.ClientSession() as session, session.get(
                    f"http://{self.api_address}{path}",
                    timeout=aiohttp.ClientTimeout(5)) as response:
                return response.status, await response.text()
        except (aiohttp.ClientError, OSError, TimeoutError) as error:
            return 0, repr(error)

    async def ready(self) -> bool:
        return (await self.open_get("/readyz"))[0] == 200

    async def apply_policy(self, text: str, *, based_on: int) -> tuple[int, dict[str, Any]]:
        """``POST /policy`` with ``If-Match: based_on``, as the operator."""
        token = (self.pki / "operator.token").read_text().strip()
        async with aiohttp.ClientSession() as session, session.post(
                f"http://{self.api_address}/policy", data=text,
                timeout=aiohttp.ClientTimeout(5),
                headers={"Authorization": f"Bearer {token}",
                         "If-Match": str(based_on)}) as response:
            return response.status, await response.json()

    async def streams(self) -> list[dict[str, Any]]:
        """Its sidecars' discovery streams; none when it does not answer."""
        with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError, AssertionError):
            return [s for s in (await self.status())["streams"] if s["protocol"] == "mesh.v1"]
        return []

    async def stream_of(self, sidecar: SidecarProcess) -> dict[str, Any] | None:
        """The sidecar's discovery stream here, if it has one."""
        return next((s for s in await self.streams() if f"@{sidecar.host}:" in s["node"]), None)

    async def leases(self, service: str) -> dict[str, str]:
        """The instances of ``service`` it lists, each with its lease."""
        status, rows = await self.api("GET", f"/endpoints/{service}")
        assert status == 200, rows
        return {row["instance"]: row["lease"] for row in rows}

    async def pushes(self) -> float:
        """DiscoveryResponses it sent to sidecars since it started, every type."""
        status, text = await self.open_get("/metrics")
        assert status == 200, text
        return sum(value for sample, value in parse_metrics(text).items()
                   if sample.startswith("mesh_controlplane_pushes_total{")
                   and 'protocol="mesh.v1"' in sample)


@dataclass
class Workload:
    """This test process acting as a workload at ``host``: a certificate of the mesh CA for
    ``service``, and an mTLS channel to a replica bound to ``host`` (a registration must come
    from the address it registers)."""

    service: str
    host: str
    folder: Path

    @classmethod
    def issue(cls, pki: Path, service: str, host: str, folder: Path) -> Workload:
        identity = SpiffeId(trust_domain=TRUST_DOMAIN, namespace=NAMESPACE, service=service)
        write_workload(issue_workload(load_ca(pki), identity, timedelta(hours=1)), folder)
        (folder / "ca.crt").write_bytes((pki / "ca.crt").read_bytes())
        return cls(service, host, folder)

    def channel(self, replica: Replica) -> Channel:
        tls = client_context(self.folder / f"{self.service}.crt",
                             self.folder / f"{self.service}.key", self.folder / "ca.crt")
        return Channel(replica.host, replica.grpc_port, ssl=tls, authority="controlplane",
                       local_address=self.host,
                       peer_identity=str(control_plane_id(TRUST_DOMAIN)))


@dataclass
class HaMesh:
    """The running mesh: etcd, the replicas, and the sidecars that stay."""

    work: Path
    etcd: Cluster
    replicas: tuple[Replica, ...]
    sidecars: list[SidecarProcess] = field(default_factory=list)  # the clients, then orders
    services: dict[str, str] = field(default_factory=dict)  # sidecar name -> its service
    restarts: int = 0  # of etcd members, naming their logs

    @property
    def clients(self) -> list[SidecarProcess]:
        return self.sidecars[:len(CLIENT_HOSTS)]

    @property
    def server(self) -> SidecarProcess:
        return self.sidecars[len(CLIENT_HOSTS)]

    @property
    def pki(self) -> Path:
        return self.replicas[0].pki

    def control_planes(self, first: int) -> str:
        """``--control-plane``: every replica, ordered so that a sidecar seeded with SEED
        starts at replica ``first`` (its first draw picks the index: sidecar/control_planes.py)
        and moves to ``first + 1`` when it loses it."""
        count = len(self.replicas)
        shift = (first - random.Random(SEED).randrange(count)) % count
        return ",".join(self.replicas[(shift + i) % count].grpc for i in range(count))

    async def join(self, name: str, host: str, service: str, *args: str,
                   first: int = 0) -> SidecarProcess:
        """Start a sidecar that joins with a join token minted through the operator API of
        replica ``first`` (not waiting until it is ready)."""
        status, body = await self.replicas[first].api(
            "POST", "/tokens", json.dumps({"service": service, "namespace": NAMESPACE}))
        assert status == 200, body
        token = self.work / f"{name}.token"
        token.write_text(body["token"])
        self.services[name] = service
        return spawn_sidecar(name, host, self.work, "--service", service,
                             "--control-plane", self.control_planes(first),
                             "--bootstrap-ca", str(self.pki / "ca.crt"),
                             "--join-token-file", str(token), "--cert-dir", str(self.work / name),
                             *args)

    async def join_orders(self, name: str, host: str, *, first: int) -> SidecarProcess:
        """Another orders sidecar in front of the same app, joining through replica ``first``
        (not waiting until it is ready)."""
        return await self.join(name, host, "orders", "--app", "{}:{}".format(*ORDERS_APP),
                               first=first)

    async def clients_hold(self, *hosts: str) -> bool:
        """Whether every client sidecar holds exactly the orders sidecars at ``hosts``."""
        wanted = {f"{host}:{INBOUND}" for host in hosts}
        return all([await endpoints_seen(c, "orders") == wanted for c in self.clients])

    async def where(self, sidecar: SidecarProcess) -> tuple[Replica, dict[str, Any]] | None:
        """The replica holding ``sidecar``'s discovery stream, in sync, and the stream."""
        for replica in self.replicas:
            stream = await replica.stream_of(sidecar)
            if stream is not None and in_sync(stream):
                return replica, stream
        return None

    async def busiest(self) -> tuple[Replica, dict[str, dict[str, Any]]]:
        """The replica holding the most sidecars' streams (the mesh starts with all five on
        one), and those streams, by sidecar name."""
        held: dict[str, dict[str, dict[str, Any]]] = {r.host: {} for r in self.replicas}
        for sidecar in self.sidecars:
            found = await self.where(sidecar)
            assert found is not None, f"{sidecar.name} is not subscribed"
            held[found[0].host][sidecar.name] = found[1]
        replica = max(self.replicas, key=lambda r: len(held[r.host]))
        return replica, held[replica.host]

    async def away_from(self, replica: Replica, sidecar: SidecarProcess) -> bool:
        """Whether ``sidecar`` is subscribed, in sync, to another replica than ``replica``."""
        found = await self.where(sidecar)
        return found is not None and found[0] is not replica

    async def subscribed(self, sidecars: Sequence[SidecarProcess]) -> bool:
        return all([await self.where(s) is not None for s in sidecars])

    async def registered(self, sidecars: Sequence[SidecarProcess]) -> bool:
        """Whether every replica lists every one of ``sidecars``' instances."""
        wanted: dict[str, set[str]] = {}
        for sidecar in sidecars:
            service = self.services[sidecar.name]
            wanted.setdefault(service, set()).add(node_of(sidecar, service))
        for replica in self.replicas:
            for service, instances in wanted.items():
                with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
                    if instances <= set(await replica.leases(service)):
                        continue
                return False
        return True

    async def settled(self, sidecars: Sequence[SidecarProcess], timeout: float) -> None:
        """Until ``sidecars`` are ready, subscribed somewhere in sync, and registered."""
        await asyncio.gather(*(s.wait_ready(timeout) for s in sidecars))
        await until(lambda: self.subscribed(sidecars), what="every sidecar subscribed",
                    timeout=timeout)
        await until(lambda: self.registered(sidecars), what="every sidecar registered",
                    timeout=timeout)

    async def restart_members(self, indexes: Sequence[int]) -> None:
        """Start etcd members again on their own data folders; returns once they are healthy
        (they rejoin the cluster as themselves: a data folder overrides the command line)."""
        plan = EtcdCluster(members=tuple(m.spec for m in self.etcd.members), token="ha")
        started = {}
        for index in indexes:
            self.restarts += 1
            spec = self.etcd.members[index].spec
            record, process = etcd_cluster.start(
                plan, spec, binary=etcd_cluster.etcd_binary(),
                log=self.work / "etcd" / f"{spec.name}-{self.restarts}.log")
            self.etcd.members[index] = Member(spec, process)
            started[spec] = (record, process)
        await asyncio.to_thread(etcd_cluster.wait_until_healthy, started, timeout=ETCD_TIMEOUT)

    async def heal(self) -> None:
        """Start again what is down, put back the file's policy, wait until all is settled."""
        down = [i for i, m in enumerate(self.etcd.members) if m.process.poll() is not None]
        if down:
            await self.restart_members(down)
        await asyncio.gather(*(r.start() for r in self.replicas if not r.alive()))
        await until(self.ready, what="every replica ready", timeout=SETTLE_TIMEOUT)
        status, body = await self.replicas[0].api("POST", "/policy",
                                                  self.replicas[0].policy_file.read_text())
        assert status == 200, body
        await self.settled(self.sidecars, SETTLE_TIMEOUT)
        await until(self.in_step, what="every replica at the same revision",
                    timeout=SETTLE_TIMEOUT)

    async def ready(self) -> bool:
        """Whether every replica is ready (follows the store)."""
        return all([await r.ready() for r in self.replicas])

    async def policy_in_force(self, version: int) -> bool:
        """Whether every replica has policy ``version`` in force."""
        return all([(await r.status())["policy_version"] == version for r in self.replicas])

    async def in_step(self) -> bool:
        """Whether every replica's copy is at the same revision of the store: a replica whose
        watch stopped would lag behind the others' while it says it is ready."""
        return len({(await r.status())["replica"]["revision"] for r in self.replicas}) == 1


@pytest_asyncio.fixture(scope="package", loop_scope="package")
async def ha(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[HaMesh]:
    work = tmp_path_factory.mktemp("ha")
    (work / "policy.yaml").write_text(yaml.safe_dump(POLICY, sort_keys=False))
    etcd = start_cluster(work / "etcd", ETCD_HOSTS)
    store = "etcd://" + ",".join(etcd.endpoints)
    replicas = tuple(Replica(work, host, lease_ttl=LEASE_TTL, store=store)
                     for host in REPLICA_HOSTS)
    runner = await start_web(WebApp("orders"), *ORDERS_APP)
    mesh = HaMesh(work, etcd, replicas)
    try:
        await replicas[0].start()  # makes the mesh CA the others read
        await asyncio.gather(*(r.start() for r in replicas[1:]))
        with stopping(mesh.sidecars):
            for n, host in enumerate(CLIENT_HOSTS, 1):
                mesh.sidecars.append(await mesh.join(f"shopper-{n}", host, "shopper"))
            mesh.sidecars.append(await mesh.join_orders("orders", SERVER_HOST, first=0))
            await mesh.settled(mesh.sidecars, SETTLE_TIMEOUT)
            yield mesh
    finally:
        for replica in replicas:
            replica.stop()
        etcd.stop()
        await runner.cleanup()


@pytest_asyncio.fixture(loop_scope="package", autouse=True)
async def healed(ha: HaMesh) -> AsyncIterator[None]:
    """After each test, the mesh whole again (whatever the test killed)."""
    yield
    await ha.heal()

"""The local mesh: the whole shop on this machine, each instance on its own loopback address.

``meshctl demo up`` (``scripts/demo``) runs :meth:`LocalMesh.up`, in this order:

1. **PKI**: a fresh mesh CA in ``STATE/pki`` (keys 0600), as ``python -m certs init`` makes it;
2. **control plane** on 127.0.10.1 with the demo policy (``demo_services/policy/shop.yaml``,
   copied to ``STATE/policy/`` and hot-reloaded from there); it makes the operator token in
   ``STATE/pki/operator.token`` (0600), where ``meshctl`` finds it. With ``ha``, first a
   three-member etcd cluster (:mod:`demo_services.etcd_cluster`, data in ``STATE/etcd/``),
   then three replicas, one after the other, sharing the PKI folder and keeping their shared
   state in that cluster (``--store etcd://...``); every sidecar is given all three;
3. **join tokens**: one single-use token per sidecar, minted with the operator token from the
   operator API (``POST /tokens``), handed over in the environment (never on a command line,
   where ``ps`` would show it);
4. **every instance** (:mod:`demo_services.topology`): its app and its sidecar, which redeems the
   token for a certificate, registers its address and subscribes to its configuration;
5. **readiness**: every app answers ``/healthz``, every sidecar ``/ready``, and every sidecar
   knows every endpoint of every service (the mesh has converged);
6. **the auditor**, a proxyless gRPC client with no sidecar (:mod:`demo_services.auditor`):
   ``meshctl proxyless`` redeems its join token for a certificate, writes its xDS bootstrap in
   ``STATE/proxyless/auditor`` and stays running to renew the certificate; the auditor starts
   once the bootstrap is there, and is up once its xDS stream has ACKed every resource type;
7. **Prometheus** (Debian's ``prometheus``, when installed) scraping every sidecar and the
   control plane;
8. **the dashboard** (``meshctl dashboard`` on ``NET.1:15020``), asking Prometheus for the
   golden metrics when it runs, else the sidecars;
9. **a short load** through the load generator's sidecar, and its summary.

Every process is recorded in ``STATE/state.json`` (PID and command line); Ctrl-C, SIGTERM or
``meshctl demo down`` stop them all by PID (:mod:`demo_services.processes`) and remove the
state; the logs stay in ``STATE/logs/`` for reading afterwards.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from certs import pki
from demo_services import etcd_cluster, prometheus
from demo_services.loadgen import HttpClient, LoadPlan, LoadResult, run_load
from demo_services.processes import Record, alive, read_state, spawn, stop, tail, write_state
from demo_services.topology import (
    NAMESPACE,
    REPLICAS,
    TRUST_DOMAIN,
    ControlPlaneReplica,
    Instance,
    ProxylessClient,
    Topology,
)

ROOT = Path(__file__).resolve().parents[1]
POLICY = ROOT / "demo_services" / "policy" / "shop.yaml"
READY_TIMEOUT = 45.0  # seconds for the whole mesh to come up
STOP_GRACE = 8.0  # seconds processes get to drain before SIGKILL
OWNER_GRACE = 20.0  # seconds ``down`` waits for a running ``up`` to stop its mesh
ORDER = '{"sku": "tea", "quantity": 1}'
STATE_FILES = ("state.json", "pki", "sidecars", "proxyless", "policy",
               "prometheus", "etcd")  # removed on stop


class MeshError(Exception):
    """The local mesh could not start or stop; the message says which part and why."""


@dataclass(frozen=True, slots=True, kw_only=True)
class MeshOptions:
    state_dir: Path = Path(".mesh/demo")
    net: str = "127.0.10"
    load_rate: float = 40.0  # requests per second of the first load
    load_duration: float = 5.0  # seconds (0: no load)
    prometheus: str | None = None  # the binary, when installed
    lease_ttl: float = 10.0
    ha: bool = False  # three control-plane replicas on a three-member etcd cluster


def _log(started: float, text: str) -> None:
    print(f"[{time.monotonic() - started:5.1f} s] {text}", flush=True)


class LocalMesh:
    """One local mesh: its processes, state file and addresses."""

    def __init__(self, options: MeshOptions) -> None:
        self.options = options
        self.topology = Topology(net=options.net, ha=options.ha)
        try:
            self.etcd = etcd_cluster.etcd_binary() if options.ha else None
        except etcd_cluster.EtcdError as error:
            raise ValueError(f"--ha: {error}") from None
        self.state_dir = options.state_dir
        self.state_file = options.state_dir / "state.json"
        self.records: list[Record] = []
        self.children: dict[int, subprocess.Popen[bytes]] = {}
        self.started = time.monotonic()
        self.owner: Record | None = None

    # -- state -------------------------------------------------------------------------------

    def _save(self, status: str) -> None:
        t, auditor = self.topology, self.topology.auditor
        write_state(self.state_file, {
            "status": status, "net": t.net, "api": t.api, "control_plane": t.control_plane,
            "control_planes": [{"name": r.name, "listen": r.listen, "api": r.api}
                               for r in t.control_planes()],
            "etcd": [{"name": name, "endpoint": f"{ip}:{etcd_cluster.CLIENT_PORT}",
                      "peer": f"{ip}:{etcd_cluster.PEER_PORT}"}
                     for name, ip in t.etcd_hosts().items()],
            "prometheus": t.prometheus if self.options.prometheus else None,
            "dashboard": t.dashboard,
            "owner": self.owner.to_json() if self.owner else None,
            "processes": [r.to_json() for r in self.records],
            "instances": [{"name": i.name, "service": i.service, "ip": i.ip,
                           "app": i.app, "app_admin": i.app_admin if i.app else None,
                           "sidecar_admin": i.sidecar_admin, "outbound": i.outbound}
                          for i in t.instances()],
            "proxyless": [{"name": auditor.name, "service": auditor.service, "ip": auditor.ip,
                           "app": auditor.app, "target": auditor.target}],
        })

    def _start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Record:
        path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
        record, process = spawn(name, argv, log=self.state_dir / "logs" / f"{name}.log",
                                env={**os.environ, "PYTHONPATH": path, **(env or {})})
        self._adopt(record, process)
        return record

    def _adopt(self, record: Record, process: subprocess.Popen[bytes]) -> None:
        """Make a process this mesh started part of it: stopped with it, by its PID."""
        self.records.append(record)
        self.children[record.pid] = process
        self._save("starting")

    # -- up ----------------------------------------------------------------------------------

    async def up(self) -> LoadResult | None:
        """Start everything, wait until it works, run the first load; raise MeshError if not."""
        self._prepare()
        t = self.topology
        ca = pki.create_ca(trust_domain=TRUST_DOMAIN)
        pki.write_ca(ca, self.state_dir / "pki")
        policy = self.state_dir / "policy" / "shop.yaml"
        policy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(POLICY, policy)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3)) as http:
            store = await self._start_etcd() if t.ha else None
            for replica in t.control_planes():
                await self._start_control_plane(http, replica, policy, store)
            operator = (self.state_dir / "pki" / "operator.token").read_text().strip()
            workloads: list[Instance | ProxylessClient] = [*t.instances(), t.auditor]
            tokens = {w.name: await _token(http, t.api, operator, w.service) for w in workloads}
            _log(self.started, f"control plane ready; {len(tokens)} join tokens made; starting "
                               f"{len(t.instances())} sidecars and their apps")
            for index, instance in enumerate(t.instances()):
                self._start_instance(instance, tokens[instance.name], seed=index + 1)
            await self._wait("every app", lambda: _all(
                _ok(http, f"http://{i.app_admin}/healthz") for i in t.instances() if i.app))
            await self._wait("every sidecar", lambda: _all(
                _ok(http, f"http://{i.sidecar_admin}/ready") for i in t.instances()))
            await self._wait("every sidecar to know every endpoint",
                             lambda: _all(_converged(http, i) for i in t.instances()))
            await self._start_proxyless(http, operator, t.auditor, tokens[t.auditor.name])
            _log(self.started, "the mesh is up: every sidecar ready, every endpoint known, the "
                               "auditor's xDS stream in sync")
            if self.options.prometheus:
                await self._start_prometheus(http)
            await self._start_dashboard(http)
        self._save("ready")
        if not self.options.load_duration:
            return None
        return await self.first_load()

    def _prepare(self) -> None:
        """Refuse to start over a running mesh; clear what a dead one left."""
        state = read_state(self.state_file)
        if state is not None:
            if _any_alive(state):
                raise MeshError(f"a demo mesh is already running (state in {self.state_file}); "
                                f"stop it with: meshctl demo down")
            remove_state(self.state_dir)
            print(f"cleared the state of a mesh that is no longer running "
                  f"({self.state_dir})", flush=True)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        logs = self.state_dir / "logs"
        if logs.is_dir():
            for old in logs.glob("*.log"):
                old.unlink()

    async def _start_etcd(self) -> str:
        """Start every etcd member on an empty data folder; the replicas' ``--store`` once the
        cluster has a leader."""
        assert self.etcd is not None
        folder = self.state_dir / "etcd"
        if folder.exists():  # left by a mesh that was killed: a cluster of its own
            shutil.rmtree(folder)
        cluster = etcd_cluster.EtcdCluster.in_folder(folder, self.topology.etcd_hosts(),
                                                     token=f"asyncmesh-demo-{self.topology.net}")
        _log(self.started, f"mesh CA made in {self.state_dir / 'pki'}; starting "
                           f"{len(cluster.members)} etcd members: {', '.join(cluster.endpoints)}")
        members = {}
        for member in cluster.members:
            record, process = etcd_cluster.start(
                cluster, member, binary=self.etcd,
                log=self.state_dir / "logs" / f"{member.name}.log")
            self._adopt(record, process)
            members[member] = (record, process)
        left = self.started + READY_TIMEOUT - time.monotonic()
        try:
            await asyncio.to_thread(etcd_cluster.wait_until_healthy, members, timeout=left)
        except etcd_cluster.EtcdError as error:
            raise MeshError(str(error)) from None
        _log(self.started, f"etcd cluster healthy; the control plane's store: {cluster.store}")
        return cluster.store

    async def _start_control_plane(self, http: aiohttp.ClientSession,
                                   replica: ControlPlaneReplica, policy: Path,
                                   store: str | None) -> None:
        """Start one control-plane process and wait until its API answers. Replicas start one
        at a time: the first makes the operator token in the PKI folder they share."""
        if store is None:
            _log(self.started, f"mesh CA made in {self.state_dir / 'pki'}; starting the "
                               f"control plane on {replica.listen}")
        else:
            _log(self.started, f"starting {replica.name} on {replica.listen} (operator API "
                               f"{replica.api})")
        argv = [sys.executable, "-m", "controlplane", "--pki-dir", str(self.state_dir / "pki"),
                "--listen", replica.listen, "--api", replica.api, "--policy", str(policy),
                "--lease-ttl", str(self.options.lease_ttl)]
        self._start(replica.name, argv + (["--store", store] if store else []))
        await self._wait(f"{replica.name}'s API",
                         lambda: _ok(http, f"http://{replica.api}/healthz"))

    def _start_instance(self, instance: Instance, token: str, *, seed: int) -> None:
        py = sys.executable
        if instance.app is not None:
            argv = [py, "-m", f"demo_services.{instance.app}", "--listen", instance.app_address,
                    "--admin", instance.app_admin, "--replica", instance.name,
                    "--seed", str(seed)]
            if instance.service in ("frontend", "orders"):
                argv += ["--sidecar", instance.outbound]
            self._start(f"app:{instance.name}", argv)
        self._start(f"sidecar:{instance.name}", [
            py, "-m", "sidecar", "--service", instance.service, "--namespace", NAMESPACE,
            "--trust-domain", TRUST_DOMAIN, "--outbound", instance.outbound,
            "--inbound", instance.inbound, "--admin", instance.sidecar_admin,
            "--app", instance.app_address,
            "--app-protocol", "http1" if instance.http1 else "h2c",
            "--control-plane", self.topology.control_plane,
            "--bootstrap-ca", str(self.state_dir / "pki" / "ca.crt"),
            "--cert-dir", str(self.state_dir / "sidecars" / instance.name),
            "--seed", str(seed)], env={"MESH_JOIN_TOKEN": token})

    async def _start_proxyless(self, http: aiohttp.ClientSession, operator: str,
                               client: ProxylessClient, token: str) -> None:
        """Enroll ``client`` with ``meshctl proxyless`` (which stays, renewing its certificate,
        as Istio's agent beside a proxyless workload), start it once its bootstrap is written,
        and wait until its xDS stream has ACKed every type."""
        py, t = sys.executable, self.topology
        folder = self.state_dir / "proxyless" / client.name
        self._start(f"agent:{client.name}", [
            py, "-m", "meshctl", "--api", t.api, "proxyless", client.service,
            # One replica: a gRPC xDS bootstrap names the server its client uses.
            "--namespace", NAMESPACE, "--control-plane", t.control_planes()[0].listen,
            "--bootstrap-ca", str(self.state_dir / "pki" / "ca.crt"), "--out", str(folder),
            "--renew"], env={"MESH_JOIN_TOKEN": token})
        bootstrap = folder / "bootstrap.json"
        await self._wait(f"{client.name}'s certificate and xDS bootstrap",
                         lambda: _exists(bootstrap))
        self._start(f"app:{client.name}",
                    [py, "-m", f"demo_services.{client.app}", "--target", client.target],
                    env={"GRPC_XDS_BOOTSTRAP": str(bootstrap)})
        await self._wait(f"{client.name}'s xDS stream",
                         lambda: _xds_in_sync(http, t.api, operator, client.service))
        _log(self.started, f"{client.name}: proxyless gRPC to {client.target}, its xDS stream "
                           f"in sync")

    async def _start_prometheus(self, http: aiohttp.ClientSession) -> None:
        assert self.options.prometheus is not None
        t = self.topology
        folder = self.state_dir / "prometheus"
        folder.mkdir(parents=True, exist_ok=True)
        config = folder / "prometheus.yml"
        config.write_text(prometheus.config(
            {i.name: i.sidecar_admin for i in t.instances()},
            [r.api for r in t.control_planes()],
            [f"{ip}:{etcd_cluster.CLIENT_PORT}" for ip in t.etcd_hosts().values()]))
        self._start("prometheus", prometheus.argv(self.options.prometheus, str(config),
                                                  str(folder / "data"), t.prometheus))
        await self._wait("prometheus", lambda: _ok(http, f"http://{t.prometheus}/-/ready"))
        # Ready is not scraping yet: wait for a first scrape of every target, so a load sent
        # from now on is seen from its start (rate() counts from a series' first sample).
        targets = len(t.instances()) + len(t.control_planes()) + len(t.etcd_hosts())
        await self._wait("prometheus' first scrape of every target",
                         lambda: _scraped(http, t.prometheus, targets))
        others = f", {len(t.control_planes())} control-plane replicas and " \
            f"{len(t.etcd_hosts())} etcd members" if t.ha else " and the control plane"
        _log(self.started, f"prometheus scraping {len(t.instances())} sidecars{others}: "
                           f"http://{t.prometheus}/targets")

    async def _start_dashboard(self, http: aiohttp.ClientSession) -> None:
        """``meshctl dashboard`` for this mesh: golden metrics from Prometheus when it runs."""
        t = self.topology
        argv = [sys.executable, "-m", "meshctl", "--api", t.api, "dashboard",
                "--listen", t.dashboard]
        if self.options.prometheus:
            argv += ["--prometheus", f"http://{t.prometheus}"]
        self._start("dashboard", argv, env={
            "MESH_OPERATOR_TOKEN_FILE": str(self.state_dir / "pki" / "operator.token")})
        await self._wait("the dashboard", lambda: _ok(http, f"http://{t.dashboard}/api/state"))
        _log(self.started, f"dashboard: http://{t.dashboard}/")

    async def _wait(self, what: str, check: Callable[[], Awaitable[bool]]) -> None:
        """Poll ``check`` until true; fail at once if a process died, or after the timeout."""
        deadline = self.started + READY_TIMEOUT
        while not await check():
            for record in self.records:
                code = self.children[record.pid].poll()
                if code is not None:
                    raise MeshError(f"{record.name} exited with status {code} while waiting for "
                                    f"{what}; the end of {record.log}:\n{tail(record.log)}")
            if time.monotonic() > deadline:
                raise MeshError(f"gave up waiting for {what} after {READY_TIMEOUT:.0f} s; "
                                f"the logs are in {self.state_dir / 'logs'}")
            await asyncio.sleep(0.1)

    async def first_load(self) -> LoadResult:
        t = self.topology
        loadgen = t.instance("loadgen")
        _log(self.started, f"sending {self.options.load_rate:g} orders/s for "
                           f"{self.options.load_duration:g} s through the mesh")
        client = HttpClient(f"http://{loadgen.outbound}/orders", method="POST",
                            body=ORDER.encode(), headers={"host": "frontend",
                                                          "content-type": "application/json"},
                            connections=16)
        return await run_load(client, LoadPlan(rate=self.options.load_rate,
                                               duration=self.options.load_duration),
                              f"POST /orders via loadgen's sidecar {loadgen.outbound} "
                              f"(Host: frontend)",
                              backends={i.name: i.sidecar_admin for i in t.instances()},
                              progress=sys.stdout if sys.stdout.isatty() else None)

    # -- down --------------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop every process this mesh started (apps and sidecars, then the control plane)."""
        stop_records(self.records, self.children)
        remove_state(self.state_dir)


def stop_records(records: list[Record],
                 children: dict[int, subprocess.Popen[bytes]] | None = None) -> list[str]:
    """Stop apps, sidecars and agents first (so sidecars can deregister), then the control
    plane (and Prometheus), then the etcd members the control plane writes to until it stops.

    The etcd members stop one at a time: a leader that is told to stop first hands its
    leadership to a peer, and waits 5 s for a peer that is stopping too.
    """
    first = [r for r in records if r.name.startswith(("app:", "sidecar:", "agent:"))]
    etcd = [r for r in records if r.name.startswith("etcd-")]
    rest = [r for r in records if r not in first and r not in etcd]
    return [name for tier in (first, rest, *([r] for r in etcd))
            for name in stop(tier, grace=STOP_GRACE, children=children)]


def remove_state(state_dir: Path) -> None:
    """Remove what a mesh leaves in ``state_dir``, except its logs (only the names it writes)."""
    for name in STATE_FILES:
        path = state_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def _records(state: dict[str, Any]) -> list[Record]:
    return [Record.from_json(r) for r in state.get("processes", [])]


def _any_alive(state: dict[str, Any]) -> bool:
    owner = state.get("owner")
    return any(alive(r) for r in _records(state)) or \
        (isinstance(owner, dict) and alive(Record.from_json(owner)))


def down(state_dir: Path) -> str:
    """Stop the mesh whose state is in ``state_dir``; say what was done."""
    state = read_state(state_dir / "state.json")
    if state is None:
        return f"no demo mesh is running (no state in {state_dir})"
    done = []
    owner = state.get("owner")
    if isinstance(owner, dict):
        record = Record.from_json(owner)
        if alive(record):  # a foreground `demo up`: it stops its own mesh
            stop([record], grace=OWNER_GRACE)
            done.append(f"`meshctl demo up` (pid {record.pid}) stopped its mesh")
    running = [r for r in _records(state) if alive(r)]
    killed = stop_records(running)
    remove_state(state_dir)
    if running or not done:
        done.append(f"stopped {len(running)} processes")
    if killed:
        done.append(f"{', '.join(killed)} did not stop in time and were killed")
    return f"{'; '.join(done)}; logs kept in {state_dir / 'logs'}"


# -- readiness checks ------------------------------------------------------------------------

async def _ok(http: aiohttp.ClientSession, url: str) -> bool:
    try:
        async with http.get(url) as response:
            return response.status == 200
    except (aiohttp.ClientError, TimeoutError):
        return False


async def _scraped(http: aiohttp.ClientSession, address: str, targets: int) -> bool:
    """The Prometheus server at ``address`` has scraped all its ``targets``, each one up."""
    try:
        async with http.get(f"http://{address}/api/v1/targets?state=active") as response:
            active = (await response.json())["data"]["activeTargets"]
    except (aiohttp.ClientError, TimeoutError, ValueError, KeyError):
        return False
    return len(active) == targets and all(a["health"] == "up" for a in active)


async def _all(checks: Any) -> bool:
    return all(await asyncio.gather(*checks))


async def _converged(http: aiohttp.ClientSession, instance: Instance) -> bool:
    """The sidecar knows every endpoint of every shop service, all healthy."""
    try:
        async with http.get(f"http://{instance.sidecar_admin}/clusters") as response:
            clusters = await response.json()
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return False
    for service in ("frontend", "orders", "inventory", "payments"):
        endpoints = clusters.get(service, {}).get("endpoints", [])
        healthy = [e for e in endpoints if e["healthy"] and not e["ejected"]]
        if len(healthy) != REPLICAS.get(service, 1):
            return False
    return True


async def _exists(path: Path) -> bool:
    return await asyncio.to_thread(path.exists)


async def _xds_in_sync(http: aiohttp.ClientSession, api: str, operator: str,
                       service: str) -> bool:
    """A proxyless client of ``service`` has an xDS stream that ACKed all it was sent of the
    four types (Listener, RouteConfiguration, Cluster, ClusterLoadAssignment)."""
    try:
        async with http.get(f"http://{api}/status",
                            headers={"Authorization": f"Bearer {operator}"}) as response:
            status = await response.json()
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return False
    return any(stream["protocol"] == "xds.v3" and stream["service"] == service
               and len(stream["types"]) == 4
               and all(s["sent"] and s["acked"] == s["sent"] for s in stream["types"].values())
               for stream in status.get("streams", []))


async def _token(http: aiohttp.ClientSession, api: str, operator: str, service: str) -> str:
    """A join token for ``service``, minted with the ``operator`` token."""
    async with http.post(f"http://{api}/tokens",
                         json={"service": service, "namespace": NAMESPACE},
                         headers={"Authorization": f"Bearer {operator}"}) as response:
        data = await response.json()
        if response.status != 200:
            raise MeshError(f"the control plane refused a join token for {service}: {data}")
        token: str = data["token"]
        return token

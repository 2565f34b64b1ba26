"""A scenario: the services, the load, the faults over time, and the policies to compare.

A scenario is a short YAML file (``simulator/scenarios/*.yaml``)::

    title: one line, the report's title
    question: what the scenario asks
    duration: 60                      # seconds of traffic (virtual)
    drain: 5                          # seconds more for calls under way to end
    seed: 1
    network: {latency: 0.0005, jitter: 0}
    services:
      backend:
        replicas: 11
        concurrency: 1000             # calls served at once by one replica
        queue: 1000                   # calls waiting beyond that; more are refused (503)
        service_time: {normal: [0.167, 0.005]}   # or fixed: s | exponential: mean |
                                                  # lognormal: [median, sigma]
        growth: 0                     # seconds added per call in service (see server.py)
        calls: [db]                   # services it calls, in parallel, once its own service
                                      # time is over, through its sidecar (see server.py)
        zones: [a, b]                 # replica i is in zones[i % len(zones)]
    clients:                          # each its own sidecar; count: how many alike
      - {service: backend, rate: 1000, timeout: 1.0}          # open loop, calls per second
      - {service: backend, users: 50, think_time: 0.1}        # closed loop
    faults:                           # from ``at`` until ``until`` (or the end)
      - {at: 15, until: 45, service: backend, replicas: [0], set: {pinned: 2.0}}
      - {at: 20, until: 40, zone: b, set: {latency_factor: 5}}   # a zone: of every service
                                                  # (or, with service, of that one)
    sweep: {set: error_rate, values: [0, 0.1]}   # optional: one run per value, on every
                                                  # replica of every service from the start
    windows: {during: [15, 45]}       # success and latency per window, besides the whole run
    policies:                         # the arms: each a policy as the control plane takes it
      round robin: "clusters: [{name: backend, lb_policy: ROUND_ROBIN}]"
    published: {round robin: "95 %"}  # figures to print beside ours
    quick_scale: 0.2                  # --quick: every time times this (1: too short to cut)
    fleet: {services: 1000, replicas: 10, zones: 3, layers: 4, calls: 2, edge_rate: 600,
            timeout: 2, concurrency: 100, queue: 100, service_time: {fixed: 0.01}}

``fleet`` draws a large topology instead of listing it (:mod:`simulator.fleet`): its services
and their edge clients join those the file lists (which may then be left out), and in each
policy the cluster named ``fleet`` stands for every fleet service's cluster. The call graph
(``calls``) must have no cycle: a call would never end.

Every sidecar — a client's, or the one a calling service's replicas share — holds a cluster
for each service it calls and for each cluster the policy's routes name.

Each policy is read by the control plane's own parser and checked by its own validation
(:func:`controlplane.policy.merge`): a policy the control plane would refuse is refused here,
with the same messages. ``meshctl simulate SCENARIO --policy FILE`` runs the scenario with
one arm, the given policy file or folder, instead of the scenario's own.

A problem in a scenario file is a :class:`ScenarioError` naming the file, the field and why.
"""

from __future__ import annotations

import dataclasses
import gc
import math
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from controlplane.policy import Document, PolicyError, merge, read_documents
from mesh.proto.config_pb2 import Cluster, MeshPolicy
from simulator.clients import ClosedLoopClient, Load, OpenLoopClient
from simulator.engine import Simulation
from simulator.fleet import FleetSpec, generate
from simulator.network import Network
from simulator.record import Record
from simulator.server import Behaviour, Server, ServiceTime
from simulator.sidecar import Sidecar

SCENARIOS = Path(__file__).parent / "scenarios"
SETTABLE = ("latency_factor", "pinned", "error_rate", "black_hole", "down", "growth")
FLEET_CLUSTER = "fleet"  # a policy's cluster of this name is every fleet service's


class ScenarioError(Exception):
    """A scenario (or a policy it names) cannot be run; the message says where and why."""


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    name: str
    replicas: int
    concurrency: int
    queue: int
    service_time: ServiceTime
    growth: float
    calls: tuple[str, ...] = ()  # services it calls while serving a call
    zones: tuple[str, ...] = ()  # replica i is in zones[i % len(zones)]; () for none

    def zone(self, replica: int) -> str:
        return self.zones[replica % len(self.zones)] if self.zones else ""


@dataclass(frozen=True, slots=True)
class ClientSpec:
    service: str
    count: int
    timeout: float | None
    rate: float | None  # open loop
    poisson: bool
    users: int | None  # closed loop
    think_time: float
    start: float
    stop: float | None


@dataclass(frozen=True, slots=True)
class FaultSpec:
    at: float
    until: float | None
    service: str | None  # None: every service (of ``zone``)
    replicas: tuple[int, ...] | None  # None: every replica
    changes: Mapping[str, Any]
    zone: str | None = None  # None: every zone


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    title: str
    question: str
    duration: float
    drain: float
    seed: int
    network: Network
    services: tuple[ServiceSpec, ...]
    clients: tuple[ClientSpec, ...]
    faults: tuple[FaultSpec, ...]
    sweep: tuple[str, tuple[Any, ...]] | None
    windows: Mapping[str, tuple[float, float]]
    policies: Mapping[str, MeshPolicy]
    published: Mapping[str, str] = field(default_factory=dict)
    fleet: FleetSpec | None = None  # what the fleet's services and clients were drawn from
    quick_scale: float = 0.2  # --quick runs it at this share of its times (1: as it is)

    def scaled(self, factor: float) -> Scenario:
        """The same scenario with every time (duration, faults, windows) times ``factor``:
        the short form tests run."""
        return Scenario(
            self.name, self.title, self.question, self.duration * factor, self.drain,
            self.seed, self.network, self.services,
            tuple(ClientSpec(c.service, c.count, c.timeout, c.rate, c.poisson, c.users,
                             c.think_time, c.start * factor,
                             None if c.stop is None else c.stop * factor) for c in self.clients),
            tuple(dataclasses.replace(f, at=f.at * factor,
                                      until=None if f.until is None else f.until * factor)
                  for f in self.faults),
            self.sweep, {k: (a * factor, b * factor) for k, (a, b) in self.windows.items()},
            self.policies, self.published, self.fleet, self.quick_scale)


@dataclass(slots=True)
class Outcome:
    """What one run (one policy, one sweep value) produced."""

    policy: str
    sweep_value: Any
    record: Record  # every call that ended (a call still under way at the end is not in it)
    servers: list[Server]
    wall_seconds: float = 0.0
    events: int = 0
    sidecar_calls: int = 0  # calls made through any sidecar: the clients' and every hop's


# -- reading -----------------------------------------------------------------------------------

def names() -> list[str]:
    """The scenarios shipped, by name."""
    return sorted(p.stem for p in SCENARIOS.glob("*.yaml"))


def load(name_or_path: str, *, policy: Path | None = None) -> Scenario:
    """The scenario shipped as ``name_or_path``, or the file at that path.

    Args:
        policy: a policy file or folder to run instead of the scenario's own policies.

    Raises:
        ScenarioError: no such scenario, or a problem in it or in the policy.
    """
    path = Path(name_or_path)
    if not path.suffix:
        path = SCENARIOS / f"{name_or_path}.yaml"
    if not path.is_file():
        raise ScenarioError(f"no scenario {name_or_path!r} (shipped: {', '.join(names())})")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ScenarioError(f"{path}: not YAML: {error}") from None
    read = _Reader(str(path))
    scenario = read.scenario(path.stem, data)
    if policy is not None:
        scenario = Scenario(**{**_fields(scenario), "policies": {
            policy.name: _policy_from_path(policy)}, "published": {}})
    return scenario


def with_seed(scenario: Scenario, seed: int) -> Scenario:
    """``scenario`` run from another seed."""
    return Scenario(**{**_fields(scenario), "seed": seed})


def _fields(scenario: Scenario) -> dict[str, Any]:
    return {name: getattr(scenario, name) for name in Scenario.__dataclass_fields__}


def _policy_from_path(path: Path) -> MeshPolicy:
    try:
        return _checked(list(read_documents(path)))
    except PolicyError as error:
        raise ScenarioError(f"policy refused (as the control plane would):\n{error}") from None


def _checked(documents: list[Document]) -> MeshPolicy:
    policy, problems = merge(documents)
    if problems:
        raise PolicyError(problems)
    return policy


class _Reader:
    """Reads a scenario's YAML, naming the file and field of each problem."""

    def __init__(self, file: str) -> None:
        self.file = file

    def fail(self, where: str, why: str) -> ScenarioError:
        return ScenarioError(f"{self.file}: {where}: {why}")

    def mapping(self, value: Any, where: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(where, f"want a mapping, got {value!r}")
        return value

    def number(self, value: Any, where: str, *, minimum: float = 0.0) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float) or \
                not math.isfinite(value) or value < minimum:
            raise self.fail(where, f"want a number of at least {minimum}, got {value!r}")
        return float(value)

    def whole(self, value: Any, where: str, *, minimum: int = 1) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self.fail(where, f"want a whole number of at least {minimum}, got {value!r}")
        return value

    def scenario(self, name: str, data: Any) -> Scenario:
        top = self.mapping(data, "the file")
        known = {"title", "question", "duration", "drain", "seed", "network", "services",
                 "clients", "faults", "sweep", "windows", "policies", "published", "fleet",
                 "quick_scale"}
        for key in top:
            if key not in known:
                raise self.fail(key, f"unknown field (known: {', '.join(sorted(known))})")
        duration = self.number(top.get("duration"), "duration", minimum=0.001)
        seed = self.whole(top.get("seed", 1), "seed", minimum=0)
        fleet = None if top.get("fleet") is None else self.fleet(top["fleet"], seed)
        listed = top.get("services") if fleet is None else top.get("services", {})
        services = tuple(self.service(n, s) for n, s in
                         self.mapping(listed, "services").items())
        service_names = {s.name for s in services}
        clients = tuple(self.client(i, c, service_names)
                        for i, c in enumerate(top.get("clients") or []))
        if fleet is not None:
            drawn, edge_clients = _fleet_services(fleet)
            clashes = service_names & {s.name for s in drawn}
            if clashes:
                raise self.fail("services", f"{', '.join(sorted(clashes))}: also a fleet "
                                            f"service's name")
            services, clients = services + drawn, clients + edge_clients
            service_names |= {s.name for s in drawn}
        self.call_graph(services)
        if not clients:
            raise self.fail("clients", "want at least one client")
        faults = tuple(self.fault(i, f, services) for i, f in enumerate(top.get("faults") or []))
        network = self.mapping(top.get("network", {}), "network")
        policies = {str(label): self.policy(str(label), text) for label, text in
                    self.mapping(top.get("policies"), "policies").items()}
        if not policies:
            raise self.fail("policies", "want at least one policy")
        return Scenario(
            name=name, title=str(top.get("title", name)), question=str(top.get("question", "")),
            duration=duration, drain=self.number(top.get("drain", 5), "drain"),
            seed=seed,
            network=Network(self.number(network.get("latency", 0.0005), "network.latency"),
                            self.number(network.get("jitter", 0.0), "network.jitter")),
            services=services, clients=clients, faults=faults,
            sweep=self.sweep(top.get("sweep")),
            windows={str(k): self.window(str(k), v) for k, v in
                     self.mapping(top.get("windows", {}), "windows").items()},
            policies=policies,
            published={str(k): str(v) for k, v in
                       self.mapping(top.get("published", {}), "published").items()},
            fleet=fleet,
            quick_scale=self.number(top.get("quick_scale", 0.2), "quick_scale", minimum=0.01))

    def service(self, name: str, data: Any) -> ServiceSpec:
        at = f"services.{name}"
        spec = self.mapping(data, at)
        return ServiceSpec(name, self.whole(spec.get("replicas", 1), f"{at}.replicas"),
                           self.whole(spec.get("concurrency", 1000), f"{at}.concurrency"),
                           self.whole(spec.get("queue", 1000), f"{at}.queue", minimum=0),
                           self.service_time(spec.get("service_time"), f"{at}.service_time"),
                           self.number(spec.get("growth", 0.0), f"{at}.growth"),
                           self.names(spec.get("calls", []), f"{at}.calls"),
                           self.names(spec.get("zones", []), f"{at}.zones"))

    def names(self, value: Any, at: str) -> tuple[str, ...]:
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value) \
                or len(set(value)) != len(value):
            raise self.fail(at, f"want a list of distinct names, got {value!r}")
        return tuple(value)

    def call_graph(self, services: Sequence[ServiceSpec]) -> None:
        """Every service called exists, and no call comes back to its caller (a cycle)."""
        by_name = {s.name: s for s in services}
        for service in services:
            for callee in service.calls:
                if callee not in by_name:
                    raise self.fail(f"services.{service.name}.calls",
                                    f"unknown service {callee!r}")
        # Kahn's order: take away the services nobody left calls; what remains holds a cycle.
        callers = {name: 0 for name in by_name}
        for service in services:
            for callee in service.calls:
                callers[callee] += 1
        free = [name for name, count in callers.items() if count == 0]
        while free:
            for callee in by_name[free.pop()].calls:
                callers[callee] -= 1
                if callers[callee] == 0:
                    free.append(callee)
        left = [name for name, count in callers.items() if count > 0]
        if left:
            path = [left[0]]  # follow calls among what remains until one comes back
            while True:
                after = next(c for c in by_name[path[-1]].calls if callers[c] > 0)
                if after in path:
                    cycle = " → ".join([*path[path.index(after):], after])
                    raise self.fail(f"services.{after}.calls", f"a cycle: {cycle}")
                path.append(after)

    def fleet(self, data: Any, seed: int) -> FleetSpec:
        at = "fleet"
        spec = self.mapping(data, at)
        known = {"services", "replicas", "zones", "layers", "calls", "edge_rate", "timeout",
                 "concurrency", "queue", "service_time", "seed"}
        for key in spec:
            if key not in known:
                raise self.fail(f"{at}.{key}", f"unknown field (known: {', '.join(sorted(known))})")
        timeout = spec.get("timeout")
        try:
            return FleetSpec(
                services=self.whole(spec.get("services"), f"{at}.services"),
                replicas=self.whole(spec.get("replicas", 1), f"{at}.replicas"),
                zones=self.whole(spec.get("zones", 1), f"{at}.zones"),
                layers=self.whole(spec.get("layers", 1), f"{at}.layers"),
                calls=self.whole(spec.get("calls", 0), f"{at}.calls", minimum=0),
                edge_rate=self.number(spec.get("edge_rate"), f"{at}.edge_rate", minimum=0.001),
                timeout=None if timeout is None else self.number(timeout, f"{at}.timeout",
                                                                 minimum=0.001),
                concurrency=self.whole(spec.get("concurrency", 1000), f"{at}.concurrency"),
                queue=self.whole(spec.get("queue", 1000), f"{at}.queue", minimum=0),
                service_time=self.service_time(spec.get("service_time"),
                                               f"{at}.service_time"),
                seed=self.whole(spec.get("seed", seed), f"{at}.seed", minimum=0))
        except ValueError as error:
            raise self.fail(at, str(error)) from None

    def service_time(self, data: Any, at: str) -> ServiceTime:
        spec = self.mapping(data, at)
        if len(spec) != 1:
            raise self.fail(at, "want one of fixed, normal, exponential, lognormal")
        ((kind, value),) = spec.items()
        try:
            if kind in ("fixed", "exponential"):
                return ServiceTime(kind, self.number(value, f"{at}.{kind}"))
            if kind in ("normal", "lognormal") and isinstance(value, list) and len(value) == 2:
                return ServiceTime(kind, self.number(value[0], f"{at}.{kind}[0]"),
                                   self.number(value[1], f"{at}.{kind}[1]"))
        except ValueError as error:
            raise self.fail(at, str(error)) from None
        raise self.fail(at, f"{kind}: want fixed: s, exponential: mean, normal: [mean, sd] "
                            f"or lognormal: [median, sigma]")

    def client(self, index: int, data: Any, services: set[str]) -> ClientSpec:
        at = f"clients[{index}]"
        spec = self.mapping(data, at)
        service = spec.get("service")
        if service not in services:
            raise self.fail(f"{at}.service", f"unknown service {service!r} (the scenario has: "
                                             f"{', '.join(sorted(services))})")
        rate, users = spec.get("rate"), spec.get("users")
        if (rate is None) == (users is None):
            raise self.fail(at, "want either rate (open loop) or users (closed loop)")
        timeout = spec.get("timeout")
        stop = spec.get("stop")
        return ClientSpec(
            service=str(service), count=self.whole(spec.get("count", 1), f"{at}.count"),
            timeout=None if timeout is None else self.number(timeout, f"{at}.timeout",
                                                             minimum=0.001),
            rate=None if rate is None else self.number(rate, f"{at}.rate", minimum=0.001),
            poisson=bool(spec.get("poisson", False)),
            users=None if users is None else self.whole(users, f"{at}.users"),
            think_time=self.number(spec.get("think_time", 0.0), f"{at}.think_time"),
            start=self.number(spec.get("start", 0.0), f"{at}.start"),
            stop=None if stop is None else self.number(stop, f"{at}.stop"))

    def fault(self, index: int, data: Any, services: Sequence[ServiceSpec]) -> FaultSpec:
        at = f"faults[{index}]"
        spec = self.mapping(data, at)
        by_name = {s.name: s for s in services}
        zone = spec.get("zone")
        service = by_name.get(spec.get("service"))  # type: ignore[arg-type]
        if service is None and (zone is None or "service" in spec):
            raise self.fail(f"{at}.service", f"unknown service {spec.get('service')!r}")
        if zone is not None:
            zones = set(service.zones) if service else {z for s in services for z in s.zones}
            if zone not in zones:
                raise self.fail(f"{at}.zone", f"unknown zone {zone!r} (zones: "
                                              f"{', '.join(sorted(zones)) or 'none'})")
        replicas = spec.get("replicas")
        if replicas is not None and (service is None or not isinstance(replicas, list) or
                                     not all(isinstance(r, int) and 0 <= r < service.replicas
                                             for r in replicas)):
            most = service.replicas - 1 if service else 0
            raise self.fail(f"{at}.replicas", f"want a service and a list of replica numbers "
                                              f"from 0 to {most}, got {replicas!r}")
        changes = self.mapping(spec.get("set"), f"{at}.set")
        for key in changes:
            if key not in SETTABLE:
                raise self.fail(f"{at}.set.{key}", f"unknown (settable: {', '.join(SETTABLE)})")
        until = spec.get("until")
        return FaultSpec(self.number(spec.get("at", 0.0), f"{at}.at"),
                         None if until is None else self.number(until, f"{at}.until"),
                         service.name if service else None,
                         None if replicas is None else tuple(replicas), changes,
                         None if zone is None else str(zone))

    def sweep(self, data: Any) -> tuple[str, tuple[Any, ...]] | None:
        if data is None:
            return None
        spec = self.mapping(data, "sweep")
        setting, values = spec.get("set"), spec.get("values")
        if setting not in SETTABLE or not isinstance(values, list) or not values:
            raise self.fail("sweep", f"want set: one of {', '.join(SETTABLE)}, and values: a "
                                     f"list")
        return str(setting), tuple(values)

    def window(self, name: str, value: Any) -> tuple[float, float]:
        if not (isinstance(value, list) and len(value) == 2):
            raise self.fail(f"windows.{name}", f"want [from, until] in seconds, got {value!r}")
        start = self.number(value[0], f"windows.{name}[0]")
        return start, self.number(value[1], f"windows.{name}[1]", minimum=start)

    def policy(self, label: str, text: Any) -> MeshPolicy:
        if not isinstance(text, str):
            raise self.fail(f"policies.{label}", "want the policy's YAML, as a string")
        try:
            return _checked([(f"{self.file}: policies.{label}", text)])
        except PolicyError as error:
            raise ScenarioError(f"policy {label!r} refused (as the control plane would):\n"
                                f"{error}") from None


# -- running -----------------------------------------------------------------------------------

def run(scenario: Scenario) -> list[Outcome]:
    """Every arm of ``scenario`` (each policy, at each sweep value), in order."""
    values = scenario.sweep[1] if scenario.sweep else (None,)
    with _rare_collections():
        return [run_one(scenario, label, policy, value)
                for value in values for label, policy in scenario.policies.items()]


def run_one(scenario: Scenario, label: str, policy: MeshPolicy, sweep_value: Any) -> Outcome:
    """One run: one policy, at one sweep value (None: no sweep)."""
    with _rare_collections():
        return _run_one(scenario, label, policy, sweep_value)


def _run_one(scenario: Scenario, label: str, policy: MeshPolicy, sweep_value: Any) -> Outcome:
    started = time.perf_counter()
    sim = Simulation(scenario.seed)
    servers = {spec.name: [Server(sim, service=spec.name, replica=i, zone=spec.zone(i),
                                  concurrency=spec.concurrency, queue_limit=spec.queue,
                                  service_time=spec.service_time,
                                  behaviour=Behaviour(growth=spec.growth), calls=spec.calls)
                           for i in range(spec.replicas)] for spec in scenario.services}
    if scenario.sweep is not None:
        setting, _ = scenario.sweep
        for replicas in servers.values():
            for server in replicas:
                setattr(server.behaviour, setting, sweep_value)
    end = scenario.duration
    record = Record()
    sidecars = _Sidecars(sim, scenario, policy, servers)
    for service in scenario.services:
        if service.calls:
            sidecar = sidecars.make(service.calls, name=service.name)
            for server in servers[service.name]:
                server.sidecar = sidecar
    for c_index, spec in enumerate(scenario.clients):
        for n in range(spec.count):
            sidecar = sidecars.make([spec.service], name=f"client-{c_index}-{n}")
            load = Load(service=spec.service, start=spec.start,
                        stop=end if spec.stop is None else min(spec.stop, end),
                        timeout=spec.timeout)
            if spec.rate is not None:
                client: OpenLoopClient | ClosedLoopClient = OpenLoopClient(
                    sim, sidecar, load, record, rate=spec.rate, poisson=spec.poisson)
            else:
                assert spec.users is not None
                client = ClosedLoopClient(sim, sidecar, load, record, users=spec.users,
                                          think_time=spec.think_time)
            client.start()
    faults = _Faults()
    for number, fault in enumerate(scenario.faults):
        chosen = servers.values() if fault.service is None else [servers[fault.service]]
        targets = [s for replicas in chosen for i, s in enumerate(replicas)
                   if (fault.replicas is None or i in fault.replicas) and
                   (fault.zone is None or s.zone == fault.zone)]
        sim.at(fault.at, faults.begin, number, targets, fault.changes)
        if fault.until is not None:
            sim.at(fault.until, faults.end, number, targets, fault.changes)
    gc.freeze()  # what was built is never scanned again (see _rare_collections)
    sim.run(end + scenario.drain)
    everyone = [s for replicas in servers.values() for s in replicas]
    return Outcome(label, sweep_value, record, everyone, time.perf_counter() - started,
                   sim.events, sum(s.calls_made for s in sidecars.made))


YOUNG_COLLECTION_EVERY = 50_000  # net allocations (Python's default: 700)


@contextmanager
def _rare_collections() -> Iterator[None]:
    """Run with Python's cyclic garbage collector out of the way, then put it back.

    By default the collector runs every 700 net allocations and, every so often, scans every
    object alive; a run allocates an event or two per message, and a fleet builds 10,000
    servers and the state of 1,250 sidecars, so the collector took 40 % of a fleet run
    (py-spy). Young collections come 70 times less often, and what the set-up built is frozen
    before the events run (``gc.freeze``: never scanned again): fleet at 0.2 scale (peak EWMA,
    3 retries) 9.60 → 6.3 CPU seconds. Calls and attempts refer to each other, so the
    collector stays on. Only the outermost use (a whole scenario's runs) puts it back: each
    run's objects stay frozen until every run is over, not scanned again by the next run's
    collections (one run after another, they cost a fifth of a fleet run).
    """
    if gc.get_threshold()[0] == YOUNG_COLLECTION_EVERY:
        yield  # inside another run's: that one puts things back
        return
    threshold = gc.get_threshold()
    gc.set_threshold(YOUNG_COLLECTION_EVERY, 20, 100)
    try:
        yield
    finally:
        gc.set_threshold(*threshold)
        gc.unfreeze()


class _Sidecars:
    """Makes one run's sidecars, each with the clusters of what it may call."""

    def __init__(self, sim: Simulation, scenario: Scenario, policy: MeshPolicy,
                 servers: Mapping[str, Sequence[Server]]) -> None:
        self.sim = sim
        self.scenario = scenario
        self.policy = policy
        self.servers = servers
        self.made: list[Sidecar] = []
        self.routed = sorted(_routed_clusters(policy) & servers.keys())
        declared = {cluster.name: cluster for cluster in policy.clusters}
        template = declared.get(FLEET_CLUSTER)
        self.fleet_clusters: dict[str, Cluster] = {}
        if template is not None and scenario.fleet is not None:
            for service in generate(scenario.fleet).services:
                if service.name in declared:
                    continue
                cluster = Cluster()
                cluster.CopyFrom(template)
                cluster.name = service.name
                self.fleet_clusters[service.name] = cluster

    def make(self, services: Iterable[str], *, name: str) -> Sidecar:
        """A sidecar calling ``services`` (and whatever the routes send to)."""
        reach = [*dict.fromkeys([*services, *self.routed])]
        policy = self.policy
        fleet = [self.fleet_clusters[s] for s in reach if s in self.fleet_clusters]
        if fleet:
            policy = MeshPolicy(clusters=[*policy.clusters, *fleet], routes=policy.routes)
        sidecar = Sidecar(self.sim, policy, {s: self.servers[s] for s in reach},
                          network=self.scenario.network, name=name)
        sidecar.start_ticks(self.scenario.duration + self.scenario.drain)
        self.made.append(sidecar)
        return sidecar


def _routed_clusters(policy: MeshPolicy) -> set[str]:
    """The clusters a policy's routes send calls to, whatever the calls were addressed to."""
    names: set[str] = set()
    for configuration in policy.routes:
        for host in configuration.virtual_hosts:
            for route in host.routes:
                names.add(route.route.cluster)
                names.update(w.name for w in route.route.weighted_clusters.clusters)
    return names - {""}


def _fleet_services(spec: FleetSpec) -> tuple[tuple[ServiceSpec, ...], tuple[ClientSpec, ...]]:
    """The services of the fleet ``spec`` draws, and one open-loop client per edge service."""
    fleet = generate(spec)
    services = tuple(ServiceSpec(s.name, spec.replicas, spec.concurrency, spec.queue,
                                 spec.service_time, 0.0, s.calls, s.zones)
                     for s in fleet.services)
    rate = spec.edge_rate / len(fleet.edge)
    clients = tuple(ClientSpec(s.name, 1, spec.timeout, rate, True, None, 0.0, 0.0, None)
                    for s in fleet.edge)
    return services, clients


class _Faults:
    """The faults in force on each replica's settings, so that they may overlap.

    A setting takes the value of the latest fault in force on it; when a fault ends, the
    setting goes back to the latest other one still in force, or, when none is, to what the
    replica had before any began (its own, or a swept value).
    """

    def __init__(self) -> None:
        self._in_force: dict[tuple[str, str], list[tuple[int, Any]]] = {}  # (replica, setting)
        self._before: dict[tuple[str, str], Any] = {}

    def begin(self, fault: int, servers: list[Server], changes: Mapping[str, Any]) -> None:
        for server in servers:
            for key, value in changes.items():
                slot = (server.address, key)
                if slot not in self._in_force:
                    self._before[slot] = getattr(server.behaviour, key)
                self._in_force.setdefault(slot, []).append((fault, value))
                _set(server, key, value)

    def end(self, fault: int, servers: list[Server], changes: Mapping[str, Any]) -> None:
        for server in servers:
            for key in changes:
                slot = (server.address, key)
                in_force = [f for f in self._in_force[slot] if f[0] != fault]
                if in_force:
                    self._in_force[slot] = in_force
                    _set(server, key, in_force[-1][1])
                else:
                    del self._in_force[slot]
                    _set(server, key, self._before.pop(slot))


def _set(server: Server, key: str, value: Any) -> None:
    if key == "down" and value:
        server.crash()
    else:
        setattr(server.behaviour, key, value)

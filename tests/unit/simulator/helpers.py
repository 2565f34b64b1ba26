"""Small builders the simulator's tests share: a policy from YAML, servers, a sidecar."""

from __future__ import annotations

from controlplane.policy import merge
from mesh.proto.config_pb2 import MeshPolicy
from simulator.engine import Simulation
from simulator.network import Network
from simulator.server import Behaviour, Server, ServiceTime
from simulator.sidecar import Answer, Sidecar

NO_NETWORK = Network(latency=0.0)


def policy(text: str = "{}") -> MeshPolicy:
    """A policy as the control plane reads and checks it."""
    merged, problems = merge([("test", text)])
    assert not problems, problems
    return merged


def servers(sim: Simulation, service: str = "backend", *, replicas: int = 3,
            seconds: float = 0.1, concurrency: int = 100, queue: int = 0,
            calls: tuple[str, ...] = ()) -> list[Server]:
    return [Server(sim, service=service, replica=i, concurrency=concurrency, queue_limit=queue,
                   service_time=ServiceTime("fixed", seconds), behaviour=Behaviour(),
                   calls=calls) for i in range(replicas)]


def sidecar(sim: Simulation, replicas: list[Server], text: str = "{}") -> Sidecar:
    return Sidecar(sim, policy(text), {replicas[0].service: replicas}, network=NO_NETWORK)


def call(sim: Simulation, caller: Sidecar, service: str = "backend", *,
         at: float = 0.0) -> list[Answer]:
    """Make one call at ``at``; the list holds its answer once the simulation has run."""
    answers: list[Answer] = []
    sim.at(at, caller.call, service, answers.append)
    return answers

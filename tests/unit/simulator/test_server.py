"""The server: concurrency, queue, refusal, crash, growth, and calls to its dependencies."""

from __future__ import annotations

from sidecar.outcome import Failure, Outcome
from simulator.engine import Simulation
from simulator.server import Behaviour, Server, ServiceTime
from simulator.sidecar import Sidecar
from tests.unit.simulator.helpers import NO_NETWORK, call, policy, servers


def serve(sim: Simulation, server: Server, count: int, *, at: float = 0.0
          ) -> list[tuple[float, Outcome]]:
    answers: list[tuple[float, Outcome]] = []
    for _ in range(count):
        sim.at(at, server.receive, lambda o: answers.append((sim.now(), o)))
    return answers


def one(sim: Simulation, **settings: object) -> Server:
    defaults: dict[str, object] = {"concurrency": 2, "queue_limit": 1,
                                   "service_time": ServiceTime("fixed", 1.0)}
    return Server(sim, service="s", replica=0, **{**defaults, **settings})  # type: ignore[arg-type]


def test_concurrency_then_queue_then_refusal() -> None:
    sim = Simulation(1)
    server = one(sim)
    answers = serve(sim, server, 4)
    sim.run(10)
    assert [(t, o.status) for t, o in answers] == [(0.0, 503), (1.0, 200), (1.0, 200),
                                                    (2.0, 200)]
    assert server.stats.refused == 1 and server.stats.max_queue == 1
    assert server.stats.busy == 3.0 and server.stats.arrivals_by_second[0] == 4


def test_a_crash_resets_what_it_serves_and_queues_then_refuses() -> None:
    sim = Simulation(1)
    server = one(sim)
    answers = serve(sim, server, 3)
    sim.at(0.5, server.crash)
    later = serve(sim, server, 1, at=0.6)
    sim.run(10)
    assert [o.failure for _, o in answers] == [Failure.RESET] * 3
    assert [o.failure for _, o in later] == [Failure.CONNECT_FAILURE]
    assert server.active == 0


def test_service_time_grows_with_concurrency_and_faults_shape_it() -> None:
    sim = Simulation(1)
    server = one(sim, concurrency=10, behaviour=Behaviour(growth=0.5))
    answers = serve(sim, server, 3)
    sim.run(10)
    assert [t for t, _ in answers] == [1.0, 1.5, 2.0]
    slow = one(sim, behaviour=Behaviour(latency_factor=3))
    pinned = one(sim, behaviour=Behaviour(pinned=0.25))
    failing = one(sim, behaviour=Behaviour(error_rate=1.0))
    hole = one(sim, behaviour=Behaviour(black_hole=True))
    results = [serve(sim, s, 1, at=10) for s in (slow, pinned, failing, hole)]
    sim.run(20)
    assert [(t, o.status) for r in results for t, o in r] == [(13.0, 200), (10.25, 200),
                                                               (11.0, 500)]


def test_a_replica_calls_its_dependencies_in_parallel_and_answers_after_them() -> None:
    sim = Simulation(1)
    database = servers(sim, "db", replicas=2, seconds=0.3)
    cache = servers(sim, "cache", replicas=2, seconds=0.1)
    front = servers(sim, "front", replicas=1, seconds=0.2, calls=("db", "cache"))
    front[0].sidecar = Sidecar(sim, policy(), {"db": database, "cache": cache},
                               network=NO_NETWORK)
    caller = Sidecar(sim, policy(), {"front": front}, network=NO_NETWORK)
    answers = call(sim, caller, "front")
    sim.run(5)
    assert [(a.status, round(a.latency, 9)) for a in answers] == [(200, 0.5)]  # 0.2 + max
    assert front[0].active == 0 and front[0].stats.served == 1


def test_a_failed_dependency_makes_a_500_and_holds_the_slot_until_then() -> None:
    sim = Simulation(1)
    database = servers(sim, "db", replicas=1, seconds=0.3)
    database[0].behaviour.error_rate = 1.0
    front = servers(sim, "front", replicas=1, seconds=0.2, concurrency=1, queue=5,
                    calls=("db",))
    front[0].sidecar = Sidecar(sim, policy(), {"db": database}, network=NO_NETWORK)
    caller = Sidecar(sim, policy(), {"front": front}, network=NO_NETWORK)
    first, second = call(sim, caller, "front"), call(sim, caller, "front")
    sim.run(5)
    # The second waited for the first's slot: 0.5 s, then its own 0.5 s.
    assert [(a.status, round(a.latency, 9)) for a in first + second] == [(500, 0.5),
                                                                          (500, 1.0)]
    assert front[0].stats.errors == 2


def test_a_crash_while_waiting_for_dependencies_resets_once() -> None:
    sim = Simulation(1)
    database = servers(sim, "db", replicas=1, seconds=1.0)
    front = servers(sim, "front", replicas=1, seconds=0.1, calls=("db",))
    front[0].sidecar = Sidecar(sim, policy(), {"db": database}, network=NO_NETWORK)
    outcomes: list[Outcome] = []
    sim.at(0.0, front[0].receive, outcomes.append)
    sim.at(0.5, front[0].crash)
    sim.run(5)
    assert [o.failure for o in outcomes] == [Failure.RESET]

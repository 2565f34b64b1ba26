"""The caller's sidecar model: retries elsewhere, per-try timeouts, the deadline, hedging,
outlier ejection — each through the sidecar's own policy objects."""

from __future__ import annotations

from simulator.engine import Simulation
from tests.unit.simulator.helpers import call, servers, sidecar

RETRY = ("clusters: [{name: backend, lb_policy: ROUND_ROBIN, timeout: 2s, "
         "retry_policy: {retry_on: [5xx], num_retries: 2%s}}]")


def test_a_retry_goes_to_another_replica() -> None:
    sim = Simulation(1)
    replicas = servers(sim, replicas=3)
    replicas[0].behaviour.error_rate = 1.0
    caller = sidecar(sim, replicas, RETRY % "")
    answers = [call(sim, caller, at=float(i)) for i in range(6)]
    sim.run(10)
    assert [a.status for (a,) in answers] == [200] * 6
    # Every try at the failing replica was followed by one elsewhere, which succeeded.
    assert replicas[0].stats.arrivals >= 2
    assert sum(a.attempts for (a,) in answers) == 6 + replicas[0].stats.arrivals


def test_a_per_try_timeout_ends_a_try_and_the_next_avoids_it() -> None:
    sim = Simulation(1)
    replicas = servers(sim, replicas=3, seconds=1.0)
    caller = sidecar(sim, replicas, RETRY % ", per_try_timeout: 0.2s")
    answers = call(sim, caller)
    sim.run(10)
    (answer,) = answers
    assert (answer.status, answer.attempts) == (504, 3) and answer.latency < 1.0
    assert [s.stats.arrivals for s in replicas] == [1, 1, 1]


def test_the_deadline_ends_the_call_whatever_the_server_does() -> None:
    sim = Simulation(1)
    replicas = servers(sim, replicas=2, seconds=5.0)
    caller = sidecar(sim, replicas, "clusters: [{name: backend, timeout: 0.5s}]")
    answers = call(sim, caller)
    sim.run(10)
    assert [(a.status, a.latency, a.attempts) for a in answers] == [(504, 0.5, 1)]


def test_a_hedge_joins_a_slow_try_and_the_first_answer_wins() -> None:
    sim = Simulation(1)
    replicas = servers(sim, replicas=2, seconds=0.1)
    replicas[0].behaviour.pinned = 2.0
    caller = sidecar(sim, replicas, RETRY % ", hedging_delay: 0.05s")
    answers = [call(sim, caller, at=float(i)) for i in range(4)]
    sim.run(10)
    hedged = [a for (a,) in answers if a.attempts == 2]
    assert hedged and all(a.status == 200 for (a,) in answers)
    # A try at the slow one got a hedge after 0.05 s, at the fast one, which won at 0.15 s.
    assert {round(a.latency, 9) for a in hedged} == {0.15}
    assert replicas[0].stats.arrivals == len(hedged)


def test_outlier_detection_ejects_a_failing_replica() -> None:
    sim = Simulation(1)
    replicas = servers(sim, replicas=3)
    replicas[0].behaviour.error_rate = 1.0
    caller = sidecar(sim, replicas, "clusters: [{name: backend, lb_policy: ROUND_ROBIN, "
                                    "outlier_detection: {consecutive_5xx: 3, "
                                    "max_ejection_percent: 50}}]")
    caller.start_ticks(30)
    answers = [call(sim, caller, at=i * 0.2) for i in range(30)]
    sim.run(30)
    statuses = [a.status for (a,) in answers]
    assert statuses.count(500) == 3  # then it is out
    assert caller.clusters["backend"].balancer.endpoints["backend-0:8080"].ejected

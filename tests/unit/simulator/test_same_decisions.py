"""One code path: the simulator's sidecar model and the sidecar make the same decisions.

The same calls, with the same outcomes at the same times and the same seed, are played twice:
once through :class:`simulator.sidecar.Sidecar` at virtual time, once straight into the
sidecar's policy objects in the order ``sidecar/outbound.py``'s ``_Call`` uses them (pick
avoiding what was tried, ``begin_attempt``, ``start``; then ``finish``, outlier detection's
``record``, ``decide``; after a ``Retry``, its delay). Every pick and every decision must be
the same. The only randomness the simulator draws besides the policies' is the network's
(one draw per message) and the failing replica's ``error_rate`` (one per call it serves): the
direct run draws those too, in the same places, so both share one stream.
"""

from __future__ import annotations

import random

import pytest

import simulator.sidecar
from mesh.proto.config_pb2 import Endpoint
from sidecar.circuit_breaker import Limit, Overflow
from sidecar.cluster_policies import ClusterPolicies
from sidecar.cluster_settings import settings_from
from sidecar.outcome import Outcome, succeeded
from sidecar.retry import Retry, RetryDecision, RetryState, Stop
from simulator.engine import Simulation
from tests.unit.simulator.helpers import call, policy, servers, sidecar

SEED = 7
CALLS = 40
SERVICE_TIME = 0.1
POLICY = ("clusters: [{name: backend, lb_policy: %s, timeout: 2s, "
          "retry_policy: {retry_on: [5xx], num_retries: 2}, "
          "outlier_detection: {consecutive_5xx: 3, max_ejection_percent: 50}}]")
FAILING = "backend-0:8080"

Log = list[tuple[str, object]]


def logging_retry_state(log: Log) -> type[RetryState]:
    class Logged(RetryState):
        def begin_attempt(self, address: str | None) -> float:
            log.append(("pick", address))
            return super().begin_attempt(address)

        def decide(self, outcome: Outcome, **kwargs: object) -> RetryDecision:  # type: ignore[override]
            decision: RetryDecision = super().decide(outcome, **kwargs)  # type: ignore[call-overload]
            log.append(("decide", decision))
            return decision

    return Logged


def through_the_simulator(lb: str, monkeypatch: pytest.MonkeyPatch) -> Log:
    log: Log = []
    monkeypatch.setattr(simulator.sidecar, "RetryState", logging_retry_state(log))
    sim = Simulation(SEED)
    replicas = servers(sim, replicas=4, seconds=SERVICE_TIME)
    replicas[0].behaviour.error_rate = 1.0
    caller = sidecar(sim, replicas, POLICY % lb)
    answers = [call(sim, caller, at=float(i)) for i in range(CALLS)]
    sim.run(CALLS + 1)
    assert len(answers) == CALLS
    return log


class Clock:
    def __init__(self) -> None:
        self.time = 0.0

    def now(self) -> float:
        return self.time


def as_the_sidecar_does(lb: str) -> Log:
    log: Log = []
    clock, rng = Clock(), random.Random(SEED)
    settings = settings_from(policy(POLICY % lb).clusters[0])
    cluster = ClusterPolicies(settings, clock=clock, rng=rng)
    cluster.set_endpoints([Endpoint(address=f"backend-{i}", port=8080,
                                    health=Endpoint.HEALTHY) for i in range(4)])
    retry_state = logging_retry_state(log)
    for i in range(CALLS):
        clock.time = float(i)
        permit = cluster.breaker.try_acquire(Limit.REQUESTS)
        assert not isinstance(permit, Overflow)
        state = retry_state(settings.retry_policy, method="GET",
                            deadline=clock.now() + settings.timeout, clock=clock, rng=rng,
                            budget=cluster.budget, breaker=cluster.breaker)
        while True:
            endpoint = cluster.balancer.pick(None, state.tried)
            assert endpoint is not None
            state.begin_attempt(endpoint.address)
            endpoint.start()
            started = clock.now()
            rng.random()  # the network, out
            clock.time = started + SERVICE_TIME
            failing = endpoint.address == FAILING
            if failing:
                rng.random()  # the replica's error_rate
            rng.random()  # the network, back
            outcome = Outcome(status=500 if failing else 200)
            endpoint.finish(clock.now() - started, succeeded(outcome))
            cluster.record(endpoint.address, outcome)
            decision = state.decide(outcome)
            if isinstance(decision, Stop):
                break
            assert isinstance(decision, Retry)
            clock.time += decision.delay if decision.delay > 0 else 0.0
        state.close()
        permit.release()
    return log


@pytest.mark.parametrize("lb", ["ROUND_ROBIN", "LEAST_REQUEST", "PEAK_EWMA"])
def test_the_simulator_and_the_sidecar_pick_and_decide_alike(
        lb: str, monkeypatch: pytest.MonkeyPatch) -> None:
    simulated = through_the_simulator(lb, monkeypatch)
    direct = as_the_sidecar_does(lb)
    assert simulated == direct
    picks = [address for kind, address in direct if kind == "pick"]
    assert picks.count(FAILING) == 3  # then outlier detection ejected it
    assert any(isinstance(d, Retry) for kind, d in direct if kind == "decide")

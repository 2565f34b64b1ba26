"""A caller's sidecar at virtual time: route → cluster → balancer → attempts, as the sidecar's
outbound path does (``sidecar/outbound.py``), with the sidecar's own policy objects.

Per call, in the outbound path's order:

1. **route** — :class:`sidecar.router.Router`, the sidecar's own, on the call's service name;
   no route: 404; a route to a cluster the policy lacks: 503;
2. **deadline** — the route's timeout, else the cluster's, capped by the caller's own;
3. **circuit breaker** — :class:`~sidecar.cluster_policies.ClusterPolicies`' breaker: over
   ``max_requests``, 503 at once;
4. **attempts** — :class:`sidecar.retry.RetryState` decides after each attempt, with the
   cluster's budget and breaker; the balancer picks an endpoint the call has not tried; a
   per-try timeout ends an attempt; with a hedging delay, an attempt with no answer by then
   gets a hedge beside it, past the same gates, and the first final answer wins;
5. **answer** — the final outcome's status, or 503 (a failure) / 504 (a timeout, or the
   deadline).

Each attempt settles once, as ``_Attempt.settle`` does in the sidecar: the endpoint's balancer
state hears ``finish(latency, ok)`` and outlier detection hears the outcome; an attempt cut
short (a lost race, the deadline) tells the balancer only. Outlier detection's sweep runs
every ``interval``, as the sidecar's cluster tick does.

What it leaves out, knowingly: connection pools and their pending-request limit (a call here
is sent at once), request bodies (every call is replayable), faults injected by routes, and
local rate limits.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

from mesh.proto.config_pb2 import Cluster, Endpoint, MeshPolicy
from sidecar.balancers import EndpointState
from sidecar.circuit_breaker import Limit, Overflow
from sidecar.cluster_policies import ClusterPolicies
from sidecar.cluster_settings import settings_from
from sidecar.outcome import Failure, Outcome, succeeded
from sidecar.retry import Hedge, Retry, RetryDecision, RetrySettings, RetryState, Stop, Wait
from sidecar.router import Router
from simulator.engine import Event, Simulation
from simulator.network import Network
from simulator.server import Server


class Answer(NamedTuple):
    """How one call ended for its caller (a named tuple: one is made per call, and a frozen
    dataclass costs three times as much to make)."""

    status: int  # the HTTP status the caller got (503, 504: the sidecar's own)
    started: float  # virtual seconds
    latency: float
    attempts: int  # attempts made (1: no retry or hedge)


Done = Callable[[Answer], None]
NOTHING: frozenset[str] = frozenset()
TIMED_OUT = Outcome(failure=Failure.TIMEOUT)


class Sidecar:
    """One caller's sidecar: its clusters' policies, shared by all its calls."""

    def __init__(self, sim: Simulation, policy: MeshPolicy,
                 servers: Mapping[str, Sequence[Server]], *, network: Network,
                 name: str = "client") -> None:
        """Args:
            policy: the mesh policy (its clusters and routes), as the control plane checked it.
            servers: each service's replicas, by service name; a service without a cluster in
                the policy gets a default one, as the control plane makes.
        """
        self.sim = sim
        self.name = name
        self.network = network
        self.calls_made = 0
        self.servers = {server.address: server for replicas in servers.values()
                        for server in replicas}
        declared = {cluster.name: cluster for cluster in policy.clusters}
        self.clusters: dict[str, ClusterPolicies] = {}
        for service, replicas in servers.items():
            # A service the policy has no cluster for gets a default one, as the control
            # plane makes (controlplane/snapshot.py).
            message = declared.get(service) or Cluster(name=service)
            cluster = ClusterPolicies(settings_from(message), clock=sim, rng=sim.rng)
            cluster.set_endpoints([Endpoint(address=s.address.rsplit(":", 1)[0], port=8080,
                                            health=Endpoint.HEALTHY) for s in replicas])
            self.clusters[service] = cluster
        self.router = Router(list(policy.routes), list(self.clusters), clock=sim)

    def start_ticks(self, until: float) -> None:
        """Run each cluster's outlier-detection sweep at its interval, until ``until``."""
        for cluster in self.clusters.values():
            detection = cluster.settings.outlier_detection
            if detection is not None:
                self.sim.every(detection.interval, cluster.tick, until=until)

    def call(self, service: str, done: Done, *, timeout: float | None = None,
             method: str = "GET") -> None:
        """Make one call to ``service``; ``done(answer)`` when it ends."""
        sim = self.sim
        started = sim.now()
        self.calls_made += 1
        target = self.router.route(service, "/", {}, sim.rng)
        if target is None:
            done(Answer(404, started, 0.0, 0))
            return
        cluster = self.clusters.get(target.cluster)
        if cluster is None:
            done(Answer(503, started, 0.0, 0))
            return
        settings = cluster.settings
        limit = target.timeout or settings.timeout
        if timeout is not None:
            limit = min(limit, timeout)
        permit = cluster.breaker.try_acquire(Limit.REQUESTS)
        if isinstance(permit, Overflow):
            done(Answer(503, started, 0.0, 0))
            return
        _Call(self, cluster, target.retry_policy or settings.retry_policy, started + limit,
              method, done, permit.release).begin()


class _Attempt:
    __slots__ = ("call", "endpoint", "number", "settled", "started", "timer")

    def __init__(self, call: _Call, endpoint: EndpointState, number: int,
                 started: float) -> None:
        self.call = call
        self.endpoint = endpoint
        self.number = number
        self.started = started
        self.settled = False
        self.timer: Event | None = None

    def answered(self, outcome: Outcome) -> None:
        """The server answered: the answer travels back over the network."""
        sidecar = self.call.sidecar
        sim = sidecar.sim
        sim.after(sidecar.network.delay(sim.rng.random()), self.call._ended, self, outcome)


class _Call:
    """One call from its first attempt to its answer (``sidecar/outbound.py``'s ``_Call``)."""

    __slots__ = ("cluster", "deadline", "deadline_event", "done", "finished", "hedge_event",
                 "hedging", "hedging_delay", "in_flight", "release", "sidecar", "started",
                 "state")

    def __init__(self, sidecar: Sidecar, cluster: ClusterPolicies, policy: RetrySettings,
                 deadline: float, method: str, done: Done, release: Callable[[], None]) -> None:
        sim = sidecar.sim
        self.sidecar = sidecar
        self.cluster = cluster
        self.deadline = deadline
        self.done = done
        self.release = release
        self.started = sim.now()
        self.finished = False
        self.state = RetryState(policy, method=method, deadline=deadline, clock=sim,
                                rng=sim.rng, budget=cluster.budget, breaker=cluster.breaker)
        self.hedging_delay = policy.hedging_delay
        self.hedging = False  # this race may still get a hedge (``_race``'s hedge_at is set)
        self.in_flight: dict[int, _Attempt] = {}
        self.hedge_event: Event | None = None
        self.deadline_event = sim.at(deadline, self._deadline_passed)

    def begin(self) -> None:
        """Start a race — the first attempt, or a retry — and its hedges' clock, if it
        hedges (``_Call._attempts`` → ``_race``)."""
        if self.finished:
            return
        self.hedging = self.hedging_delay is not None
        self._attempt()

    def _attempt(self) -> None:
        """Start an attempt on an endpoint not tried yet, if the balancer has one."""
        sidecar = self.sidecar
        sim = sidecar.sim
        state = self.state
        # A first attempt has nothing to avoid: skip building the (empty) set of tried ones.
        endpoint = self.cluster.balancer.pick(None, state.tried if state.attempt else NOTHING)
        attempt_deadline = state.begin_attempt(endpoint.address if endpoint else None)
        if endpoint is None:
            self._finish(503)
            return
        attempt = _Attempt(self, endpoint, state.attempt, sim.now())
        endpoint.start()
        self.in_flight[attempt.number] = attempt
        if attempt_deadline < self.deadline:
            attempt.timer = sim.at(attempt_deadline, self._ended, attempt, TIMED_OUT)
        sim.after(sidecar.network.delay(sim.rng.random()),
                  sidecar.servers[endpoint.address].receive, attempt.answered)
        if self.hedging and self.hedging_delay is not None:
            self._hedge_at(self.hedging_delay)

    def _ended(self, attempt: _Attempt, outcome: Outcome) -> None:
        """An attempt's answer arrived, or its per-try timeout passed."""
        if attempt.settled or self.finished:
            return  # already decided (a timeout, a lost race, the deadline)
        if attempt.timer is not None:
            attempt.timer.cancel()
        self._settle(attempt, outcome)
        del self.in_flight[attempt.number]
        decision: RetryDecision
        if self.hedging_delay is None:
            decision = self.state.decide(outcome)
        else:
            decision = self.state.decide(outcome, attempt=attempt.number)
        if isinstance(decision, Wait):
            if self.hedging:
                self._hedge_at(0.0)  # the next hedge is due at once
        elif isinstance(decision, Retry):
            self.sidecar.sim.after(decision.delay, self.begin)
        else:
            assert isinstance(decision, Stop)
            if outcome.status is not None:
                self._finish(outcome.status)
            else:
                self._finish(504 if outcome.failure is Failure.TIMEOUT else 503)

    def _hedge_at(self, delay: float) -> None:
        if self.hedge_event is not None:
            self.hedge_event.cancel()
        self.hedge_event = self.sidecar.sim.after(delay, self._hedge)

    def _hedge(self) -> None:
        """The hedging delay passed with no final answer (``_Call._hedge`` in the sidecar)."""
        self.hedge_event = None
        if self.finished or not self.in_flight:
            return
        tried = self.state.tried
        if not any(e.available and a not in tried
                   for a, e in self.cluster.balancer.endpoints.items()):
            self.hedging = False  # a hedge goes only where this call has not been
            return
        decision = self.state.hedge()
        if isinstance(decision, Stop):
            self.hedging = False  # no more hedges in this race (a retry starts another)
            return
        assert isinstance(decision, Hedge)
        self._attempt()

    def _deadline_passed(self) -> None:
        if not self.finished:
            self._finish(504)

    def _settle(self, attempt: _Attempt, outcome: Outcome | None) -> None:
        attempt.settled = True
        latency = self.sidecar.sim.now() - attempt.started
        attempt.endpoint.finish(latency, outcome is not None and succeeded(outcome))
        if outcome is not None:
            self.cluster.record(attempt.endpoint.address, outcome)

    def _finish(self, status: int) -> None:
        self.finished = True
        for attempt in self.in_flight.values():  # the losers, or all at the deadline
            if attempt.timer is not None:
                attempt.timer.cancel()
            self._settle(attempt, None)
        self.in_flight.clear()
        if self.hedge_event is not None:
            self.hedge_event.cancel()
        self.deadline_event.cancel()
        self.state.close()
        self.release()
        now = self.sidecar.sim.now()
        self.done(Answer(status, self.started, now - self.started, self.state.attempt))

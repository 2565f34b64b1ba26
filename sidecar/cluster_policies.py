"""A cluster's policies and their state: balancer, outlier detection, circuit breaker, budget.

:class:`ClusterPolicies` is what a cluster *decides* with — which endpoint, whether to eject
one, whether one more call or retry fits — and the state those decisions keep across updates:
each endpoint's in-flight count and latency estimate, ejections, the breaker's counts, the
budget's balance. It does no I/O: the sidecar's :class:`~sidecar.cluster.UpstreamCluster` adds
the connection pools to it, and the simulator (``simulator/``) drives it at virtual time, so
that both run one code path.

An update replaces settings (``sidecar/cluster_settings.py`` reads them from the ``Cluster``
message) and endpoints without dropping that state: a policy whose settings did not change
keeps its object.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping

from mesh.clock import Clock
from mesh.proto.config_pb2 import Cluster, Endpoint
from sidecar.balancers import (
    Balancer,
    EndpointSpec,
    LeastRequestBalancer,
    PeakEwmaBalancer,
    RandomBalancer,
    RingHashBalancer,
    RoundRobinBalancer,
    hash_key,
)
from sidecar.circuit_breaker import CircuitBreaker
from sidecar.cluster_settings import ClusterSettings
from sidecar.outcome import Outcome
from sidecar.outlier import Ejected, OutlierDetector, Returned
from sidecar.retry_budget import Budget, ConcurrencyBudget, ConcurrencyBudgetConfig, RateBudget

log = logging.getLogger("sidecar.cluster")


def _budget(settings: ClusterSettings, clock: Clock) -> Budget | None:
    """The cluster's retry budget: by rate (Finagle, Linkerd) or by concurrency (Envoy)."""
    config = settings.retry_budget
    if isinstance(config, ConcurrencyBudgetConfig):
        return ConcurrencyBudget(config)
    return RateBudget(config, clock=clock) if config else None


def _balancing(settings: ClusterSettings) -> tuple[object, ...]:
    """What the balancer is built from: a change of any of it builds another."""
    return (settings.lb_policy, settings.round_robin, settings.least_request,
            settings.peak_ewma, settings.ring_hash)


def _balancer(settings: ClusterSettings, clock: Clock, rng: random.Random) -> Balancer:
    if settings.round_robin is not None:
        return RoundRobinBalancer(settings.round_robin, clock=clock, rng=rng)
    if settings.least_request is not None:
        return LeastRequestBalancer(settings.least_request, clock=clock, rng=rng)
    if settings.peak_ewma is not None:
        return PeakEwmaBalancer(settings.peak_ewma, clock=clock, rng=rng)
    if settings.ring_hash is not None:
        return RingHashBalancer(settings.ring_hash, clock=clock, rng=rng)
    return RandomBalancer(clock=clock, rng=rng)


class ClusterPolicies:
    """The policies of one cluster and the state they keep."""

    def __init__(self, settings: ClusterSettings, *, clock: Clock,
                 rng: random.Random) -> None:
        self.settings = settings
        self.clock = clock
        self.rng = rng
        self.balancer = _balancer(settings, clock, rng)
        self.outlier = self._detector(settings)
        self.breaker = CircuitBreaker(settings.circuit_breakers)
        self.budget = _budget(settings, clock)
        self.endpoints: list[Endpoint] = []
        detection = settings.outlier_detection
        self._next_sweep = clock.now() + (detection.interval if detection else 0)

    def update(self, settings: ClusterSettings) -> None:
        """New settings; state is kept wherever the setting it depends on did not change."""
        old, self.settings = self.settings, settings
        if _balancing(old) != _balancing(settings):
            self.balancer = _balancer(settings, self.clock, self.rng)
            self._apply_endpoints()
        if old.outlier_detection != settings.outlier_detection:
            self.outlier = self._detector(settings)
            self._apply_endpoints()
        self.breaker.config = settings.circuit_breakers
        if old.retry_budget != settings.retry_budget:
            self.budget = _budget(settings, self.clock)

    def _detector(self, settings: ClusterSettings) -> OutlierDetector | None:
        detection = settings.outlier_detection
        return None if detection is None else \
            OutlierDetector(detection, clock=self.clock, rng=self.rng)

    def hash_key(self, headers: Mapping[str, str]) -> int | None:
        """A request's key on the ring: the hash of its ``hash_header`` value.

        None — the balancer's random point — when the cluster does not hash or the request
        lacks the header (Envoy too picks at random when no hash policy yields a hash).
        """
        header = self.settings.hash_header
        if not header or self.settings.lb_policy != Cluster.RING_HASH:
            return None
        value = headers.get(header)
        return None if value is None else hash_key(value)

    def set_endpoints(self, endpoints: list[Endpoint]) -> None:
        """The cluster's endpoints are now exactly ``endpoints``."""
        self.endpoints = list(endpoints)
        self._apply_endpoints()

    def _apply_endpoints(self) -> None:
        specs = [EndpointSpec(address=f"{e.address}:{e.port}", weight=e.weight or 1,
                              healthy=e.health == Endpoint.HEALTHY) for e in self.endpoints]
        self.balancer.set_endpoints(specs)
        addresses = {spec.address for spec in specs}
        ejected: frozenset[str] = frozenset()
        if self.outlier is not None:
            self.outlier.set_addresses(addresses)
            ejected = self.outlier.ejected
        # The detector is the only judge: a new one (its settings changed) or none at all
        # returns what an old one ejected, which nothing would ever return otherwise.
        for address, endpoint in self.balancer.endpoints.items():
            endpoint.ejected = address in ejected

    def record(self, address: str, outcome: Outcome) -> None:
        """Tell outlier detection how a call to ``address`` ended."""
        if self.outlier is None:
            return
        decision = self.outlier.record(address, outcome)
        if decision is not None:
            self._apply_outlier(decision)

    def tick(self) -> None:
        """Called often; runs outlier detection's sweep once per its ``interval``."""
        settings = self.settings.outlier_detection
        if self.outlier is None or settings is None or self.clock.now() < self._next_sweep:
            return
        self._next_sweep = self.clock.now() + settings.interval
        for decision in self.outlier.sweep():
            self._apply_outlier(decision)

    def _apply_outlier(self, decision: Ejected | Returned) -> None:
        endpoint = self.balancer.endpoints.get(decision.address)
        if endpoint is None:
            return
        endpoint.ejected = isinstance(decision, Ejected)
        if isinstance(decision, Ejected):
            log.warning("cluster %s: ejected %s (%s) until %.1f", self.settings.name,
                        decision.address, decision.reason.value, decision.until)
        else:
            log.info("cluster %s: %s returns from ejection", self.settings.name,
                     decision.address)

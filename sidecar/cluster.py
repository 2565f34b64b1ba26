"""A cluster: one upstream service as the sidecar sees it — endpoints, policies, pools.

:class:`UpstreamCluster` holds the runtime state of a cluster that survives updates: the
balancer with each endpoint's in-flight count and latency estimate, outlier detection, the
circuit breaker, the retry budget, and a connection pool per endpoint. An update replaces
settings (``sidecar/cluster_settings.py`` reads them from the ``Cluster`` message) and
endpoints without dropping that state.
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
from collections.abc import Callable, Mapping

from mesh.clock import Clock
from mesh.http2 import Headers, Stream
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
from sidecar.circuit_breaker import CircuitBreaker, Limit, Overflow, Overloaded
from sidecar.cluster_settings import ClusterSettings
from sidecar.metrics import SidecarMetrics
from sidecar.outcome import Outcome
from sidecar.outlier import Ejected, OutlierDetector, Returned
from sidecar.pool import ConnectFailure, ConnectionPool
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


class UpstreamCluster:
    """The runtime state of one cluster."""

    def __init__(self, settings: ClusterSettings, *, clock: Clock, rng: random.Random,
                 tls: Callable[[], ssl.SSLContext | None],
                 metrics: SidecarMetrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics
        self.clock = clock
        self.rng = rng
        self.balancer = _balancer(settings, clock, rng)
        self.outlier = self._detector(settings)
        self.breaker = CircuitBreaker(settings.circuit_breakers)
        self.budget = _budget(settings, clock)
        self.endpoints: list[Endpoint] = []
        self.pools: dict[str, ConnectionPool] = {}
        self._tls = tls
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
        if (old.connect_timeout, old.pool) != (settings.connect_timeout, settings.pool):
            for address in list(self.pools):
                self._drop_pool(address)  # new connections get the new settings

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
        # A pool checks its endpoint's certificate against the identity that registered it;
        # if that changed (another workload registered the address since), start afresh.
        identities = {f"{e.address}:{e.port}": e.identity for e in self.endpoints}
        for address, pool in list(self.pools.items()):
            if identities.get(address) != pool.peer_identity:
                self._drop_pool(address)

    def pool(self, address: str) -> ConnectionPool:
        """The connection pool to ``address`` ("ip:port"), created on first use.

        Raises:
            ConnectFailure: ``address`` is not (any more) an endpoint of the cluster: a call
                picked it just before an update removed it. Its pool would not know which
                identity to check the peer's certificate for, so none is made.
        """
        pool = self.pools.get(address)
        if pool is None:
            endpoint = next((e for e in self.endpoints if f"{e.address}:{e.port}" == address),
                            None)
            if endpoint is None:
                raise ConnectFailure(f"{address} is no longer an endpoint of cluster "
                                     f"{self.settings.name}")
            host, _, port = address.rpartition(":")
            settings = self.settings
            pool = self.pools[address] = ConnectionPool(
                host, int(port), ssl=self._tls(), connect_timeout=settings.connect_timeout,
                max_streams_per_connection=settings.pool.max_streams_per_connection,
                idle_timeout=settings.pool.idle_timeout, on_connect=self._connected,
                peer_identity=endpoint.identity)
        return pool

    async def open_stream(self, address: str, headers: Headers, *,
                          end_stream: bool = False) -> Stream:
        """Send ``headers`` on a new stream to ``address``, on a pooled connection.

        A call that finds no connection with room waits for one to be made: while it waits it
        is *pending*, and no more than ``max_pending_requests`` may wait at once (Envoy's
        pending-request breaker), so a cluster whose endpoints cannot be reached fails fast
        instead of piling up calls that all wait for the connect timeout.

        Raises:
            Overloaded: ``max_pending_requests`` calls are waiting already.
            ConnectFailure: a connection was needed and could not be made.
        """
        pool = self.pool(address)
        if pool.has_room():
            return await pool.open_stream(headers, end_stream=end_stream)
        permit = self.breaker.try_acquire(Limit.PENDING_REQUESTS)
        if isinstance(permit, Overflow):
            raise Overloaded(permit)
        try:
            return await pool.open_stream(headers, end_stream=end_stream)
        finally:
            permit.release()

    def _connected(self) -> None:
        if self.metrics is not None:
            self.metrics.upstream_connections.labels(self.settings.name).inc()

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
            if self.metrics is not None:
                self.metrics.ejections.labels(self.settings.name).inc()
            log.warning("cluster %s: ejected %s (%s) until %.1f", self.settings.name,
                        decision.address, decision.reason.value, decision.until)
        else:
            log.info("cluster %s: %s returns from ejection", self.settings.name,
                     decision.address)

    def _drop_pool(self, address: str) -> None:
        pool = self.pools.pop(address)
        task = asyncio.get_running_loop().create_task(pool.close())
        _closing.add(task)
        task.add_done_callback(_closing.discard)

    def retire(self) -> None:
        """The cluster left the configuration: drain its pools in the background."""
        for address in list(self.pools):
            self._drop_pool(address)

    async def close(self) -> None:
        await asyncio.gather(*(pool.close(grace=1.0) for pool in self.pools.values()))
        self.pools.clear()


_closing: set[asyncio.Task[None]] = set()  # pools draining in the background


"""A cluster: one upstream service as the sidecar sees it — settings, endpoints, policies, pools.

:func:`settings_from` turns the control plane's ``Cluster`` message into settings with every
default filled in (the one place defaults live), and :class:`UpstreamCluster` holds the runtime
state that survives updates: the balancer with each endpoint's in-flight count and latency
estimate, outlier detection, the circuit breaker, the retry budget, and a connection pool per
endpoint. An update replaces settings and endpoints without dropping that state.
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from google.protobuf.duration_pb2 import Duration

from mesh.clock import Clock
from mesh.http2 import Headers, Stream
from mesh.proto.config_pb2 import Cluster, Endpoint, RetryBudget, RetryPolicy
from sidecar.backoff import Backoff, Jitter
from sidecar.balancers import (
    Balancer,
    EndpointSpec,
    LeastRequestBalancer,
    LeastRequestConfig,
    PeakEwmaBalancer,
    PeakEwmaConfig,
    RandomBalancer,
    RingHashBalancer,
    RingHashConfig,
    RoundRobinBalancer,
    hash_key,
)
from sidecar.circuit_breaker import (
    CircuitBreaker,
    CircuitBreakerConfig,
    Limit,
    Overflow,
    Overloaded,
)
from sidecar.metrics import SidecarMetrics
from sidecar.outcome import Outcome
from sidecar.outlier import Ejected, OutlierDetectionConfig, OutlierDetector, Returned
from sidecar.pool import DEFAULT_MAX_STREAMS, ConnectionPool
from sidecar.retry import RetryOn, RetrySettings
from sidecar.retry_budget import (
    Budget,
    ConcurrencyBudget,
    ConcurrencyBudgetConfig,
    RateBudget,
    RateBudgetConfig,
)

log = logging.getLogger("sidecar.cluster")

DEFAULT_CONNECT_TIMEOUT = 1.0
DEFAULT_TIMEOUT = 15.0  # Envoy's route timeout
DEFAULT_IDLE_TIMEOUT = 60.0


def seconds(duration: Duration) -> float:
    return duration.ToTimedelta().total_seconds()


@dataclass(frozen=True, slots=True)
class ClusterSettings:
    """A cluster's configuration, defaults applied."""

    name: str
    lb_policy: int  # Cluster.LbPolicy
    least_request: LeastRequestConfig
    peak_ewma: PeakEwmaConfig
    ring_hash: RingHashConfig
    hash_header: str  # RING_HASH: the request header whose value is hashed; "" for none
    connect_timeout: float
    timeout: float
    retry_policy: RetrySettings
    retry_budget: RateBudgetConfig | ConcurrencyBudgetConfig | None
    outlier: OutlierDetectionConfig | None
    breakers: CircuitBreakerConfig
    max_streams_per_connection: int
    idle_timeout: float
    app_protocol: int  # Cluster.Protocol


def retry_settings_from(proto: RetryPolicy) -> RetrySettings:
    """The retry settings a ``RetryPolicy`` message asks for.

    Raises:
        ValueError: an unknown ``retry_on`` condition or a bad value.
    """
    retry_on = frozenset(RetryOn.parse(name) for name in proto.retry_on)
    backoff = Backoff()
    if proto.HasField("backoff"):
        b = proto.backoff
        backoff = Backoff(
            base_interval=seconds(b.base_interval) if b.HasField("base_interval") else 0.025,
            max_interval=seconds(b.max_interval) if b.HasField("max_interval") else None,
            jitter=Jitter.FULL if b.jitter == b.FULL else Jitter.DECORRELATED)
    return RetrySettings(
        retry_on=retry_on,
        num_retries=proto.num_retries if proto.num_retries or not retry_on else 1,
        per_try_timeout=(seconds(proto.per_try_timeout)
                         if proto.HasField("per_try_timeout") else None),
        retriable_status_codes=frozenset(proto.retriable_status_codes),
        retry_non_idempotent=proto.retry_non_idempotent,
        backoff=backoff)


def settings_from(cluster: Cluster) -> ClusterSettings:
    """Settings for a ``Cluster`` message, defaults filled in.

    Raises:
        ValueError: a value out of range (the sidecar NACKs the update).
    """
    def duration(field: str, message: object, default: float) -> float:
        if not message.HasField(field):  # type: ignore[attr-defined]
            return default
        value = seconds(getattr(message, field))
        if value <= 0:
            raise ValueError(f"cluster {cluster.name}: {field} must be positive, got {value}s")
        return value

    lr, ewma, ring = cluster.least_request, cluster.peak_ewma, cluster.ring_hash
    budget: RateBudgetConfig | ConcurrencyBudgetConfig | None = None
    rb = cluster.retry_budget
    # The scalars are ``optional`` in the proto, so a written 0 is told apart from "unset".
    ratio = rb.retry_ratio if rb.HasField("retry_ratio") else 0.2
    if rb.disabled:
        pass
    elif rb.kind == RetryBudget.CONCURRENCY:
        budget = ConcurrencyBudgetConfig(
            budget_percent=100 * ratio,
            min_retry_concurrency=(rb.min_retry_concurrency
                                   if rb.HasField("min_retry_concurrency") else 3))
    else:
        budget = RateBudgetConfig(
            retry_ratio=ratio,
            min_retries_per_second=(rb.min_retries_per_second
                                    if rb.HasField("min_retries_per_second") else 10),
            ttl=duration("ttl", rb, 10.0))
    outlier = None
    if cluster.HasField("outlier_detection"):
        od = cluster.outlier_detection
        outlier = OutlierDetectionConfig(
            consecutive_5xx=od.consecutive_5xx or 5,
            consecutive_gateway_failure=od.consecutive_gateway_failure or None,
            interval=duration("interval", od, 10.0),
            base_ejection_time=duration("base_ejection_time", od, 30.0),
            max_ejection_time=duration("max_ejection_time", od, 300.0),
            max_ejection_percent=od.max_ejection_percent or 10)
    cb = cluster.circuit_breakers
    return ClusterSettings(
        name=cluster.name,
        lb_policy=cluster.lb_policy,
        least_request=LeastRequestConfig(choice_count=lr.choice_count or 2,
                                         active_request_bias=(lr.active_request_bias
                                                              if lr.active_request_bias
                                                              else 1.0)),
        peak_ewma=PeakEwmaConfig(decay=duration("decay", ewma, 10.0),
                                 default_rtt=duration("default_rtt", ewma, 0.030)),
        ring_hash=RingHashConfig(points_per_weight=ring.points_per_weight or 1024),
        hash_header=ring.hash_header.lower(),  # HTTP/2 header names are lowercase
        connect_timeout=duration("connect_timeout", cluster, DEFAULT_CONNECT_TIMEOUT),
        timeout=duration("timeout", cluster, DEFAULT_TIMEOUT),
        retry_policy=(retry_settings_from(cluster.retry_policy)
                      if cluster.HasField("retry_policy") else RetrySettings()),
        retry_budget=budget,
        outlier=outlier,
        breakers=CircuitBreakerConfig(
            max_pending_requests=cb.max_pending_requests or 1024,
            max_requests=cb.max_requests or 1024,
            max_retries=cb.max_retries or 3),
        max_streams_per_connection=cluster.pool.max_streams_per_connection or DEFAULT_MAX_STREAMS,
        idle_timeout=duration("idle_timeout", cluster.pool, DEFAULT_IDLE_TIMEOUT),
        app_protocol=cluster.app_protocol)


def _budget(settings: ClusterSettings, clock: Clock) -> Budget | None:
    """The cluster's retry budget: by rate (Finagle, Linkerd) or by concurrency (Envoy)."""
    config = settings.retry_budget
    if isinstance(config, ConcurrencyBudgetConfig):
        return ConcurrencyBudget(config)
    return RateBudget(config, clock=clock) if config else None


def _balancer(settings: ClusterSettings, clock: Clock, rng: random.Random) -> Balancer:
    policy = settings.lb_policy
    if policy == Cluster.ROUND_ROBIN:
        return RoundRobinBalancer(clock=clock, rng=rng)
    if policy == Cluster.RANDOM:
        return RandomBalancer(clock=clock, rng=rng)
    if policy == Cluster.PEAK_EWMA:
        return PeakEwmaBalancer(settings.peak_ewma, clock=clock, rng=rng)
    if policy == Cluster.RING_HASH:
        return RingHashBalancer(settings.ring_hash, clock=clock, rng=rng)
    return LeastRequestBalancer(settings.least_request, clock=clock, rng=rng)


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
        self.outlier = OutlierDetector(settings.outlier, clock=clock) if settings.outlier \
            else None
        self.breaker = CircuitBreaker(settings.breakers)
        self.budget = _budget(settings, clock)
        self.endpoints: list[Endpoint] = []
        self.pools: dict[str, ConnectionPool] = {}
        self._tls = tls
        self._next_sweep = clock.now() + (settings.outlier.interval if settings.outlier else 0)

    def update(self, settings: ClusterSettings) -> None:
        """New settings; state is kept wherever the setting it depends on did not change."""
        old, self.settings = self.settings, settings
        if (old.lb_policy, old.least_request, old.peak_ewma, old.ring_hash) != \
                (settings.lb_policy, settings.least_request, settings.peak_ewma,
                 settings.ring_hash):
            self.balancer = _balancer(settings, self.clock, self.rng)
            self._apply_endpoints()
        if old.outlier != settings.outlier:
            self.outlier = OutlierDetector(settings.outlier, clock=self.clock) \
                if settings.outlier else None
            self._apply_endpoints()
        self.breaker.config = settings.breakers
        if old.retry_budget != settings.retry_budget:
            self.budget = _budget(settings, self.clock)
        if (old.connect_timeout, old.max_streams_per_connection, old.idle_timeout) != \
                (settings.connect_timeout, settings.max_streams_per_connection,
                 settings.idle_timeout):
            for address in list(self.pools):
                self._drop_pool(address)  # new connections get the new settings

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
        """The connection pool to ``address`` ("ip:port"), created on first use."""
        pool = self.pools.get(address)
        if pool is None:
            host, _, port = address.rpartition(":")
            settings = self.settings
            pool = self.pools[address] = ConnectionPool(
                host, int(port), ssl=self._tls(), connect_timeout=settings.connect_timeout,
                max_streams_per_connection=settings.max_streams_per_connection,
                idle_timeout=settings.idle_timeout, on_connect=self._connected,
                peer_identity=next((e.identity for e in self.endpoints
                                    if f"{e.address}:{e.port}" == address), ""))
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
        settings = self.settings.outlier
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


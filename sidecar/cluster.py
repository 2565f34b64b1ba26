"""A cluster: one upstream service as the sidecar sees it — its policies, and its pools.

:class:`UpstreamCluster` is the cluster's policies and their state
(:class:`~sidecar.cluster_policies.ClusterPolicies`: balancer, outlier detection, circuit
breaker, retry budget) plus a connection pool per endpoint. An update replaces settings and
endpoints without dropping that state; a pool whose settings or peer identity changed is
drained and made again.
"""

from __future__ import annotations

import asyncio
import random
import ssl
from collections.abc import Callable

from mesh.clock import Clock
from mesh.http2 import Headers, Stream
from sidecar.circuit_breaker import Limit, Overflow, Overloaded
from sidecar.cluster_policies import ClusterPolicies
from sidecar.cluster_settings import ClusterSettings
from sidecar.metrics import SidecarMetrics
from sidecar.outcome import Outcome, http_status_of
from sidecar.outlier import Ejected, Returned
from sidecar.pool import ConnectFailure, ConnectionPool


class UpstreamCluster(ClusterPolicies):
    """The runtime state of one cluster: its policies' and its pools."""

    def __init__(self, settings: ClusterSettings, *, clock: Clock, rng: random.Random,
                 tls: Callable[[], ssl.SSLContext | None],
                 metrics: SidecarMetrics | None = None) -> None:
        super().__init__(settings, clock=clock, rng=rng)
        self.metrics = metrics
        self.pools: dict[str, ConnectionPool] = {}
        self._tls = tls

    def record(self, address: str, outcome: Outcome) -> None:
        """Tell outlier detection how an attempt ended, and count it by what it answered."""
        super().record(address, outcome)
        if self.metrics is not None:
            self.metrics.attempt_done(self.settings.name, http_status_of(outcome))

    def update(self, settings: ClusterSettings) -> None:
        old = self.settings
        super().update(settings)
        if (old.connect_timeout, old.pool) != (settings.connect_timeout, settings.pool):
            for address in list(self.pools):
                self._drop_pool(address)  # new connections get the new settings

    def _apply_endpoints(self) -> None:
        super()._apply_endpoints()
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

    def _apply_outlier(self, decision: Ejected | Returned) -> None:
        super()._apply_outlier(decision)
        if isinstance(decision, Ejected) and self.metrics is not None \
                and decision.address in self.balancer.endpoints:
            self.metrics.ejections.labels(self.settings.name).inc()

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


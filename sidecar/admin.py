"""The admin endpoint (127.0.0.1:15000 by default): what a person asks a sidecar.

    GET /metrics       Prometheus: requests, latency, retries, breakers, ejections, per-endpoint
                       in-flight and latency estimates, upstream connections, connections open
                       by direction and mTLS, and ``mesh_sidecar_info`` (service, namespace)
    GET /config_dump   the configuration in force, and each cluster's effective settings:
                       every default filled in, and under "defaulted" the field paths that
                       were left unset and so took their default
    GET /clusters      per cluster: its balancer and policy, every endpoint (health, the cost
                       its balancer compares, ejection with reason and time left, in-flight,
                       latency estimate, pool), the circuit breakers' occupancy, the retry
                       budget's state. ``cost_unit`` says what the costs count: ``ms`` (peak
                       EWMA: latency estimate x (in flight + 1)), ``requests`` (least request:
                       calls in flight), ``load/weight`` (least request when weights differ or
                       an endpoint is in slow start: (in flight + 1) ** active_request_bias /
                       effective weight), or null with null costs (round robin, random, ring
                       hash: they compare no load)
    GET /tap           the last outbound requests, oldest first, paths without their query:
                       ``{"boot", "service", "next", "dropped", "requests"}``. ``?after=SEQ``
                       for those after the ``next`` of the previous answer, ``&limit=N``
                       (1..512, default 100) for the newest N of them. ``boot`` is made once
                       per process: an answer with a ``boot`` the reader did not see before
                       comes from a restarted sidecar, and the reader reads again with no
                       ``after`` (``sidecar/tap.py``)
    GET /ready         200 once the sidecar has a configuration (and is registered), else 503

A sidecar with several workers (``sidecar/workers.py``) has one admin, in its parent, which
asks every worker and adds their answers up: counters, histograms, requests in flight,
connections and a breaker's occupancy are summed (so are the breakers' limits: each worker
holds a share), the latency estimates and costs are the highest a worker has, an endpoint is
ejected if a worker ejected it, and the tap holds every worker's requests in the order they
ended. ``/clusters`` says how many workers it added up (``"workers"``); ``/clusters?worker=N``
is worker N's alone (0 to N - 1).
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import json
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from mesh.proto.config_pb2 import Cluster
from sidecar.circuit_breaker import Limit
from sidecar.cluster import UpstreamCluster
from sidecar.cluster_settings import ClusterSettings
from sidecar.config import LiveConfig
from sidecar.metrics import MTLS, PLAINTEXT, SidecarMetrics
from sidecar.retry_budget import ConcurrencyBudget, RateBudget
from sidecar.tap import DEFAULT_LIMIT, Tap
from sidecar.workers import WorkerError, Workers


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, frozenset | set | tuple | list):
        return [_plain(v) for v in sorted(value, key=str)] if isinstance(value, frozenset | set) \
            else [_plain(v) for v in value]
    return value


def effective_view(settings: ClusterSettings) -> dict[str, Any]:
    """A cluster's settings as JSON-ready data, enums by name (``/config_dump``)."""
    view: dict[str, Any] = _plain(settings)
    view["lb_policy"] = Cluster.LbPolicy.Name(settings.lb_policy)
    view["app_protocol"] = Cluster.Protocol.Name(settings.app_protocol)
    return view


def clusters_view(config: LiveConfig) -> dict[str, Any]:
    """Every cluster's state as JSON-ready data (``/clusters``)."""
    view: dict[str, Any] = {}
    for name, cluster in config.clusters.items():
        balancer, outlier, now = cluster.balancer, cluster.outlier, cluster.clock.now()
        costs = balancer.costs()  # in one pass: deciding how a balancer weighs reads them all
        endpoints = []
        for address, endpoint in balancer.endpoints.items():
            pool = cluster.pools.get(address)
            ejection = outlier.ejection(address) if outlier is not None else None
            endpoints.append({
                "address": address, "weight": endpoint.weight, "healthy": endpoint.healthy,
                "ejected": endpoint.ejected, "active_requests": endpoint.active,
                "latency_estimate_ms": round(endpoint.latency_estimate() * 1000, 3),
                "cost": None if costs is None else round(costs.by_address[address], 3),
                "ejection": None if ejection is None else {
                    "reason": ejection.reason.value,
                    "ejected_at_s_ago": round(now - ejection.ejected_at, 3),
                    "remaining_s": round(max(0.0, ejection.until - now), 3),
                    "times": ejection.times},
                "connections": len(pool.connections) if pool else 0,
                "connections_opened": pool.connections_opened if pool else 0,
                "streams_opened": pool.streams_opened if pool else 0,
            })
        view[name] = {
            "balancer": type(balancer).__name__,
            "lb_policy": Cluster.LbPolicy.Name(cluster.settings.lb_policy),
            "cost_unit": None if costs is None else costs.unit, "endpoints": endpoints,
            "circuit_breaker": {limit.value: {"active": cluster.breaker.active(limit),
                                              "max": cluster.breaker.config.maximum(limit)}
                                for limit in Limit},
            "retry_budget": budget_view(cluster),
        }
    return view


def budget_view(cluster: UpstreamCluster) -> dict[str, Any] | None:
    """The retry budget's state and settings; None when the cluster has none."""
    budget = cluster.budget
    if isinstance(budget, RateBudget):
        return {"kind": "rate", "balance": budget.retries_allowed(),
                **dataclasses.asdict(budget.config)}
    if isinstance(budget, ConcurrencyBudget):
        return {"kind": "concurrency", "active_requests": budget.active_requests,
                "active_retries": budget.active_retries, "limit": budget.limit(),
                **dataclasses.asdict(budget.config)}
    return None


def outbound_connections(config: LiveConfig) -> Counter[tuple[str, str]]:
    """Connections open to each cluster's endpoints, by (cluster, tls)."""
    counts: Counter[tuple[str, str]] = Counter()
    for name, cluster in config.clusters.items():
        for pool in cluster.pools.values():
            counts[name, MTLS if pool.ssl is not None else PLAINTEXT] += len(pool.connections)
    return counts


def _query_int(request: web.Request, name: str, default: int) -> int:
    """The integer query parameter ``name``, or ``default`` when it is absent.

    Raises:
        web.HTTPBadRequest: it is not an integer.
    """
    value = request.query.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise web.HTTPBadRequest(text=f"{name} {value!r}: must be an integer\n") from None


def metrics_text(config: LiveConfig, metrics: SidecarMetrics) -> bytes:
    """The Prometheus exposition of ``metrics``, its gauges set from ``config`` now."""
    metrics.set_endpoints((name, address, endpoint.active, endpoint.latency_estimate())
                          for name, cluster in config.clusters.items()
                          for address, endpoint in cluster.balancer.endpoints.items())
    metrics.set_outbound_connections(outbound_connections(config))
    return generate_latest(metrics.registry)


# -- several workers' answers, added up ------------------------------------------------------

HIGHEST = frozenset({"mesh_sidecar_endpoint_latency_estimate_seconds", "latency_estimate_ms",
                     "cost", "remaining_s", "ejected_at_s_ago", "times", "weight",
                     "retry_ratio", "ttl", "budget_percent"})
"""What is not summed over workers but the highest taken: estimates and costs each worker makes
of its own calls, how long an ejection lasts, and settings every worker holds alike."""


class _Families(Collector):
    def __init__(self, families: Iterable[Metric]) -> None:
        self.families = list(families)

    def collect(self) -> Iterable[Metric]:
        return self.families


COUNTING = frozenset({"counter", "histogram", "summary"})
"""The kinds of metric that only grow, and so outlive the worker run that counted them."""


def merge_metrics(texts: Sequence[bytes], kinds: frozenset[str] | None = None) -> bytes:
    """Prometheus expositions (the parent's and every worker's) as one: each series summed,
    the series in :data:`HIGHEST` and the ``_created`` times (the earliest) excepted. Only
    the families of ``kinds`` (e.g. :data:`COUNTING`), if given."""
    families: dict[str, Metric] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for text in texts:
        for family in text_string_to_metric_families(text.decode()):
            if kinds is not None and family.type not in kinds:
                continue
            if family.name not in families:
                families[family.name] = Metric(family.name, family.documentation, family.type)
                values[family.name] = {}
            into = values[family.name]
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                if key not in into:
                    into[key] = sample.value
                elif sample.name.endswith("_created"):
                    into[key] = min(into[key], sample.value)
                elif family.name in HIGHEST:
                    into[key] = max(into[key], sample.value)
                else:
                    into[key] += sample.value
    for name, family in families.items():
        for (sample_name, labels), value in values[name].items():
            family.add_sample(sample_name, dict(labels), value)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(families.values()))
    return generate_latest(registry)


def merge_views(views: Sequence[Any], key: str = "") -> Any:
    """Several workers' ``/clusters`` (or any part of them, found under ``key``) as one: see
    the module's docstring. Endpoints are matched by address."""
    present = [v for v in views if v is not None]
    if not present:
        return None
    first = present[0]
    if isinstance(first, dict):
        keys = dict.fromkeys(k for view in present for k in view)
        return {k: merge_views([view.get(k) for view in present], k) for k in keys}
    if key == "endpoints":
        by_address: dict[str, list[Any]] = {}
        for endpoints in present:
            for endpoint in endpoints:
                by_address.setdefault(endpoint["address"], []).append(endpoint)
        return [merge_views(same) for same in by_address.values()]
    if isinstance(first, bool):  # ejected if a worker ejected it; healthy if all see it so
        return any(present) if key == "ejected" else all(present)
    if isinstance(first, int | float):
        return max(present) if key in HIGHEST else round(sum(present), 3)
    return first


class GatheredMetrics:
    """The workers' expositions, kept so that the sidecar's counters never go backwards (which
    Prometheus would read as a reset): a worker that does not answer is counted by its last
    answer, and when a worker was started again, the counters and histograms of its previous
    run stay added in, as the last answer of that run had them. (What a run counted after
    that last answer is lost with it.)"""

    def __init__(self, workers: Workers) -> None:
        self._workers = workers
        self._last: dict[int, tuple[str, bytes]] = {}  # worker → (boot, exposition)
        self._retired: dict[int, bytes] = {}  # worker → its previous runs' counting families
        self._lock = asyncio.Lock()  # two scrapes at once must not retire a run twice

    async def gather(self) -> list[bytes]:
        """Every worker's exposition to merge: its answer now, or its last."""
        async with self._lock:
            answers = dict(await self._workers.ask_each("metrics", lambda _: ()))
            for index, (boot, text) in answers.items():
                last = self._last.get(index)
                if last is not None and last[0] != boot:
                    self._retired[index] = merge_metrics(
                        [self._retired.get(index, b""), last[1]], COUNTING)
                self._last[index] = (boot, text)
            current = [text if index in answers else merge_metrics([text], COUNTING)
                       for index, (_, text) in self._last.items()]
            return [*current, *self._retired.values()]


class GatheredTap:
    """The workers' taps as one: each read first takes what every worker kept since the last
    read (all of it from a worker that restarted) into a tap of the parent's own, in the
    order the requests ended. Requests a worker's ring lost before they were read take a
    sequence number each all the same, so a reader's ``dropped`` counts them."""

    def __init__(self, tap: Tap, workers: Workers) -> None:
        self.tap = tap
        self._workers = workers
        self._read: dict[int, tuple[str, int]] = {}  # worker → (boot, next) of its last page
        self._lock = asyncio.Lock()  # two reads at once must not take the same rows twice

    async def gather(self) -> None:
        async with self._lock:
            pages = await self._workers.ask_each(
                "tap", lambda index: self._read.get(index, ("", 0)))
            rows = []
            for index, page in pages:
                self._read[index] = (page["boot"], page["next"])
                rows += page["requests"]
                self.tap.lost(page["dropped"])
            for row in sorted(rows, key=lambda r: r["at"]):
                self.tap.add(row)


def make_admin(config: LiveConfig, metrics: SidecarMetrics,
               ready: Callable[[], tuple[bool, str]], *,
               workers: Workers | None = None) -> web.Application:
    """The admin of a sidecar, or of one with ``workers``, whom it asks."""
    routes = web.RouteTableDef()

    metrics.set_info(config.service, config.namespace)
    gathered = GatheredTap(metrics.tap, workers) if workers is not None else None
    expositions = GatheredMetrics(workers) if workers is not None else None

    @routes.get("/metrics")
    async def prometheus(_: web.Request) -> web.Response:
        if workers is None:
            body = metrics_text(config, metrics)
        else:  # the parent's own (discovery's updates, info) beside its workers' traffic
            assert expositions is not None
            body = merge_metrics([generate_latest(metrics.registry),
                                  *await expositions.gather()])
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    @routes.get("/config_dump")
    async def config_dump(_: web.Request) -> web.Response:
        effective = {name: effective_view(cluster.settings)
                     for name, cluster in config.clusters.items()}
        body = {"resources": config.dump(), "effective_cluster_settings": effective}
        return web.Response(text=json.dumps(body, indent=2, default=str),
                            content_type="application/json")

    @routes.get("/clusters")
    async def clusters(request: web.Request) -> web.Response:
        if workers is None:
            return web.json_response(clusters_view(config))
        if "worker" in request.query:
            index = _query_int(request, "worker", 0)
            if not 0 <= index < len(workers.workers):
                raise web.HTTPBadRequest(text=f"worker {index}: this sidecar has workers 0 to "
                                              f"{len(workers.workers) - 1}\n")
            try:
                return web.json_response(await workers.workers[index].ask("clusters"))
            except WorkerError as error:
                raise web.HTTPServiceUnavailable(text=f"{error}\n") from None
        views = await workers.ask("clusters")
        if not views:
            raise web.HTTPServiceUnavailable(text="no worker answered\n")
        merged = merge_views(views) or {}
        for view in merged.values():
            view["workers"] = len(views)
        return web.json_response(merged)

    @routes.get("/tap")
    async def tap(request: web.Request) -> web.Response:
        if gathered is not None:
            await gathered.gather()
        try:
            page = metrics.tap.since(_query_int(request, "after", 0),
                                     _query_int(request, "limit", DEFAULT_LIMIT))
        except ValueError as error:
            raise web.HTTPBadRequest(text=f"{error}\n") from None
        return web.json_response({"boot": page.boot, "service": config.service,
                                  "next": page.next, "dropped": page.dropped,
                                  "requests": page.requests})

    @routes.get("/ready")
    async def is_ready(_: web.Request) -> web.Response:
        ok, reason = ready()
        return web.Response(status=200 if ok else 503, text=reason + "\n")

    app = web.Application()
    app.add_routes(routes)
    return app

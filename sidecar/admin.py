"""The admin endpoint (127.0.0.1:15000 by default): what a person asks a sidecar.

    GET /metrics       Prometheus: requests, latency, retries, breakers, ejections, per-endpoint
                       in-flight and latency estimates, upstream connections
    GET /config_dump   the configuration in force, and each cluster's effective settings:
                       every default filled in, and under "defaulted" the field paths that
                       were left unset and so took their default
    GET /clusters      every endpoint: health, ejection, in-flight, latency estimate, pool
    GET /ready         200 once the sidecar has a configuration (and is registered), else 503
"""

from __future__ import annotations

import dataclasses
import enum
import json
from collections.abc import Callable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from mesh.proto.config_pb2 import Cluster
from sidecar.cluster_settings import ClusterSettings
from sidecar.config import LiveConfig
from sidecar.metrics import SidecarMetrics


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
    view: dict[str, Any] = {}
    for name, cluster in config.clusters.items():
        endpoints = []
        for address, endpoint in cluster.balancer.endpoints.items():
            pool = cluster.pools.get(address)
            endpoints.append({
                "address": address, "weight": endpoint.weight, "healthy": endpoint.healthy,
                "ejected": endpoint.ejected, "active_requests": endpoint.active,
                "latency_estimate_ms": round(endpoint.latency_estimate() * 1000, 3),
                "connections": len(pool.connections) if pool else 0,
                "connections_opened": pool.connections_opened if pool else 0,
                "streams_opened": pool.streams_opened if pool else 0,
            })
        view[name] = {"balancer": type(cluster.balancer).__name__, "endpoints": endpoints}
    return view


def make_admin(config: LiveConfig, metrics: SidecarMetrics,
               ready: Callable[[], tuple[bool, str]]) -> web.Application:
    routes = web.RouteTableDef()

    @routes.get("/metrics")
    async def prometheus(_: web.Request) -> web.Response:
        metrics.set_endpoints((name, address, endpoint.active, endpoint.latency_estimate())
                              for name, cluster in config.clusters.items()
                              for address, endpoint in cluster.balancer.endpoints.items())
        return web.Response(body=generate_latest(metrics.registry),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})

    @routes.get("/config_dump")
    async def config_dump(_: web.Request) -> web.Response:
        effective = {name: effective_view(cluster.settings)
                     for name, cluster in config.clusters.items()}
        body = {"resources": config.dump(), "effective_cluster_settings": effective}
        return web.Response(text=json.dumps(body, indent=2, default=str),
                            content_type="application/json")

    @routes.get("/clusters")
    async def clusters(_: web.Request) -> web.Response:
        return web.json_response(clusters_view(config))

    @routes.get("/ready")
    async def is_ready(_: web.Request) -> web.Response:
        ok, reason = ready()
        return web.Response(status=200 if ok else 503, text=reason + "\n")

    app = web.Application()
    app.add_routes(routes)
    return app

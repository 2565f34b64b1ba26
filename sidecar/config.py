"""The sidecar's live configuration: clusters, their endpoints, routes and authorization.

Discovery (or a static file) delivers one resource type at a time; :meth:`LiveConfig.apply`
builds the new state for that type completely *before* swapping it in, so a bad update raises
(the discovery client NACKs it) and leaves everything as it was. Requests read the current
objects without locks: a swap is one assignment in the event loop's single thread.

The router depends on two types — the routes, and the cluster names its fallback routes to —
so it is rebuilt when either changes. Routes and clusters are accepted apart: the control plane
removes a cluster before the routes that name it (make before break), and a route naming a
cluster the sidecar lacks answers 503 "no cluster" until the next update (Envoy's behaviour)
rather than holding up the update that removes the cluster with a NACK.
"""

from __future__ import annotations

import logging
import random
import ssl
from collections.abc import Callable, Sequence
from typing import Any

from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message

from mesh.clock import Clock
from mesh.identity import DEFAULT_NAMESPACE
from mesh.proto.config_pb2 import (
    AuthorizationPolicy,
    Cluster,
    ClusterLoadAssignment,
    RouteConfiguration,
)
from mesh.proto.resources import AUTHORIZATION, CLUSTERS, ENDPOINTS, ROUTES
from sidecar.authz import Authorizer
from sidecar.cluster import UpstreamCluster
from sidecar.cluster_settings import settings_from
from sidecar.metrics import SidecarMetrics
from sidecar.router import Router

log = logging.getLogger("sidecar.config")


class LiveConfig:
    """What the sidecar runs now; one object shared by every listener."""

    def __init__(self, *, service: str, clock: Clock, rng: random.Random,
                 tls: Callable[[], ssl.SSLContext | None],
                 metrics: SidecarMetrics | None = None,
                 namespace: str = DEFAULT_NAMESPACE) -> None:
        """``service`` and ``namespace``: this sidecar's own (its inbound side's service, and
        where the router reads short names)."""
        self.service = service
        self.clusters: dict[str, UpstreamCluster] = {}
        self.namespace = namespace
        self.router = Router([], [], namespace=namespace)
        self.authorizer = Authorizer([])
        self.raw: dict[str, list[Message]] = {}  # the last accepted resources, for config_dump
        self._clock = clock
        self._rng = rng
        self._tls = tls
        self._metrics = metrics
        self._assignments: dict[str, ClusterLoadAssignment] = {}
        self._routes: list[RouteConfiguration] = []

    def apply(self, type_url: str, resources: Sequence[Message]) -> None:
        """Install the resources of one type, or raise ValueError and change nothing."""
        if type_url == CLUSTERS:
            self._apply_clusters([r for r in resources if isinstance(r, Cluster)])
        elif type_url == ENDPOINTS:
            self._apply_endpoints([r for r in resources
                                   if isinstance(r, ClusterLoadAssignment)])
        elif type_url == ROUTES:
            routes = [r for r in resources if isinstance(r, RouteConfiguration)]
            self.router = Router(routes, self.clusters.keys(), clock=self._clock,
                                 previous=self.router, namespace=self.namespace)
            self._routes = routes
        elif type_url == AUTHORIZATION:
            policies = [r for r in resources if isinstance(r, AuthorizationPolicy)]
            self.authorizer = Authorizer([p for p in policies if p.service == self.service])
        else:
            raise ValueError(f"unknown resource type {type_url}")
        self.raw[type_url] = list(resources)

    def _apply_clusters(self, clusters: list[Cluster]) -> None:
        settings = {c.name: settings_from(c) for c in clusters}  # raises before any change
        if len(settings) != len(clusters):
            raise ValueError("two clusters share a name")
        # The fallback must see new names; the routes' rate-limit buckets carry over.
        router = Router(self._routes, settings.keys(), clock=self._clock, previous=self.router,
                        namespace=self.namespace)
        updated: dict[str, UpstreamCluster] = {}
        for name, new in settings.items():
            cluster = self.clusters.get(name)
            if cluster is None:
                cluster = UpstreamCluster(new, clock=self._clock, rng=self._rng, tls=self._tls,
                                          metrics=self._metrics)
                assignment = self._assignments.get(name)
                if assignment is not None:
                    cluster.set_endpoints(list(assignment.endpoints))
            else:
                cluster.update(new)
            updated[name] = cluster
        for name, gone in self.clusters.items():
            if name not in updated:
                gone.retire()
        self.clusters = updated
        self.router = router

    def _apply_endpoints(self, assignments: list[ClusterLoadAssignment]) -> None:
        by_name = {a.cluster_name: a for a in assignments}
        for assignment in assignments:
            seen = set()
            for endpoint in assignment.endpoints:
                key = (endpoint.address, endpoint.port)
                if key in seen:
                    raise ValueError(f"cluster {assignment.cluster_name}: endpoint "
                                     f"{endpoint.address}:{endpoint.port} listed twice")
                seen.add(key)
        self._assignments = by_name
        for name, cluster in self.clusters.items():
            found = by_name.get(name)
            cluster.set_endpoints(list(found.endpoints) if found else [])

    def dump(self) -> dict[str, Any]:
        """The configuration in force, as JSON-ready data (the admin's ``/config_dump``)."""
        return {type_url.rsplit(".", 1)[-1]: [MessageToDict(m, preserving_proto_field_name=True)
                                               for m in resources]
                for type_url, resources in self.raw.items()}

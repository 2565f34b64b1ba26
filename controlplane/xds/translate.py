"""The mesh's snapshot in Envoy's xDS v3, for proxyless gRPC, with what gRPC cannot apply.

:func:`translate` takes what :func:`controlplane.snapshot.build` takes — the policy and the
registered endpoints — and resolves clusters and endpoints the same way
(:func:`controlplane.snapshot.resolve`), so a proxyless workload and a sidecar see the same
clusters with the same endpoints. Each resource type has its module:

    clusters.py    Cluster: balancer, circuit breakers, outlier detection, upstream mTLS
    endpoints.py   ClusterLoadAssignment: endpoints by zone, with weights and health
    routes.py      RouteConfiguration: the policy's, and a generated ``cluster:<name>`` each
    listeners.py   Listener: a client's API listener, a server's inbound listener with RBAC

Clusters, endpoints and routes are the same for every caller and are built and packed once per
translation. Listeners depend on the caller: a client's name is read in its own namespace, and
a server's RBAC is its own service's; they are built when asked for and kept per namespace
(API listeners) or per service (inbound listeners) for the life of the snapshot.

**Warnings.** gRPC applies a subset of what our sidecars do; a policy it cannot apply is still
sent where harmless (gRPC ignores fields it does not know) or downgraded where sending it would
make gRPC refuse the whole response (a balancer it lacks). Each is an :class:`Unsupported`:
which resource, which field (as our YAML writes it), what gRPC does instead. A registered
service with no cluster in the policy gets a default cluster nobody wrote, so its least request
going out as round robin is not warned about. An inbound listener's warnings depend on which
server asks, and are logged when its listener is built.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from controlplane.snapshot import Resources, pack, protecting, resolve
from controlplane.xds import clusters as cluster_translation
from controlplane.xds.endpoints import assignment
from controlplane.xds.listeners import ListenerNames, api_listener, inbound_listener
from controlplane.xds.resources import (
    CLUSTER,
    CLUSTER_LOAD_ASSIGNMENT,
    LISTENER,
    ROUTE_CONFIGURATION,
    inbound_address,
)
from controlplane.xds.routes import cluster_route_configuration, retry_policy, route_configuration
from mesh.identity import DEFAULT_NAMESPACE, SpiffeId
from mesh.proto.config_pb2 import Cluster, Endpoint, MeshPolicy

log = logging.getLogger("controlplane.xds")


@dataclass(frozen=True, slots=True)
class Unsupported:
    """A policy gRPC will not apply, on one resource."""

    resource: str  # "Cluster inventory", "RouteConfiguration shop", "Listener mesh/inbound/…"
    message: str  # the field as our YAML writes it, and what gRPC gets instead


LISTENER_CACHE_SIZE = 10_000  # built listeners kept per snapshot; more are built when asked


class XdsSnapshot:
    """The xDS resources of one snapshot, as each identity may see them."""

    def __init__(self, policy: MeshPolicy, clusters: Resources, endpoints: Resources,
                 routes: Resources, names: ListenerNames,
                 warnings: Sequence[Unsupported], *, policy_version: int) -> None:
        self.policy_version = policy_version  # of the policy it was translated from
        self.warnings = tuple(sorted(set(warnings), key=lambda w: (w.resource, w.message)))
        self._authorization = tuple(policy.authorization)
        self._inbound_limited = {(c.namespace or DEFAULT_NAMESPACE, c.name)
                                 for c in policy.clusters if c.HasField("inbound_rate_limit")}
        self._by_type = {CLUSTER: clusters, CLUSTER_LOAD_ASSIGNMENT: endpoints,
                         ROUTE_CONFIGURATION: routes}
        self._names = names
        self._listeners: dict[tuple[str, str, str], Any] = {}  # see _listener

    def view(self, type_url: str, identity: SpiffeId,
             names: Sequence[str] | None) -> Resources:
        """What the workload that proved ``identity`` should hold of ``type_url``: the
        resources ``names`` names that exist, or all of them when ``names`` is None.

        Raises:
            KeyError: ``type_url`` is not one of the four we serve.
        """
        if type_url != LISTENER:
            return self._by_type[type_url].only(names)
        wanted = self._names.nameable(identity.namespace) if names is None else \
            sorted(set(names))
        listeners = [(name, self._listener(name, identity)) for name in wanted]
        return pack(LISTENER, [(name, listener) for name, listener in listeners
                               if listener is not None])

    def _listener(self, name: str, identity: SpiffeId) -> Any | None:
        try:
            address = inbound_address(name)
        except ValueError as error:
            # Refused on the stream (controlplane/xds/proxyless.py); never served here.
            log.debug("%s asked for %s; it gets no listener", identity, error)
            return None
        # A client's listener depends on the namespace, a server's on the service as well.
        key = (identity.namespace, "" if address is None else identity.service, name)
        listener = self._listeners.get(key)
        if listener is None:
            if address is None:
                found = self._names.route_configuration(name, identity.namespace)
                listener = None if found is None else api_listener(name, found)
            else:
                listener = self._inbound(name, *address, identity)
            # Names are the clients' to choose (any port of any known name is a listener):
            # keep a bounded number, and never the misses.
            if listener is not None and len(self._listeners) < LISTENER_CACHE_SIZE:
                self._listeners[key] = listener
        return listener

    def _inbound(self, name: str, host: str, port: int, identity: SpiffeId) -> Any:
        mine = protecting(self._authorization, identity)
        if (identity.namespace, identity.service) in self._inbound_limited:
            log.warning("Listener %s: inbound_rate_limit of cluster %s not applied: gRPC has "
                        "no local rate limit", name, identity.service)
        return inbound_listener(name, host, port, mine)


def translate(policy: MeshPolicy, endpoints: Mapping[tuple[str, str], list[Endpoint]], *,
              policy_version: int) -> XdsSnapshot:
    """The xDS snapshot of ``policy`` (at ``policy_version``) and the registry's ``endpoints``
    by (namespace, service): the arguments of :func:`controlplane.snapshot.build`."""
    clusters, assignments = resolve(policy, endpoints)
    written = {c.name for c in policy.clusters}
    retried = _retried(policy, clusters)
    warnings: list[Unsupported] = []
    translated_clusters = []
    for a in assignments:  # one per cluster, sorted by name
        ours = clusters[a.cluster_name]
        translated, notes = cluster_translation.cluster(ours, a.endpoints,
                                                        retried=ours.name in retried)
        _, retry_notes = retry_policy(ours.retry_policy)
        notes += [f"retry_policy.{note}" for note in retry_notes]
        if ours.name in written:
            warnings += [Unsupported(f"Cluster {ours.name}", note) for note in notes]
        translated_clusters.append((ours.name, translated))
    routes = []
    for configuration in policy.routes:
        translated, notes = route_configuration(configuration, clusters)
        warnings += [Unsupported(f"RouteConfiguration {configuration.name}", note)
                     for note in notes]
        routes.append((configuration.name, translated))
    taken = {name for name, _ in routes}
    for name in sorted(clusters):
        generated = cluster_route_configuration(clusters[name])
        if generated.name not in taken:
            routes.append((generated.name, generated))
    return XdsSnapshot(
        policy,
        clusters=pack(CLUSTER, translated_clusters),
        endpoints=pack(CLUSTER_LOAD_ASSIGNMENT,
                       [(a.cluster_name, assignment(a)) for a in assignments]),
        routes=pack(ROUTE_CONFIGURATION, sorted(routes, key=lambda r: r[0])),
        names=ListenerNames.of(policy.routes, clusters),
        warnings=warnings, policy_version=policy_version)


def _retried(policy: MeshPolicy, clusters: Mapping[str, Cluster]) -> set[str]:
    """The clusters whose calls are retried: by their own policy or by a route to them."""
    found = {name for name, c in clusters.items() if retry_policy(c.retry_policy)[0] is not None}
    for configuration in policy.routes:
        for host in configuration.virtual_hosts:
            for route in host.routes:
                if retry_policy(route.route.retry_policy)[0] is not None:
                    found.add(route.route.cluster)
                    found.update(w.name for w in route.route.weighted_clusters.clusters)
    return found


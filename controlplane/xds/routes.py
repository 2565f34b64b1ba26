"""Our route configurations as Envoy RouteConfigurations (RDS), as gRPC's client reads them.

gRPC picks a virtual host by the target's name (exact domain, then ``*.suffix``, ``prefix*``,
then ``*``), tries its routes in order and takes the first whose path and header matchers all
match (gRFC A28) — our router's rules, with one difference: our router also reads an
authority without its port (``orders:50051`` finds the domain ``orders``), so each port-less
domain is sent with its ``<domain>:*`` twin as well, unless the configuration names that
already. Header matchers mean the same on both sides but for one case: an inverted exact or
prefix matcher matches a request without the header for us, never for gRPC; such a route is
sent as two routes, one for "the header is absent" and one with the inverted matcher.

What a route carries, and what gRPC makes of it:

- the cluster, or weighted clusters with their weights (gRFC A28);
- a timeout: the route's, else its cluster's when the cluster sets one (our default of 15 s is
  not sent: a gRPC caller sets its own deadline), in Envoy's ``timeout`` only, with a warning.
  gRPC reads only ``max_stream_duration`` (gRFC A31), and grpcio 1.85 mishandles short ones
  (see ``TIMEOUT_NOT_APPLIED``), so a proxyless caller's own deadline is what applies;
- a retry policy: the route's, else its cluster's (gRFC A44). gRPC retries only on gRPC
  statuses (cancelled, deadline-exceeded, internal, resource-exhausted, unavailable), makes at
  most 5 attempts, ignores ``per_try_timeout`` and ``retriable_status_codes``, has no hedging
  and no retry budget, and jitters its backoff its own way. ``retry_on`` keeps our names (gRPC
  skips those it does not know), and an unset ``num_retries`` stays unset: Envoy's default, 1,
  is ours. A retry policy that retries nothing (no ``retry_on``) is not sent: gRPC refuses
  ``num_retries: 0``;
- a hash policy on the ``hash_header`` of each ring-hash cluster it leads to (gRFC A42);
- a fault to inject (gRFC A33), as the fault filter's per-route config;
- a route's ``rate_limit`` is not sent: gRPC has no local rate limit.

For weighted clusters, a setting that comes from the clusters (timeout, retry policy) is sent
only when every cluster has the same one: an Envoy route has one of each, where our sidecar
takes the picked cluster's.

A client that calls a cluster by name, with no virtual host naming it, gets the generated
configuration ``cluster:<name>``: one ``*`` virtual host with one route to that cluster and the
cluster's timeout, retry and hash policies.

A ``safe_regex`` is sent as written. Our validation compiles it with Python's ``re``; gRPC
compiles it with RE2, and NACKs the RouteConfiguration when RE2 cannot (a lookahead, a
backreference) — keeping its previous routes, which is what a NACK is for.

Warnings are returned as ``"<field path>: <what gRPC does instead>"``, the path as our YAML
writes it; :mod:`controlplane.xds.translate` names the resource.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import product
from typing import Any

from envoy.config.route.v3.route_components_pb2 import HeaderMatcher as EnvoyHeaderMatcher
from envoy.config.route.v3.route_components_pb2 import (
    NonForwardingAction,
    WeightedCluster,
)
from envoy.config.route.v3.route_components_pb2 import (
    RetryPolicy as EnvoyRetryPolicy,
)
from envoy.config.route.v3.route_components_pb2 import Route as EnvoyRoute
from envoy.config.route.v3.route_components_pb2 import RouteAction as EnvoyRouteAction
from envoy.config.route.v3.route_components_pb2 import RouteMatch as EnvoyRouteMatch
from envoy.config.route.v3.route_components_pb2 import VirtualHost as EnvoyVirtualHost
from envoy.config.route.v3.route_pb2 import RouteConfiguration as EnvoyRouteConfiguration
from envoy.extensions.filters.common.fault.v3.fault_pb2 import FaultDelay
from envoy.extensions.filters.http.fault.v3.fault_pb2 import FaultAbort, HTTPFault
from envoy.type.matcher.v3.regex_pb2 import RegexMatcher
from envoy.type.matcher.v3.string_pb2 import StringMatcher
from envoy.type.v3.percent_pb2 import FractionalPercent
from google.protobuf.duration_pb2 import Duration
from google.protobuf.wrappers_pb2 import UInt32Value

from controlplane.xds.messages import typed
from mesh.proto.config_pb2 import (
    Cluster,
    FaultInjection,
    HeaderMatcher,
    RetryPolicy,
    Route,
    RouteConfiguration,
)

FAULT_FILTER = "envoy.filters.http.fault"  # the HTTP filter's name, and its per-route key
CLUSTER_ROUTES_TEMPLATE = "cluster:%s"  # the generated configuration of a cluster called by name

# gRFC A44: the retry_on conditions gRPC honours, all gRPC statuses.
GRPC_RETRY_ON = ("cancelled", "deadline-exceeded", "internal", "resource-exhausted",
                 "unavailable")
MAX_GRPC_RETRIES = 4  # gRPC caps a call at 5 attempts (gRFC A6's maxAttempts limit)
# Envoy requires retry_back_off.base_interval; when only max_interval is written, Envoy's and
# gRPC's own default goes with it (ours is the same 25 ms, in sidecar/backoff.py).
ENVOY_BASE_INTERVAL = Duration(nanos=25_000_000)
_MILLION_PER_PERCENT = 10_000  # FractionalPercent MILLION: 1 % is 10,000 per million


def cluster_routes_name(cluster: str) -> str:
    """The generated RouteConfiguration of a cluster called by its name."""
    return CLUSTER_ROUTES_TEMPLATE % cluster


def route_configuration(ours: RouteConfiguration, clusters: Mapping[str, Cluster],
                        ) -> tuple[Any, list[str]]:
    """The Envoy RouteConfiguration of one of ours, and what gRPC will not apply of it.

    Args:
        clusters: every cluster by name, for the settings a route takes from its cluster.
    """
    translated = EnvoyRouteConfiguration(name=ours.name)
    written = {d.lower() for host in ours.virtual_hosts for d in host.domains}
    notes: list[str] = []
    for h, host in enumerate(ours.virtual_hosts):
        domains = list(host.domains)
        domains += [f"{d}:*" for d in host.domains
                    if ":" not in d and "*" not in d and f"{d.lower()}:*" not in written]
        routes = []
        for r, route in enumerate(host.routes):
            translated_routes, found = _route(f"{host.name}/{r}", route, clusters)
            routes += translated_routes
            notes += [f"virtual_hosts[{h}].routes[{r}].{note}" for note in found]
        translated.virtual_hosts.append(
            EnvoyVirtualHost(name=host.name, domains=domains, routes=routes))
    return translated, notes


def cluster_route_configuration(cluster: Cluster) -> Any:
    """The generated RouteConfiguration ``cluster:<name>``: every call to that cluster.

    Its retry policy's warnings are the cluster's (see :func:`retry_policy`).
    """
    action = EnvoyRouteAction(cluster=cluster.name)
    _cluster_settings(action, [cluster], [], timeout=True, retries=True)
    route = EnvoyRoute(name="default", match=EnvoyRouteMatch(prefix=""), route=action)
    host = EnvoyVirtualHost(name=cluster.name, domains=["*"], routes=[route])
    return EnvoyRouteConfiguration(name=cluster_routes_name(cluster.name), virtual_hosts=[host])


def inbound_route_configuration(name: str) -> Any:
    """A proxyless server's routes: every call is served here (gRFC A36's non-forwarding
    action; a server route that forwards fails its calls)."""
    route = EnvoyRoute(match=EnvoyRouteMatch(prefix=""),
                       non_forwarding_action=NonForwardingAction())
    return EnvoyRouteConfiguration(
        name=name, virtual_hosts=[EnvoyVirtualHost(name="inbound", domains=["*"],
                                                   routes=[route])])


def retry_policy(ours: RetryPolicy) -> tuple[Any | None, list[str]]:
    """The Envoy RetryPolicy of ours (None when it retries nothing), and what gRPC will not
    apply of it, each note naming the field within ``retry_policy``."""
    notes = []
    if ours.HasField("hedging_delay"):
        notes.append("hedging_delay not sent: gRPC's xDS client has no hedging")
    if ours.hedge_on_per_try_timeout:
        notes.append("hedge_on_per_try_timeout not sent: gRPC's xDS client has no hedging")
    if not ours.retry_on:
        return None, notes
    translated = EnvoyRetryPolicy(retry_on=",".join(ours.retry_on))
    ignored = [c for c in ours.retry_on if c not in GRPC_RETRY_ON]
    if ignored:
        notes.append(f"retry_on {', '.join(ignored)} not applied: gRPC retries on "
                     f"{', '.join(GRPC_RETRY_ON)} only (gRFC A44)")
    if ours.num_retries:
        translated.num_retries.value = ours.num_retries
        if ours.num_retries > MAX_GRPC_RETRIES:
            notes.append(f"num_retries {ours.num_retries} applied as {MAX_GRPC_RETRIES}: "
                         f"gRPC makes at most {MAX_GRPC_RETRIES + 1} attempts")
    if ours.HasField("per_try_timeout") and not ours.hedge_on_per_try_timeout:
        translated.per_try_timeout.CopyFrom(ours.per_try_timeout)
        notes.append("per_try_timeout not applied: gRPC ignores it; a try may use the whole "
                     "timeout")
    if ours.retriable_status_codes:
        translated.retriable_status_codes.extend(ours.retriable_status_codes)
        notes.append("retriable_status_codes not applied: gRPC retries on gRPC statuses only")
    if ours.HasField("backoff"):
        backoff = translated.retry_back_off
        backoff.base_interval.CopyFrom(ours.backoff.base_interval
                                       if ours.backoff.HasField("base_interval")
                                       else ENVOY_BASE_INTERVAL)
        if ours.backoff.HasField("max_interval"):
            backoff.max_interval.CopyFrom(ours.backoff.max_interval)
    return translated, notes


def _route(name: str, ours: Route, clusters: Mapping[str, Cluster],
           ) -> tuple[list[Any], list[str]]:
    """The Envoy routes of one of ours (more than one when it has inverted header matchers,
    see :func:`_matches`), and what gRPC will not apply of it."""
    notes: list[str] = []
    action = EnvoyRouteAction()
    kind = ours.route.WhichOneof("cluster_specifier")
    if kind == "weighted_clusters":
        names = [w.name for w in ours.route.weighted_clusters.clusters]
        action.weighted_clusters.CopyFrom(WeightedCluster(clusters=[
            WeightedCluster.ClusterWeight(name=w.name, weight=UInt32Value(value=w.weight))
            for w in ours.route.weighted_clusters.clusters]))
    else:
        names = [ours.route.cluster]
        action.cluster = ours.route.cluster
    known = [clusters[n] for n in names if n in clusters]
    if ours.route.HasField("timeout"):
        _timeout(action, ours.route.timeout)
        notes.append(f"route.timeout {TIMEOUT_NOT_APPLIED}")
    if ours.route.HasField("retry_policy"):
        policy, found = retry_policy(ours.route.retry_policy)
        if policy is not None:
            action.retry_policy.CopyFrom(policy)
        notes += [f"route.retry_policy.{note}" for note in found]
    _cluster_settings(action, known, notes, timeout=not ours.route.HasField("timeout"),
                      retries=not ours.route.HasField("retry_policy"))
    translated = [EnvoyRoute(name=name, match=match, route=action) for match in _matches(ours)]
    if ours.HasField("fault"):
        for route in translated:
            route.typed_per_filter_config[FAULT_FILTER].CopyFrom(typed(_fault(ours.fault)))
        if any(h.invert and h.WhichOneof("match") in ("exact", "prefix")
               for h in ours.fault.headers):
            notes.append("fault.headers: an inverted exact or prefix matcher does not match a "
                         "request without the header in gRPC (ours does)")
    if ours.HasField("rate_limit"):
        notes.append("rate_limit not applied: gRPC has no local rate limit")
    return translated, notes


def _cluster_settings(action: Any, clusters: Sequence[Cluster], notes: list[str], *,
                      timeout: bool, retries: bool) -> None:
    """What a route takes from its clusters: the ``timeout`` and ``retries`` policy it does
    not set itself (when its clusters agree), and a hash policy per ring-hash header."""
    if timeout:
        timeouts = {c.timeout.SerializeToString() for c in clusters if c.HasField("timeout")}
        if len(timeouts) == 1 and all(c.HasField("timeout") for c in clusters):
            _timeout(action, clusters[0].timeout)
        elif timeouts:
            notes.append(f"route.weighted_clusters: the clusters' timeouts differ "
                         f"({_names(clusters)}); none sent")
    if retries:
        policies = {c.retry_policy.SerializeToString(deterministic=True) for c in clusters}
        if len(policies) == 1 and clusters:
            policy, _ = retry_policy(clusters[0].retry_policy)  # the cluster's warnings
            if policy is not None:
                action.retry_policy.CopyFrom(policy)
        elif len(policies) > 1:
            notes.append(f"route.weighted_clusters: the clusters' retry policies differ "
                         f"({_names(clusters)}); none sent")
    headers = sorted({c.ring_hash.hash_header for c in clusters
                      if c.lb_policy == Cluster.RING_HASH and c.ring_hash.hash_header})
    action.hash_policy.extend(
        EnvoyRouteAction.HashPolicy(header=EnvoyRouteAction.HashPolicy.Header(header_name=h))
        for h in headers)


def _names(clusters: Sequence[Cluster]) -> str:
    return ", ".join(c.name for c in clusters)


# Why a timeout goes only in Envoy's ``timeout``, which gRPC does not read. gRFC A31 has gRPC
# take a route's deadline from ``max_stream_duration`` (or ``grpc_timeout_header_max``), but
# grpcio 1.85 fails calls with DEADLINE_EXCEEDED the moment they start, in some client
# processes and not others, when that duration is under about two seconds: with 1.5 s, every
# call of a process failed in 0.1 ms, in about half of the processes tried, with or without a
# deadline of the caller's own (and with 1 s the shop's inventory and payments would be
# unreachable). Sending it would break more than it enforces, so it is not sent, and the
# timeout is named among what gRPC does not apply: a proxyless caller's own deadline applies.
TIMEOUT_NOT_APPLIED = ("not applied by gRPC: sent as Envoy's route timeout only, since "
                       "grpcio 1.85's max_stream_duration (gRFC A31) fails short ones at once; "
                       "the caller's own deadline applies")


def _timeout(action: Any, timeout: Duration) -> None:
    action.timeout.CopyFrom(timeout)


def _matches(ours: Route) -> list[Any]:
    """The Envoy matches of one route: one, or one per way its inverted matchers can hold.

    An inverted exact or prefix matcher matches, for us, a request without the header too;
    gRPC's never matches a header that is absent (nor does Envoy's). So each such matcher is
    either "the header is absent" or the inverted matcher itself, and a route with k of them
    becomes 2^k routes with the same action, in place of the one.
    """
    alternatives: list[tuple[Any, ...]] = []
    for header in ours.match.headers:
        if header.invert and header.WhichOneof("match") in ("exact", "prefix"):
            absent = EnvoyHeaderMatcher(name=header.name, present_match=False)
            alternatives.append((absent, _header(header)))
        else:
            alternatives.append((_header(header),))
    return [_match(ours, headers) for headers in product(*alternatives)]


def _match(ours: Route, headers: Sequence[Any]) -> Any:
    match = EnvoyRouteMatch(headers=headers)
    specifier = ours.match.WhichOneof("path_specifier")
    if specifier == "path":
        match.path = ours.match.path
    elif specifier == "safe_regex":
        match.safe_regex.CopyFrom(RegexMatcher(regex=ours.match.safe_regex))
    else:
        match.prefix = ours.match.prefix
    return match


def _header(ours: HeaderMatcher) -> Any:
    translated = EnvoyHeaderMatcher(name=ours.name, invert_match=ours.invert)
    kind = ours.WhichOneof("match")
    if kind == "exact":
        translated.string_match.CopyFrom(StringMatcher(exact=ours.exact))
    elif kind == "prefix":
        translated.string_match.CopyFrom(StringMatcher(prefix=ours.prefix))
    else:  # "present", or no matcher at all: the header is there (sidecar/router.py)
        translated.present_match = ours.present if kind == "present" else True
    return translated


def _fault(ours: FaultInjection) -> Any:
    fault = HTTPFault(headers=[_header(h) for h in ours.headers])
    if ours.HasField("delay"):
        fault.delay.CopyFrom(FaultDelay(fixed_delay=ours.delay.fixed_delay,
                                        percentage=_percent(ours.delay.percentage)))
    if ours.HasField("abort"):
        abort = FaultAbort(percentage=_percent(ours.abort.percentage))
        if ours.abort.WhichOneof("error_type") == "grpc_status":
            abort.grpc_status = ours.abort.grpc_status
        else:
            abort.http_status = ours.abort.http_status
        fault.abort.CopyFrom(abort)
    return fault


def _percent(percent: float) -> Any:
    return FractionalPercent(numerator=round(percent * _MILLION_PER_PERCENT),
                             denominator=FractionalPercent.MILLION)

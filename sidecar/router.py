"""The router: which cluster a request goes to, decided from its authority, path and headers.

Routes come from the control plane as RouteConfigurations of virtual hosts. A request's
``:authority`` (``Host`` for HTTP/1.1) selects the virtual host — an exact domain
(``orders``, ``orders:50051``) before the wildcard ``*`` — and its routes are tried in order;
the first whose path and header matchers all match wins. Its action names one cluster, or
several with weights (a canary: 90 % v1, 10 % v2), plus an optional timeout and retry policy
that override the cluster's.

Without a matching virtual host, a request whose authority names a known cluster goes there:
apps call ``orders`` or ``orders:50051`` and the mesh works before anyone writes a route. As a
Kubernetes short DNS name, a short authority is first read in the caller's own namespace: a
registered service with no policy cluster is ``<service>.<namespace>`` outside ``default``
(see controlplane/snapshot.py), so ``billing`` from a sidecar of namespace ``team`` is
``billing.team`` when there is one, and only then a cluster named ``billing``.

Routes and clusters arrive as separate updates, so the router is rebuilt whenever either
changes. A route may name a cluster the sidecar does not have (not yet, or not any more: the
control plane removes a cluster before the routes that name it): as in Envoy, whose RDS does
not validate cluster names by default, the route is kept and its requests are answered
503 / UNAVAILABLE "no cluster" until the cluster arrives or the route goes. A static
configuration, which has no later update to wait for, is checked up front
(:meth:`Router.check_clusters`, Envoy's ``validate_clusters`` for static routes).

A route may also carry a fault to inject (:mod:`sidecar.fault`) and a local rate limit
(:mod:`sidecar.rate_limit`): the target hands them to the outbound side. A rate limit's bucket
lives as long as its route: a new configuration that keeps a route's name and limit keeps its
bucket, so that a change elsewhere does not hand out a fresh burst.

Pure: the weighted choice takes the caller's ``random.Random``; buckets read a ``Clock``.
"""

from __future__ import annotations

import random
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass

from mesh.clock import SYSTEM_CLOCK, Clock
from mesh.identity import DEFAULT_NAMESPACE
from mesh.proto.config_pb2 import HeaderMatcher, Route, RouteConfiguration
from sidecar.cluster_settings import retry_settings_from
from sidecar.fault import FaultPolicy, fault_policy_from
from sidecar.rate_limit import RateLimiter, rate_limit_settings_from
from sidecar.retry import RetrySettings


@dataclass(frozen=True, slots=True)
class RouteTarget:
    """Where a request goes and what its route overrides."""

    cluster: str
    route: str  # a name for logs and metrics: "<virtual host>/<index>", or "default"
    timeout: float | None  # seconds; None: the cluster's
    retry_policy: RetrySettings | None  # None: the cluster's
    fault: FaultPolicy | None = None  # faults to inject into the request
    rate_limit: RateLimiter | None = None  # the route's bucket


@dataclass(frozen=True, slots=True)
class _CompiledRoute:
    name: str
    prefix: str | None
    path: str | None
    regex: re.Pattern[str] | None
    headers: tuple[HeaderMatcher, ...]
    clusters: tuple[tuple[str, int], ...]  # (cluster, cumulative weight) for weighted splits
    timeout: float | None
    retry_policy: RetrySettings | None
    fault: FaultPolicy | None
    rate_limit: RateLimiter | None

    def matches(self, path: str, headers: Mapping[str, str]) -> bool:
        if self.path is not None and path.split("?", 1)[0] != self.path:
            return False
        if self.prefix is not None and not path.startswith(self.prefix):
            return False
        if self.regex is not None and self.regex.fullmatch(path.split("?", 1)[0]) is None:
            return False
        return all(header_matches(m, headers) for m in self.headers)

    def pick(self, rng: random.Random) -> str:
        if len(self.clusters) == 1:
            return self.clusters[0][0]
        draw = rng.randrange(self.clusters[-1][1])
        return next(name for name, upto in self.clusters if draw < upto)


def header_matches(matcher: HeaderMatcher, headers: Mapping[str, str]) -> bool:
    """Whether ``headers`` satisfy ``matcher`` (routes and faults mean the same by it)."""
    value = headers.get(matcher.name)
    kind = matcher.WhichOneof("match")
    if kind == "exact":
        hit = value == matcher.exact
    elif kind == "prefix":
        hit = value is not None and value.startswith(matcher.prefix)
    else:  # "present", or no matcher at all: the header is there
        hit = (value is not None) == (matcher.present if kind == "present" else True)
    return hit != matcher.invert


class Router:
    """Compiled routes; :meth:`route` is called once per request."""

    def __init__(self, configurations: list[RouteConfiguration],
                 clusters: Collection[str], *, clock: Clock = SYSTEM_CLOCK,
                 previous: Router | None = None, namespace: str = DEFAULT_NAMESPACE) -> None:
        """Compile ``configurations``; ``clusters`` are the cluster names the sidecar has.

        Args:
            previous: the router this one replaces; its routes' buckets are kept where a route
                keeps its name and limit.
            namespace: the caller's (this sidecar's) namespace, where short names are read.

        Raises:
            ValueError: a route names no cluster, has a bad regex, or weights that do not add
                up to 100 (the sidecar NACKs such an update). A route naming a cluster not in
                ``clusters`` is not an error here (see :meth:`check_clusters`).
        """
        self._clusters = frozenset(clusters)
        self._namespace = namespace
        self._clock = clock
        self.limiters: dict[str, RateLimiter] = {}  # by route name
        self._kept = previous.limiters if previous is not None else {}  # while compiling
        self._unknown: list[tuple[str, str]] = []  # (route, cluster) for check_clusters
        self._hosts: dict[str, list[_CompiledRoute]] = {}
        for configuration in configurations:
            for host in configuration.virtual_hosts:
                routes = [self._compile(f"{host.name}/{i}", r)
                          for i, r in enumerate(host.routes)]
                for domain in host.domains:
                    self._hosts.setdefault(domain.lower(), routes)
        self._kept = {}  # the old router's buckets are not needed any more

    def _compile(self, name: str, route: Route) -> _CompiledRoute:
        match, action = route.match, route.route
        kind = action.WhichOneof("cluster_specifier")
        if kind == "cluster":
            clusters: tuple[tuple[str, int], ...] = ((action.cluster, 1),)
        elif kind == "weighted_clusters":
            total, cumulative = 0, []
            for weighted in action.weighted_clusters.clusters:
                total += weighted.weight
                cumulative.append((weighted.name, total))
            if total != 100:
                raise ValueError(f"route {name}: weights add up to {total}, not 100")
            clusters = tuple(cumulative)
        else:
            raise ValueError(f"route {name}: names no cluster")
        self._unknown.extend((name, cluster) for cluster, _ in clusters
                             if cluster not in self._clusters)
        specifier = match.WhichOneof("path_specifier")
        try:
            regex = re.compile(match.safe_regex) if specifier == "safe_regex" else None
        except re.error as error:
            raise ValueError(f"route {name}: bad regex {match.safe_regex!r}: {error}") from None
        return _CompiledRoute(
            name=name,
            prefix=match.prefix if specifier == "prefix" else None,
            path=match.path if specifier == "path" else None,
            regex=regex,
            headers=tuple(match.headers),
            clusters=clusters,
            timeout=(action.timeout.ToTimedelta().total_seconds()
                     if action.HasField("timeout") else None),
            retry_policy=(retry_settings_from(action.retry_policy)
                          if action.HasField("retry_policy") else None),
            fault=fault_policy_from(route.fault) if route.HasField("fault") else None,
            rate_limit=self._limiter(name, route) if route.HasField("rate_limit") else None,
        )

    def _limiter(self, name: str, route: Route) -> RateLimiter:
        settings = rate_limit_settings_from(route.rate_limit)
        kept = self._kept.get(name)
        limiter = kept if kept is not None and kept.settings == settings else \
            RateLimiter(settings, self._clock, name=f"route {name}")
        self.limiters[name] = limiter
        return limiter

    def check_clusters(self) -> None:
        """Insist that every route names a known cluster (for a static configuration).

        Raises:
            ValueError: the first route that names an unknown cluster, and the cluster.
        """
        if self._unknown:
            name, cluster = self._unknown[0]
            raise ValueError(f"route {name}: unknown cluster {cluster!r}")

    def route(self, authority: str, path: str, headers: Mapping[str, str],
              rng: random.Random) -> RouteTarget | None:
        """The target for a request, or None when nothing matches (the caller answers 404).

        The target's cluster may be one the sidecar does not have (the caller answers 503).
        """
        authority = authority.lower()
        host = authority.rsplit(":", 1)[0] if ":" in authority else authority
        routes = self._hosts.get(authority) or self._hosts.get(host) or self._hosts.get("*")
        if routes is not None:
            for route in routes:
                if route.matches(path, headers):
                    return RouteTarget(route.pick(rng), route.name, route.timeout,
                                       route.retry_policy, route.fault, route.rate_limit)
            return None
        own = f"{host}.{self._namespace}"
        if self._namespace != DEFAULT_NAMESPACE and own in self._clusters:
            return RouteTarget(own, "default", None, None)
        if host in self._clusters:
            return RouteTarget(host, "default", None, None)
        return None

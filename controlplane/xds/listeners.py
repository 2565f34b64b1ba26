"""Listeners (LDS): a proxyless client's entry point, and a proxyless server's inbound side.

**A client's API listener** (gRFC A27, A39). A grpcio channel to ``xds:///NAME`` asks for the
Listener ``NAME`` (``orders``, ``orders:50051``). It holds no address: its ``api_listener`` is
an HttpConnectionManager that names the RouteConfiguration to ask for next (RDS on the same
ADS stream) and the HTTP filters to run: fault injection, then the router, which gRPC requires
last. NAME is read as our sidecar reads an authority (sidecar/router.py), in this order:

1. a virtual host that names NAME among its domains, then one that names NAME without its
   port, then a ``*`` virtual host: that virtual host's RouteConfiguration;
2. a cluster ``<NAME>.<namespace>`` in the caller's own namespace (a registered service's
   default cluster outside ``default``, as a Kubernetes short DNS name), then a cluster
   ``NAME`` (port dropped): the generated RouteConfiguration ``cluster:<that cluster>``;
3. else there is no such listener; gRPC reports the resource does not exist.

So the same name reaches the same cluster from a proxyless client as from a sidecar's app.

**A proxyless server's inbound listener** (gRFC A36, A29, A41). A grpcio server built with
``xds=True`` asks for ``mesh/inbound/<host>:<port>``; its Listener has that address and one
filter chain: TLS that requires a client certificate from the mesh CA (``DownstreamTlsContext``),
and an HttpConnectionManager whose one route serves every call here (non-forwarding) after the
RBAC filters. Its RBAC is our authorization for the *caller's* service — the identity that asked
for the listener is the server's own:

- our rules: any DENY rule that matches refuses the call; then, if there are ALLOW rules, the
  call must match one; with none, every authenticated caller gets in (sidecar/authz.py);
- as Envoy's RBAC: a DENY filter (if there are DENY rules), then an ALLOW filter (if there are
  ALLOW rules); no filter at all for a service without rules. Each of our rules is one Envoy
  ``Policy``, named ``<policy index>/<rule index>`` after its place in the policy's
  ``authorization`` list. A rule's principals are ORed, its paths are ORed, and both must match;
- a principal ``<td>/ns/<ns>/sa/<sa>`` (or written with ``spiffe://``) is
  ``authenticated.principal_name.exact: spiffe://<td>/ns/<ns>/sa/<sa>``, which gRPC matches
  against the client certificate's URI SAN (gRFC A41). ``*`` (or no principals) is
  ``any: true``: the TLS context already refused every caller without a mesh certificate, so
  every caller RBAC sees is authenticated;
- a path is ``url_path`` exact, or a prefix when it ends in ``*``; no paths is ``any: true``.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from envoy.config.core.v3.address_pb2 import Address, SocketAddress
from envoy.config.listener.v3.api_listener_pb2 import ApiListener
from envoy.config.listener.v3.listener_components_pb2 import Filter, FilterChain
from envoy.config.listener.v3.listener_pb2 import Listener
from envoy.config.rbac.v3.rbac_pb2 import RBAC as RbacRules
from envoy.config.rbac.v3.rbac_pb2 import Permission, Policy, Principal
from envoy.extensions.filters.http.fault.v3.fault_pb2 import HTTPFault
from envoy.extensions.filters.http.rbac.v3.rbac_pb2 import RBAC
from envoy.extensions.filters.http.router.v3.router_pb2 import Router
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm,
)
from envoy.type.matcher.v3.path_pb2 import PathMatcher
from envoy.type.matcher.v3.string_pb2 import StringMatcher

from controlplane.xds.messages import ads, downstream_tls, typed
from controlplane.xds.routes import (
    FAULT_FILTER,
    cluster_routes_name,
    inbound_route_configuration,
)
from mesh.identity import DEFAULT_NAMESPACE, SCHEME
from mesh.proto.config_pb2 import AuthorizationPolicy, AuthorizationRule, RouteConfiguration

HTTP_CONNECTION_MANAGER = "envoy.filters.network.http_connection_manager"
ROUTER_FILTER = "envoy.filters.http.router"
RBAC_FILTER = "envoy.filters.http.rbac"
# Our action, its RBAC filter's name suffix and Envoy's action, in the order the filters run.
_ACTIONS = ((AuthorizationPolicy.DENY, "deny", RbacRules.DENY),
            (AuthorizationPolicy.ALLOW, "allow", RbacRules.ALLOW))


@dataclass(frozen=True, slots=True)
class ListenerNames:
    """What a client's target may name: the policy's domains and the clusters."""

    domains: Mapping[str, str]  # lower-case domain → the RouteConfiguration that names it first
    clusters: frozenset[str]

    @classmethod
    def of(cls, routes: Sequence[RouteConfiguration], clusters: Collection[str],
           ) -> ListenerNames:
        domains: dict[str, str] = {}
        for configuration in routes:
            for host in configuration.virtual_hosts:
                for domain in host.domains:
                    domains.setdefault(domain.lower(), configuration.name)
        return cls(domains, frozenset(clusters))

    def route_configuration(self, name: str, namespace: str) -> str | None:
        """The RouteConfiguration a caller of ``namespace`` reaches by ``name``, if any."""
        name = name.lower()
        host = name.rsplit(":", 1)[0]
        found = self.domains.get(name) or self.domains.get(host) or self.domains.get("*")
        if found is not None:
            return found
        own = f"{host}.{namespace}"
        if namespace != DEFAULT_NAMESPACE and own in self.clusters:
            return cluster_routes_name(own)
        return cluster_routes_name(host) if host in self.clusters else None

    def nameable(self, namespace: str) -> list[str]:
        """Every name a caller of ``namespace`` can reach (for a wildcard request): the
        domains, the clusters, and the short names of its own namespace's clusters."""
        suffix = f".{namespace}"
        short = {c.removesuffix(suffix) for c in self.clusters
                 if namespace != DEFAULT_NAMESPACE and c.endswith(suffix)}
        names = {d for d in self.domains if "*" not in d} | self.clusters | short
        return sorted(names)


def api_listener(name: str, route_configuration: str) -> Any:
    """A client's Listener ``name``, whose routes are the RouteConfiguration named."""
    manager = hcm.HttpConnectionManager(
        rds=hcm.Rds(config_source=ads(), route_config_name=route_configuration),
        http_filters=[hcm.HttpFilter(name=FAULT_FILTER, typed_config=typed(HTTPFault())),
                      hcm.HttpFilter(name=ROUTER_FILTER, typed_config=typed(Router()))])
    return Listener(name=name, api_listener=ApiListener(api_listener=typed(manager)))


def inbound_listener(name: str, host: str, port: int,
                     policies: Sequence[tuple[int, AuthorizationPolicy]]) -> Any:
    """A proxyless server's Listener ``name`` at ``host``:``port``.

    Args:
        policies: the authorization policies of the server's service, each with its index in
            the policy's ``authorization`` list.
    """
    http_filters = [_rbac(action, policies) for action in _ACTIONS]
    manager = hcm.HttpConnectionManager(
        route_config=inbound_route_configuration(name),
        http_filters=[f for f in http_filters if f is not None]
        + [hcm.HttpFilter(name=ROUTER_FILTER, typed_config=typed(Router()))])
    chain = FilterChain(
        filters=[Filter(name=HTTP_CONNECTION_MANAGER, typed_config=typed(manager))],
        transport_socket=downstream_tls())
    return Listener(name=name,
                    address=Address(socket_address=SocketAddress(address=host,
                                                                 port_value=port)),
                    filter_chains=[chain])


def _rbac(action: tuple[Any, str, Any],
          policies: Sequence[tuple[int, AuthorizationPolicy]]) -> Any | None:
    """The RBAC filter of one action's rules, or None when there are none (Envoy's ALLOW
    with no policy would refuse every call; ours lets them in)."""
    ours, suffix, envoy_action = action
    rules = {f"{p}/{r}": _policy(rule) for p, policy in policies if policy.action == ours
             for r, rule in enumerate(policy.rules)}
    if not rules:
        return None
    config = RBAC(rules=RbacRules(action=envoy_action, policies=rules))
    return hcm.HttpFilter(name=f"{RBAC_FILTER}.{suffix}", typed_config=typed(config))


def _policy(rule: AuthorizationRule) -> Any:
    principals = ([Principal(any=True)] if not rule.principals or "*" in rule.principals
                  else [_principal(p) for p in rule.principals])
    permissions = ([Permission(any=True)] if not rule.paths
                   else [_permission(p) for p in rule.paths])
    return Policy(permissions=permissions, principals=principals)


def _principal(principal: str) -> Any:
    uri = principal if principal.startswith(SCHEME) else SCHEME + principal
    return Principal(authenticated=Principal.Authenticated(
        principal_name=StringMatcher(exact=uri)))


def _permission(path: str) -> Any:
    matcher = (StringMatcher(prefix=path.removesuffix("*")) if path.endswith("*")
               else StringMatcher(exact=path))
    return Permission(url_path=PathMatcher(path=matcher))

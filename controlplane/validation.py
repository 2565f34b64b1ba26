"""Policy validation: the rules a mesh policy must keep that its protobuf schema cannot say.

The schema says a ``retry_ratio`` is a number; only a rule says it is a fraction of requests
(0–1). These checks run on the control plane, before a policy is accepted, so a mistake is
one clear rejection naming the file, the field and the reason — not a NACK from every sidecar,
or worse, a policy every sidecar accepts and that routes nowhere. The rules:

    clusters        a name (letters, digits, '.', '-', '_'), unique across all files
    durations       every duration that is set is positive (a zero timeout fails every call)
    retry policy    retry_on conditions the sidecar knows; status codes within 100..599;
                    per_try_timeout no longer than the timeout over it (else a slow try is cut
                    by the overall timeout and never retried); backoff max ≥ base
    hedging         hedging_delay or hedge_on_per_try_timeout (with a per_try_timeout), not
                    both; a hedging_delay shorter than the per_try_timeout and the timeout
                    over it (else no hedge could ever start)
    balancers       least_request: choice_count ≥ 2, active_request_bias a number ≥ 0; a
                    slow_start_config has a slow_start_window, aggression > 0 and
                    min_weight_percent within (0, 100]; ring_hash: points_per_weight within
                    1..MAX_RING_SIZE (mesh/proto/bounds.py)
    retry budget    retry_ratio within 0..1; ttl within 1s..60s; each field for its kind only
    outliers        consecutive_5xx and consecutive_gateway_failure ≥ 1 (an enforcing_* of 0
                    turns a rule off); every percentage ≤ 100 (max_ejection_percent,
                    failure_percentage_threshold, enforcing_*); max_ejection_time ≥
                    base_ejection_time
    pool            max_streams_per_connection ≥ 1
    faults          a delay (with its fixed_delay) or an abort (an HTTP status 200..599 or a
                    gRPC status 1..16), percentages within 0..100
    rate limits     max_tokens and tokens_per_fill at least 1, a fill_interval (a route's
                    rate_limit, a cluster's inbound_rate_limit)
    routes          a unique name; each virtual host has domains, none served twice (the
                    first would win silently); each route a path specifier (prefix, path or
                    safe_regex) that starts with '/' or compiles, lower-case header names, and a
                    cluster — or weighted clusters adding up to 100 — that the policy declares
    namespaces      of clusters, authorization policies and registration grants: a SPIFFE
                    path segment (letters, digits, '.', '-', '_'); unset means ``default``
    principals      ``<trust-domain>/ns/<namespace>/sa/<service>`` or ``*`` in authorization
                    rules; paths exact or a prefix ending in '*'
    registration    a grant opens one service of one namespace to identities named in full:
                    ``spiffe://<td>/ns/<ns>/sa/<service>`` or ``spiffe://<td>/ns/<ns>/sa/*``,
                    never ``*`` or a bare account name (the same name in another namespace is
                    another workload)

Authorization for a service that the policy declares no cluster for is accepted: a service
exists as soon as its instances register (the snapshot gives it a default cluster), and the
policy protecting it may well be written first. A route, though, must name a declared cluster,
so that a typo fails here rather than as a 404 at run time.

Rules check ranges, never defaults: a field left unset is the sidecar's to fill in (its defaults
live beside its algorithms, which the control plane does not import), and a field set to 0 is
checked as 0 (``max_ejection_percent: 0`` is valid, ``consecutive_5xx: 0`` is not).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import Message

from mesh.identity import SCHEME
from mesh.identity import parse as parse_spiffe_id
from mesh.proto.bounds import MAX_RETRY_BUDGET_TTL, MAX_RING_SIZE, MIN_RETRY_BUDGET_TTL
from mesh.proto.config_pb2 import (
    Cluster,
    FaultInjection,
    HeaderMatcher,
    LocalRateLimit,
    MeshPolicy,
    OutlierDetection,
    RetryBudget,
    RetryPolicy,
    RouteAction,
    RouteMatch,
    SlowStartConfig,
)

# The sidecar's RetryOn names (sidecar/retry.py); kept here because the control plane never
# imports the sidecar. tests/unit/controlplane/test_policy.py keeps the two lists equal.
RETRY_ON = ("connect-failure", "refused-stream", "reset", "5xx", "gateway-error",
            "retriable-status-codes", "cancelled", "deadline-exceeded", "internal",
            "resource-exhausted", "unavailable")

TOP_LEVEL = ("clusters", "routes", "authorization", "registration")
PRINCIPAL_SHAPE = "'<trust-domain>/ns/<namespace>/sa/<service>' or '*'"
GRANTED_SHAPE = ("'spiffe://<td>/ns/<namespace>/sa/<service>' or "
                 "'spiffe://<td>/ns/<namespace>/sa/*'")
_NAME = re.compile(r"[A-Za-z0-9._-]+")  # a service name is also a SPIFFE path segment


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a policy: where (file and field path) and why."""

    file: str
    field: str  # "clusters[1].retry_budget.retry_ratio"; "" for the file as a whole
    reason: str

    def __str__(self) -> str:
        return f"{self.file}: {self.field}: {self.reason}" if self.field else \
            f"{self.file}: {self.reason}"


class Origins:
    """Where each top-level entry of a merged policy came from, so a problem names its file."""

    def __init__(self) -> None:
        self._entries: dict[str, list[tuple[str, int]]] = {name: [] for name in TOP_LEVEL}

    def add(self, file: str, policy: MeshPolicy) -> None:
        """Record ``policy``'s entries, in the order they are merged."""
        for name, entries in self._entries.items():
            entries += [(file, index) for index in range(len(getattr(policy, name)))]

    def locate(self, name: str, index: int) -> tuple[str, str]:
        """(file, ``name[i]`` in that file) for entry ``index`` of the merged ``name``."""
        file, local = self._entries[name][index]
        return file, f"{name}[{local}]"


Report = Callable[[str, str], None]  # (field path below the entry, reason)


def check(policy: MeshPolicy, origins: Origins) -> list[Problem]:
    """Every rule ``policy`` breaks (empty: the policy may be accepted)."""
    problems: list[Problem] = []

    def entry(name: str, index: int) -> tuple[Report, str]:
        file, at = origins.locate(name, index)

        def report(field: str, reason: str) -> None:
            problems.append(Problem(file, f"{at}.{field}" if field else at, reason))

        for field, duration in _durations(getattr(policy, name)[index]):
            if duration.ToTimedelta().total_seconds() <= 0:
                report(field, f"must be positive, not {duration.ToJsonString()}")
        return report, f"{file} {at}"

    clusters: dict[str, str] = {}  # name → where first declared
    declared: dict[str, Cluster] = {}
    for i, cluster in enumerate(policy.clusters):
        report, where = entry("clusters", i)
        if not cluster.name:
            report("name", "a cluster needs a name (the service it stands for)")
        elif not _NAME.fullmatch(cluster.name):
            report("name", f"{cluster.name!r} may hold only letters, digits, '.', '-' and '_'")
        elif cluster.name in clusters:
            report("name", f"duplicate cluster name {cluster.name!r} (first declared in "
                           f"{clusters[cluster.name]})")
        else:
            clusters[cluster.name] = where
            declared[cluster.name] = cluster
        _namespace(cluster.namespace, report)
        if cluster.HasField("inbound_rate_limit"):
            _rate_limit(cluster.inbound_rate_limit, "inbound_rate_limit", report)
        timeout = cluster.timeout if cluster.HasField("timeout") else None
        if cluster.HasField("retry_policy"):
            _retry_policy(cluster.retry_policy, "retry_policy", timeout, "timeout", report)
        _balancers(cluster, report)
        _retry_budget(cluster.retry_budget, report)
        _outlier_detection(cluster.outlier_detection, report)
        pool = cluster.pool
        if pool.HasField("max_streams_per_connection") and pool.max_streams_per_connection < 1:
            report("pool.max_streams_per_connection",
                   "0 opens no stream at all: at least 1 per connection")

    names: dict[str, str] = {}
    domains: dict[str, str] = {}  # domain → the virtual host that serves it first
    for i, configuration in enumerate(policy.routes):
        report, where = entry("routes", i)
        if not configuration.name:
            report("name", "a route configuration needs a name")
        elif configuration.name in names:
            report("name", f"duplicate route configuration name {configuration.name!r} "
                           f"(first in {names[configuration.name]})")
        else:
            names[configuration.name] = where
        for j, host in enumerate(configuration.virtual_hosts):
            at = f"virtual_hosts[{j}]"
            if not host.domains:
                report(f"{at}.domains", "a virtual host needs at least one domain ('*': any)")
            for k, domain in enumerate(host.domains):
                if domain.lower() in domains:
                    report(f"{at}.domains[{k}]",
                           f"{domain!r} is already served by {domains[domain.lower()]}: the "
                           f"first wins, so this one would never be used")
                else:
                    domains[domain.lower()] = f"{where}.{at}"
            for k, route in enumerate(host.routes):
                _match(route.match, f"{at}.routes[{k}].match", report)
                _action(route.route, f"{at}.routes[{k}].route", declared, report)
                if route.HasField("fault"):
                    _fault(route.fault, f"{at}.routes[{k}].fault", report)
                if route.HasField("rate_limit"):
                    _rate_limit(route.rate_limit, f"{at}.routes[{k}].rate_limit", report)

    for i, authorization in enumerate(policy.authorization):
        report, _ = entry("authorization", i)
        if not authorization.service:
            report("service", "an authorization policy needs the service it protects")
        _namespace(authorization.namespace, report)
        for r, rule in enumerate(authorization.rules):
            _principals(list(rule.principals), f"rules[{r}].principals", report)
            for p, path in enumerate(rule.paths):
                if not (path == "*" or path.startswith("/")):
                    report(f"rules[{r}].paths[{p}]", f"{path!r} must start with '/' (or be '*')")
                elif "*" in path[:-1]:
                    report(f"rules[{r}].paths[{p}]",
                           f"{path!r}: '*' may only end a path (a prefix)")

    for i, grant in enumerate(policy.registration):
        report, _ = entry("registration", i)
        if not grant.service:
            report("service", "a registration grant needs the service it opens")
        _namespace(grant.namespace, report)
        if not grant.identities:
            report("identities", "a registration grant needs at least one identity")
        for n, granted in enumerate(grant.identities):
            pattern = granted[:-1] + "x" if granted.endswith("/sa/*") else granted
            try:
                parse_spiffe_id(pattern)
            except ValueError:
                report(f"identities[{n}]", f"{granted!r} is not a SPIFFE ID (want "
                                           f"{GRANTED_SHAPE}: an account name alone would "
                                           f"match that name in every namespace)")
    return problems


def _balancers(cluster: Cluster, report: Report) -> None:
    """The balancers' ranges, whichever lb_policy is chosen (a mistake is one anyway)."""
    least = cluster.least_request
    if least.HasField("choice_count") and least.choice_count < 2:
        report("least_request.choice_count",
               f"{least.choice_count} is below 2 (a pick compares two endpoints or more)")
    if least.HasField("active_request_bias") and \
            not 0 <= least.active_request_bias < math.inf:
        report("least_request.active_request_bias",
               f"{least.active_request_bias} is not a number of 0 or more (0 ignores the load; "
               f"1 divides the weight by it)")
    for at, section in (("round_robin", cluster.round_robin),
                        ("least_request", cluster.least_request)):
        if section.HasField("slow_start_config"):
            _slow_start(section.slow_start_config, f"{at}.slow_start_config", report)
    ring = cluster.ring_hash
    if ring.HasField("points_per_weight") and \
            not 1 <= ring.points_per_weight <= MAX_RING_SIZE:
        report("ring_hash.points_per_weight",
               f"{ring.points_per_weight} is outside 1..{MAX_RING_SIZE}")


def _slow_start(config: SlowStartConfig, at: str, report: Report) -> None:
    if not config.HasField("slow_start_window"):
        report(f"{at}.slow_start_window",
               "a slow start needs its window (how long a new endpoint's weight ramps up)")
    if config.HasField("aggression") and not 0 < config.aggression < math.inf:
        report(f"{at}.aggression",
               f"{config.aggression} is not positive (1 ramps linearly, more ramps faster early)")
    if config.HasField("min_weight_percent") and not 0 < config.min_weight_percent <= 100:
        report(f"{at}.min_weight_percent",
               f"{config.min_weight_percent} is outside 0..100 (above 0: a weight of 0 never "
               f"gets a turn)")


def _retry_budget(budget: RetryBudget, report: Report) -> None:
    if not 0 <= budget.retry_ratio <= 1:
        report("retry_budget.retry_ratio",
               f"{budget.retry_ratio} is outside 0..1 (a fraction of requests)")
    if budget.HasField("ttl") and not MIN_RETRY_BUDGET_TTL <= \
            budget.ttl.ToTimedelta().total_seconds() <= MAX_RETRY_BUDGET_TTL:
        report("retry_budget.ttl", f"{budget.ttl.ToJsonString()} is outside "
                                   f"{MIN_RETRY_BUDGET_TTL:g}s..{MAX_RETRY_BUDGET_TTL:g}s")
    if budget.kind == RetryBudget.CONCURRENCY:
        for name in ("ttl", "min_retries_per_second"):
            if budget.HasField(name):
                report(f"retry_budget.{name}", "applies to kind RATE only (a CONCURRENCY "
                                               "budget counts retries in progress, not per second)")
    elif budget.HasField("min_retry_concurrency"):
        report("retry_budget.min_retry_concurrency", "applies to kind CONCURRENCY only")


_PERCENTAGES = ("max_ejection_percent", "failure_percentage_threshold",
                "enforcing_consecutive_5xx", "enforcing_consecutive_gateway_failure",
                "enforcing_success_rate", "enforcing_failure_percentage")


def _outlier_detection(outlier: OutlierDetection, report: Report) -> None:
    for rule in ("consecutive_5xx", "consecutive_gateway_failure"):
        if outlier.HasField(rule) and getattr(outlier, rule) == 0:
            report(f"outlier_detection.{rule}",
                   f"0 failures in a row never happen: to turn the rule off, set "
                   f"enforcing_{rule}: 0")
    for name in _PERCENTAGES:
        value = getattr(outlier, name)
        if value > 100:
            report(f"outlier_detection.{name}", f"{value} is over 100 (a percentage)")
    if _longer(outlier, "base_ejection_time", "max_ejection_time"):
        report("outlier_detection.max_ejection_time",
               "must be at least base_ejection_time "
               f"({outlier.base_ejection_time.ToJsonString()})")


def _namespace(namespace: str, report: Report) -> None:
    if namespace and not _NAME.fullmatch(namespace):
        report("namespace", f"{namespace!r} may hold only letters, digits, '.', '-' and '_'")


def _retry_policy(policy: RetryPolicy, at: str, timeout: Duration | None, timeout_name: str,
                  report: Report) -> None:
    for n, condition in enumerate(policy.retry_on):
        if condition not in RETRY_ON:
            report(f"{at}.retry_on[{n}]",
                   f"unknown condition {condition!r} (want one of {', '.join(RETRY_ON)})")
    for n, code in enumerate(policy.retriable_status_codes):
        if not 100 <= code <= 599:
            report(f"{at}.retriable_status_codes[{n}]", f"{code} is not within 100..599")
    if timeout is not None and policy.HasField("per_try_timeout") and \
            policy.per_try_timeout.ToTimedelta() > timeout.ToTimedelta():
        report(f"{at}.per_try_timeout",
               f"{policy.per_try_timeout.ToJsonString()} is longer than {timeout_name} "
               f"{timeout.ToJsonString()}: the overall timeout would cut every try first, so a "
               f"slow try is never retried")
    backoff = policy.backoff
    if _longer(backoff, "base_interval", "max_interval"):
        report(f"{at}.backoff.max_interval",
               f"must be at least base_interval ({backoff.base_interval.ToJsonString()})")
    _hedging(policy, at, timeout, timeout_name, report)


def _hedging(policy: RetryPolicy, at: str, timeout: Duration | None, timeout_name: str,
             report: Report) -> None:
    if policy.hedge_on_per_try_timeout:
        if not policy.HasField("per_try_timeout"):
            report(f"{at}.hedge_on_per_try_timeout",
                   "needs per_try_timeout: the delay after which a try gets a hedge")
        if policy.HasField("hedging_delay"):
            report(f"{at}.hedging_delay",
                   "set hedging_delay (gRPC) or hedge_on_per_try_timeout (Envoy), not both")
    if not policy.HasField("hedging_delay"):
        return
    delay = policy.hedging_delay
    for limit, name in ((policy.per_try_timeout if policy.HasField("per_try_timeout")
                         else None, "per_try_timeout"), (timeout, timeout_name)):
        if limit is not None and delay.ToTimedelta() >= limit.ToTimedelta():
            report(f"{at}.hedging_delay",
                   f"{delay.ToJsonString()} is not shorter than {name} "
                   f"{limit.ToJsonString()}: a try ends before any hedge could join it")


def _match(match: RouteMatch, at: str, report: Report) -> None:
    kind = match.WhichOneof("path_specifier")
    if kind is None:
        report(at, "a route needs a path specifier: prefix, path or safe_regex "
                   "(prefix '/' matches every path)")
    elif kind == "safe_regex":
        try:
            re.compile(match.safe_regex)
        except re.error as error:
            report(f"{at}.safe_regex", f"invalid regex {match.safe_regex!r}: {error}")
    else:
        value = getattr(match, kind)
        if (value or kind == "path") and not value.startswith("/"):
            report(f"{at}.{kind}", f"{value!r} must start with '/'")
    _headers(list(match.headers), f"{at}.headers", report)


def _headers(headers: list[HeaderMatcher], at: str, report: Report) -> None:
    for n, header in enumerate(headers):
        if not header.name:
            report(f"{at}[{n}].name", "a header matcher needs a header name")
        elif header.name != header.name.lower():
            report(f"{at}[{n}].name",
                   f"{header.name!r}: header names are matched in lower case, write "
                   f"{header.name.lower()!r}")


def _fault(fault: FaultInjection, at: str, report: Report) -> None:
    if not (fault.HasField("delay") or fault.HasField("abort")):
        report(at, "a fault needs a delay, an abort or both")
    for name in ("delay", "abort"):
        if fault.HasField(name) and not 0 <= getattr(fault, name).percentage <= 100:
            report(f"{at}.{name}.percentage",
                   f"{getattr(fault, name).percentage} is outside 0..100 (a percentage of "
                   f"requests)")
    if fault.HasField("delay") and not fault.delay.HasField("fixed_delay"):
        report(f"{at}.delay.fixed_delay", "a delay needs its fixed_delay")
    if fault.HasField("abort"):
        kind = fault.abort.WhichOneof("error_type")
        if kind is None:
            report(f"{at}.abort", "an abort needs an http_status or a grpc_status")
        elif kind == "http_status" and not 200 <= fault.abort.http_status <= 599:
            report(f"{at}.abort.http_status", f"{fault.abort.http_status} is not an HTTP "
                                              f"status (200..599)")
        elif kind == "grpc_status" and not 1 <= fault.abort.grpc_status <= 16:
            report(f"{at}.abort.grpc_status", f"{fault.abort.grpc_status} is not a gRPC error "
                                              f"status (1..16)")
    _headers(list(fault.headers), f"{at}.headers", report)


def _rate_limit(limit: LocalRateLimit, at: str, report: Report) -> None:
    if limit.max_tokens < 1:
        report(f"{at}.max_tokens", "a bucket needs at least one token (max_tokens >= 1)")
    if limit.HasField("tokens_per_fill") and limit.tokens_per_fill < 1:
        report(f"{at}.tokens_per_fill", "0 would never refill the bucket")
    if not limit.HasField("fill_interval"):
        report(f"{at}.fill_interval", "a bucket needs its fill_interval")


def _action(action: RouteAction, at: str, declared: dict[str, Cluster], report: Report) -> None:
    def unknown(name: str) -> str:
        known = ", ".join(sorted(declared)) or "none"
        return f"unknown cluster {name!r} (the policy declares: {known})"

    kind = action.WhichOneof("cluster_specifier")
    if kind is None:
        report(at, "a route needs a cluster or weighted_clusters")
    elif kind == "cluster":
        if action.cluster not in declared:
            report(f"{at}.cluster", unknown(action.cluster))
    else:
        weighted = action.weighted_clusters.clusters
        for n, split in enumerate(weighted):
            if split.name not in declared:
                report(f"{at}.weighted_clusters.clusters[{n}].name", unknown(split.name))
        total = sum(split.weight for split in weighted)
        if total != 100:
            report(f"{at}.weighted_clusters", f"weights add up to {total}, not 100")
    if action.HasField("retry_policy"):
        timeout, name = None, "the route's timeout"
        if action.HasField("timeout"):
            timeout = action.timeout
        elif kind == "cluster" and action.cluster in declared:
            cluster = declared[action.cluster]
            if cluster.HasField("timeout"):
                timeout, name = cluster.timeout, f"cluster {action.cluster!r}'s timeout"
        _retry_policy(action.retry_policy, f"{at}.retry_policy", timeout, name, report)


def _principals(principals: list[str], at: str, report: Report) -> None:
    for n, principal in enumerate(principals):
        if principal == "*":
            continue
        if principal.startswith(SCHEME):
            report(f"{at}[{n}]", f"{principal!r}: write principals without {SCHEME!r}, as "
                                 f"{principal[len(SCHEME):]!r}")
            continue
        try:
            parse_spiffe_id(SCHEME + principal)
        except ValueError:
            report(f"{at}[{n}]", f"malformed principal {principal!r} (want {PRINCIPAL_SHAPE})")


def _longer(message: Message, first: str, second: str) -> bool:
    """Both duration fields are set and the first is longer than the second."""
    if not (message.HasField(first) and message.HasField(second)):
        return False
    a: Duration = getattr(message, first)
    b: Duration = getattr(message, second)
    return a.ToTimedelta() > b.ToTimedelta()


def _durations(message: Message, path: str = "") -> Iterator[tuple[str, Duration]]:
    """Every Duration set anywhere in ``message``, with its field path."""
    for field, value in message.ListFields():
        at = f"{path}.{field.name}" if path else field.name
        if isinstance(value, Duration):
            yield at, value
        elif isinstance(value, Message):
            yield from _durations(value, at)
        elif field.message_type is not None and field.is_repeated:
            for index, element in enumerate(value):
                yield from _durations(element, f"{at}[{index}]")

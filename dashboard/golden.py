"""Golden metrics from two scrapes of a sidecar's ``/metrics``: rate, success, percentiles.

A sidecar counts, per outbound cluster, its requests by status class
(``mesh_sidecar_requests_total{direction,cluster,code}``) and their durations in a cumulative
histogram (``mesh_sidecar_request_duration_seconds_bucket{direction,cluster,le}``). Counters only
grow, so what happened in a window is the difference of two scrapes, as Prometheus' ``rate()``
and ``increase()`` take it; a counter that went down was reset (the sidecar restarted) and the
later value is the whole increase. Then, over the window:

- **RPS**: the increase of the request count over the seconds between the scrapes;
- **success rate**: the share of requests that were not a 5xx or a reset (abandoned before an
  answer), Kiali's and Linkerd's notion of a failed HTTP call;
- **p50 / p95 / p99**: ``histogram_quantile``: find the bucket the rank falls in and
  interpolate linearly between its bounds (the first bucket starts at 0; a rank in the
  ``+Inf`` bucket answers the highest finite bound, as Prometheus does).

Increases of several sidecars of one service add up (:func:`merge`) before the ratios are taken.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

REQUESTS = "mesh_sidecar_requests"
DURATION = "mesh_sidecar_request_duration_seconds"
CONNECTIONS = "mesh_sidecar_connections_open"  # gauge {direction, cluster, tls}
ATTEMPTS = "mesh_sidecar_upstream_attempts"  # counter {cluster, code}: every try answered
FAILED = frozenset({"5xx", "reset"})  # status classes that count against the success rate
QUANTILES = (0.5, 0.95, 0.99)


@dataclass(frozen=True, slots=True, kw_only=True)
class ClusterCounts:
    """One outbound cluster's cumulative counts at one scrape (or their increase over a window).

    ``codes`` maps a status class (``2xx`` .. ``5xx``, ``reset``) to a count; ``buckets`` maps a
    histogram bucket's upper bound (``math.inf`` last) to the cumulative count at or below it.
    """

    codes: Mapping[str, float] = field(default_factory=dict)
    buckets: Mapping[float, float] = field(default_factory=dict)

    @property
    def total(self) -> float:
        return sum(self.codes.values())


@dataclass(frozen=True, slots=True, kw_only=True)
class Scrape:
    """What one scrape of one sidecar said, and when (seconds on a monotonic clock): its
    outbound clusters' counts (``clusters``: requests, as its app saw them), their attempts'
    status classes (``attempts``: first tries, retries and hedges, as the callees answered
    them), its inbound counts (``inbound``: what its own service answered), and its open
    connections per (direction, cluster, tls)."""

    at: float
    clusters: Mapping[str, ClusterCounts]
    attempts: Mapping[str, ClusterCounts] = field(default_factory=dict)
    inbound: Mapping[str, ClusterCounts] = field(default_factory=dict)
    connections: Mapping[tuple[str, str, str], float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class Golden:
    """An edge's golden metrics over a window; ``None`` where no request was seen."""

    requests: float  # requests in the window
    failed: float  # of them, failed: any is Kiali's "degraded", however small a share
    rps: float
    success: float | None  # 0..1
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None


def parse(text: str, at: float) -> Scrape:
    """The request counts, duration buckets and open connections in a Prometheus text
    exposition of a sidecar's ``/metrics``.

    Raises:
        ValueError: the text is not Prometheus' text format.
    """
    # direction → cluster → status class → count, and direction → cluster → bound → count;
    # attempts are counted as a direction of their own
    codes: dict[str, dict[str, dict[str, float]]] = {"outbound": {}, "inbound": {},
                                                     "attempts": {}}
    buckets: dict[str, dict[str, dict[float, float]]] = {"outbound": {}, "inbound": {},
                                                         "attempts": {}}
    connections: dict[tuple[str, str, str], float] = {}
    for family in text_string_to_metric_families(text):
        if family.name not in (REQUESTS, DURATION, CONNECTIONS, ATTEMPTS):
            continue
        for sample in family.samples:
            labels = sample.labels
            direction = labels.get("direction", "")
            if sample.name == f"{ATTEMPTS}_total":
                codes["attempts"].setdefault(labels["cluster"], {})[labels["code"]] = \
                    sample.value
                continue
            if sample.name == CONNECTIONS:
                connections[direction, labels.get("cluster", ""), labels.get("tls", "")] = \
                    sample.value
                continue
            if direction not in codes:
                continue
            cluster = labels["cluster"]
            if sample.name == f"{REQUESTS}_total":
                codes[direction].setdefault(cluster, {})[labels["code"]] = sample.value
            elif sample.name == f"{DURATION}_bucket":
                buckets[direction].setdefault(cluster, {})[float(labels["le"])] = sample.value

    def counts(direction: str) -> dict[str, ClusterCounts]:
        seen_codes, seen_buckets = codes[direction], buckets[direction]
        return {name: ClusterCounts(codes=seen_codes.get(name, {}),
                                    buckets=seen_buckets.get(name, {}))
                for name in seen_codes.keys() | seen_buckets.keys()}

    return Scrape(at=at, clusters=counts("outbound"), attempts=counts("attempts"),
                  inbound=counts("inbound"), connections=connections)


def _increase(before: float | None, after: float) -> float:
    if before is None or after < before:  # new, or the counter was reset
        return after
    return after - before


def increase(before: Scrape, after: Scrape,
             of: Callable[[Scrape], Mapping[str, ClusterCounts]] = lambda s: s.clusters
             ) -> dict[str, ClusterCounts]:
    """Per cluster, what was counted between two scrapes of one sidecar: of its outbound
    requests, or of what ``of`` picks (``lambda s: s.inbound``, ``lambda s: s.attempts``)."""
    then_all, now_all = of(before), of(after)
    out = {}
    for name, now in now_all.items():
        then = then_all.get(name, ClusterCounts())
        out[name] = ClusterCounts(
            codes={c: _increase(then.codes.get(c), v) for c, v in now.codes.items()},
            buckets={le: _increase(then.buckets.get(le), v) for le, v in now.buckets.items()})
    return out


def merge(parts: Iterable[ClusterCounts]) -> ClusterCounts:
    """The sum of several increases (of one cluster, seen by several sidecars)."""
    codes: dict[str, float] = {}
    buckets: dict[float, float] = {}
    for part in parts:
        for code, value in part.codes.items():
            codes[code] = codes.get(code, 0.0) + value
        for le, value in part.buckets.items():
            buckets[le] = buckets.get(le, 0.0) + value
    return ClusterCounts(codes=codes, buckets=buckets)


def quantile(q: float, buckets: Mapping[float, float]) -> float | None:
    """Prometheus' ``histogram_quantile(q, ...)`` over cumulative ``buckets``, in seconds.

    Args:
        q: the quantile, 0..1.
        buckets: upper bound → cumulative count, the last bound ``math.inf``.
    """
    if not 0 <= q <= 1:
        raise ValueError(f"quantile {q}: want a number from 0 to 1")
    bounds = sorted(buckets)
    if not bounds or not math.isinf(bounds[-1]) or buckets[bounds[-1]] <= 0:
        return None
    rank = q * buckets[bounds[-1]]
    lower, below = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                return lower  # the highest finite bound: nothing better is known
            if count == below:
                return bound
            return lower + (bound - lower) * (rank - below) / (count - below)
        lower, below = bound, count
    return lower


def attempts_shown(attempts: ClusterCounts) -> dict[str, float | None]:
    """``attempt_success``, the share of attempts that did not fail (``None`` without any) —
    below the requests' success when retries hid failures from the caller — and
    ``attempts_failed``, how many failed."""
    total = attempts.total
    failed = sum(v for c, v in attempts.codes.items() if c in FAILED)
    return {"attempt_success": None if total == 0 else round((total - failed) / total, 3),
            "attempts_failed": round(failed, 3)}


def connections_shown(open_by_tls: Mapping[str, float]) -> dict[str, float | None]:
    """``connections`` open, and ``mtls``: the share of them on mutual TLS (``None`` with none
    open), from the open connections by ``tls`` label (``mtls``, ``plaintext``)."""
    total = sum(open_by_tls.values())
    return {"connections": round(total),
            "mtls": round(open_by_tls.get("mtls", 0.0) / total, 3) if total else None}


def golden(counts: ClusterCounts, seconds: float) -> Golden:
    """The golden metrics of ``counts``, an increase over a window of ``seconds``."""
    total = counts.total
    failed = sum(v for c, v in counts.codes.items() if c in FAILED)
    ms = [None if total == 0 or (s := quantile(q, counts.buckets)) is None else s * 1000
          for q in QUANTILES]
    return Golden(requests=total, failed=failed, rps=total / seconds if seconds > 0 else 0.0,
                  success=None if total == 0 else (total - failed) / total,
                  p50_ms=ms[0], p95_ms=ms[1], p99_ms=ms[2])

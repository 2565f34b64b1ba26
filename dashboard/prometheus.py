"""Golden metrics asked of a Prometheus server by PromQL, instead of scraping every sidecar.

Scraping every sidecar's ``/metrics`` each round (:mod:`dashboard.sidecar_source`) costs two
requests per sidecar per second and grows with the fleet. When a Prometheus server already
scrapes the sidecars, the dashboard asks it instead, as Linkerd viz does: a handful of instant
queries per refresh (six for the edges, five for the services, all at once), whatever the
number of sidecars, and answers that grow with the services and edges, not with the sidecars.

Every query joins a sidecar's series to its service through ``mesh_sidecar_info{service,
namespace} 1``, one per sidecar, on the scrape target's ``job`` and ``instance``; a sidecar
that does not expose it is not counted. Over a window ``W``:

- **requests**: ``sum by (service, cluster, code) (rate(mesh_sidecar_requests_total{direction=
  "outbound"}[W]) * on(job, instance) group_left(service) mesh_sidecar_info)``; the RPS is the
  sum over the status classes, the success rate the share not ``5xx`` or ``reset``
  (:data:`dashboard.golden.FAILED`) and the requests in the window RPS × ``W``, which is what
  ``increase()`` answers;
- **attempts**: the same of ``mesh_sidecar_upstream_attempts_total`` (every try, retry and
  hedge its endpoint answered), for the share of attempts that failed even where retries hid
  it from the caller; and ``mesh_sidecar_connections_open{direction="outbound"}`` by ``tls``;
- **p50 / p95 / p99**: one ``histogram_quantile(q, sum by (service, cluster, le) (rate(
  mesh_sidecar_request_duration_seconds_bucket{direction="outbound"}[W]) * on(job, instance)
  group_left(service) mesh_sidecar_info))`` per quantile;
- **services** ask the same of the ``inbound`` series, summed by ``service`` alone, and
  ``sum by (service, tls) (mesh_sidecar_connections_open{direction="inbound"} * on(job,
  instance) group_left(service) mesh_sidecar_info)`` for the open connections and the share
  of them on mTLS.

Prometheus answers ``NaN`` for a ratio of nothing (a quantile of a window without requests);
that, and any other value that is not a finite number, is ``None`` here.

**The window and the scrape interval.** ``rate()`` needs two samples of a series inside
``[W]``, or it answers nothing for that series; with fewer than four or so it jumps from one
refresh to the next. A window shorter than four scrape intervals is therefore too short
(Grafana's ``$__rate_interval`` rule): the dashboard's shortest, 15 s, wants a scrape
interval of at most 3.75 s — the demo's Prometheus scrapes every second, compose's every 2 s.
A change in the mesh is in these numbers once Prometheus has scraped it: up to one scrape
interval later. ``rate()`` also extrapolates to the window's edges, so its numbers are close
to, not equal to, the two-scrape difference :mod:`dashboard.golden` takes.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

import aiohttp

from dashboard.golden import (
    ATTEMPTS,
    CONNECTIONS,
    DURATION,
    FAILED,
    QUANTILES,
    REQUESTS,
    Golden,
    connections_shown,
)

INFO = "mesh_sidecar_info"  # {service, namespace} 1, one per sidecar
JOIN = f"* on(job, instance) group_left(service) {INFO}"  # a sidecar's series → its service
TIMEOUT = 2.0  # seconds a query may take before the dashboard shows it as an error

K = TypeVar("K")  # what the rows are keyed by: (service, cluster) or a service


class PrometheusError(Exception):
    """A query failed: Prometheus could not be reached, or answered an error or no vector.
    The message names the server, the query and what went wrong."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Sample:
    """One series of an instant vector: its labels and its value (``None`` for ``NaN`` or an
    infinity)."""

    labels: Mapping[str, str]
    value: float | None


def duration(seconds: float) -> str:
    """A PromQL range: ``15s``, or ``1500ms`` where the seconds are not whole."""
    if seconds <= 0:
        raise ValueError(f"window {seconds}: want a positive number of seconds")
    ms = round(seconds * 1000)
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms"


def requests_query(direction: str, by: str, window: float) -> str:
    """Requests per second over ``window``, by the labels ``by`` and status class."""
    return (f'sum by ({by}, code) (rate({REQUESTS}_total{{direction="{direction}"}}'
            f"[{duration(window)}]) {JOIN})")


def quantile_query(q: float, direction: str, by: str, window: float) -> str:
    """The ``q`` quantile of the request durations over ``window``, in seconds, by ``by``."""
    return (f"histogram_quantile({q}, sum by ({by}, le) (rate({DURATION}_bucket"
            f'{{direction="{direction}"}}[{duration(window)}]) {JOIN}))')


def connections_query(direction: str, by: str) -> str:
    """Connections open now, by the labels ``by`` and whether they are mTLS."""
    return f'sum by ({by}, tls) ({CONNECTIONS}{{direction="{direction}"}} {JOIN})'


def attempts_query(window: float) -> str:
    """Attempts (first tries, retries, hedges) per second over ``window``, per edge and
    status class."""
    return (f"sum by (service, cluster, code) (rate({ATTEMPTS}_total[{duration(window)}]) "
            f"{JOIN})")


class PrometheusSource:
    """The golden metrics of the mesh's edges and services, asked of one Prometheus server.

    Args:
        url: the server's base URL, ``http://127.0.0.1:9090``.
        timeout: seconds one query may take.
    """

    def __init__(self, url: str, *, timeout: float = TIMEOUT) -> None:
        self.url = url.rstrip("/")
        self.timeout = aiohttp.ClientTimeout(total=timeout)

    async def edges(self, http: aiohttp.ClientSession, window: float) -> list[dict[str, Any]]:
        """Per source service and destination cluster, over the last ``window`` seconds:
        ``source``, ``destination``, ``requests``, ``rps``, ``success`` (0..1), ``p50_ms``,
        ``p95_ms``, ``p99_ms`` — ``None`` where no request was seen —, ``attempt_success``
        (the share of its attempts that did not fail, retries included), ``connections`` and
        ``mtls`` (open now, and the share on mTLS), sorted by source and destination. An edge
        appears once its caller has counted a request to the cluster.

        Raises:
            PrometheusError: a query failed.
            ValueError: ``window`` is not a positive number of seconds.
        """
        by = "service, cluster"
        codes, attempts, connections, *quantiles = await self._ask(
            http, requests_query("outbound", by, window), attempts_query(window),
            connections_query("outbound", by),
            *(quantile_query(q, "outbound", by, window) for q in QUANTILES))

        def key(labels: Mapping[str, str]) -> tuple[str, str]:
            return labels["service"], labels["cluster"]

        rates, ms = _split(codes, key, "code"), [_ms(samples, key) for samples in quantiles]
        tries, opened = _split(attempts, key, "code"), _split(connections, key, "tls")
        rows = []
        for edge in sorted(rates):
            metrics = _golden(rates[edge], window, [m.get(edge) for m in ms])
            tried = _shown(_golden(tries.get(edge, {}), window, [None, None, None]))
            rows.append({"source": edge[0], "destination": edge[1], **_shown(metrics),
                         "attempt_success": tried["success"],
                         "attempts_failed": tried["failed"],
                         **connections_shown(opened.get(edge, {}))})
        return rows

    async def services(self, http: aiohttp.ClientSession,
                       window: float) -> list[dict[str, Any]]:
        """Per service, what its sidecars received over the last ``window`` seconds:
        ``service``, ``requests``, ``rps``, ``success``, ``p50_ms``, ``p95_ms``, ``p99_ms`` (as
        :meth:`edges`), ``connections`` (inbound connections open now) and ``mtls`` (the share
        of them on mTLS, 0..1; ``None`` when none is open), sorted by service.

        Raises:
            PrometheusError: a query failed.
            ValueError: ``window`` is not a positive number of seconds.
        """
        codes, *quantiles, connections = await self._ask(
            http, requests_query("inbound", "service", window),
            *(quantile_query(q, "inbound", "service", window) for q in QUANTILES),
            connections_query("inbound", "service"))

        def key(labels: Mapping[str, str]) -> str:
            return labels["service"]

        rates, ms = _split(codes, key, "code"), [_ms(samples, key) for samples in quantiles]
        open_by_tls = _split(connections, key, "tls")
        rows = []
        for service in sorted(rates.keys() | open_by_tls.keys()):
            metrics = _golden(rates.get(service, {}), window, [m.get(service) for m in ms])
            rows.append({"service": service, **_shown(metrics),
                         **connections_shown(open_by_tls.get(service, {}))})
        return rows

    async def query(self, http: aiohttp.ClientSession, promql: str) -> list[Sample]:
        """The instant vector ``promql`` evaluates to now (``GET /api/v1/query``).

        Raises:
            PrometheusError: Prometheus could not be reached or timed out, answered other than
                200 or ``"status": "success"``, or with something other than a vector.
        """
        where = f"Prometheus at {self.url}: query {promql!r}"
        try:
            async with http.get(f"{self.url}/api/v1/query", params={"query": promql},
                                timeout=self.timeout) as response:
                text = await response.text()
                status = response.status
        except TimeoutError as error:
            raise PrometheusError(f"{where}: no answer within {self.timeout.total} s") \
                from error
        except aiohttp.ClientError as error:
            raise PrometheusError(f"{where}: {error or type(error).__name__}") from error
        try:
            answer = json.loads(text)
        except ValueError:
            raise PrometheusError(f"{where}: HTTP {status} {text.strip()[:200]!r}") from None
        if status != 200 or not isinstance(answer, dict) or answer.get("status") != "success":
            said = (f"{answer.get('errorType')}: {answer.get('error')}"
                    if isinstance(answer, dict) else text.strip()[:200])
            raise PrometheusError(f"{where}: HTTP {status}, {said}")
        data = answer.get("data") or {}
        if data.get("resultType") != "vector":
            raise PrometheusError(f"{where}: want a vector, got {data.get('resultType')!r}")
        return [Sample(labels=row["metric"], value=_number(row["value"][1]))
                for row in data["result"]]

    async def _ask(self, http: aiohttp.ClientSession, *queries: str) -> list[list[Sample]]:
        """All ``queries`` at once; the first failure cancels the others and is raised."""
        try:
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(self.query(http, q)) for q in queries]
        except* PrometheusError as failed:
            raise failed.exceptions[0] from None
        return [task.result() for task in tasks]


def _number(text: str) -> float | None:
    value = float(text)  # Prometheus writes "NaN", "+Inf", "-Inf" as such
    return value if math.isfinite(value) else None


def _split(samples: list[Sample], key: Callable[[Mapping[str, str]], K], label: str
           ) -> dict[K, dict[str, float]]:
    """Per key, the samples' values by the value of ``label``: requests per second by status
    class (``code``), open connections by ``tls``."""
    split: dict[K, dict[str, float]] = {}
    for sample in samples:
        split.setdefault(key(sample.labels), {})[sample.labels[label]] = sample.value or 0.0
    return split


def _ms(samples: list[Sample], key: Callable[[Mapping[str, str]], K]) -> dict[K, float | None]:
    """Per key, a quantile in milliseconds (Prometheus answers seconds)."""
    return {key(s.labels): None if s.value is None else s.value * 1000 for s in samples}


def _golden(rates: Mapping[str, float], window: float, ms: list[float | None]) -> Golden:
    """The golden metrics of requests per second by status class and the quantiles' ms."""
    rps = sum(rates.values())
    failed = sum(v for code, v in rates.items() if code in FAILED)
    p50, p95, p99 = ms
    return Golden(requests=rps * window, failed=failed * window, rps=rps,
                  success=None if rps == 0 else (rps - failed) / rps,
                  p50_ms=p50, p95_ms=p95, p99_ms=p99)


def _shown(metrics: Golden) -> dict[str, float | None]:
    """Rounded as the collector shows an edge."""
    return {k: None if v is None else round(v, 3) for k, v in asdict(metrics).items()}

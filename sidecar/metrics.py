"""The sidecar's Prometheus metrics, labelled by cluster (outbound) or by service (inbound).

Label children are cached per cluster and status so the per-request cost is a dict lookup and
two increments (``labels()`` does far more work on every call). Gauges of what the
configuration holds (endpoints, outbound connections) are set when ``/metrics`` is read.
The tap of the last outbound requests (``sidecar/tap.py``) lives here too, beside the counts
it is kept with.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from sidecar.tap import Tap

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                   5.0, 10.0)
RESET = "reset"
"""The ``code`` of a request the caller abandoned (reset the stream, or closed the connection)
before its answer was complete: it has no status."""

STARTING_CLASSES = ("2xx", "4xx", "5xx")
"""The status classes a cluster's request and attempt counters start at 0 with, the first time
the cluster is counted: a series Prometheus first sees at 0 counts its first increase, where
one that appears already at 5 does not (rate() has no earlier sample to subtract from), and
a short burst of failures would never show."""


MTLS, PLAINTEXT = "mtls", "plaintext"
"""The ``tls`` label of a connection: it carries a verified mesh identity (ours outbound, the
peer's inbound), or it does not."""


def status_class(status: int | str) -> str:
    """The ``code`` label: ``2xx`` .. ``5xx``, or :data:`RESET`."""
    return status if isinstance(status, str) else f"{status // 100}xx"


class SidecarMetrics:
    """Every metric the admin's ``/metrics`` shows."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = Counter("mesh_sidecar_requests", "Requests by direction, cluster and "
                                "status class", ["direction", "cluster", "code"], registry=r)
        self.duration = Histogram("mesh_sidecar_request_duration_seconds",
                                  "Request duration, first byte in to last byte out",
                                  ["direction", "cluster"], buckets=LATENCY_BUCKETS, registry=r)
        self.retries = Counter("mesh_sidecar_retries", "Retries made", ["cluster"], registry=r)
        self.attempts = Counter("mesh_sidecar_upstream_attempts",
                                "Attempts answered by a cluster's endpoints (first tries, "
                                "retries, hedges), by status class: what the callees said "
                                "before retries hid it", ["cluster", "code"], registry=r)
        self.retries_refused = Counter("mesh_sidecar_retries_refused",
                                       "Retries and hedges not made, by reason (budget, "
                                       "deadline, ...)", ["cluster", "reason"], registry=r)
        self.hedges = Counter("mesh_sidecar_hedges", "Hedges sent: attempts started beside "
                              "a slow one", ["cluster"], registry=r)
        self.overflows = Counter("mesh_sidecar_circuit_breaker_overflows",
                                 "Calls refused by a circuit breaker", ["cluster", "limit"],
                                 registry=r)
        self.faults = Counter("mesh_sidecar_faults_injected",
                              "Faults a route's policy injected, by route and kind (delay, "
                              "abort)", ["route", "kind"], registry=r)
        self.rate_limited = Counter("mesh_sidecar_rate_limited",
                                    "Requests refused by a local rate limit, by direction and "
                                    "limit", ["direction", "limit"], registry=r)
        self.ejections = Counter("mesh_sidecar_outlier_ejections", "Endpoints ejected",
                                 ["cluster"], registry=r)
        self.upstream_connections = Counter("mesh_sidecar_upstream_connections_opened",
                                            "Upstream connections (TCP + TLS handshakes)",
                                            ["cluster"], registry=r)
        self.denied = Counter("mesh_sidecar_authz_denied", "Inbound calls denied by policy",
                              ["principal"], registry=r)
        self.config_updates = Counter("mesh_sidecar_config_updates",
                                      "Discovery updates by type and result (ack, nack)",
                                      ["type", "result"], registry=r)
        self.endpoint_active = Gauge("mesh_sidecar_endpoint_active_requests",
                                     "Requests in flight per endpoint", ["cluster", "endpoint"],
                                     registry=r)
        self.endpoint_latency = Gauge("mesh_sidecar_endpoint_latency_estimate_seconds",
                                      "Peak-EWMA latency estimate per endpoint",
                                      ["cluster", "endpoint"], registry=r)
        self.connections_open = Gauge("mesh_sidecar_connections_open",
                                      "Connections open: outbound to a cluster's endpoints, "
                                      "inbound from peers (cluster: this sidecar's service)",
                                      ["direction", "cluster", "tls"], registry=r)
        self.info = Gauge("mesh_sidecar_info", "Always 1, labelled with this sidecar's service "
                          "and namespace: join on it with * on(job, instance) "
                          "group_left(service) mesh_sidecar_info", ["service", "namespace"],
                          registry=r)
        self.tap = Tap()
        self._requests: dict[tuple[str, str, int | str], Counter] = {}
        self._attempts: dict[tuple[str, int], Counter] = {}
        self._duration: dict[tuple[str, str], Histogram] = {}
        self._endpoints: set[tuple[str, str]] = set()  # the gauges' (cluster, endpoint) labels
        self._outbound: set[tuple[str, str]] = set()  # connections_open's (cluster, tls)

    def set_info(self, service: str, namespace: str) -> None:
        """Say whose sidecar this is (``mesh_sidecar_info``)."""
        self.info.clear()
        self.info.labels(service, namespace).set(1)

    def attempt_done(self, cluster: str, status: int) -> None:
        """Count an attempt its endpoint answered with HTTP ``status`` (or a failure's)."""
        key = (cluster, status)
        counter = self._attempts.get(key)
        if counter is None:
            if not any(c == cluster for c, _ in self._attempts):
                for code in STARTING_CLASSES:
                    self.attempts.labels(cluster, code)
            counter = self._attempts[key] = self.attempts.labels(cluster, status_class(status))
        counter.inc()

    def request_done(self, direction: str, cluster: str, status: int | str,
                     seconds: float) -> None:
        """Count a request that ended with HTTP ``status`` (or :data:`RESET`)."""
        key = (direction, cluster, status)
        counter = self._requests.get(key)
        if counter is None:
            if key[:2] not in self._duration:  # the first of this cluster: see STARTING_CLASSES
                for code in (*STARTING_CLASSES, RESET):
                    self.requests.labels(direction, cluster, code)
            counter = self._requests[key] = self.requests.labels(direction, cluster,
                                                                 status_class(status))
        counter.inc()
        histogram = self._duration.get(key[:2])
        if histogram is None:
            histogram = self._duration[key[:2]] = self.duration.labels(direction, cluster)
        histogram.observe(seconds)

    def set_endpoints(self, endpoints: Iterable[tuple[str, str, int, float]]) -> None:
        """Set the per-endpoint gauges from ``(cluster, endpoint, requests in flight, latency
        estimate)``, and remove those of every endpoint not among them (it left its cluster,
        or its cluster left the configuration)."""
        active: dict[tuple[str, str], float] = {}
        latency: dict[tuple[str, str], float] = {}
        for cluster, endpoint, in_flight, estimate in endpoints:
            active[cluster, endpoint], latency[cluster, endpoint] = in_flight, estimate
        _replace(self.endpoint_active, self._endpoints, active)
        _replace(self.endpoint_latency, self._endpoints, latency)
        self._endpoints = set(active)

    def set_outbound_connections(self, counts: Mapping[tuple[str, str], int]) -> None:
        """Set ``connections_open`` outbound from ``(cluster, tls): connections open``, and
        remove it for every cluster and tls not among them."""
        _replace(self.connections_open, self._outbound, counts, "outbound")
        self._outbound = set(counts)


def _replace(gauge: Gauge, before: set[tuple[str, str]],
             values: Mapping[tuple[str, str], float], *prefix: str) -> None:
    """Set ``gauge`` to ``values`` by label values (after ``prefix``), and remove the children
    in ``before`` that are not among them."""
    for labels, value in values.items():
        gauge.labels(*prefix, *labels).set(value)
    for labels in before - values.keys():
        gauge.remove(*prefix, *labels)

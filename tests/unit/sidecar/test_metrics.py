"""SidecarMetrics: request counts by status (or reset), and per-endpoint gauges that follow the
endpoints in the configuration."""

from __future__ import annotations

from prometheus_client import generate_latest

from sidecar.metrics import RESET, SidecarMetrics


def samples(metrics: SidecarMetrics) -> dict[str, float]:
    text = generate_latest(metrics.registry).decode()
    return {name: float(value) for name, _, value in
            (line.rpartition(" ") for line in text.splitlines() if not line.startswith("#"))}


def test_requests_are_counted_by_status_class_and_resets_apart() -> None:
    metrics = SidecarMetrics()
    metrics.request_done("outbound", "web", 200, 0.001)
    metrics.request_done("outbound", "web", 204, 0.001)
    metrics.request_done("outbound", "web", RESET, 0.5)

    got = samples(metrics)
    assert got['mesh_sidecar_requests_total{cluster="web",code="2xx",direction="outbound"}'] == 2
    assert got['mesh_sidecar_requests_total{cluster="web",code="reset",direction="outbound"}'] \
        == 1
    assert got['mesh_sidecar_request_duration_seconds_count{cluster="web",'
               'direction="outbound"}'] == 3


def test_gauges_of_an_endpoint_that_left_are_removed() -> None:
    metrics = SidecarMetrics()
    metrics.set_endpoints([("web", "10.0.0.1:15006", 2, 0.010),
                           ("web", "10.0.0.2:15006", 0, 0.020)])
    metrics.set_endpoints([("web", "10.0.0.2:15006", 1, 0.030)])  # 10.0.0.1 left

    got = samples(metrics)
    active = 'mesh_sidecar_endpoint_active_requests{cluster="web",endpoint="10.0.0.%d:15006"}'
    latency = ('mesh_sidecar_endpoint_latency_estimate_seconds{cluster="web",'
               'endpoint="10.0.0.%d:15006"}')
    assert active % 1 not in got and latency % 1 not in got
    assert got[active % 2] == 1 and got[latency % 2] == 0.030


def test_gauges_go_when_their_cluster_goes() -> None:
    metrics = SidecarMetrics()
    metrics.set_endpoints([("web", "10.0.0.1:15006", 0, 0.010)])
    metrics.set_endpoints([])

    assert not [name for name in samples(metrics) if "endpoint" in name]


def test_a_clusters_failure_counters_start_at_zero_with_its_first_count() -> None:
    # So Prometheus sees 0 before the first failures: rate() counts them from there.
    metrics = SidecarMetrics()
    metrics.request_done("outbound", "web", 200, 0.001)
    metrics.attempt_done("web", 200)

    got = samples(metrics)
    for code in ("4xx", "5xx", "reset"):
        assert got[f'mesh_sidecar_requests_total{{cluster="web",code="{code}",'
                   f'direction="outbound"}}'] == 0
    assert got['mesh_sidecar_upstream_attempts_total{cluster="web",code="5xx"}'] == 0
    assert got['mesh_sidecar_upstream_attempts_total{cluster="web",code="2xx"}'] == 1

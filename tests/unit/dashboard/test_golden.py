"""Golden metrics from two scrapes of a sidecar's Prometheus text (dashboard/golden.py)."""

from __future__ import annotations

import math

import pytest

from dashboard.golden import ClusterCounts, golden, increase, merge, parse, quantile

BOUNDS = ("0.005", "0.01", "0.025", "0.05", "+Inf")


def exposition(codes: dict[str, int], buckets: tuple[int, ...],
               cluster: str = "orders") -> str:
    """A sidecar's /metrics text: outbound counts per status class, cumulative buckets."""
    lines = ["# HELP mesh_sidecar_requests_total Requests",
             "# TYPE mesh_sidecar_requests_total counter"]
    lines += [f'mesh_sidecar_requests_total{{cluster="{cluster}",code="{code}",'
              f'direction="outbound"}} {count}.0' for code, count in codes.items()]
    lines += ['mesh_sidecar_requests_total{cluster="frontend",code="2xx",direction="inbound"} 7.0',
              "# HELP mesh_sidecar_request_duration_seconds Duration",
              "# TYPE mesh_sidecar_request_duration_seconds histogram"]
    lines += [f'mesh_sidecar_request_duration_seconds_bucket{{cluster="{cluster}",'
              f'direction="outbound",le="{le}"}} {count}.0'
              for le, count in zip(BOUNDS, buckets, strict=True)]
    lines.append(f'mesh_sidecar_request_duration_seconds_count{{cluster="{cluster}",'
                 f'direction="outbound"}} {buckets[-1]}.0')
    return "\n".join(lines) + "\n"


def test_parse_keeps_outbound_counts_and_buckets() -> None:
    scrape = parse(exposition({"2xx": 10, "5xx": 2}, (1, 4, 10, 12, 12)), at=3.0)
    assert scrape.at == 3.0
    assert set(scrape.clusters) == {"orders"}  # the inbound series is not an edge
    orders = scrape.clusters["orders"]
    assert orders.codes == {"2xx": 10, "5xx": 2} and orders.total == 12
    assert orders.buckets == {0.005: 1, 0.01: 4, 0.025: 10, 0.05: 12, math.inf: 12}


def test_two_scrapes_give_rate_success_and_percentiles_of_the_window() -> None:
    # 100 requests before the window; in its 10 s: 200 more, 180 2xx, 10 4xx, 10 5xx.
    before = parse(exposition({"2xx": 100}, (50, 100, 100, 100, 100)), at=0.0)
    after = parse(exposition({"2xx": 280, "4xx": 10, "5xx": 10}, (50, 150, 250, 300, 300)),
                  at=10.0)
    grown = increase(before, after)["orders"]
    assert grown.codes == {"2xx": 180, "4xx": 10, "5xx": 10}
    assert grown.buckets == {0.005: 0, 0.01: 50, 0.025: 150, 0.05: 200, math.inf: 200}
    metrics = golden(grown, seconds=10.0)
    assert metrics.requests == 200 and metrics.rps == 20.0
    assert metrics.success == pytest.approx(0.95)  # a 4xx is the caller's, not a failure
    # p50: rank 100 of 200 falls in (0.01, 0.025] holding ranks 50..150 → halfway, 17.5 ms.
    assert metrics.p50_ms == pytest.approx(17.5)
    # p95: rank 190 in (0.025, 0.05] holding 150..200 → 0.025 + 0.025 * 40/50 = 45 ms.
    assert metrics.p95_ms == pytest.approx(45.0)
    assert metrics.p99_ms == pytest.approx(49.0)  # rank 198: 0.025 + 0.025 * 48/50


def test_a_counter_that_went_down_was_reset_and_counts_whole() -> None:
    before = parse(exposition({"2xx": 500}, (500, 500, 500, 500, 500)), at=0.0)
    after = parse(exposition({"2xx": 30}, (0, 30, 30, 30, 30)), at=5.0)
    metrics = golden(increase(before, after)["orders"], seconds=5.0)
    assert metrics.requests == 30 and metrics.rps == 6.0 and metrics.success == 1.0


def test_a_cluster_first_seen_in_the_later_scrape_counts_from_zero() -> None:
    before = parse("", at=0.0)
    after = parse(exposition({"2xx": 4, "reset": 1}, (0, 5, 5, 5, 5)), at=1.0)
    metrics = golden(increase(before, after)["orders"], seconds=1.0)
    assert metrics.success == pytest.approx(0.8)  # an abandoned request is not a success


def test_no_requests_in_the_window_has_no_ratio_and_no_percentiles() -> None:
    same = parse(exposition({"2xx": 9}, (9, 9, 9, 9, 9)), at=0.0)
    metrics = golden(increase(same, same)["orders"], seconds=15.0)
    assert (metrics.rps, metrics.success, metrics.p99_ms) == (0.0, None, None)


def test_sidecars_of_one_service_add_up_before_the_ratios() -> None:
    a = ClusterCounts(codes={"2xx": 90, "5xx": 10}, buckets={0.01: 100, math.inf: 100})
    b = ClusterCounts(codes={"2xx": 100}, buckets={0.01: 0, math.inf: 100})
    metrics = golden(merge([a, b]), seconds=10.0)
    assert metrics.rps == 20.0 and metrics.success == pytest.approx(0.95)
    assert metrics.p50_ms == pytest.approx(10.0)  # rank 100 of 200: the top of the first bucket
    assert metrics.p99_ms == pytest.approx(10.0)  # in +Inf: the highest finite bound


def test_quantile_follows_prometheus_histogram_quantile() -> None:
    buckets = {0.1: 10.0, 0.2: 10.0, 0.4: 30.0, math.inf: 30.0}
    assert quantile(0.0, buckets) == 0.0
    assert quantile(0.2, buckets) == pytest.approx(0.06)  # rank 6 of the first 10 in (0, 0.1]
    assert quantile(0.5, buckets) == pytest.approx(0.25)  # rank 15 in (0.2, 0.4], 10..30
    assert quantile(1.0, buckets) == pytest.approx(0.4)
    assert quantile(0.5, {0.1: 0.0, math.inf: 0.0}) is None
    assert quantile(0.5, {0.1: 3.0}) is None  # no +Inf bucket: not a whole histogram
    with pytest.raises(ValueError, match=r"quantile 1\.5"):
        quantile(1.5, buckets)

"""A sidecar's workers: each holds its share of the policy's limits, and the admin adds their
answers up (``sidecar/workers.py``, ``sidecar/admin.py``)."""

from __future__ import annotations

import asyncio
import dataclasses
import os
from pathlib import Path
from typing import Any

import pytest
from google.protobuf.duration_pb2 import Duration
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from mesh.proto.config_pb2 import (
    AuthorizationPolicy,
    CircuitBreakers,
    Cluster,
    LocalRateLimit,
    RetryBudget,
    Route,
    RouteConfiguration,
    VirtualHost,
)
from mesh.proto.resources import AUTHORIZATION, CLUSTERS, ROUTES
from sidecar.admin import GatheredMetrics, GatheredTap, merge_metrics, merge_views
from sidecar.circuit_breaker import CircuitBreakerConfig
from sidecar.retry_budget import ConcurrencyBudgetConfig, RateBudgetConfig
from sidecar.tap import Tap
from sidecar.workers import cores_given, listening_socket, reserve_port, worker_share

# -- the policy's limits, split ---------------------------------------------------------------


def test_one_worker_holds_the_whole_policy() -> None:
    cluster = Cluster(name="orders", circuit_breakers=CircuitBreakers(max_requests=3))
    assert worker_share(CLUSTERS, [cluster], 1) == [cluster]


def test_every_breaker_limit_is_split_rounded_up_and_unset_ones_from_their_default() -> None:
    cluster = Cluster(name="orders", circuit_breakers=CircuitBreakers(max_requests=3))
    [share] = worker_share(CLUSTERS, [cluster], 2)
    assert isinstance(share, Cluster)
    defaults = CircuitBreakerConfig()
    assert share.circuit_breakers.max_requests == 2
    assert share.circuit_breakers.max_pending_requests == -(-defaults.max_pending_requests // 2)
    assert share.circuit_breakers.max_retries == -(-defaults.max_retries // 2)
    assert cluster.circuit_breakers.max_requests == 3  # the policy itself is left as it was


def test_a_retry_budgets_floor_is_split_its_ratio_is_not() -> None:
    rate = Cluster(name="a", retry_budget=RetryBudget(retry_ratio=0.5))
    concurrency = Cluster(name="b", retry_budget=RetryBudget(kind=RetryBudget.CONCURRENCY,
                                                             min_retry_concurrency=5))
    off = Cluster(name="c", retry_budget=RetryBudget(disabled=True))
    shares = worker_share(CLUSTERS, [rate, concurrency, off], 4)
    assert all(isinstance(share, Cluster) for share in shares)
    assert isinstance(shares[0], Cluster) and isinstance(shares[1], Cluster)
    assert isinstance(shares[2], Cluster)
    assert shares[0].retry_budget.min_retries_per_second == \
        -(-RateBudgetConfig().min_retries_per_second // 4)
    assert shares[0].retry_budget.retry_ratio == 0.5
    assert shares[1].retry_budget.min_retry_concurrency == 2
    assert shares[2].retry_budget == off.retry_budget
    assert ConcurrencyBudgetConfig().min_retry_concurrency >= 1


def test_a_rate_limit_gives_each_worker_part_of_the_burst_and_of_the_rate() -> None:
    limit = LocalRateLimit(max_tokens=5, tokens_per_fill=1, fill_interval=Duration(seconds=1))
    routes = RouteConfiguration(name="mesh", virtual_hosts=[VirtualHost(
        name="any", domains=["*"], routes=[Route(rate_limit=limit), Route()])])
    inbound = Cluster(name="orders", inbound_rate_limit=limit)
    [route_share] = worker_share(ROUTES, [routes], 2)
    [cluster_share] = worker_share(CLUSTERS, [inbound], 2)
    assert isinstance(route_share, RouteConfiguration) and isinstance(cluster_share, Cluster)
    for share in (route_share.virtual_hosts[0].routes[0].rate_limit,
                  cluster_share.inbound_rate_limit):
        assert share.max_tokens == 3
        assert share.tokens_per_fill == 1
        assert share.fill_interval.ToNanoseconds() == 2_000_000_000
    assert not route_share.virtual_hosts[0].routes[1].HasField("rate_limit")


def test_resources_without_limits_go_to_every_worker_as_they_are() -> None:
    policy = AuthorizationPolicy(service="orders")
    assert worker_share(AUTHORIZATION, [policy], 2) == [policy]


# -- the admin's answers, added up -------------------------------------------------------------


def exposition(requests: int, estimate: float, observed: list[float]) -> bytes:
    registry = CollectorRegistry()
    Counter("mesh_sidecar_requests", "Requests", ["cluster"],
            registry=registry).labels("orders").inc(requests)
    Gauge("mesh_sidecar_endpoint_latency_estimate_seconds", "Estimate", ["endpoint"],
          registry=registry).labels("10.0.0.1:15006").set(estimate)
    histogram = Histogram("mesh_sidecar_request_duration_seconds", "Duration",
                          buckets=(0.1, 1.0), registry=registry)
    for seconds in observed:
        histogram.observe(seconds)
    return generate_latest(registry)


def samples(text: bytes) -> dict[str, float]:
    found = {}
    for line in text.decode().splitlines():
        if line and not line.startswith("#") and "_created" not in line:
            name, _, value = line.rpartition(" ")
            found[name] = float(value)
    return found


def test_metrics_are_summed_but_estimates_are_the_highest() -> None:
    merged = samples(merge_metrics([exposition(3, 0.010, [0.05]),
                                    exposition(4, 0.030, [0.5, 2.0])]))
    assert merged['mesh_sidecar_requests_total{cluster="orders"}'] == 7
    assert merged['mesh_sidecar_endpoint_latency_estimate_seconds{endpoint="10.0.0.1:15006"}'] \
        == pytest.approx(0.030)
    assert merged['mesh_sidecar_request_duration_seconds_bucket{le="0.1"}'] == 1
    assert merged['mesh_sidecar_request_duration_seconds_bucket{le="1.0"}'] == 2
    assert merged['mesh_sidecar_request_duration_seconds_count'] == 3
    assert merged['mesh_sidecar_request_duration_seconds_sum'] == pytest.approx(2.55)


def test_a_merged_exposition_keeps_the_types_and_help() -> None:
    text = merge_metrics([exposition(1, 0.0, []), exposition(1, 0.0, [])]).decode()
    assert "# TYPE mesh_sidecar_requests_total counter" in text
    assert "# HELP mesh_sidecar_requests_total Requests" in text
    assert "# TYPE mesh_sidecar_request_duration_seconds histogram" in text


def cluster_view(address: str, active: int, cost: float, ejected: bool) -> dict[str, Any]:
    return {"orders": {
        "lb_policy": "PEAK_EWMA", "cost_unit": "ms",
        "endpoints": [{"address": address, "healthy": True, "active_requests": active,
                       "cost": cost, "ejected": ejected,
                       "ejection": {"reason": "consecutive-5xx", "remaining_s": 4.0,
                                    "times": 1} if ejected else None}],
        "circuit_breaker": {"max_requests": {"active": active, "max": 512}},
        "retry_budget": {"kind": "rate", "balance": 10, "retry_ratio": 0.2},
    }}


def test_clusters_add_up_in_flight_and_limits_and_take_the_highest_cost() -> None:
    merged = merge_views([cluster_view("a:1", 2, 5.0, False), cluster_view("a:1", 3, 9.5, True)])
    orders = merged["orders"]
    [endpoint] = orders["endpoints"]
    assert endpoint["active_requests"] == 5
    assert endpoint["cost"] == 9.5
    assert endpoint["ejected"] is True
    assert endpoint["ejection"] == {"reason": "consecutive-5xx", "remaining_s": 4.0, "times": 1}
    assert orders["circuit_breaker"]["max_requests"] == {"active": 5, "max": 1024}
    assert orders["retry_budget"] == {"kind": "rate", "balance": 20, "retry_ratio": 0.2}
    assert orders["lb_policy"] == "PEAK_EWMA"


def test_endpoints_one_worker_does_not_hold_yet_are_kept() -> None:
    merged = merge_views([cluster_view("a:1", 1, 1.0, False), cluster_view("b:2", 1, 1.0, False)])
    assert [e["address"] for e in merged["orders"]["endpoints"]] == ["a:1", "b:2"]


def test_a_tap_takes_other_taps_rows_numbering_them_itself() -> None:
    worker = Tap(wall=lambda: 100.0, boot="w")
    worker.record("orders", "orders", "GET", "/a?secret=1", 200, 0.0125, 1, 0)
    parent = Tap(boot="p")
    for row in worker.since().requests:
        parent.add(row)
    [row] = parent.since().requests
    assert row == {"seq": 1, "at": 100.0, "cluster": "orders", "authority": "orders",
                   "method": "GET", "path": "/a", "status": 200, "latency_ms": 12.5,
                   "retries": 1, "hedges": 0}


# -- gathering from workers that restart, hang, or are read twice at once -----------------------


class FakeWorkers:
    """Answers ``ask_each`` from a script: ``answers[index]`` now, or nothing for a worker
    missing from it (gone, or too slow)."""

    def __init__(self) -> None:
        self.answers: dict[int, Any] = {}

    async def ask_each(self, op: str, args: Any) -> list[tuple[int, Any]]:
        await asyncio.sleep(0)  # as a real question does: another reader may come meanwhile
        return [(index, answer(args(index)) if callable(answer) else answer)
                for index, answer in sorted(self.answers.items())]


def requests_total(texts: list[bytes]) -> float:
    return samples(merge_metrics(texts))['mesh_sidecar_requests_total{cluster="orders"}']


async def test_counters_never_go_backwards_when_a_worker_restarts_or_does_not_answer() -> None:
    workers = FakeWorkers()
    gathered = GatheredMetrics(workers)  # type: ignore[arg-type]
    workers.answers = {0: ("boot-a", exposition(10, 0.5, [])),
                       1: ("boot-b", exposition(5, 0.5, []))}
    assert requests_total(await gathered.gather()) == 15
    del workers.answers[1]  # worker 1 hangs: its last counters stand in, not its gauges
    texts = await gathered.gather()
    assert requests_total(texts) == 15
    assert samples(merge_metrics(texts))[
        'mesh_sidecar_endpoint_latency_estimate_seconds{endpoint="10.0.0.1:15006"}'] == 0.5
    workers.answers[0] = ("boot-c", exposition(2, 0.1, []))  # worker 0 started again
    workers.answers[1] = ("boot-b", exposition(6, 0.1, []))
    assert requests_total(await gathered.gather()) == 10 + 2 + 6
    assert requests_total(await gathered.gather()) == 18  # its old run is added in once only


async def test_two_reads_of_the_tap_at_once_take_each_row_once_and_count_the_lost() -> None:
    worker = Tap(wall=lambda: 100.0, boot="w")
    for _ in range(3):
        worker.record("orders", "orders", "GET", "/", 200, 0.001, 0, 0)
    workers = FakeWorkers()
    workers.answers = {0: lambda args: {**dataclasses.asdict(
        worker.since(args[1] if args[0] == worker.boot else 0)), "dropped": 2}}
    parent = Tap(boot="p")
    gathered = GatheredTap(parent, workers)  # type: ignore[arg-type]
    await asyncio.gather(gathered.gather(), gathered.gather())
    page = parent.since()
    assert len(page.requests) == 3
    assert page.dropped == 4  # 2 lost from the worker's ring, as each of the two pages said


def test_cores_given_is_the_affinity_capped_by_the_cgroups_quota(tmp_path: Path) -> None:
    affinity = len(os.sched_getaffinity(0))
    quota = tmp_path / "cpu.max"
    quota.write_text("max 100000\n")
    assert cores_given(quota) == affinity
    quota.write_text("50000 100000\n")  # half a core: one worker
    assert cores_given(quota) == 1
    quota.write_text(f"{(affinity + 8) * 100000} 100000\n")  # more than it may run on
    assert cores_given(quota) == affinity
    assert cores_given(tmp_path / "absent") == affinity


def test_a_port_another_sidecars_workers_listen_on_is_refused() -> None:
    reserved, address = reserve_port(("127.0.0.1", 0))
    worker = listening_socket(address)
    worker.listen()
    try:
        with pytest.raises(OSError, match=f"cannot listen on 127.0.0.1:{address[1]}: "
                                          f"Address already in use"):
            reserve_port(address)
    finally:
        worker.close()
        reserved.close()

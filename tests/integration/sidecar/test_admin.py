"""The admin endpoint of a running sidecar: what an operator (or Prometheus) asks it."""

from __future__ import annotations

import json

import pytest

from tests.integration.sidecar.conftest import (
    B_HOST,
    INBOUND,
    Mesh,
    parse_metrics,
    route_policy_hosts,
    run_tool,
)

CLUSTERS = {"greeter", "web", "web-canary", "pooled", "ghost", "idle", "narrow"}

pytestmark = [pytest.mark.asyncio(loop_scope="package"), pytest.mark.interop,
              pytest.mark.timeout(60)]


async def _call_web(mesh: Mesh) -> None:
    code, _, err = await run_tool("curl", "-sS", "-o", "/dev/null", "-H", "Host: web",
                                  mesh.a.url("/"))
    assert code == 0, err


async def test_ready_says_ready(mesh: Mesh) -> None:
    assert await mesh.a.admin("/ready") == (200, "ready\n")


async def test_metrics_count_requests_by_direction_cluster_and_status(mesh: Mesh) -> None:
    await _call_web(mesh)

    status, text = await mesh.a.admin("/metrics")
    w1 = await mesh.w1.metrics()

    samples = parse_metrics(text)
    assert status == 200
    assert samples['mesh_sidecar_requests_total{cluster="web",code="2xx",'
                   'direction="outbound"}'] >= 1
    assert samples['mesh_sidecar_request_duration_seconds_count{cluster="web",'
                   'direction="outbound"}'] >= 1
    assert samples['mesh_sidecar_upstream_connections_opened_total{cluster="web"}'] >= 1
    assert w1['mesh_sidecar_requests_total{cluster="web",code="2xx",direction="inbound"}'] >= 1
    # Prometheus reads it: every line is a comment or "name{labels} value".
    assert all(line.startswith("#") or len(line.rsplit(" ", 1)) == 2
               for line in text.splitlines() if line)


async def test_config_dump_shows_the_resources_and_effective_settings(mesh: Mesh) -> None:
    status, text = await mesh.a.admin("/config_dump")

    dump = json.loads(text)
    assert status == 200
    clusters = {c["name"] for c in dump["resources"]["Cluster"]}
    assert clusters == CLUSTERS
    greeter = next(a for a in dump["resources"]["ClusterLoadAssignment"]
                   if a["cluster_name"] == "greeter")
    assert greeter["endpoints"] == [{"address": B_HOST, "port": INBOUND}]
    hosts = {h["name"] for h in dump["resources"]["RouteConfiguration"][0]["virtual_hosts"]}
    assert hosts == {"shop", "greeter-strict", "web-strict",
                     *(h["name"] for h in route_policy_hosts())}
    effective = dump["effective_cluster_settings"]
    assert effective["ghost"]["connect_timeout"] == 0.3  # as configured
    assert "connect_timeout" not in effective["ghost"]["defaulted"]
    assert effective["web"]["timeout"] == 15.0  # the default, filled in, and marked so
    assert "timeout" in effective["web"]["defaulted"]
    assert effective["web"]["lb_policy"] == "LEAST_REQUEST"


async def test_clusters_list_each_endpoint_with_its_state(mesh: Mesh) -> None:
    await _call_web(mesh)

    status, text = await mesh.a.admin("/clusters")

    view = json.loads(text)
    assert status == 200
    assert set(view) == CLUSTERS
    (endpoint,) = view["web"]["endpoints"]
    assert endpoint["address"] == "127.0.20.3:15006"
    assert endpoint["healthy"] is True and endpoint["ejected"] is False
    assert endpoint["active_requests"] == 0
    assert endpoint["connections"] >= 1
    assert endpoint["latency_estimate_ms"] > 0
    assert view["web"]["balancer"] == "LeastRequestBalancer"


async def test_unknown_admin_path_is_404(mesh: Mesh) -> None:
    status, _ = await mesh.a.admin("/nope")

    assert status == 404

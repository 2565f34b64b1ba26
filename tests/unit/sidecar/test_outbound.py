"""The outbound path against scripted upstreams: the rows of its calls' and attempts' tables.

Each test plays one call (or two) through ``Outbound.handle`` with upstreams that reset, hang,
stall or answer as the script says (``scripted.py``; no sockets), and checks what the caller
got, what each upstream stream saw, and that the call let go of everything it held: every
endpoint's in-flight slot, the circuit breaker's permits, the retry budget. Deadlines are real
but short: the sidecar's clock is the event loop's, so its deadlines and asyncio's timers agree.
"""

from __future__ import annotations

import asyncio
import random
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from google.protobuf.json_format import ParseDict

from mesh.clock import Clock
from mesh.grpc import StatusCode
from mesh.http2 import ErrorCode, Headers
from mesh.proto.config_pb2 import Cluster, ClusterLoadAssignment, RouteConfiguration
from mesh.proto.resources import CLUSTERS, ENDPOINTS, ROUTES
from sidecar.circuit_breaker import Limit, Permit
from sidecar.cluster import UpstreamCluster
from sidecar.config import LiveConfig
from sidecar.metrics import SidecarMetrics
from sidecar.outbound import REPLAY_LIMIT, Outbound
from sidecar.outcome import Failure, Outcome
from sidecar.retry_budget import ConcurrencyBudget, RateBudget
from tests.unit.sidecar.scripted import Answer, Caller, Hang, Reset, Upstreams

GET: Headers = [(":method", "GET"), (":path", "/items"), (":authority", "orders")]
PUT: Headers = [(":method", "PUT"), (":path", "/items/1"), (":authority", "orders")]
GRPC: Headers = [(":method", "POST"), (":path", "/shop.Orders/Get"), (":authority", "orders"),
                 ("content-type", "application/grpc")]
RETRY = {"retry_on": ["reset", "5xx"], "num_retries": 2,
         "backoff": {"base_interval": "0.001s", "max_interval": "0.002s"}}


class LoopClock:
    """The event loop's clock: the sidecar's deadlines and asyncio's timers on one time line."""

    def now(self) -> float:
        return asyncio.get_running_loop().time()


@dataclass
class Mesh:
    """An outbound sidecar whose cluster ``orders`` opens its streams on ``upstreams``."""

    outbound: Outbound
    cluster: UpstreamCluster
    metrics: SidecarMetrics
    upstreams: Upstreams
    recorded: list[tuple[str, Outcome]] = field(default_factory=list)  # outlier detection's

    def metric(self, name: str, **labels: str) -> float:
        value = self.metrics.registry.get_sample_value(name, {"cluster": "orders", **labels})
        return value or 0.0

    def assert_released(self) -> None:
        """Nothing of the calls is held any more."""
        assert {a: e.active for a, e in self.cluster.balancer.endpoints.items()} == \
            dict.fromkeys(self.cluster.balancer.endpoints, 0)
        assert [self.cluster.breaker.active(limit) for limit in Limit] == [0, 0, 0]
        budget = self.cluster.budget
        if isinstance(budget, ConcurrencyBudget):
            assert (budget.active_requests, budget.active_retries) == (0, 0)


def orders_config(clock: Clock, rng: random.Random, *, ports: Sequence[tuple[str, int]] = (
        ("10.0.0.1", 15006), ("10.0.0.2", 15006)),
        tls: Callable[[], ssl.SSLContext | None] = lambda: None, **cluster: Any) -> LiveConfig:
    """The configuration of sidecar "shopper": cluster ``orders`` at ``ports``."""
    config = LiveConfig(service="shopper", clock=clock, rng=rng, tls=tls)
    config.apply(CLUSTERS, [ParseDict({"name": "orders", **cluster}, Cluster())])
    config.apply(ENDPOINTS, [ParseDict({"cluster_name": "orders", "endpoints": [
        {"address": host, "port": port} for host, port in ports]}, ClusterLoadAssignment())])
    return config


def mesh(monkeypatch: pytest.MonkeyPatch, upstreams: Upstreams, **cluster: Any) -> Mesh:
    clock, rng = LoopClock(), random.Random(1)
    config = orders_config(clock, rng, **cluster)
    metrics = SidecarMetrics()
    made = Mesh(Outbound(config, metrics, clock=clock, rng=rng), config.clusters["orders"],
                metrics, upstreams)
    monkeypatch.setattr(made.cluster, "open_stream", upstreams.open_stream)
    monkeypatch.setattr(made.cluster, "record",
                        lambda address, outcome: made.recorded.append((address, outcome)))
    return made


# -- ATTEMPTING → BACKOFF → ATTEMPTING: a retry ------------------------------------------------

async def test_a_reset_before_the_response_is_retried_on_the_other_endpoint(
        monkeypatch: pytest.MonkeyPatch) -> None:
    m = mesh(monkeypatch, Upstreams(Reset(), Answer(200, body=(b"ok",))), retry_policy=RETRY)
    caller = Caller(GET)
    await m.outbound.handle(caller)
    assert (caller.status, caller.received, caller.reset_code) == ("200", b"ok", None)
    first, second = m.upstreams.streams
    assert (first.attempt, second.attempt) == ("1", "2")
    assert first.address != second.address
    assert m.recorded == [(first.address, Outcome(failure=Failure.RESET)),
                          (second.address, Outcome(status=200))]
    assert m.metric("mesh_sidecar_retries_total") == 1
    m.assert_released()


async def test_a_try_past_its_per_try_timeout_is_cancelled_and_retried(
        monkeypatch: pytest.MonkeyPatch) -> None:
    m = mesh(monkeypatch, Upstreams(Hang(), Answer(200)),
             retry_policy={**RETRY, "per_try_timeout": "0.02s"})
    caller = Caller(GET)
    await m.outbound.handle(caller)
    assert caller.status == "200"
    first, second = m.upstreams.streams
    assert first.reset_code == ErrorCode.CANCEL  # the upstream stops working on it
    assert second.address != first.address
    assert [outcome for _, outcome in m.recorded] == [Outcome(failure=Failure.TIMEOUT),
                                                      Outcome(status=200)]
    m.assert_released()


# -- ATTEMPTING → ANSWERING / RELAYING: no retry -----------------------------------------------

async def test_the_last_failure_is_answered_with_503_naming_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    m = mesh(monkeypatch, Upstreams(Reset(), Reset()), retry_policy={**RETRY, "num_retries": 1})
    caller = Caller(GET)
    await m.outbound.handle(caller)
    assert caller.status == "503"
    assert caller.received.startswith(b"cluster orders: upstream reset (10.0.0.")
    assert caller.received.endswith(b") after 2 attempt(s)\n")
    assert m.metric("mesh_sidecar_retries_refused_total", reason="retries-exhausted") == 1
    m.assert_released()


async def test_a_grpc_try_is_settled_by_the_status_in_its_trailers(
        monkeypatch: pytest.MonkeyPatch) -> None:
    unavailable = [("grpc-status", str(int(StatusCode.UNAVAILABLE)))]
    m = mesh(monkeypatch, Upstreams(Answer(200, grpc=True, body=(b"\0\0\0\0\0",),
                                           trailers=unavailable)))
    caller = Caller(GRPC)
    await m.outbound.handle(caller)
    assert caller.status == "200" and caller.response_trailers == unavailable
    (stream,) = m.upstreams.streams
    # Outlier detection hears the trailers' status, not the headers' 200.
    assert m.recorded == [(stream.address,
                           Outcome(status=200, grpc_status=StatusCode.UNAVAILABLE))]
    assert m.metric("mesh_sidecar_requests_total", direction="outbound", code="5xx") == 1
    m.assert_released()


async def test_an_upstream_that_fails_mid_response_resets_the_caller(
        monkeypatch: pytest.MonkeyPatch) -> None:
    m = mesh(monkeypatch, Upstreams(Answer(200, body=(b"half",), then="fail")),
             retry_policy=RETRY)
    caller = Caller(GET)
    await m.outbound.handle(caller)
    assert (caller.status, caller.received) == ("200", b"half")
    assert caller.reset_code == ErrorCode.INTERNAL_ERROR  # too late for a status of our own
    assert len(m.upstreams.streams) == 1  # a response was on its way: never retried
    assert m.metric("mesh_sidecar_requests_total", direction="outbound", code="5xx") == 1
    m.assert_released()


# -- the deadline, and a caller that goes away -------------------------------------------------

async def test_the_deadline_mid_response_body_cuts_both_streams(
        monkeypatch: pytest.MonkeyPatch) -> None:
    m = mesh(monkeypatch, Upstreams(Answer(200, body=(b"half",), then="stall")),
             timeout="0.05s")
    caller = Caller(GET)
    await m.outbound.handle(caller)
    assert (caller.status, caller.received) == ("200", b"half")
    assert caller.reset_code == ErrorCode.CANCEL
    (stream,) = m.upstreams.streams
    assert stream.reset_code == ErrorCode.CANCEL  # the upstream stops too
    assert m.metric("mesh_sidecar_requests_total", direction="outbound", code="5xx") == 1
    m.assert_released()


async def test_over_grpc_the_deadline_mid_body_ends_with_deadline_exceeded(
        monkeypatch: pytest.MonkeyPatch) -> None:
    m = mesh(monkeypatch, Upstreams(Answer(200, grpc=True, body=(b"\0\0\0\0\0",),
                                           then="stall")), timeout="0.05s")
    caller = Caller(GRPC)
    await m.outbound.handle(caller)
    trailers = dict(caller.response_trailers or ())
    assert trailers["grpc-status"] == str(int(StatusCode.DEADLINE_EXCEEDED))
    assert caller.reset_code is None
    assert m.upstreams.streams[0].reset_code == ErrorCode.CANCEL
    assert m.recorded == []  # its status never came: outlier detection is not told
    m.assert_released()


async def test_the_deadline_before_any_response_is_answered_with_504(
        monkeypatch: pytest.MonkeyPatch) -> None:
    m = mesh(monkeypatch, Upstreams(Hang()), timeout="0.05s")
    caller = Caller(GET)
    await m.outbound.handle(caller)
    assert (caller.status, caller.received) == ("504", b"cluster orders: deadline exceeded\n")
    assert m.upstreams.streams[0].reset_code == ErrorCode.CANCEL
    m.assert_released()


async def test_a_caller_that_goes_away_releases_everything(
        monkeypatch: pytest.MonkeyPatch) -> None:
    m = mesh(monkeypatch, Upstreams(Hang()), retry_budget={"kind": "CONCURRENCY"})
    caller = Caller(GET)
    call = asyncio.create_task(m.outbound.handle(caller))
    await m.upstreams.opened.wait()
    call.cancel()  # what the server does when the caller resets its stream
    with pytest.raises(asyncio.CancelledError):
        await call
    assert caller.response is None
    assert m.upstreams.streams[0].reset_code == ErrorCode.CANCEL
    assert m.recorded == []  # cut short: not the endpoint's failure
    assert m.metric("mesh_sidecar_requests_total", direction="outbound", code="reset") == 1
    m.assert_released()


async def test_a_caller_that_goes_away_in_the_backoff_releases_its_retry(
        monkeypatch: pytest.MonkeyPatch) -> None:
    slow = {**RETRY, "backoff": {"base_interval": "10s", "max_interval": "10s"}}
    m = mesh(monkeypatch, Upstreams(Reset()), retry_policy=slow, timeout="60s",
             retry_budget={"kind": "CONCURRENCY"})
    call = asyncio.create_task(m.outbound.handle(Caller(GET)))
    await m.upstreams.opened.wait()
    budget = m.cluster.budget
    assert isinstance(budget, ConcurrencyBudget)
    while budget.active_retries == 0:  # the retry is decided: its backoff begins
        await asyncio.sleep(0)
    assert m.cluster.breaker.active(Limit.RETRIES) == 1
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    m.assert_released()


# -- retries that are not sent cost no budget --------------------------------------------------

def one_retry_left(m: Mesh) -> RateBudget:
    """The rate budget, with four requests' deposits: the next request's makes one retry's."""
    budget = m.cluster.budget
    assert isinstance(budget, RateBudget) and budget.balance() == 0
    for _ in range(4):
        budget.deposit()
    assert budget.balance() + 1000 == budget.withdrawal
    return budget


NO_FLOOR = {"retry_ratio": 0.2, "min_retries_per_second": 0}  # 5 requests pay for a retry


async def test_a_retry_the_breaker_refuses_leaves_the_budget_as_it_was(
        monkeypatch: pytest.MonkeyPatch) -> None:
    m = mesh(monkeypatch, Upstreams(Answer(503), Answer(503), Answer(200)), retry_policy=RETRY,
             retry_budget=NO_FLOOR, circuit_breakers={"max_retries": 1})
    budget = one_retry_left(m)
    elsewhere = m.cluster.breaker.try_acquire(Limit.RETRIES)  # another call's retry in flight
    assert isinstance(elsewhere, Permit)
    refused = Caller(GET)
    await m.outbound.handle(refused)
    assert refused.status == "503" and len(m.upstreams.streams) == 1
    assert m.metric("mesh_sidecar_retries_refused_total", reason="circuit-breaker") == 1
    assert m.metric("mesh_sidecar_circuit_breaker_overflows_total", limit="max_retries") == 1
    assert budget.balance() == budget.withdrawal  # the refused retry took nothing
    elsewhere.release()
    retried = Caller(GET)
    await m.outbound.handle(retried)
    assert retried.status == "200" and len(m.upstreams.streams) == 3
    assert budget.balance() == budget.withdrawal + 1000 - budget.withdrawal
    m.assert_released()


async def test_a_body_too_large_to_replay_is_not_retried_and_costs_no_budget(
        monkeypatch: pytest.MonkeyPatch) -> None:
    m = mesh(monkeypatch, Upstreams(Answer(503), Answer(503), Answer(200)), retry_policy=RETRY,
             retry_budget=NO_FLOOR)
    budget = one_retry_left(m)
    half = b"x" * (REPLAY_LIMIT // 2 + 1)
    refused = Caller(PUT, [half, half])  # PUT may be retried, but this body is not kept
    await m.outbound.handle(refused)
    assert refused.status == "503"
    assert m.upstreams.streams[0].sent == half + half  # the one try got it all
    assert m.metric("mesh_sidecar_retries_refused_total", reason="body-too-large") == 1
    assert budget.balance() == budget.withdrawal
    retried = Caller(PUT, [b"small"])
    await m.outbound.handle(retried)
    assert retried.status == "200"
    assert [s.sent for s in m.upstreams.streams[1:]] == [b"small", b"small"]  # replayed
    m.assert_released()


# -- answers that need no upstream -------------------------------------------------------------

async def test_no_available_endpoint_is_answered_with_503(
        monkeypatch: pytest.MonkeyPatch) -> None:
    m = mesh(monkeypatch, Upstreams())
    for endpoint in m.cluster.balancer.endpoints.values():
        endpoint.ejected = True
    caller = Caller(GET)
    await m.outbound.handle(caller)
    assert (caller.status, caller.received) == ("503", b"cluster orders: no healthy endpoint\n")
    m.assert_released()


def outbound_with_a_route_to_a_removed_cluster() -> tuple[Outbound, SidecarMetrics]:
    # A route may name a cluster the sidecar does not have: the control plane removed the
    # cluster and has yet to remove the route, or the route came first. The caller gets 503
    # (gRPC: UNAVAILABLE) "no cluster X" at once, as from Envoy, and the request is counted.
    clock, rng = LoopClock(), random.Random(1)
    config = LiveConfig(service="shopper", clock=clock, rng=rng, tls=lambda: None)
    config.apply(CLUSTERS, [Cluster(name="orders"), Cluster(name="orders-v2")])
    config.apply(ROUTES, [ParseDict({"name": "mesh", "virtual_hosts": [
        {"name": "orders", "domains": ["orders"],
         "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "orders-v2"}}]}]},
        RouteConfiguration())])
    config.apply(CLUSTERS, [Cluster(name="orders")])  # v2 goes first; its route still points
    metrics = SidecarMetrics()
    return Outbound(config, metrics, clock=clock, rng=rng), metrics


async def test_a_route_to_a_cluster_it_lacks_answers_503_no_cluster() -> None:
    outbound, metrics = outbound_with_a_route_to_a_removed_cluster()
    caller = Caller(GET)
    await outbound.handle(caller)
    assert (caller.status, caller.received) == ("503", b"no cluster orders-v2\n")
    assert caller.send_closed and caller.reset_code is None
    assert metrics.registry.get_sample_value(
        "mesh_sidecar_requests_total",
        {"direction": "outbound", "cluster": "orders-v2", "code": "5xx"}) == 1


async def test_over_grpc_it_is_unavailable() -> None:
    outbound, _ = outbound_with_a_route_to_a_removed_cluster()
    caller = Caller(GRPC)
    await outbound.handle(caller)
    answer = dict(caller.response or ())
    assert answer[":status"] == "200" and caller.send_closed  # trailers-only
    assert answer["grpc-status"] == str(int(StatusCode.UNAVAILABLE))
    assert answer["grpc-message"] == "no cluster orders-v2"

"""A route's fault injection and local rate limit, applied by the caller's sidecar (A), with
curl and grpcio as the callers. The routes are in conftest.py's ``route_policy_hosts``."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from demo_services.proto import hello_pb2_grpc
from demo_services.proto.hello_pb2 import HelloRequest
from tests.integration.sidecar.conftest import A_HOST, OUTBOUND, Mesh, run_tool
from tests.integration.sidecar.test_grpc import channel_to

pytestmark = [pytest.mark.asyncio(loop_scope="package"), pytest.mark.interop,
              pytest.mark.timeout(60)]


async def curl(authority: str, *options: str) -> tuple[int, dict[str, str], str]:
    """curl (HTTP/1.1) to sidecar A for ``authority``: status, response headers, body."""
    code, out, err = await run_tool(
        "curl", "-sS", "--max-time", "10", "-D", "-", "--http1.1",
        "--connect-to", f"{authority}:80:{A_HOST}:{OUTBOUND}", *options,
        f"http://{authority}/")
    assert code == 0, f"curl failed ({code}): {err}"
    head, _, body = out.partition("\r\n\r\n")
    status_line, *lines = head.split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines)
    return int(status_line.split()[1]), headers, body


async def test_an_abort_answers_the_chaos_requests_and_lets_the_rest_through(
        mesh: Mesh) -> None:
    before = mesh.web.hits
    status, headers, body = await curl("web-abort", "-H", "x-chaos: yes")
    assert (status, headers["x-mesh-fault"]) == (503, "abort")
    assert body == "route web-abort/0: fault injected (abort)\n"
    assert mesh.web.hits == before  # it never reached the service
    status, headers, _ = await curl("web-abort")  # no header: no fault
    assert status == 200 and "x-mesh-fault" not in headers
    assert await mesh.a.metric("mesh_sidecar_faults_injected_total", route="web-abort/0",
                               kind="abort") == 1


async def test_a_delay_slows_the_call_and_past_the_timeout_is_a_504(mesh: Mesh) -> None:
    status, _, _ = await curl("web-delay", "-H", "x-chaos: yes")
    assert status == 200  # 0.2 s late, within the route's 0.5 s
    status, headers, body = await curl("web-stall")
    assert (status, headers["x-mesh-fault"]) == (504, "delay")
    assert body == "route web-stall/0: deadline exceeded during an injected delay of 5s\n"


async def test_a_grpc_abort_is_a_grpc_status(mesh: Mesh) -> None:
    async with channel_to("greeter-abort") as channel:
        stub: Any = hello_pb2_grpc.GreeterStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.SayHello(HelloRequest(name="x"), timeout=5.0)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert refused.value.details() == "route greeter-abort/0: fault injected (abort)"
    assert dict(refused.value.trailing_metadata() or ())["x-mesh-fault"] == "abort"


async def test_a_rate_limit_admits_its_burst_then_answers_429(mesh: Mesh) -> None:
    statuses = [(await curl("web-limited"))[:2] for _ in range(5)]
    assert [s for s, _ in statuses] == [200, 200, 200, 429, 429]
    assert statuses[-1][1]["x-mesh-ratelimited"] == "route web-limited/0"
    assert await mesh.a.metric("mesh_sidecar_rate_limited_total", direction="outbound",
                               limit="route web-limited/0") == 2


async def test_a_grpc_caller_over_the_limit_gets_resource_exhausted(mesh: Mesh) -> None:
    async with channel_to("greeter-limited") as channel:
        stub: Any = hello_pb2_grpc.GreeterStub(channel)
        for _ in range(2):
            assert (await stub.SayHello(HelloRequest(name="x"), timeout=5.0)).message == "hi x"
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.SayHello(HelloRequest(name="x"), timeout=5.0)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "local rate limit" in (refused.value.details() or "")

"""A gRPC failure sent in the trailers counts as a failure, not as the 200 its headers said.

A streaming gRPC server answers headers (``:status 200``) and messages first, and its status
last, in the trailers. The call can no longer be retried once the answer has begun, but
outlier detection, the balancer's success flag and the request metrics must see how it ended:
here sidecar O ("outcomes", its own process) calls the greeter through B with outlier
detection on; each Chat sends one good message and then UNAVAILABLE in its trailers.

    grpcio ─▶ O 127.0.20.40 ══mTLS══▶ B "greeter" ──h2c──▶ grpcio server
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
import pytest_asyncio

from demo_services.proto import hello_pb2_grpc
from demo_services.proto.hello_pb2 import HelloRequest
from tests.integration.sidecar.conftest import (
    B_HOST,
    INBOUND,
    OUTBOUND,
    Mesh,
    SidecarProcess,
    static_sidecar,
    stopping,
)

pytestmark = [pytest.mark.asyncio(loop_scope="package"), pytest.mark.interop,
              pytest.mark.timeout(60)]

O_HOST = "127.0.20.40"
CONSECUTIVE = 3  # failures in a row that eject the endpoint


@pytest_asyncio.fixture(loop_scope="package")
async def outcomes(mesh: Mesh, tmp_path_factory: pytest.TempPathFactory
                   ) -> AsyncIterator[SidecarProcess]:
    config = {
        "clusters": [{"name": "greeter", "outlier_detection": {
            "consecutive_5xx": CONSECUTIVE, "interval": "60s", "base_ejection_time": "60s"}}],
        "endpoints": {"greeter": [{"address": B_HOST, "port": INBOUND}]},
    }
    sidecar = static_sidecar("o", O_HOST, "client", config, mesh.pki,
                             tmp_path_factory.mktemp("grpc-trailers"))
    with stopping([sidecar]):
        await sidecar.wait_ready()
        yield sidecar


async def chat_that_fails_late(stub: Any) -> tuple[list[str], grpc.StatusCode]:
    """One good message, then UNAVAILABLE: the status arrives in the trailers."""
    call = stub.Chat(iter([HelloRequest(name="fine"),
                           HelloRequest(name="bad", fail_code=14, fail_message="going away")]),
                     timeout=5.0)
    replies = []
    try:
        async for reply in call:
            replies.append(reply.message)
    except grpc.aio.AioRpcError as error:
        return replies, error.code()
    return replies, grpc.StatusCode.OK


async def inbound_requests(mesh: Mesh, code: str) -> float:
    return await mesh.b.metric("mesh_sidecar_requests_total", direction="inbound",
                               cluster="greeter", code=code)


async def test_an_unavailable_in_the_trailers_counts_as_a_failure(
        outcomes: SidecarProcess, mesh: Mesh) -> None:
    # B's counts before: B serves the other tests of this package too.
    b_failed, b_ok = await inbound_requests(mesh, "5xx"), await inbound_requests(mesh, "2xx")
    async with grpc.aio.insecure_channel(f"{O_HOST}:{OUTBOUND}",
                                         options=[("grpc.default_authority", "greeter")]) as ch:
        stub = hello_pb2_grpc.GreeterStub(ch)
        ok = [reply.message async for reply in stub.Chat(iter([HelloRequest(name="ok")]),
                                                         timeout=5.0)]
        assert ok == ["hi ok"]  # OK in the trailers: a success
        for _ in range(CONSECUTIVE):
            replies, code = await chat_that_fails_late(stub)
            assert (replies, code) == (["hi fine"], grpc.StatusCode.UNAVAILABLE)

        # Three 5xx in a row as Envoy maps gRPC codes: the only endpoint is ejected, so the
        # next call is refused by O itself, before any message.
        assert await outcomes.metric("mesh_sidecar_outlier_ejections_total",
                                     cluster="greeter") == 1
        # A unary call: a streaming one answered before it has sent all its messages loses a
        # race inside grpcio's own client (INTERNAL "Failed execute_batch" on the send).
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.SayHello(HelloRequest(name="after"), timeout=5.0)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "no healthy endpoint" in (refused.value.details() or "")

    assert await outcomes.metric("mesh_sidecar_requests_total", direction="outbound",
                                 cluster="greeter", code="5xx") == CONSECUTIVE + 1
    assert await outcomes.metric("mesh_sidecar_requests_total", direction="outbound",
                                 cluster="greeter", code="2xx") == 1
    # B, on the inbound side, counts the same calls as O did, less the one O refused itself.
    assert await inbound_requests(mesh, "5xx") - b_failed == CONSECUTIVE
    assert await inbound_requests(mesh, "2xx") - b_ok == 1
    status, text = await outcomes.admin("/clusters")
    assert status == 200, text
    (endpoint,) = json.loads(text)["greeter"]["endpoints"]
    assert endpoint["ejected"]
    assert endpoint["active_requests"] == 0  # each call settled once, at its end

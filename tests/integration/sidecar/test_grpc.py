"""gRPC through the mesh: a grpcio client → sidecar A → (mTLS) → sidecar B → a grpcio server.

The client only knows sidecar A's outbound address and names the service in ``:authority``
(``greeter``); every call shape, 4 MiB messages, error statuses with their messages, and
deadlines must come through as if the two grpcio peers talked directly.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
import pytest_asyncio
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from demo_services.proto import hello_pb2_grpc
from demo_services.proto.hello_pb2 import HelloReply, HelloRequest
from mesh.grpc import Channel, StatusCode
from tests.integration.sidecar.apps import GRPCIO_LIMITS, MIB
from tests.integration.sidecar.conftest import A_HOST, OUTBOUND, STRICT_TIMEOUT, Mesh

pytestmark = [pytest.mark.asyncio(loop_scope="package"), pytest.mark.interop,
              pytest.mark.timeout(60)]

BIG = bytes(range(256)) * (4 * MIB // 256)
SAY_HELLO = "/hello.Greeter/SayHello"
UNICODE_MESSAGE = "nope: ünïcode, 100% of it, 日本 🙂"


def channel_to(authority: str) -> Any:
    """A grpcio channel to sidecar A that calls ``authority``."""
    return grpc.aio.insecure_channel(f"{A_HOST}:{OUTBOUND}", options=[
        ("grpc.default_authority", authority), *GRPCIO_LIMITS])


@pytest_asyncio.fixture(loop_scope="package")
async def stub(mesh: Mesh) -> AsyncIterator[Any]:
    async with channel_to("greeter") as channel:
        yield hello_pb2_grpc.GreeterStub(channel)


def expected_xfcc(mesh: Mesh) -> str:
    """What B must tell its app about the caller: B's ID, A's certificate hash, A's ID."""
    der = x509.load_pem_x509_certificate(mesh.pki.cert("client").read_bytes()) \
        .public_bytes(Encoding.DER)
    return (f"By={mesh.pki.spiffe_id('greeter')};Hash={hashlib.sha256(der).hexdigest()};"
            f"URI={mesh.pki.spiffe_id('client')}")


async def test_unary_call_reaches_the_grpcio_server_with_the_verified_identity(
        stub: Any, mesh: Mesh) -> None:
    reply = await stub.SayHello(HelloRequest(name="unary"), timeout=5.0)

    assert reply.message == "hi unary"
    assert reply.peer == expected_xfcc(mesh)


async def test_unary_call_with_4_mib_each_way(stub: Any) -> None:
    reply = await stub.SayHello(HelloRequest(name="big", payload=BIG), timeout=20.0)

    assert reply.payload == BIG


async def test_bidirectional_stream_interleaves_4_mib_messages(stub: Any) -> None:
    call = stub.Chat(timeout=20.0)

    for name, payload in [("ann", b"small"), ("bob", BIG), ("cy", BIG), ("dee", b"")]:
        await call.write(HelloRequest(name=name, payload=payload))
        reply = await call.read()  # each reply while the request stream is still open
        assert reply.message == f"hi {name}"
        assert reply.payload == payload
    await call.done_writing()

    assert await call.read() is grpc.aio.EOF
    assert await call.code() == grpc.StatusCode.OK


async def test_error_status_and_its_message_are_preserved(stub: Any) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.SayHello(HelloRequest(name="x", fail_code=StatusCode.FAILED_PRECONDITION,
                                         fail_message=UNICODE_MESSAGE), timeout=5.0)

    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert caught.value.details() == UNICODE_MESSAGE


async def test_error_status_after_replies_in_a_stream_is_preserved(stub: Any) -> None:
    call = stub.Chat(timeout=5.0)
    await call.write(HelloRequest(name="ann"))
    assert (await call.read()).message == "hi ann"

    await call.write(HelloRequest(fail_code=StatusCode.OUT_OF_RANGE, fail_message="ünïcode 100%"))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call.read()

    assert caught.value.code() == grpc.StatusCode.OUT_OF_RANGE
    assert caught.value.details() == "ünïcode 100%"


async def test_the_callers_deadline_travels_to_the_server_shortened(mesh: Mesh) -> None:
    # mesh.grpc's client sends its deadline exactly; grpcio rounds its own grpc-timeout up to
    # three significant digits (3.001 s goes out as 3010m), which would blur the comparison.
    channel = Channel(A_HOST, OUTBOUND, authority="greeter")
    try:
        await channel.unary_unary(SAY_HELLO, HelloReply.FromString)(
            HelloRequest(name="budget"), timeout=3.0)
    finally:
        await channel.close()

    remaining = mesh.greeter.call_named("budget")["time_remaining"]
    assert remaining is not None and 2.0 < remaining < 3.0


async def test_callers_deadline_exceeded_cancels_the_servers_work(
        stub: Any, mesh: Mesh) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.SayHello(HelloRequest(name="late", delay_ms=10_000), timeout=0.3)

    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert await _next_cancelled(mesh) == "late"


async def test_route_timeout_gives_deadline_exceeded_and_cancels_the_server(
        mesh: Mesh) -> None:
    async with channel_to("greeter-strict") as channel:
        stub = hello_pb2_grpc.GreeterStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            # The caller would wait 10 s; the route says STRICT_TIMEOUT.
            await stub.SayHello(HelloRequest(name="slow-route", delay_ms=10_000), timeout=10.0)

    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # A's deadline, or B's (which got the remaining time), whichever passes first.
    assert caught.value.details() in {
        "cluster greeter: deadline exceeded",
        "greeter: the app did not answer within the caller's deadline"}
    assert await _next_cancelled(mesh) == "slow-route"


async def test_route_timeout_caps_the_deadline_passed_downstream(mesh: Mesh) -> None:
    async with channel_to("greeter-strict") as channel:
        await hello_pb2_grpc.GreeterStub(channel).SayHello(HelloRequest(name="capped"),
                                                            timeout=10.0)

    remaining = mesh.greeter.call_named("capped")["time_remaining"]
    assert remaining is not None and 0 < remaining <= STRICT_TIMEOUT


async def test_authorization_denies_a_method_and_allows_the_others(stub: Any,
                                                                    mesh: Mesh) -> None:
    async def names() -> AsyncIterator[HelloRequest]:
        yield HelloRequest(name="ann")

    denied = "mesh_sidecar_authz_denied_total"
    before = await mesh.b.metric(denied, principal="cluster.local/ns/default/sa/client")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.SayHelloToAll(names(), timeout=5.0)
    allowed = await stub.SayHello(HelloRequest(name="allowed"), timeout=5.0)

    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert caught.value.details() == ("cluster.local/ns/default/sa/client is denied "
                                      "/hello.Greeter/SayHelloToAll by policy")
    assert allowed.message == "hi allowed"
    assert await mesh.b.metric(denied, principal="cluster.local/ns/default/sa/client") == \
        before + 1


async def test_unknown_service_is_unimplemented_with_a_clear_message(mesh: Mesh) -> None:
    async with channel_to("nowhere") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await hello_pb2_grpc.GreeterStub(channel).SayHello(HelloRequest(), timeout=5.0)

    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert caught.value.details() == "no route to nowhere/hello.Greeter/SayHello"


async def test_unreachable_endpoint_is_unavailable_at_once(mesh: Mesh) -> None:
    async with channel_to("ghost") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await hello_pb2_grpc.GreeterStub(channel).SayHello(HelloRequest(), timeout=5.0)

    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert caught.value.details().startswith("cluster ghost: upstream connect-failure "
                                             "(127.0.20.9:15006)")


async def _next_cancelled(mesh: Mesh) -> str:
    """The name of the next call the greeter saw cancelled (waiting at most 5 s)."""
    return await asyncio.wait_for(mesh.greeter.cancelled.get(), 5.0)

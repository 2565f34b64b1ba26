"""Interop: real grpcio peers (``grpc.aio``) against mesh.grpc, both ways, plaintext and mTLS.

A grpcio client calls the hello Greeter served by mesh.grpc, and a mesh.grpc Channel calls a
grpcio server implementing the same service. Each test runs twice: over plaintext h2c, and over
mTLS with the mesh PKI, where grpcio's own TLS stack (BoringSSL) checks the certificates and the
host name (``localhost``, a DNS SAN of the workload certificates) and each side sees the other's
SPIFFE ID.
"""

from __future__ import annotations

import asyncio
import gc
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest

from demo_services.greeter import greeter
from demo_services.proto import hello_pb2_grpc
from demo_services.proto.hello_pb2 import HelloReply, HelloRequest
from mesh import tls
from mesh.grpc import Cardinality, Channel, Context, GrpcError, GrpcServer, StatusCode
from mesh.grpc.deadline import parse_timeout
from mesh.http2 import Server
from mesh.identity import SpiffeId
from tests.pki_fixtures import MeshPki
from tests.pki_fixtures import mesh_pki as mesh_pki  # a pytest fixture, used by name

pytestmark = [pytest.mark.interop, pytest.mark.timeout(20)]

MIB = 1024 * 1024
BIG = bytes(range(256)) * (4 * MIB // 256)  # 4 MiB: over gRPC's default limit once framed
MAX_MESSAGE = 8 * MIB
GRPCIO_LIMITS = [("grpc.max_send_message_length", MAX_MESSAGE),
                 ("grpc.max_receive_message_length", MAX_MESSAGE)]
SAY_HELLO = "/hello.Greeter/SayHello"
CHAT = "/hello.Greeter/Chat"
HANG = "/test.Probe/Hang"
UNICODE_MESSAGE = "nope: ünïcode, 100% of it, 日本 🙂"
GRPCIO_CODES = {code.value[0]: code for code in grpc.StatusCode}

reply = HelloReply.FromString


# -- plaintext or mTLS -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Security:
    """What each kind of peer needs for one transport: plaintext (all None) or mTLS."""

    mesh_server: ssl.SSLContext | None
    mesh_client: ssl.SSLContext | None
    grpcio_server: Any  # grpc.ServerCredentials
    grpcio_channel: Any  # grpc.ChannelCredentials
    client_id: SpiffeId | None
    server_id: SpiffeId | None


@pytest.fixture(params=["plaintext", "mtls"])
def security(request: pytest.FixtureRequest, mesh_pki: MeshPki) -> Security:
    if request.param == "plaintext":
        return Security(mesh_server=None, mesh_client=None, grpcio_server=None,
                        grpcio_channel=None, client_id=None, server_id=None)
    pki = mesh_pki
    return Security(
        mesh_server=tls.server_context(pki.server.cert, pki.server.key, pki.ca_cert),
        mesh_client=tls.client_context(pki.client.cert, pki.client.key, pki.ca_cert),
        grpcio_server=grpc.ssl_server_credentials(
            [(pki.server.key.read_bytes(), pki.server.cert.read_bytes())],
            root_certificates=pki.ca_cert.read_bytes(), require_client_auth=True),
        grpcio_channel=grpc.ssl_channel_credentials(
            pki.ca_cert.read_bytes(), pki.client.key.read_bytes(), pki.client.cert.read_bytes()),
        client_id=pki.client.spiffe_id,
        server_id=pki.server.spiffe_id,
    )


def expected_peer(spiffe_id: SpiffeId | None) -> str:
    """How the Greeter names its caller in ``HelloReply.peer``."""
    return "plaintext" if spiffe_id is None else str(spiffe_id)


# -- a grpcio client calling a mesh.grpc server ----------------------------------------------


class Hang:
    """A mesh handler that never answers; records that it was cancelled."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.cancelled = asyncio.Event()

    async def __call__(self, request: HelloRequest, context: Context) -> HelloReply:
        self.started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        raise AssertionError("an Event nobody sets was set")


@dataclass(frozen=True, slots=True, kw_only=True)
class MeshPeer:
    port: int
    hang: Hang


@pytest.fixture
async def mesh_server(security: Security) -> AsyncIterator[MeshPeer]:
    hang = Hang()
    grpc_server = greeter(GrpcServer(max_message_size=MAX_MESSAGE))
    grpc_server.add(HANG, Cardinality.UNARY_UNARY, HelloRequest.FromString, hang)
    server = Server(grpc_server.handle)
    await server.start("127.0.0.1", 0, ssl=security.mesh_server)
    try:
        yield MeshPeer(port=server.port, hang=hang)
    finally:
        # A grpcio channel keeps its connection open while any of its calls lives, and a failed
        # call lives on in the reference cycle of the AioRpcError that pytest.raises caught.
        # Collect it, so grpcio hangs up: else the TLS shutdown of our side of the connection
        # waits for grpcio's close_notify (up to asyncio's 30 s ssl_shutdown_timeout).
        gc.collect()
        await server.shutdown(grace=1.0)


def grpcio_channel(security: Security, port: int, *, options: list[tuple[str, Any]]) -> Any:
    if security.grpcio_channel is None:
        return grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=options)
    # grpcio checks the server's certificate against this name (a DNS SAN of the certificate).
    return grpc.aio.secure_channel(f"127.0.0.1:{port}", security.grpcio_channel,
                                   options=[*options, ("grpc.ssl_target_name_override",
                                                       "localhost")])


@pytest.fixture
async def grpcio_to_mesh(security: Security, mesh_server: MeshPeer) -> AsyncIterator[Any]:
    async with grpcio_channel(security, mesh_server.port, options=GRPCIO_LIMITS) as channel:
        yield channel


@pytest.fixture
def stub(grpcio_to_mesh: Any) -> Any:
    return hello_pb2_grpc.GreeterStub(grpcio_to_mesh)


async def test_grpcio_unary_call_to_mesh(stub: Any, security: Security) -> None:
    response = await stub.SayHello(HelloRequest(name="grpcio"), timeout=5.0)

    assert response.message == "hello, grpcio"
    assert response.peer == expected_peer(security.client_id)
    # grpcio's grpc-timeout, as the mesh server received it: parsed, and no more than was given.
    assert 4.0 < parse_timeout(response.deadline) <= 5.0


async def test_grpcio_unary_call_to_mesh_with_4_mib_each_way(stub: Any) -> None:
    response = await stub.SayHello(HelloRequest(name="big", payload=BIG), timeout=10.0)

    assert response.payload == BIG


async def test_grpcio_bidirectional_call_to_mesh(stub: Any, security: Security) -> None:
    call = stub.Chat(timeout=10.0)

    for name, payload in [("ann", b"small"), ("bob", BIG), ("cy", BIG)]:
        await call.write(HelloRequest(name=name, payload=payload))
        response = await call.read()  # each reply while the request stream is still open
        assert response.message == f"hello, {name}"
        assert response.payload == payload
        assert response.peer == expected_peer(security.client_id)
    await call.done_writing()

    assert await call.read() is grpc.aio.EOF
    assert await call.code() == grpc.StatusCode.OK


async def test_mesh_error_status_reaches_grpcio(stub: Any) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.SayHello(HelloRequest(name="x", fail_code=StatusCode.FAILED_PRECONDITION,
                                         fail_message=UNICODE_MESSAGE), timeout=5.0)

    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert caught.value.details() == UNICODE_MESSAGE


async def test_mesh_error_status_after_replies_reaches_grpcio(stub: Any) -> None:
    call = stub.Chat(timeout=5.0)
    await call.write(HelloRequest(name="ann"))
    assert (await call.read()).message == "hello, ann"

    # The failure comes in trailers after a reply, while grpcio is still sending.
    await call.write(HelloRequest(fail_code=StatusCode.OUT_OF_RANGE, fail_message="ünïcode 100%"))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call.read()

    assert caught.value.code() == grpc.StatusCode.OUT_OF_RANGE
    assert caught.value.details() == "ünïcode 100%"


async def test_grpcio_deadline_against_mesh(grpcio_to_mesh: Any, mesh_server: MeshPeer) -> None:
    hang = grpcio_to_mesh.unary_unary(HANG, request_serializer=HelloRequest.SerializeToString,
                                      response_deserializer=reply)

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await hang(HelloRequest(), timeout=0.2)
    await mesh_server.hang.cancelled.wait()  # the mesh handler was stopped too

    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


async def test_grpcio_message_over_the_mesh_limit_is_resource_exhausted(
        security: Security, mesh_server: MeshPeer) -> None:
    # A grpcio client that would send twice as much as the mesh server takes.
    options = [("grpc.max_send_message_length", 2 * MAX_MESSAGE)]
    async with grpcio_channel(security, mesh_server.port, options=options) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await hello_pb2_grpc.GreeterStub(channel).SayHello(
                HelloRequest(payload=bytes(MAX_MESSAGE)), timeout=10.0)

    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert f"exceeds the limit of {MAX_MESSAGE}" in caught.value.details()


# -- a mesh.grpc client calling a grpcio server ----------------------------------------------


class GrpcioGreeter(hello_pb2_grpc.GreeterServicer):
    """The Greeter in grpcio: records who called, the time it was given, and cancellations."""

    def __init__(self) -> None:
        self.peers: list[str] = []
        self.time_remaining: list[float | None] = []
        self.cancelled = asyncio.Event()

    async def SayHello(self, request: HelloRequest, context: Any) -> HelloReply:
        self.peers += [v.decode() for v in context.auth_context().get("peer_spiffe_id", [])]
        self.time_remaining.append(context.time_remaining())
        if request.delay_ms:
            try:
                await asyncio.sleep(request.delay_ms / 1000)
            except asyncio.CancelledError:
                self.cancelled.set()
                raise
        if request.fail_code:
            await context.abort(GRPCIO_CODES[request.fail_code], request.fail_message)
        return HelloReply(message=f"hi {request.name}", payload=request.payload)

    async def Chat(self, requests: Any, context: Any) -> AsyncIterator[HelloReply]:
        async for request in requests:
            if request.fail_code:
                await context.abort(GRPCIO_CODES[request.fail_code], request.fail_message)
            yield HelloReply(message=f"hi {request.name}", payload=request.payload)


@dataclass(frozen=True, slots=True, kw_only=True)
class GrpcioPeer:
    port: int
    servicer: GrpcioGreeter
    security: Security
    channels: list[Channel]

    def channel(self, **options: Any) -> Channel:
        """A mesh Channel to this server; the fixture closes it once the server has stopped."""
        channel = Channel("127.0.0.1", self.port, ssl=self.security.mesh_client, **options)
        self.channels.append(channel)
        return channel


@pytest.fixture
async def grpcio_server(security: Security) -> AsyncIterator[GrpcioPeer]:
    servicer = GrpcioGreeter()
    server = grpc.aio.server(options=GRPCIO_LIMITS)
    hello_pb2_grpc.add_GreeterServicer_to_server(servicer, server)
    if security.grpcio_server is None:
        port = server.add_insecure_port("127.0.0.1:0")
    else:
        port = server.add_secure_port("127.0.0.1:0", security.grpcio_server)
    await server.start()
    peer = GrpcioPeer(port=port, servicer=servicer, security=security, channels=[])
    try:
        yield peer
    finally:
        # grpcio first: it hangs up, and our channels then close at once. The other way round,
        # a channel's TLS shutdown waits for a close_notify that grpcio does not send (up to
        # asyncio's 30 s ssl_shutdown_timeout, whatever the grace given to Channel.close).
        await server.stop(None)
        for channel in peer.channels:
            await channel.close()


@pytest.fixture
def channel(grpcio_server: GrpcioPeer) -> Channel:
    return grpcio_server.channel(max_message_size=MAX_MESSAGE)


async def test_mesh_unary_call_to_grpcio(channel: Channel, grpcio_server: GrpcioPeer,
                                         security: Security) -> None:
    response = await channel.unary_unary(SAY_HELLO, reply)(HelloRequest(name="mesh"),
                                                           timeout=5.0)

    assert response.message == "hi mesh"
    # grpcio understood our grpc-timeout.
    (remaining,) = grpcio_server.servicer.time_remaining
    assert remaining is not None and 4.0 < remaining <= 5.0
    # Each side authenticated the other by SPIFFE ID (nobody, in plaintext).
    expected_client = [] if security.client_id is None else [str(security.client_id)]
    assert grpcio_server.servicer.peers == expected_client
    conn = await channel.connection()
    server_id = None if conn.ssl_object is None else tls.peer_spiffe_id(conn.ssl_object)
    assert server_id == security.server_id


async def test_mesh_unary_call_to_grpcio_with_4_mib_each_way(channel: Channel) -> None:
    response = await channel.unary_unary(SAY_HELLO, reply)(HelloRequest(payload=BIG),
                                                           timeout=10.0)

    assert response.payload == BIG


async def test_mesh_bidirectional_call_to_grpcio(channel: Channel) -> None:
    async with channel.stream_stream(CHAT, reply)(timeout=10.0) as call:
        for name, payload in [("ann", b"small"), ("bob", BIG), ("cy", BIG)]:
            await call.send(HelloRequest(name=name, payload=payload))
            response = await call.receive()
            assert response is not None
            assert response.message == f"hi {name}"
            assert response.payload == payload
        await call.done_writing()

        assert await call.receive() is None
        assert call.code is StatusCode.OK


async def test_grpcio_error_status_reaches_mesh(channel: Channel) -> None:
    with pytest.raises(GrpcError) as caught:
        await channel.unary_unary(SAY_HELLO, reply)(
            HelloRequest(fail_code=StatusCode.FAILED_PRECONDITION, fail_message=UNICODE_MESSAGE),
            timeout=5.0)

    assert caught.value.code is StatusCode.FAILED_PRECONDITION
    assert caught.value.message == UNICODE_MESSAGE


async def test_grpcio_error_status_before_replies_reaches_mesh(channel: Channel) -> None:
    async with channel.stream_stream(CHAT, reply)(timeout=5.0) as call:
        # grpcio ends the call while we still send: trailers-only, then RST_STREAM(NO_ERROR).
        await call.send(HelloRequest(fail_code=StatusCode.PERMISSION_DENIED,
                                     fail_message="ünïcode 100%"))
        with pytest.raises(GrpcError) as caught:
            await call.receive()

    assert caught.value.code is StatusCode.PERMISSION_DENIED
    assert caught.value.message == "ünïcode 100%"


async def test_grpcio_error_status_after_replies_reaches_mesh(channel: Channel) -> None:
    async with channel.stream_stream(CHAT, reply)(timeout=5.0) as call:
        await call.send(HelloRequest(name="ann"))
        first = await call.receive()

        # grpcio ends the call while we still send: trailers, then RST_STREAM(NO_ERROR).
        await call.send(HelloRequest(fail_code=StatusCode.OUT_OF_RANGE,
                                     fail_message="ünïcode 100%"))
        with pytest.raises(GrpcError) as caught:
            await call.receive()

    assert first is not None and first.message == "hi ann"
    assert caught.value.code is StatusCode.OUT_OF_RANGE
    assert caught.value.message == "ünïcode 100%"


async def test_mesh_deadline_against_grpcio(channel: Channel, grpcio_server: GrpcioPeer) -> None:
    with pytest.raises(GrpcError) as caught:
        await channel.unary_unary(SAY_HELLO, reply)(HelloRequest(delay_ms=10_000), timeout=0.2)
    await grpcio_server.servicer.cancelled.wait()  # the grpcio handler was stopped too

    assert caught.value.code is StatusCode.DEADLINE_EXCEEDED


async def test_grpcio_message_over_the_mesh_channels_limit_is_resource_exhausted(
        grpcio_server: GrpcioPeer) -> None:
    small = grpcio_server.channel()  # gRPC's default limit: 4 MiB

    with pytest.raises(GrpcError) as caught:
        # The grpcio server takes 8 MiB, and echoes the payload back: too much for us.
        await small.unary_unary(SAY_HELLO, reply)(HelloRequest(payload=BIG), timeout=10.0)

    assert caught.value.code is StatusCode.RESOURCE_EXHAUSTED
    assert "exceeds the limit of 4194304" in caught.value.message

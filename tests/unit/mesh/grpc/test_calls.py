"""Whole calls: a mesh.grpc Channel against a mesh.grpc server in one loop, over loopback sockets.

The server runs the hello Greeter (``demo_services/greeter.py``) for the four call shapes, plus
probe methods that record what a handler went through: that it started, that it was cancelled,
and whether an RST_STREAM reached its stream. Tests wait on those events, not for time to pass:
the only timers that run are the deadlines under test.
"""

from __future__ import annotations

import asyncio
import ssl as ssl_module
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest

from demo_services.greeter import greeter
from demo_services.proto.hello_pb2 import HelloReply, HelloRequest
from mesh import tls
from mesh.grpc import (
    Cardinality,
    Channel,
    Context,
    Deadline,
    GrpcError,
    GrpcServer,
    StatusCode,
)
from mesh.grpc.deadline import parse_timeout
from mesh.grpc.framing import encode_message
from mesh.http2 import (
    ConnectionClosed,
    ErrorCode,
    Handler,
    Limits,
    Server,
    Stream,
    StreamReset,
    connect,
    request,
)
from tests.pki_fixtures import MeshPki
from tests.pki_fixtures import mesh_pki as mesh_pki  # a pytest fixture, used by name

pytestmark = pytest.mark.timeout(10)

SAY_HELLO = "/hello.Greeter/SayHello"
SAY_HELLO_MANY = "/hello.Greeter/SayHelloMany"
SAY_HELLO_TO_ALL = "/hello.Greeter/SayHelloToAll"
CHAT = "/hello.Greeter/Chat"
HANG = "/test.Probe/Hang"
COUNT = "/test.Probe/Count"
PARTIAL = "/test.Probe/Partial"
REFUSE = "/test.Probe/Refuse"
CRASH = "/test.Probe/Crash"

GRPC_REQUEST_HEADERS = [("content-type", "application/grpc"), ("te", "trailers")]
reply = HelloReply.FromString


class Hang:
    """A unary handler that never answers; records that it started and how it was stopped."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.cancelled = asyncio.Event()
        self.reset_code: int | None = None  # the RST_STREAM code its stream saw, if any

    async def __call__(self, request: HelloRequest, context: Context) -> HelloReply:
        self.started.set()
        try:
            await asyncio.Event().wait()  # forever: only a cancellation ends this
        except asyncio.CancelledError:
            self.cancelled.set()
            try:
                await context.stream.read()  # returns at once: the request was read to the end
            except StreamReset as error:
                self.reset_code = error.code
            except ConnectionClosed:
                pass  # the whole connection went: no RST_STREAM to see
            raise
        raise AssertionError("an Event nobody sets was set")


class Count:
    """A unary handler that counts the calls running at once; ``release.clear()`` holds them."""

    def __init__(self) -> None:
        self.active = 0
        self.peak = 0
        self.two_running = asyncio.Event()
        self.release = asyncio.Event()
        self.release.set()

    async def __call__(self, request: HelloRequest, context: Context) -> HelloReply:
        self.active += 1
        self.peak = max(self.peak, self.active)
        if self.active == 2:
            self.two_running.set()
        try:
            await self.release.wait()
            return HelloReply(message=request.name)
        finally:
            self.active -= 1


async def partial(request: HelloRequest, context: Context) -> AsyncIterator[HelloReply]:
    """Server streaming: two replies, then a failure (so the status comes in real trailers)."""
    yield HelloReply(message="first")
    yield HelloReply(message="second")
    context.trailing_metadata.append(("x-failed-after", "2"))
    context.abort(StatusCode.ABORTED, "gave up after two")


async def refuse(request: HelloRequest, context: Context) -> HelloReply:
    """Fails before any reply (a trailers-only response), with trailing metadata."""
    context.trailing_metadata.append(("retry-after-ms", "250"))
    context.abort(StatusCode.RESOURCE_EXHAUSTED, f"too busy for {request.name}")


async def crash(request: HelloRequest, context: Context) -> HelloReply:
    raise KeyError("no greeting")


def probe_server(hang: Hang, count: Count) -> GrpcServer:
    """The Greeter plus the probe methods on one server."""
    server = greeter(GrpcServer())
    parse = HelloRequest.FromString
    server.add(HANG, Cardinality.UNARY_UNARY, parse, hang)
    server.add(COUNT, Cardinality.UNARY_UNARY, parse, count)
    server.add(PARTIAL, Cardinality.UNARY_STREAM, parse, partial)
    server.add(REFUSE, Cardinality.UNARY_UNARY, parse, refuse)
    server.add(CRASH, Cardinality.UNARY_UNARY, parse, crash)
    return server


def single_method(path: str, cardinality: Cardinality, handler: Callable[..., Any]) -> GrpcServer:
    server = GrpcServer()
    server.add(path, cardinality, HelloRequest.FromString, handler)
    return server


@asynccontextmanager
async def serving(handler: Handler, *, ssl: ssl_module.SSLContext | None = None,
                  limits: Limits = Limits()) -> AsyncIterator[Server]:
    server = Server(handler, limits=limits)
    await server.start("127.0.0.1", 0, ssl=ssl)
    try:
        yield server
    finally:
        await server.shutdown(grace=1.0)


@asynccontextmanager
async def channel_to(server: Server, **options: Any) -> AsyncIterator[Channel]:
    channel = Channel("127.0.0.1", server.port, **options)
    try:
        yield channel
    finally:
        await channel.close()


@pytest.fixture
def hang() -> Hang:
    return Hang()


@pytest.fixture
def count() -> Count:
    return Count()


@pytest.fixture
async def server(hang: Hang, count: Count) -> AsyncIterator[Server]:
    async with serving(probe_server(hang, count).handle) as running:
        yield running


@pytest.fixture
async def channel(server: Server) -> AsyncIterator[Channel]:
    async with channel_to(server) as opened:
        yield opened


# -- the four call shapes --------------------------------------------------------------------


async def test_unary_call(channel: Channel) -> None:
    say_hello = channel.unary_unary(SAY_HELLO, reply)

    response = await say_hello(HelloRequest(name="mesh", payload=b"\x00\xff" * 1000))

    assert response.message == "hello, mesh"
    assert response.payload == b"\x00\xff" * 1000
    assert response.peer == "plaintext"
    assert response.deadline == ""  # no timeout given: no grpc-timeout sent


async def test_unary_call_sends_its_timeout_as_grpc_timeout(channel: Channel) -> None:
    say_hello = channel.unary_unary(SAY_HELLO, reply)

    response = await say_hello(HelloRequest(name="mesh"), timeout=5.0)

    # What the server received is the time that remained when the stream opened: at most 5 s
    # (rounded up, yet never more than the caller has), and not much less.
    assert 4.0 < parse_timeout(response.deadline) <= 5.0


async def test_server_streaming_call(channel: Channel) -> None:
    say_hello_many = channel.unary_stream(SAY_HELLO_MANY, reply)

    messages = [r.message async for r in say_hello_many(HelloRequest(name="mesh", count=3))]

    assert messages == ["hello #0, mesh", "hello #1, mesh", "hello #2, mesh"]


async def test_server_streaming_call_with_no_replies_ends_ok(channel: Channel) -> None:
    async with channel.call(SAY_HELLO_MANY, reply) as call:
        await call.send(HelloRequest(name="nobody", count=0), end=True)

        assert await call.receive() is None
        assert call.code is StatusCode.OK


async def test_client_streaming_call(channel: Channel) -> None:
    say_hello_to_all = channel.stream_unary(SAY_HELLO_TO_ALL, reply)

    response = await say_hello_to_all(HelloRequest(name=n) for n in ["ann", "bob", "cy"])

    assert response.message == "hello, ann, bob, cy"


async def test_client_streaming_call_from_an_async_iterable(channel: Channel) -> None:
    say_hello_to_all = channel.stream_unary(SAY_HELLO_TO_ALL, reply)

    async def names() -> AsyncIterator[HelloRequest]:
        for name in ["dee", "eve"]:
            await asyncio.sleep(0)
            yield HelloRequest(name=name)

    response = await say_hello_to_all(names())

    assert response.message == "hello, dee, eve"


async def test_bidirectional_call_interleaves_requests_and_replies(channel: Channel) -> None:
    chat = channel.stream_stream(CHAT, reply)

    async with chat() as call:
        for name in ["ann", "bob", "cy"]:
            await call.send(HelloRequest(name=name))
            # Each reply arrives while the request stream is still open.
            response = await call.receive()
            assert response is not None
            assert response.message == f"hello, {name}"
        await call.done_writing()

        assert await call.receive() is None
        assert call.code is StatusCode.OK
        assert ("grpc-accept-encoding", "identity") in call.initial_metadata


# -- statuses --------------------------------------------------------------------------------


async def test_error_status_from_the_handler_reaches_the_caller(channel: Channel) -> None:
    say_hello = channel.unary_unary(SAY_HELLO, reply)
    message = "nope: ünïcode, 100% of it, 日本 🙂"

    with pytest.raises(GrpcError) as caught:
        await say_hello(HelloRequest(name="x", fail_code=StatusCode.FAILED_PRECONDITION,
                                     fail_message=message))

    assert caught.value.code is StatusCode.FAILED_PRECONDITION
    assert caught.value.message == message


async def test_failure_before_any_reply_is_a_trailers_only_response(server: Server) -> None:
    conn = await connect("127.0.0.1", server.port)
    try:
        response = await request(conn, "POST", REFUSE, authority="probe",
                                 headers=GRPC_REQUEST_HEADERS,
                                 body=encode_message(HelloRequest(name="ann").SerializeToString()))
    finally:
        await conn.shutdown(grace=1.0)

    # One HEADERS frame with END_STREAM: HTTP status, content type and gRPC status together.
    assert response.status == 200
    assert response.header("content-type") == "application/grpc"
    assert response.header("grpc-status") == str(int(StatusCode.RESOURCE_EXHAUSTED))
    assert response.header("grpc-message") == "too busy for ann"
    assert response.header("retry-after-ms") == "250"
    assert response.body == b""
    assert response.trailers is None


async def test_trailers_only_error_gives_the_caller_its_metadata(channel: Channel) -> None:
    refused = channel.unary_unary(REFUSE, reply)

    with pytest.raises(GrpcError) as caught:
        await refused(HelloRequest(name="ann"))

    assert caught.value.code is StatusCode.RESOURCE_EXHAUSTED
    assert caught.value.message == "too busy for ann"
    # Only the handler's metadata: not the response headers that share the frame.
    assert caught.value.trailers == [("retry-after-ms", "250")]


async def test_a_successful_call_is_headers_data_then_trailers(server: Server) -> None:
    conn = await connect("127.0.0.1", server.port)
    try:
        response = await request(conn, "POST", SAY_HELLO, authority="probe",
                                 headers=GRPC_REQUEST_HEADERS,
                                 body=encode_message(HelloRequest(name="ann").SerializeToString()))
    finally:
        await conn.shutdown(grace=1.0)

    assert response.status == 200
    assert response.header("content-type") == "application/grpc"
    assert response.header("grpc-status") is None  # the status comes last, in trailers
    assert response.body == encode_message(
        HelloReply(message="hello, ann", peer="plaintext").SerializeToString())
    assert response.trailers == [("grpc-status", "0")]


async def test_failure_after_replies_comes_in_trailers(channel: Channel) -> None:
    async with channel.call(PARTIAL, reply) as call:
        await call.send(HelloRequest(), end=True)
        first, second = await call.receive(), await call.receive()

        with pytest.raises(GrpcError) as caught:
            await call.receive()

    assert first is not None and first.message == "first"
    assert second is not None and second.message == "second"
    assert caught.value.code is StatusCode.ABORTED
    assert caught.value.message == "gave up after two"
    assert caught.value.trailers == [("x-failed-after", "2")]
    assert call.code is StatusCode.ABORTED
    assert ("content-type", "application/grpc") in call.initial_metadata  # headers came first


async def test_unknown_method_is_unimplemented(channel: Channel) -> None:
    missing = channel.unary_unary("/hello.Greeter/SayGoodbye", reply)

    with pytest.raises(GrpcError) as caught:
        await missing(HelloRequest(name="x"))

    assert caught.value.code is StatusCode.UNIMPLEMENTED
    assert "/hello.Greeter/SayGoodbye" in caught.value.message


async def test_exception_in_handler_is_unknown(channel: Channel,
                                                caplog: pytest.LogCaptureFixture) -> None:
    crashing = channel.unary_unary(CRASH, reply)

    with pytest.raises(GrpcError) as caught:
        await crashing(HelloRequest())

    assert caught.value.code is StatusCode.UNKNOWN
    assert caught.value.message == "KeyError: 'no greeting'"
    assert f"gRPC handler for {CRASH} failed" in caplog.text  # with its traceback


@pytest.mark.parametrize("timeout", [None, 5.0])
async def test_handlers_own_timeout_error_is_not_the_calls_deadline(
        timeout: float | None) -> None:
    async def slow_backend(request: HelloRequest, context: Context) -> HelloReply:
        raise TimeoutError("backend took too long")  # e.g. its own asyncio.timeout fired

    grpc_server = single_method(SAY_HELLO, Cardinality.UNARY_UNARY, slow_backend)
    async with serving(grpc_server.handle) as server, channel_to(server) as channel:
        with pytest.raises(GrpcError) as caught:
            await channel.unary_unary(SAY_HELLO, reply)(HelloRequest(), timeout=timeout)

    assert caught.value.code is StatusCode.UNKNOWN
    assert caught.value.message == "TimeoutError: backend took too long"


async def test_request_over_the_servers_message_limit_is_resource_exhausted() -> None:
    async with serving(greeter(GrpcServer(max_message_size=1024)).handle) as small, \
            channel_to(small) as channel:
        say_hello = channel.unary_unary(SAY_HELLO, reply)

        with pytest.raises(GrpcError) as caught:
            await say_hello(HelloRequest(payload=b"x" * 2048))
        fits = await say_hello(HelloRequest(payload=b"x" * 1000))

    assert caught.value.code is StatusCode.RESOURCE_EXHAUSTED
    assert "limit of 1024" in caught.value.message
    assert fits.payload == b"x" * 1000


async def test_reply_over_the_callers_message_limit_is_resource_exhausted(
        server: Server) -> None:
    async with channel_to(server, max_message_size=1024) as channel:
        say_hello = channel.unary_unary(SAY_HELLO, reply)

        with pytest.raises(GrpcError) as caught:
            await say_hello(HelloRequest(payload=b"x" * 2048))

    assert caught.value.code is StatusCode.RESOURCE_EXHAUSTED
    assert "limit of 1024" in caught.value.message


async def test_non_grpc_request_is_refused_with_415(server: Server) -> None:
    conn = await connect("127.0.0.1", server.port)
    try:
        response = await request(conn, "GET", SAY_HELLO, authority="probe")
    finally:
        await conn.shutdown(grace=1.0)

    assert response.status == 415


@pytest.mark.parametrize("arrived_before_receive", [False, True])
async def test_non_grpc_http_error_response_maps_to_a_status(
        arrived_before_receive: bool) -> None:
    sent = asyncio.Event()

    async def unavailable(stream: Stream) -> None:  # what a proxy says when its upstream is down
        stream.send_headers([(":status", "503"), ("content-type", "text/plain")])
        await stream.send_data(b"upstream connect error\n", end_stream=True)
        sent.set()

    async with (
        serving(unavailable) as proxy,
        channel_to(proxy) as channel,
        channel.call(SAY_HELLO, reply) as call,
    ):
        await call.send(HelloRequest(), end=True)
        if arrived_before_receive:
            await sent.wait()
            # The PING's answer comes after the response: once it is in, so is the response.
            await (await channel.connection()).ping()
        with pytest.raises(GrpcError) as caught:
            await call.receive()

    # The text body is not taken for gRPC messages: the HTTP status decides.
    assert caught.value.code is StatusCode.UNAVAILABLE
    assert caught.value.message == "HTTP status 503"


async def test_trailers_only_then_rst_stream_no_error_keeps_the_status() -> None:
    # A server may end a call before the client's request stream has ended, and tell the
    # client to stop sending with RST_STREAM(NO_ERROR) (RFC 9113 §8.1): grpcio servers do.
    sent = asyncio.Event()

    async def refuse_early(stream: Stream) -> None:
        stream.send_headers([(":status", "200"), ("content-type", "application/grpc"),
                             ("grpc-status", str(int(StatusCode.PERMISSION_DENIED))),
                             ("grpc-message", "not you")], end_stream=True)
        stream.reset(ErrorCode.NO_ERROR)
        sent.set()

    async with (
        serving(refuse_early) as server,
        channel_to(server) as channel,
        channel.stream_stream(CHAT, reply)() as call,
    ):
        await call.send(HelloRequest(name="ann"))
        await sent.wait()
        await (await channel.connection()).ping()  # the response and the reset are in
        with pytest.raises(GrpcError) as caught:
            await call.receive()

    assert caught.value.code is StatusCode.PERMISSION_DENIED
    assert caught.value.message == "not you"


async def test_response_then_rst_stream_no_error_keeps_replies_and_status() -> None:
    async def answer_early(stream: Stream) -> None:
        stream.send_headers([(":status", "200"), ("content-type", "application/grpc")])
        await stream.send_data(encode_message(HelloReply(message="early").SerializeToString()))
        stream.send_trailers([("grpc-status", "0")])
        stream.reset(ErrorCode.NO_ERROR)  # "stop sending": in the same write as the trailers

    async with (
        serving(answer_early) as server,
        channel_to(server) as channel,
        channel.stream_stream(CHAT, reply)() as call,
    ):
        await call.send(HelloRequest(name="ann"))
        response = await call.receive()
        end = await call.receive()

    assert response is not None and response.message == "early"
    assert end is None
    assert call.code is StatusCode.OK


@pytest.mark.parametrize(
    ("reset_code", "status"),
    [
        (ErrorCode.REFUSED_STREAM, StatusCode.UNAVAILABLE),  # never processed: safe to retry
        (ErrorCode.CANCEL, StatusCode.CANCELLED),
        (ErrorCode.INTERNAL_ERROR, StatusCode.INTERNAL),
        (ErrorCode.PROTOCOL_ERROR, StatusCode.INTERNAL),
        (ErrorCode.ENHANCE_YOUR_CALM, StatusCode.RESOURCE_EXHAUSTED),
        (ErrorCode.INADEQUATE_SECURITY, StatusCode.PERMISSION_DENIED),
    ],
)
async def test_rst_stream_from_the_server_maps_to_grpcs_status(
        reset_code: ErrorCode, status: StatusCode) -> None:
    # grpc/doc/PROTOCOL-HTTP2.md, "Errors": only REFUSED_STREAM means "try again" (UNAVAILABLE).
    async def reset(stream: Stream) -> None:
        stream.reset(reset_code)

    async with serving(reset) as resetting, channel_to(resetting) as channel:
        with pytest.raises(GrpcError) as caught:
            await channel.unary_unary(SAY_HELLO, reply)(HelloRequest())

    assert caught.value.code is status


# -- deadlines and cancellation --------------------------------------------------------------


async def test_server_enforces_the_deadline_it_receives(channel: Channel, hang: Hang) -> None:
    # No client-side deadline: only the grpc-timeout header, so only the server can act on it.
    async with channel.call(HANG, reply, metadata=[("grpc-timeout", "50m")]) as call:
        await call.send(HelloRequest(), end=True)

        with pytest.raises(GrpcError) as caught:
            await call.receive()

    assert caught.value.code is StatusCode.DEADLINE_EXCEEDED
    assert caught.value.message == "deadline exceeded on the server"
    assert hang.cancelled.is_set()
    assert hang.reset_code is None  # the server stopped it, not an RST_STREAM


async def test_client_enforces_its_deadline_with_rst_stream_cancel(hang: Hang,
                                                                   count: Count) -> None:
    grpc_server = probe_server(hang, count)
    received_timeouts: list[str] = []

    async def deaf_to_deadlines(stream: Stream) -> None:
        # Hide grpc-timeout from the server, so that only the client can end the call.
        received_timeouts.extend(v for k, v in stream.headers or [] if k == "grpc-timeout")
        stream.headers = [(k, v) for k, v in stream.headers or [] if k != "grpc-timeout"]
        await grpc_server.handle(stream)

    async with serving(deaf_to_deadlines) as server, channel_to(server) as channel:
        with pytest.raises(GrpcError) as caught:
            await channel.unary_unary(HANG, reply)(HelloRequest(), timeout=0.05)
        await hang.cancelled.wait()

    assert caught.value.code is StatusCode.DEADLINE_EXCEEDED
    assert "client cancelled" in caught.value.message
    assert len(received_timeouts) == 1 and 0 < parse_timeout(received_timeouts[0]) <= 0.05
    assert hang.reset_code == ErrorCode.CANCEL  # RST_STREAM(CANCEL) reached the server


async def test_malformed_grpc_timeout_is_internal(channel: Channel, hang: Hang) -> None:
    async with channel.call(HANG, reply, metadata=[("grpc-timeout", "soon")]) as call:
        await call.send(HelloRequest(), end=True)

        with pytest.raises(GrpcError) as caught:
            await call.receive()

    assert caught.value.code is StatusCode.INTERNAL
    assert "invalid grpc-timeout 'soon'" in caught.value.message
    assert not hang.started.is_set()


async def test_expired_deadline_fails_before_anything_is_sent(channel: Channel,
                                                              hang: Hang) -> None:
    past = Deadline(at=channel.clock.now() - 1.0, clock=channel.clock)

    with pytest.raises(GrpcError) as caught:
        await channel.unary_unary(HANG, reply)(HelloRequest(), deadline=past)

    assert caught.value.code is StatusCode.DEADLINE_EXCEEDED
    assert not hang.started.is_set()


async def test_cancelling_the_caller_cancels_the_server_handler(channel: Channel,
                                                                hang: Hang) -> None:
    task = asyncio.create_task(channel.unary_unary(HANG, reply)(HelloRequest()))
    await hang.started.wait()

    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await hang.cancelled.wait()

    assert hang.reset_code == ErrorCode.CANCEL


async def test_cancelling_a_bidirectional_caller_cancels_the_server_handler() -> None:
    handler_cancelled = asyncio.Event()
    first_request = asyncio.Event()

    async def listen(requests: AsyncIterator[HelloRequest],
                     context: Context) -> AsyncIterator[HelloReply]:
        try:
            async for _ in requests:
                first_request.set()
        except asyncio.CancelledError:
            handler_cancelled.set()
            raise
        yield HelloReply()  # pragma: no cover - never reached: it only listens

    grpc_server = single_method(CHAT, Cardinality.STREAM_STREAM, listen)
    async with serving(grpc_server.handle) as server, channel_to(server) as channel:
        async def talk() -> None:
            async with channel.stream_stream(CHAT, reply)() as call:
                await call.send(HelloRequest(name="hi"))
                await call.receive()  # never answered

        task = asyncio.create_task(talk())
        await first_request.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await handler_cancelled.wait()


# -- many calls on one channel ---------------------------------------------------------------


async def test_channel_waits_for_stream_slots_beyond_the_servers_limit(hang: Hang,
                                                                       count: Count) -> None:
    limits = Limits(max_concurrent_streams=2)
    async with serving(probe_server(hang, count).handle, limits=limits) as server, \
            channel_to(server) as channel:
        call_count = channel.unary_unary(COUNT, reply)
        count.release.clear()  # hold the first calls, so the others must queue behind them

        calls = asyncio.gather(*(call_count(HelloRequest(name=str(i))) for i in range(20)))
        await count.two_running.wait()
        count.release.set()
        replies = await calls
        connections = list(server.connections)

    assert [r.message for r in replies] == [str(i) for i in range(20)]
    # Two ran at once, never more: a third stream would have been a connection error.
    assert count.peak == 2
    assert len(connections) == 1  # all on the one connection: the channel queued them
    assert connections[0].streams_opened == 20


async def test_deadline_runs_while_waiting_for_a_stream_slot(hang: Hang, count: Count) -> None:
    limits = Limits(max_concurrent_streams=1)
    async with serving(probe_server(hang, count).handle, limits=limits) as server, \
            channel_to(server) as channel:
        blocker = asyncio.create_task(channel.unary_unary(HANG, reply)(HelloRequest()))
        await hang.started.wait()  # the one slot is taken, and stays taken

        with pytest.raises(GrpcError) as caught:
            await channel.unary_unary(COUNT, reply)(HelloRequest(), timeout=0.05)

        blocker.cancel()
        with pytest.raises(asyncio.CancelledError):
            await blocker

    assert caught.value.code is StatusCode.DEADLINE_EXCEEDED
    assert "while opening a stream" in caught.value.message
    assert count.peak == 0  # the second call never reached the server


async def test_call_waiting_for_a_slot_moves_on_when_the_connection_drains(
        hang: Hang, count: Count) -> None:
    limits = Limits(max_concurrent_streams=1)
    async with serving(probe_server(hang, count).handle, limits=limits) as server, \
            channel_to(server) as channel:
        blocker = asyncio.create_task(channel.unary_unary(HANG, reply)(HelloRequest()))
        await hang.started.wait()
        first = await channel.connection()
        waiting = asyncio.create_task(channel.unary_unary(COUNT, reply)(HelloRequest(name="b")))
        await asyncio.sleep(0)  # one turn: it finds the one slot taken, and waits for it
        assert first.available_streams == 0 and not waiting.done()

        # The server drains the connection (GOAWAY(NO_ERROR)), as on shutdown or max age:
        # the call in flight may finish there, the waiting one must go to a new connection.
        (server_side,) = server.connections
        draining = asyncio.create_task(server_side.shutdown(grace=5.0))
        response = await waiting
        second = await channel.connection()

        blocker.cancel()
        with pytest.raises(asyncio.CancelledError):
            await blocker
        await draining

    assert response.message == "b"
    assert first.draining
    assert second is not first


# -- mTLS ------------------------------------------------------------------------------------


async def test_mtls_call_shows_each_side_the_others_spiffe_id(mesh_pki: MeshPki, hang: Hang,
                                                              count: Count) -> None:
    seen: list[object] = []

    async def who_calls(request: HelloRequest, context: Context) -> HelloReply:
        assert context.ssl_object is not None
        seen.append(tls.peer_spiffe_id(context.ssl_object))
        return HelloReply()

    grpc_server = probe_server(hang, count)
    grpc_server.add("/test.Probe/WhoCalls", Cardinality.UNARY_UNARY, HelloRequest.FromString,
                    who_calls)
    server_ssl = tls.server_context(mesh_pki.server.cert, mesh_pki.server.key, mesh_pki.ca_cert)
    client_ssl = tls.client_context(mesh_pki.client.cert, mesh_pki.client.key, mesh_pki.ca_cert)

    async with serving(grpc_server.handle, ssl=server_ssl) as server, \
            channel_to(server, ssl=client_ssl) as channel:
        response = await channel.unary_unary(SAY_HELLO, reply)(HelloRequest(name="tls"))
        await channel.unary_unary("/test.Probe/WhoCalls", reply)(HelloRequest())
        conn = await channel.connection()
        assert conn.ssl_object is not None
        server_id = tls.peer_spiffe_id(conn.ssl_object)

    assert response.message == "hello, tls"
    assert response.peer == str(mesh_pki.client.spiffe_id)
    assert seen == [mesh_pki.client.spiffe_id]
    assert server_id == mesh_pki.server.spiffe_id
    assert channel.scheme == "https"


@pytest.mark.parametrize("expected", ["server", "controlplane"])
async def test_a_channel_told_its_peers_identity_calls_no_one_else(
        mesh_pki: MeshPki, hang: Hang, count: Count, expected: str) -> None:
    """What a sidecar does before it sends a join token, registers or subscribes: the server
    must prove the control plane's SPIFFE ID, not merely hold a certificate of the mesh CA."""
    received: list[str] = []

    async def record(request: HelloRequest, context: Context) -> HelloReply:
        received.append(request.name)
        return HelloReply(message="kept")

    grpc_server = probe_server(hang, count)
    grpc_server.add("/test.Probe/Record", Cardinality.UNARY_UNARY, HelloRequest.FromString,
                    record)
    wanted = str(mesh_pki.server.spiffe_id).replace("/sa/server", f"/sa/{expected}")
    server_ssl = tls.server_context(mesh_pki.server.cert, mesh_pki.server.key, mesh_pki.ca_cert)
    async with serving(grpc_server.handle, ssl=server_ssl) as server, \
            channel_to(server, ssl=tls.client_context(mesh_pki.client.cert,
                                                      mesh_pki.client.key, mesh_pki.ca_cert),
                       peer_identity=wanted) as channel:
        call = channel.unary_unary("/test.Probe/Record", reply)
        if expected == "server":
            assert (await call(HelloRequest(name="to the right one"))).message == "kept"
            assert received == ["to the right one"]
            return
        with pytest.raises(GrpcError) as refused:
            await call(HelloRequest(name="a secret"))
    assert refused.value.code == StatusCode.UNAVAILABLE
    assert f"proved {mesh_pki.server.spiffe_id}, not {wanted}" in refused.value.message
    assert received == []  # nothing reached the impostor

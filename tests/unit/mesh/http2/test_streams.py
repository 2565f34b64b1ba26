"""Streams: many at once on one connection, each with headers, a body and trailers.

The first tests are transcripts (a raw peer sends frames, reads frames); the rest drive the
``mesh.http2`` client against the server, both ends ours, over a loopback socket.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest
from hyperframe.frame import DataFrame, HeadersFrame

from mesh.http2 import ErrorCode, Http2Connection, Server, Stream, StreamReset, request
from tests.unit.mesh.http2.app import App
from tests.unit.mesh.http2.conftest import StartServer
from tests.unit.mesh.http2.wire import RawPeer, request_headers

pytestmark = pytest.mark.timeout(10)

RawPeerFactory = Callable[..., Awaitable[RawPeer]]
ClientFactory = Callable[..., Awaitable[Http2Connection]]


async def test_request_with_body_and_trailers_gets_headers_body_and_trailers(
    server: Server, raw_peer: RawPeerFactory,
) -> None:
    peer = await raw_peer(server.port)
    await peer.handshake()
    f = peer.frames
    await peer.send(
        f.headers(1, request_headers("POST", "/echo")),
        f.data(1, b"hello, "),
        f.data(1, b"world"),
        f.headers(1, [("x-checksum", "abc")], end_stream=True),
    )
    response = await peer.response(1)
    assert response.headers == [(":status", "200")]
    assert response.body == b"hello, world"
    assert response.trailers == [("x-length", "12"), ("x-checksum", "abc")]
    # On the wire: HEADERS, then the body as DATA, then trailers in HEADERS with END_STREAM.
    on_stream = [type(frame) for frame in peer.received if frame.stream_id == 1]
    assert on_stream[0] is HeadersFrame and on_stream[-1] is HeadersFrame
    assert set(on_stream[1:-1]) == {DataFrame}
    assert "END_STREAM" in peer.received[-1].flags


async def test_streams_interleave_on_one_connection(
    server: Server, raw_peer: RawPeerFactory, app: App,
) -> None:
    peer = await raw_peer(server.port)
    await peer.handshake()
    f = peer.frames
    # Stream 1 waits for the application; streams 3 and 5 are answered meanwhile.
    await peer.send(f.headers(1, request_headers("GET", "/hold"), end_stream=True))
    assert await app.started.get() == 1
    await peer.send(f.headers(3, request_headers("POST", "/echo")),
                    f.headers(5, request_headers("POST", "/echo")),
                    f.data(5, b"five", end_stream=True),
                    f.data(3, b"three", end_stream=True))
    assert (await peer.response(5)).body == b"five"
    assert (await peer.response(3)).body == b"three"
    app.release.set()
    assert (await peer.response(1)).body == b"released"


async def test_two_hundred_concurrent_streams_on_one_connection(
    start_server: StartServer, client: ClientFactory,
) -> None:
    streams = 200
    arrived = 0
    all_arrived = asyncio.Event()

    async def barrier_echo(stream: Stream) -> None:
        # Nobody answers until every stream has arrived: the streams really are concurrent.
        nonlocal arrived
        arrived += 1
        if arrived == streams:
            all_arrived.set()
        await all_arrived.wait()
        body = await stream.read_all()
        stream.send_headers([(":status", "200")])
        await stream.send_data(body[::-1], end_stream=True)

    server = Server(barrier_echo)
    await server.start("127.0.0.1", 0)
    try:
        conn = await client(server.port)
        responses = await asyncio.gather(*(
            request(conn, "POST", "/", authority="test", body=f"request {i}".encode())
            for i in range(streams)))
        assert [r.body for r in responses] == [f"request {i}".encode()[::-1]
                                                for i in range(streams)]
        assert len(server.connections) == 1
        assert conn.streams_opened == streams
    finally:
        await server.shutdown(grace=1.0)


async def test_client_stream_with_headers_body_and_trailers(
    server: Server, client: ClientFactory,
) -> None:
    conn = await client(server.port)
    stream = conn.open_stream(request_headers("POST", "/echo", ("x-request", "1")))
    await stream.send_data(b"part one, ")
    await stream.send_data(b"part two")
    stream.send_trailers([("x-sent", "2 parts")])
    assert await stream.receive_headers() == [(":status", "200")]
    assert await stream.read_all() == b"part one, part two"
    assert stream.trailers == [("x-length", "18"), ("x-sent", "2 parts")]
    assert stream.complete


async def test_response_with_no_body(server: Server, client: ClientFactory) -> None:
    conn = await client(server.port)
    response = await request(conn, "GET", "/echo", authority="test")
    assert (response.status, response.body) == (200, b"")
    assert response.trailers == [("x-length", "0")]


async def test_a_failing_handler_resets_only_its_own_stream(
    server: Server, client: ClientFactory,
) -> None:
    conn = await client(server.port)
    for path in ("/crash", "/forget"):
        with pytest.raises(StreamReset) as reset:
            await request(conn, "GET", path, authority="test")
        assert reset.value.code == ErrorCode.INTERNAL_ERROR and reset.value.by_peer
    assert (await request(conn, "POST", "/echo", authority="test", body=b"ok")).body == b"ok"

"""GOAWAY: a graceful drain lets streams in flight finish and refuses new ones; errors end now."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest
from hyperframe.frame import DataFrame, HeadersFrame, RstStreamFrame

from mesh.http2 import (
    ConnectionClosed,
    ErrorCode,
    Http2Connection,
    Server,
    StreamRefused,
    request,
)
from tests.unit.mesh.http2.app import App
from tests.unit.mesh.http2.wire import RawPeer, request_headers

pytestmark = pytest.mark.timeout(10)

RawPeerFactory = Callable[..., Awaitable[RawPeer]]
ClientFactory = Callable[..., Awaitable[Http2Connection]]

HOLD = request_headers("GET", "/hold")


async def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.001)


# -- the server drains ---------------------------------------------------------------------------

async def test_shutdown_finishes_streams_in_flight_and_refuses_new_ones(
    server: Server, raw_peer: RawPeerFactory, app: App,
) -> None:
    peer = await raw_peer(server.port)
    await peer.handshake()
    f = peer.frames
    await peer.send(f.headers(1, HOLD, end_stream=True))
    assert await app.started.get() == 1
    shutdown = asyncio.create_task(server.shutdown(grace=5.0))

    goaway = await peer.goaway()
    assert (goaway.error_code, goaway.last_stream_id) == (ErrorCode.NO_ERROR, 1)
    await peer.send(f.headers(3, HOLD, end_stream=True))  # too late: refused, never started
    refused = await peer.until(RstStreamFrame, stream_id=3)
    assert refused.error_code == ErrorCode.REFUSED_STREAM

    app.release.set()
    assert (await peer.response(1)).body == b"released"
    await peer.closed()  # the last stream done, the server hangs up
    await asyncio.wait_for(shutdown, 5.0)
    assert app.started.empty() and app.cancelled.empty()  # stream 3 never reached the app


async def test_a_draining_connection_tells_the_client_no_new_streams(
    server: Server, client: ClientFactory, app: App,
) -> None:
    conn = await client(server.port)
    in_flight = asyncio.create_task(request(conn, "GET", "/hold", authority="test"))
    await app.started.get()
    shutdown = asyncio.create_task(server.shutdown(grace=5.0))
    await wait_until(lambda: conn.draining)
    assert conn.available_streams == 0
    with pytest.raises(ConnectionClosed, match="draining"):
        conn.open_stream(HOLD, end_stream=True)
    app.release.set()
    assert (await in_flight).body == b"released"
    await asyncio.wait_for(conn.closed, 5.0)
    await shutdown


async def test_a_stream_that_crosses_the_goaway_is_refused_and_safe_to_retry(
    server: Server, client: ClientFactory, app: App,
) -> None:
    conn = await client(server.port)
    first = asyncio.create_task(request(conn, "GET", "/hold", authority="test"))
    await app.started.get()
    shutdown = asyncio.create_task(server.shutdown(grace=5.0))
    await asyncio.sleep(0)  # the GOAWAY is queued; the client has not seen it yet
    crossing = conn.open_stream(HOLD, end_stream=True)
    with pytest.raises(StreamRefused):
        await crossing.receive_headers()
    app.release.set()
    assert (await first).status == 200
    await shutdown


async def test_streams_still_open_after_the_grace_are_cut_off(
    server: Server, raw_peer: RawPeerFactory, app: App,
) -> None:
    peer = await raw_peer(server.port)
    await peer.handshake()
    await peer.send(peer.frames.headers(1, HOLD, end_stream=True))
    await app.started.get()
    shutdown = asyncio.create_task(server.shutdown(grace=0.2))
    assert (await peer.goaway()).error_code == ErrorCode.NO_ERROR
    after_goaway = await peer.closed()
    assert not [f for f in after_goaway if isinstance(f, HeadersFrame | DataFrame)]
    assert await app.cancelled.get() == 1
    await shutdown


# -- the peer goes away --------------------------------------------------------------------------

async def test_the_server_finishes_its_streams_after_the_peers_goaway(
    server: Server, raw_peer: RawPeerFactory, app: App,
) -> None:
    peer = await raw_peer(server.port)
    await peer.handshake()
    f = peer.frames
    await peer.send(f.headers(1, HOLD, end_stream=True))
    await app.started.get()
    await peer.send(f.goaway(last_stream_id=0))  # "I am leaving; finish what you have"
    app.release.set()
    assert (await peer.response(1)).body == b"released"
    await peer.closed()


async def test_a_goaway_with_an_error_ends_the_connection_at_once(
    server: Server, raw_peer: RawPeerFactory, app: App,
) -> None:
    peer = await raw_peer(server.port)
    await peer.handshake()
    f = peer.frames
    await peer.send(f.headers(1, HOLD, end_stream=True))
    await app.started.get()
    await peer.send(f.goaway(last_stream_id=0, error_code=ErrorCode.INTERNAL_ERROR))
    assert await app.cancelled.get() == 1
    await peer.closed()


async def test_a_client_sees_the_servers_error_goaway_on_every_stream(
    server: Server, client: ClientFactory, app: App,
) -> None:
    conn = await client(server.port)
    streams = [conn.open_stream(HOLD, end_stream=True) for _ in range(3)]
    for _ in streams:
        await app.started.get()
    (server_side,) = server.connections
    server_side.abort(ErrorCode.ENHANCE_YOUR_CALM, "you again")
    for stream in streams:
        with pytest.raises(ConnectionClosed) as closed:
            await stream.receive_headers()
        assert closed.value.code == ErrorCode.ENHANCE_YOUR_CALM
        assert "you again" in closed.value.reason
    await asyncio.wait_for(conn.closed, 5.0)

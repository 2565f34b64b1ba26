"""SETTINGS and PING: what each side announces, and that the other side lives by it."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest
from hyperframe.frame import PingFrame, SettingsFrame, WindowUpdateFrame

from mesh.http2 import (
    ConnectionClosed,
    ErrorCode,
    Http2Connection,
    Limits,
    NoStreamAvailable,
    Server,
    request,
)
from tests.unit.mesh.http2.app import App
from tests.unit.mesh.http2.conftest import StartServer
from tests.unit.mesh.http2.wire import RawPeer, request_headers

pytestmark = pytest.mark.timeout(10)

RawPeerFactory = Callable[..., Awaitable[RawPeer]]
ClientFactory = Callable[..., Awaitable[Http2Connection]]

KIB = 1024
MIB = 1024 * KIB


# -- SETTINGS ------------------------------------------------------------------------------------

async def test_the_server_announces_its_limits_in_its_first_frames(
    start_server: StartServer, raw_peer: RawPeerFactory,
) -> None:
    limits = Limits(max_concurrent_streams=7, max_header_list_size=8 * KIB,
                    stream_window=128 * KIB, connection_window=2 * MIB,
                    max_frame_size=32 * KIB)
    server = await start_server(limits=limits)
    peer = await raw_peer(server.port)
    settings = await peer.handshake()
    assert settings.settings == {
        SettingsFrame.HEADER_TABLE_SIZE: 4096,
        SettingsFrame.ENABLE_PUSH: 0,
        SettingsFrame.MAX_CONCURRENT_STREAMS: 7,
        SettingsFrame.MAX_HEADER_LIST_SIZE: 8 * KIB,
        SettingsFrame.INITIAL_WINDOW_SIZE: 128 * KIB,
        SettingsFrame.MAX_FRAME_SIZE: 32 * KIB,
        SettingsFrame.ENABLE_CONNECT_PROTOCOL: 0,
    }
    # The connection window is not a setting: it is opened by a WINDOW_UPDATE on stream 0.
    update = await peer.next_frame()
    assert isinstance(update, WindowUpdateFrame) and update.stream_id == 0
    assert update.window_increment == 2 * MIB - 65_535
    # And the server acknowledges ours.
    ack = await peer.until(SettingsFrame)
    assert "ACK" in ack.flags


async def test_the_server_takes_frames_up_to_the_frame_size_it_announced(
    start_server: StartServer, raw_peer: RawPeerFactory,
) -> None:
    server = await start_server(limits=Limits(max_frame_size=32 * KIB))
    peer = await raw_peer(server.port)
    await peer.handshake()
    f = peer.frames
    await peer.send(f.headers(1, request_headers("POST", "/digest")),
                    f.data(1, b"z" * 32 * KIB, end_stream=True))
    assert (await peer.response(1)).body.startswith(b"32768 ")


async def test_a_client_lives_by_the_servers_max_concurrent_streams(
    start_server: StartServer, client: ClientFactory, app: App,
) -> None:
    server = await start_server(limits=Limits(max_concurrent_streams=2))
    conn = await client(server.port)
    assert conn.available_streams == 2
    held = [asyncio.create_task(request(conn, "GET", "/hold", authority="test"))
            for _ in range(2)]
    await app.started.get()
    await app.started.get()
    assert conn.available_streams == 0
    with pytest.raises(NoStreamAvailable, match="peer allows 2 streams"):
        conn.open_stream(request_headers("GET", "/hold"), end_stream=True)
    slot = asyncio.create_task(conn.wait_for_stream_slot())
    await asyncio.sleep(0.01)
    assert not slot.done()  # nothing has finished yet
    app.release.set()
    await asyncio.wait_for(slot, 5.0)
    assert [r.body for r in await asyncio.gather(*held)] == [b"released", b"released"]
    assert conn.available_streams == 2


async def test_a_client_sends_no_more_than_the_servers_initial_window(
    start_server: StartServer, client: ClientFactory, app: App,
) -> None:
    window = 65_535
    server = await start_server(limits=Limits(stream_window=window))
    conn = await client(server.port)
    stream = conn.open_stream(request_headers("POST", "/read-on-demand"))
    upload = asyncio.create_task(stream.send_data(b"u" * 4 * window, end_stream=True))
    for _ in range(3):
        await conn.ping()  # whatever the client could send has arrived
    assert not upload.done()  # waiting for the window, not buffering without bound
    total = 0
    while total < 4 * window:
        app.allow_read()
        total += await app.reads.get()
    app.allow_read()
    assert await app.reads.get() == 0  # the end of the body
    await asyncio.wait_for(upload, 5.0)
    assert (await stream.receive_headers())[0] == (":status", "200")


# -- PING --------------------------------------------------------------------------------------

async def test_a_ping_is_answered_with_its_own_payload(
    server: Server, raw_peer: RawPeerFactory,
) -> None:
    peer = await raw_peer(server.port)
    await peer.handshake()
    await peer.send(peer.frames.ping(b"12345678"))
    pong = await peer.until(PingFrame)
    assert ("ACK" in pong.flags, pong.opaque_data) == (True, b"12345678")


async def test_either_side_can_measure_the_round_trip(
    server: Server, client: ClientFactory,
) -> None:
    conn = await client(server.port)
    rtts = [await conn.ping() for _ in range(3)]
    assert all(0 <= rtt < 5 for rtt in rtts)
    (server_side,) = server.connections
    assert 0 <= await server_side.ping() < 5


async def test_a_ping_on_a_closed_connection_says_why_it_closed(
    server: Server, client: ClientFactory,
) -> None:
    conn = await client(server.port)
    (server_side,) = server.connections
    server_side.abort(ErrorCode.ENHANCE_YOUR_CALM, "go away")
    await asyncio.wait_for(conn.closed, 5.0)
    with pytest.raises(ConnectionClosed, match="go away"):
        await conn.ping()

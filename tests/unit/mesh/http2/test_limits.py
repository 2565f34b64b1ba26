"""Bad peers, one per bound in ``mesh/http2/limits.py``: each gets the right GOAWAY, others don't.

Every test is a transcript between an offending raw peer and the server: the offender sends
what it should not, then reads the frames that come back and finds the GOAWAY with the error
code the limit promises, then the end of the connection. Meanwhile a :func:`bystander` (a
well-behaved ``mesh.http2`` client on its own connection) has a request in flight from before
the attack to after it, and still gets its response.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest
from hyperframe.frame import Frame, GoAwayFrame, RstStreamFrame, SettingsFrame

from mesh.clock import FakeClock
from mesh.http2 import ErrorCode, Http2Connection, Limits, Server, connect
from mesh.http2 import request as send_request
from tests.unit.mesh.http2.app import App
from tests.unit.mesh.http2.conftest import StartServer
from tests.unit.mesh.http2.wire import RawPeer, request_headers

pytestmark = pytest.mark.timeout(20)

RawPeerFactory = Callable[..., Awaitable[RawPeer]]

KIB = 1024
FRAME = 16 * KIB
GET_HOLD = request_headers("GET", "/hold")


@asynccontextmanager
async def bystander(server: Server) -> AsyncIterator[Http2Connection]:
    """A well-behaved client with a request in flight for the whole block; checks its answer.

    The request's body is half sent before the block and the rest after it, so the stream
    lives through whatever the block does to the server; then a fresh request on the same
    connection must succeed too.
    """
    conn = await connect("127.0.0.1", server.port)
    try:
        stream = conn.open_stream(request_headers("POST", "/echo"))
        await stream.send_data(b"sent before, ")
        yield conn
        await stream.send_data(b"and after the attack", end_stream=True)
        assert await stream.receive_headers() == [(":status", "200")]
        assert await stream.read_all() == b"sent before, and after the attack"
        fresh = await send_request(conn, "POST", "/echo", authority="test", body=b"again")
        assert fresh.body == b"again"
        assert conn.close_reason is None and not conn.draining
    finally:
        await conn.shutdown(grace=1.0)


async def refused_with(peer: RawPeer, code: ErrorCode) -> GoAwayFrame:
    """Read up to the server's GOAWAY, check its code, and that the connection then ends."""
    goaway = await peer.goaway()
    assert goaway.error_code == code, (
        f"GOAWAY({ErrorCode.of(goaway.error_code)!r}): {goaway.additional_data!r}")
    await peer.closed()
    return goaway


# -- the preface -------------------------------------------------------------------------------

async def test_an_invalid_preface_gets_protocol_error(
    server: Server, raw_peer: RawPeerFactory,
) -> None:
    async with bystander(server):
        peer = await raw_peer(server.port)
        await peer.send_bytes(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")  # HTTP/1.1, not h2
        goaway = await refused_with(peer, ErrorCode.PROTOCOL_ERROR)
        assert goaway.last_stream_id == 0
        assert b"preamble" in goaway.additional_data


# -- header lists and header blocks --------------------------------------------------------------

async def test_an_oversized_header_list_gets_enhance_your_calm(
    start_server: StartServer, raw_peer: RawPeerFactory,
) -> None:
    server = await start_server(limits=Limits(max_header_list_size=4 * KIB))
    async with bystander(server):
        peer = await raw_peer(server.port)
        settings = await peer.handshake()
        assert settings.settings[SettingsFrame.MAX_HEADER_LIST_SIZE] == 4 * KIB
        await peer.send(peer.frames.headers(
            1, request_headers("GET", "/echo", ("x-big", "v" * 5 * KIB)), end_stream=True))
        await refused_with(peer, ErrorCode.ENHANCE_YOUR_CALM)


async def test_an_hpack_bomb_is_stopped_by_the_header_list_limit(
    start_server: StartServer, raw_peer: RawPeerFactory,
) -> None:
    # One 3 KiB header enters the HPACK dynamic table with the first request; the second
    # request names it 100 times, one byte each: 300 KiB decoded from a tiny block.
    server = await start_server(limits=Limits(max_header_list_size=16 * KIB))
    async with bystander(server):
        peer = await raw_peer(server.port)
        await peer.handshake()
        big = ("x-big", "v" * 3 * KIB)
        f = peer.frames
        await peer.send(f.headers(1, request_headers("GET", "/echo", big), end_stream=True))
        assert (await peer.response(1)).status == "200"
        bomb = f.headers(3, request_headers("GET", "/echo", *[big] * 100), end_stream=True)
        assert len(bomb.data) < 200
        await peer.send(bomb)
        await refused_with(peer, ErrorCode.ENHANCE_YOUR_CALM)


async def test_a_continuation_flood_is_cut_off_at_the_header_block_limit(
    start_server: StartServer, raw_peer: RawPeerFactory,
) -> None:
    # A header block that never ends (CVE-2024-27316 and friends): HEADERS without END_HEADERS,
    # then CONTINUATION after CONTINUATION. The server must not wait for the end of the block.
    server = await start_server(limits=Limits(max_header_block_size=64 * KIB))
    async with bystander(server):
        peer = await raw_peer(server.port)
        await peer.handshake()
        f = peer.frames
        await peer.send(f.headers(1, GET_HOLD, end_headers=False),
                        *[f.continuation(1, b"\x00" * FRAME) for _ in range(4)])  # 64 KiB + a bit
        await refused_with(peer, ErrorCode.ENHANCE_YOUR_CALM)


async def test_a_flood_of_empty_continuation_frames_gets_enhance_your_calm(
    server: Server, raw_peer: RawPeerFactory,
) -> None:
    # Empty frames never grow the block: it is their number that is bounded.
    async with bystander(server):
        peer = await raw_peer(server.port)
        await peer.handshake()
        f = peer.frames
        await peer.send(f.headers(1, GET_HOLD, end_headers=False),
                        *[f.continuation(1, b"") for _ in range(100)])
        await refused_with(peer, ErrorCode.ENHANCE_YOUR_CALM)


# -- streams -----------------------------------------------------------------------------------

async def test_too_many_concurrent_streams_gets_protocol_error(
    start_server: StartServer, raw_peer: RawPeerFactory, app: App,
) -> None:
    server = await start_server(limits=Limits(max_concurrent_streams=5))
    async with bystander(server):
        peer = await raw_peer(server.port)
        settings = await peer.handshake()
        assert settings.settings[SettingsFrame.MAX_CONCURRENT_STREAMS] == 5
        f = peer.frames
        await peer.send(*[f.headers(sid, GET_HOLD, end_stream=True) for sid in (1, 3, 5, 7, 9)])
        assert sorted([await app.started.get() for _ in range(5)]) == [1, 3, 5, 7, 9]
        await peer.send(f.headers(11, GET_HOLD, end_stream=True))  # the sixth at once
        goaway = await refused_with(peer, ErrorCode.PROTOCOL_ERROR)
        assert goaway.last_stream_id == 9  # the five it accepted
        assert sorted([await app.cancelled.get() for _ in range(5)]) == [1, 3, 5, 7, 9]


async def test_rapid_reset_gets_enhance_your_calm(
    start_server: StartServer, raw_peer: RawPeerFactory,
) -> None:
    # CVE-2023-44487: open a stream, cancel it at once, repeat. The first ``reset_burst``
    # resets are fine; the clock never moves here, so the bucket never refills.
    clock = FakeClock()
    server = await start_server(limits=Limits(reset_burst=20, reset_rate=1.0), clock=clock)
    async with bystander(server):
        peer = await raw_peer(server.port)
        await peer.handshake()
        (offender,) = [c for c in server.connections
                       if c.peer == peer.writer.get_extra_info("sockname")]
        f = peer.frames

        async def open_and_cancel(stream_ids: range) -> None:
            await peer.send(*[frame for sid in stream_ids for frame in (
                f.headers(sid, GET_HOLD), f.rst_stream(sid, ErrorCode.CANCEL))])

        await open_and_cancel(range(1, 41, 2))  # 20 resets: the whole burst
        assert not [frame for frame in await peer.round_trip() if isinstance(frame, GoAwayFrame)]
        clock.advance(3.0)  # refills 3 tokens
        await open_and_cancel(range(41, 47, 2))
        assert not [frame for frame in await peer.round_trip() if isinstance(frame, GoAwayFrame)]
        # One more than the bucket holds, and a request behind it in the same packet.
        await peer.send(f.headers(47, GET_HOLD), f.rst_stream(47, ErrorCode.CANCEL),
                        f.headers(49, GET_HOLD, end_stream=True))
        goaway = await refused_with(peer, ErrorCode.ENHANCE_YOUR_CALM)
        assert b"rapid reset" in goaway.additional_data
        assert offender.streams_opened == 24  # stream 49 came too late to cost anything


async def test_resets_of_streams_that_lived_are_cancellations_not_an_attack(
    start_server: StartServer, raw_peer: RawPeerFactory,
) -> None:
    # A proxy's per-try timeouts and callers' deadlines reset streams all day long. Each of
    # those streams held a concurrency slot for a while, so they cost no token: three times
    # the burst go by without a GOAWAY. A premature one after them still counts.
    clock = FakeClock()
    server = await start_server(limits=Limits(reset_burst=10, reset_rate=1.0), clock=clock)
    peer = await raw_peer(server.port)
    await peer.handshake()
    f = peer.frames
    for batch in range(3):
        stream_ids = range(1 + 20 * batch, 21 + 20 * batch, 2)  # 10 streams
        await peer.send(*[f.headers(sid, GET_HOLD) for sid in stream_ids])
        await peer.round_trip()
        clock.advance(0.25)  # a 250 ms per-try timeout
        await peer.send(*[f.rst_stream(sid, ErrorCode.CANCEL) for sid in stream_ids])
        assert not [frame for frame in await peer.round_trip()
                    if isinstance(frame, GoAwayFrame)]
    await peer.send(*[frame for sid in range(61, 83, 2) for frame in (
        f.headers(sid, GET_HOLD), f.rst_stream(sid, ErrorCode.CANCEL))])  # 11 premature
    goaway = await refused_with(peer, ErrorCode.ENHANCE_YOUR_CALM)
    assert b"premature stream resets" in goaway.additional_data


async def test_provoked_resets_count_as_resets_made_you_reset(
    start_server: StartServer, raw_peer: RawPeerFactory,
) -> None:
    # CVE-2025-8671: the peer never sends RST_STREAM, it makes the server send them, here
    # with DATA on streams it already ended (a stream error: RST_STREAM(STREAM_CLOSED)).
    server = await start_server(limits=Limits(reset_burst=10, reset_rate=1.0), clock=FakeClock())
    async with bystander(server):
        peer = await raw_peer(server.port)
        await peer.handshake()
        f = peer.frames
        ended_then_data = [frame for sid in range(1, 21, 2) for frame in (
            f.headers(sid, GET_HOLD, end_stream=True), f.data(sid, b"after the end"))]
        await peer.send(*ended_then_data)  # 10 provoked resets: the whole burst
        frames = await peer.round_trip()
        assert [frame.error_code for frame in frames if isinstance(frame, RstStreamFrame)] == \
            [ErrorCode.STREAM_CLOSED] * 10
        assert not [frame for frame in frames if isinstance(frame, GoAwayFrame)]
        await peer.send(f.headers(21, GET_HOLD, end_stream=True), f.data(21, b"once more"))
        goaway = await refused_with(peer, ErrorCode.ENHANCE_YOUR_CALM)
        assert b"stream resets" in goaway.additional_data


# -- frames and windows ------------------------------------------------------------------------

async def test_a_frame_larger_than_max_frame_size_gets_frame_size_error(
    server: Server, raw_peer: RawPeerFactory,
) -> None:
    async with bystander(server):
        peer = await raw_peer(server.port)
        settings = await peer.handshake()
        assert settings.settings[SettingsFrame.MAX_FRAME_SIZE] == FRAME
        f = peer.frames
        await peer.send(f.headers(1, request_headers("POST", "/echo")),
                        f.data(1, b"x" * (FRAME + 1)))
        await refused_with(peer, ErrorCode.FRAME_SIZE_ERROR)


async def test_overrunning_the_stream_window_gets_flow_control_error(
    start_server: StartServer, raw_peer: RawPeerFactory,
) -> None:
    server = await start_server(limits=Limits(stream_window=65_535))
    async with bystander(server):
        peer = await raw_peer(server.port)
        await peer.handshake()
        f = peer.frames
        await peer.send(f.headers(1, request_headers("POST", "/read-on-demand")),
                        *[f.data(1, b"x" * FRAME) for _ in range(4)])  # 65,536: one byte over
        await refused_with(peer, ErrorCode.FLOW_CONTROL_ERROR)


async def test_overrunning_the_connection_window_gets_flow_control_error(
    start_server: StartServer, raw_peer: RawPeerFactory,
) -> None:
    server = await start_server(limits=Limits(stream_window=256 * KIB,
                                              connection_window=512 * KIB))
    async with bystander(server):
        peer = await raw_peer(server.port)
        await peer.handshake()
        f = peer.frames
        frames: list[Frame] = [f.headers(sid, request_headers("POST", "/read-on-demand"))
                               for sid in (1, 3, 5)]
        for sid in (1, 3):  # each stream's whole window: the connection's is used up
            frames += [f.data(sid, b"x" * FRAME) for _ in range(256 * KIB // FRAME)]
        await peer.send(*frames, f.data(5, b"x"))  # within stream 5's window, not the connection's
        await refused_with(peer, ErrorCode.FLOW_CONTROL_ERROR)


# -- control frames the peer does not read the answers to ---------------------------------------

@pytest.mark.parametrize("flood", ["ping", "settings"])
async def test_a_control_frame_flood_that_is_never_read_is_cut_off(
    flood: str, start_server: StartServer, raw_peer: RawPeerFactory,
) -> None:
    # Each PING and SETTINGS must be answered, and answers do not wait for flow control: a
    # peer that floods them and never reads makes us buffer answers. Past max_write_buffer
    # the connection is aborted (a GOAWAY would only queue behind what the peer ignores), so
    # the offender sees its connection reset; the server records ENHANCE_YOUR_CALM.
    # Small kernel buffers on both ends (accepted sockets inherit the listener's) make the
    # answers pile up in user space after a few hundred KiB rather than a few MiB.
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * KIB)
    server = await start_server(limits=Limits(max_write_buffer=64 * KIB), sock=listener)
    async with bystander(server):
        peer = await raw_peer(server.port, receive_buffer=4 * KIB)
        await peer.handshake()
        (offender,) = [c for c in server.connections
                       if c.peer == peer.writer.get_extra_info("sockname")]
        f = peer.frames
        one = (f.ping(b"floodfld") if flood == "ping" else f.settings()).serialize()
        batch = one * 1024
        sent = 0
        with pytest.raises(ConnectionError):
            while sent < 16 * 1024 * KIB:  # far past what the buffers hold, were there no limit
                await peer.send_bytes(batch)
                sent += len(batch)
                await asyncio.sleep(0)  # let the server take it in
        # What the kernel buffers took on top is not the server's: the frames it took in are.
        taken_in = offender.frames_received * len(one)
        assert taken_in < 1024 * KIB, f"cut off only after {taken_in} bytes of {flood} frames"
        assert offender.close_reason is not None
        assert offender.close_reason.code == ErrorCode.ENHANCE_YOUR_CALM
        assert "unread" in offender.close_reason.reason
        await offender.closed


# -- idle connections ------------------------------------------------------------------------

async def test_a_connection_that_never_speaks_is_closed_after_the_idle_timeout(
    start_server: StartServer, raw_peer: RawPeerFactory,
) -> None:
    server = await start_server(limits=Limits(idle_timeout=0.2))
    async with bystander(server):
        peer = await raw_peer(server.port)  # connects, sends nothing, not even the preface
        goaway = await refused_with(peer, ErrorCode.NO_ERROR)
        assert goaway.additional_data == b"idle"


async def test_the_limits_refuse_nonsense_values_by_name() -> None:
    with pytest.raises(ValueError, match=r"Limits\.max_concurrent_streams must be at least 1"):
        Limits(max_concurrent_streams=0)
    with pytest.raises(ValueError, match=r"Limits\.max_frame_size must be in \[16384"):
        Limits(max_frame_size=1000)
    with pytest.raises(ValueError, match=r"Limits\.stream_window must be in"):
        Limits(stream_window=2**31)
    with pytest.raises(ValueError, match=r"Limits\.reset_rate must be positive"):
        Limits(reset_rate=0)
    with pytest.raises(ValueError, match=r"Limits\.idle_timeout must be positive or None"):
        Limits(idle_timeout=0)

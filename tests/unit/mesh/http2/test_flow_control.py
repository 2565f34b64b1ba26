"""Flow control, both ways: a slow reader holds the writer back instead of being flooded.

Receiving: the server reopens a stream's window only by what the application has read.
Sending: the server never sends past the peer's stream or connection window, and resumes by
exactly what a WINDOW_UPDATE grants. Then 100 MiB bodies stream each way between our client
and our server with memory bounded by the windows (tracemalloc's peak, not wall time).
"""

from __future__ import annotations

import asyncio
import hashlib
import tracemalloc
from collections.abc import Awaitable, Callable

import pytest
from hyperframe.frame import (
    DataFrame,
    Frame,
    GoAwayFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

from mesh.http2 import Http2Connection, Limits, Server
from tests.unit.mesh.http2.app import CHUNK, PATTERN, App, dawdle, unread_bytes
from tests.unit.mesh.http2.conftest import StartServer
from tests.unit.mesh.http2.wire import RawPeer, request_headers

pytestmark = pytest.mark.timeout(20)

RawPeerFactory = Callable[..., Awaitable[RawPeer]]
ClientFactory = Callable[..., Awaitable[Http2Connection]]

MIB = 1024 * 1024
FRAME = 16_384  # the default SETTINGS_MAX_FRAME_SIZE
SMALLEST_WINDOW = 65_535
BIG_BODY = 100 * MIB
# What a 100 MiB transfer may hold in memory at once: the windows (1 MiB per stream, 4 MiB per
# connection by default) plus socket and h2 buffers. Measured peak: about 2 MiB.
MEMORY_BOUND = 8 * MIB


async def wait_until(condition: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.001)
    assert condition(), what


def window_updates(frames: list[Frame], stream_id: int) -> list[int]:
    return [f.window_increment for f in frames
            if isinstance(f, WindowUpdateFrame) and f.stream_id == stream_id]


# -- receiving: the window reopens as the application reads ----------------------------------

async def test_window_reopens_only_by_what_the_application_read(
    start_server: StartServer, raw_peer: RawPeerFactory, app: App,
) -> None:
    server = await start_server(limits=Limits(stream_window=SMALLEST_WINDOW))
    peer = await raw_peer(server.port)
    settings = await peer.handshake()
    assert settings.settings[SettingsFrame.INITIAL_WINDOW_SIZE] == SMALLEST_WINDOW
    f = peer.frames
    # Fill the stream window exactly: 3 full frames and one a byte short.
    await peer.send(f.headers(1, request_headers("POST", "/read-on-demand")),
                    f.data(1, b"a" * FRAME), f.data(1, b"b" * FRAME), f.data(1, b"c" * FRAME),
                    f.data(1, b"d" * (FRAME - 1)))
    # The application has read nothing: the server reopens nothing.
    assert window_updates(await peer.round_trip(), stream_id=1) == []

    app.allow_read()
    assert await app.reads.get() == FRAME
    assert window_updates(await peer.round_trip(), stream_id=1) == [FRAME]

    # The reopened window takes one more frame; reading the rest reopens the rest.
    await peer.send(f.data(1, b"e" * FRAME, end_stream=True))
    app.allow_read(5)
    assert [await app.reads.get() for _ in range(5)] == [FRAME, FRAME, FRAME - 1, FRAME, 0]
    response = await peer.response(1)
    assert response.status == "200"


async def test_server_never_sends_past_the_peers_stream_window(
    server: Server, raw_peer: RawPeerFactory, app: App,
) -> None:
    peer = await raw_peer(server.port)
    await peer.handshake({SettingsFrame.INITIAL_WINDOW_SIZE: 10_000})
    f = peer.frames
    await peer.send(f.headers(1, request_headers("GET", "/download/1000000"), end_stream=True))
    while peer.data_on(1) < 10_000:
        await peer.next_frame()
    # The handler is stuck inside its first send_data: nothing more comes without a window.
    assert app.handed_over[1] == CHUNK
    assert peer.data_on(1, await peer.round_trip()) == 0
    assert peer.data_on(1) == 10_000

    await peer.send(f.window_update(1, 5_000))
    while peer.data_on(1) < 15_000:
        await peer.next_frame()
    assert peer.data_on(1, await peer.round_trip()) == 0
    assert peer.data_on(1) == 15_000


async def test_server_never_sends_past_the_peers_connection_window(
    server: Server, raw_peer: RawPeerFactory,
) -> None:
    peer = await raw_peer(server.port)
    await peer.handshake({SettingsFrame.INITIAL_WINDOW_SIZE: MIB})  # streams are not the limit
    f = peer.frames
    await peer.send(f.headers(1, request_headers("GET", "/download/1000000"), end_stream=True),
                    f.headers(3, request_headers("GET", "/download/1000000"), end_stream=True))
    both = lambda: peer.data_on(1) + peer.data_on(3)  # noqa: E731
    while both() < SMALLEST_WINDOW:  # the connection window every peer starts with
        await peer.next_frame()
    await peer.round_trip()
    assert both() == SMALLEST_WINDOW

    await peer.send(f.window_update(0, 1_000))
    while both() < SMALLEST_WINDOW + 1_000:
        await peer.next_frame()
    await peer.round_trip()
    assert both() == SMALLEST_WINDOW + 1_000


async def test_a_settings_change_to_the_initial_window_resumes_a_blocked_sender(
    server: Server, raw_peer: RawPeerFactory,
) -> None:
    peer = await raw_peer(server.port)
    await peer.handshake({SettingsFrame.INITIAL_WINDOW_SIZE: 1_000})
    f = peer.frames
    await peer.send(f.headers(1, request_headers("GET", "/download/5000"), end_stream=True))
    while peer.data_on(1) < 1_000:
        await peer.next_frame()
    assert peer.data_on(1, await peer.round_trip()) == 0
    # RFC 9113 §6.9.2: a new SETTINGS_INITIAL_WINDOW_SIZE shifts every open stream's window.
    await peer.send(f.settings({SettingsFrame.INITIAL_WINDOW_SIZE: 5_000}))
    response = await peer.response(1)
    assert len(response.body) == 5_000


async def test_a_client_that_does_not_read_holds_the_server_back(
    server: Server, client: ClientFactory, app: App,
) -> None:
    window = SMALLEST_WINDOW
    conn = await client(server.port, limits=Limits(stream_window=window))
    stream = conn.open_stream(request_headers("GET", f"/download/{10 * MIB}"), end_stream=True)
    await stream.receive_headers()
    await wait_until(lambda: unread_bytes(stream) == window, "the client buffered its window")
    for _ in range(3):
        await conn.ping()  # anything in flight has arrived by now
    assert unread_bytes(stream) == window
    assert app.handed_over[stream.id] <= window + CHUNK  # the handler waits inside send_data
    # Reading drains the buffer and lets the rest through.
    size = 0
    while chunk := await stream.read():
        size += len(chunk)
    assert size == 10 * MIB


# -- 100 MiB each way, in bounded memory ------------------------------------------------------

async def test_a_100_mib_upload_to_a_slow_reader_streams_in_bounded_memory(
    server: Server, client: ClientFactory, app: App,
) -> None:
    conn = await client(server.port)
    expected = hashlib.sha256()
    tracemalloc.start()
    try:
        stream = conn.open_stream(request_headers("POST", "/digest/slow"))
        for sent in range(CHUNK, BIG_BODY + 1, CHUNK):
            await stream.send_data(PATTERN, end_stream=sent == BIG_BODY)
            expected.update(PATTERN)
        await stream.receive_headers()
        answer = await stream.read_all()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert answer == f"{BIG_BODY} {expected.hexdigest()}".encode()
    assert peak < MEMORY_BOUND, f"peak {peak / MIB:.1f} MiB while 100 MiB went through"
    assert app.largest_unread <= Limits().stream_window


async def test_a_100_mib_download_to_a_slow_reader_streams_in_bounded_memory(
    server: Server, client: ClientFactory,
) -> None:
    conn = await client(server.port)
    tracemalloc.start()
    try:
        stream = conn.open_stream(request_headers("GET", f"/download/{BIG_BODY}"),
                                  end_stream=True)
        await stream.receive_headers()
        size = largest_unread = 0
        while chunk := await stream.read():
            size += len(chunk)
            largest_unread = max(largest_unread, unread_bytes(stream))
            await dawdle()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert size == BIG_BODY
    assert peak < MEMORY_BOUND, f"peak {peak / MIB:.1f} MiB while 100 MiB went through"
    assert largest_unread <= Limits().stream_window


async def test_a_peer_with_huge_windows_is_sent_at_the_pace_it_reads(
    server: Server, raw_peer: RawPeerFactory,
) -> None:
    # Flow control does not bound this peer (it grants 2 GiB), so only the socket does: the
    # handlers must wait for the socket to drain, not queue their bodies in memory (and a
    # body queued whole would pass max_write_buffer, as if the peer were flooding PINGs).
    peer = await raw_peer(server.port, receive_buffer=64 * 1024)
    huge = 2**31 - 1
    await peer.handshake({SettingsFrame.INITIAL_WINDOW_SIZE: huge})
    f = peer.frames
    body = 32 * MIB
    received = {1: 0, 3: 0}
    tracemalloc.start()
    try:
        await peer.send(f.window_update(0, huge - SMALLEST_WINDOW),
                        f.headers(1, request_headers("GET", f"/download/{body}"), end_stream=True),
                        f.headers(3, request_headers("GET", f"/download/{body}"), end_stream=True))
        ended: set[int] = set()
        while ended != {1, 3}:
            frame = await peer.next_frame()
            assert not isinstance(frame, RstStreamFrame | GoAwayFrame), frame
            if isinstance(frame, DataFrame):
                received[frame.stream_id] += len(frame.data)
            if "END_STREAM" in frame.flags:
                ended.add(frame.stream_id)
            peer.received.clear()  # count the bodies, do not keep them
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert received == {1: body, 3: body}
    assert peak < MEMORY_BOUND, f"peak {peak / MIB:.1f} MiB for two {body // MIB} MiB bodies"

"""RST_STREAM both ways: one stream ends early, the connection and its other streams carry on."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
from hyperframe.frame import RstStreamFrame

from mesh.http2 import ErrorCode, Http2Connection, Limits, Server, StreamReset, request
from tests.unit.mesh.http2.app import App
from tests.unit.mesh.http2.conftest import StartServer
from tests.unit.mesh.http2.wire import RawPeer, request_headers

pytestmark = pytest.mark.timeout(10)

RawPeerFactory = Callable[..., Awaitable[RawPeer]]
ClientFactory = Callable[..., Awaitable[Http2Connection]]


# -- the peer resets -----------------------------------------------------------------------------

async def test_a_reset_from_the_peer_cancels_that_handler_only(
    server: Server, raw_peer: RawPeerFactory, app: App,
) -> None:
    peer = await raw_peer(server.port)
    await peer.handshake()
    f = peer.frames
    await peer.send(f.headers(1, request_headers("GET", "/hold"), end_stream=True),
                    f.headers(3, request_headers("GET", "/hold"), end_stream=True))
    assert {await app.started.get(), await app.started.get()} == {1, 3}
    await peer.send(f.rst_stream(1, ErrorCode.CANCEL))
    assert await app.cancelled.get() == 1
    app.release.set()
    response = await peer.response(3)
    assert response.body == b"released"
    assert app.cancelled.empty()
    # The server never answered stream 1 nor reset it back.
    assert not [frame for frame in peer.received if frame.stream_id == 1]


async def test_a_client_reset_reaches_the_server_handler(
    server: Server, client: ClientFactory, app: App,
) -> None:
    conn = await client(server.port)
    stream = conn.open_stream(request_headers("GET", "/hold"), end_stream=True)
    assert await app.started.get() == stream.id
    stream.reset(ErrorCode.CANCEL)
    assert await app.cancelled.get() == stream.id
    with pytest.raises(StreamReset) as reset:
        await stream.read()
    assert (reset.value.code, reset.value.by_peer) == (ErrorCode.CANCEL, False)
    assert (await request(conn, "POST", "/echo", authority="test", body=b"on")).body == b"on"


# -- the server resets ---------------------------------------------------------------------------

async def test_a_handler_reset_reaches_the_peer_with_its_code(
    server: Server, raw_peer: RawPeerFactory,
) -> None:
    peer = await raw_peer(server.port)
    await peer.handshake()
    f = peer.frames
    await peer.send(f.headers(1, request_headers("GET", f"/reset/{ErrorCode.REFUSED_STREAM}"),
                              end_stream=True),
                    f.headers(3, request_headers("POST", "/echo")),
                    f.data(3, b"still here", end_stream=True))
    reset = await peer.until(RstStreamFrame, stream_id=1)
    assert reset.error_code == ErrorCode.REFUSED_STREAM
    assert (await peer.response(3)).body == b"still here"


async def test_a_client_sees_the_servers_reset_as_stream_reset(
    server: Server, client: ClientFactory,
) -> None:
    conn = await client(server.port)
    with pytest.raises(StreamReset) as reset:
        await request(conn, "GET", f"/reset/{ErrorCode.ENHANCE_YOUR_CALM}", authority="test")
    assert (reset.value.code, reset.value.by_peer) == (ErrorCode.ENHANCE_YOUR_CALM, True)
    assert conn.close_reason is None


async def test_data_on_a_stream_the_server_reset_still_reopens_the_connection_window(
    start_server: StartServer, raw_peer: RawPeerFactory,
) -> None:
    # The connection window is shared: body bytes on a stream the server reset, read by
    # nobody, must still be given back, or every later stream starves.
    window = 65_535
    server = await start_server(limits=Limits(stream_window=window, connection_window=window))
    peer = await raw_peer(server.port)
    await peer.handshake()
    f = peer.frames
    # Half the body arrives before the handler resets (buffered, unread), half after it.
    await peer.send(f.headers(1, request_headers("POST", f"/reset/{ErrorCode.CANCEL}")),
                    f.data(1, b"x" * 16_384), f.data(1, b"x" * 16_384))
    assert (await peer.until(RstStreamFrame, stream_id=1)).error_code == ErrorCode.CANCEL
    await peer.send(f.data(1, b"x" * 16_384), f.data(1, b"x" * 16_383))
    assert peer.connection_window == 0
    await peer.round_trip()
    assert peer.connection_window == window  # every byte given back, read or not
    await peer.send(f.headers(3, request_headers("POST", "/digest")))
    await peer.send_body(3, b"y" * 3 * window)  # three connection windows' worth
    response = await peer.response(3)
    assert response.body.split()[0] == str(3 * window).encode()

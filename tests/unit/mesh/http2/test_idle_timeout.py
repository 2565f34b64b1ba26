"""The idle timeout: a connection with no open stream for ``idle_timeout`` says GOAWAY and closes.

These tests use the real clock with a short timeout and only assert directions (closed after
it, still open while a stream lives), with wide margins.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from mesh.http2 import ConnectionClosed, ErrorCode, Http2Connection, Limits, Server, request
from tests.unit.mesh.http2.app import App
from tests.unit.mesh.http2.conftest import StartServer
from tests.unit.mesh.http2.wire import RawPeer, request_headers

pytestmark = pytest.mark.timeout(10)

RawPeerFactory = Callable[..., Awaitable[RawPeer]]
ClientFactory = Callable[..., Awaitable[Http2Connection]]

IDLE = 0.2


async def test_an_idle_connection_gets_goaway_no_error_and_is_closed(
    start_server: StartServer, raw_peer: RawPeerFactory,
) -> None:
    server = await start_server(limits=Limits(idle_timeout=IDLE))
    peer = await raw_peer(server.port)
    await peer.handshake()
    f = peer.frames
    await peer.send(f.headers(1, request_headers("GET", "/echo"), end_stream=True))
    assert (await peer.response(1)).status == "200"
    loop = asyncio.get_running_loop()
    answered = loop.time()
    goaway = await peer.goaway()
    assert loop.time() - answered >= IDLE * 0.9  # counted from when the last stream closed
    assert (goaway.error_code, goaway.last_stream_id) == (ErrorCode.NO_ERROR, 1)
    assert goaway.additional_data == b"idle"
    await peer.closed()


async def test_a_stream_that_outlives_the_idle_timeout_is_not_cut_off(
    start_server: StartServer, client: ClientFactory, app: App,
) -> None:
    server = await start_server(limits=Limits(idle_timeout=IDLE))
    conn = await client(server.port)
    held = asyncio.create_task(request(conn, "GET", "/hold", authority="test"))
    await app.started.get()
    await asyncio.sleep(3 * IDLE)  # three idle timeouts with a stream open
    assert not conn.draining and conn.close_reason is None
    app.release.set()
    assert (await held).body == b"released"
    await asyncio.wait_for(conn.closed, 5.0)  # and once it is done, the timeout runs again
    assert not server.connections


async def test_a_client_closes_its_own_idle_connection(
    server: Server, client: ClientFactory,
) -> None:
    conn = await client(server.port, limits=Limits(idle_timeout=IDLE))
    assert (await request(conn, "POST", "/echo", authority="test", body=b"x")).body == b"x"
    await asyncio.wait_for(conn.closed, 5.0)
    assert conn.close_reason is not None and "idle" in str(conn.close_reason)
    with pytest.raises(ConnectionClosed):
        conn.open_stream(request_headers("GET", "/echo"), end_stream=True)

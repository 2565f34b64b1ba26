"""Fixtures: a ``mesh.http2`` server on a loopback port, and raw peers and clients to talk to it."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from mesh.clock import SYSTEM_CLOCK, Clock
from mesh.http2 import Http2Connection, Limits, Server, connect
from tests.unit.mesh.http2.app import App
from tests.unit.mesh.http2.wire import RawPeer

StartServer = Callable[..., Awaitable[Server]]


@pytest.fixture
def app() -> App:
    return App()


@pytest.fixture
async def start_server(app: App) -> AsyncIterator[StartServer]:
    """``await start_server(limits=..., clock=..., sock=...)``: serve :class:`App` on 127.0.0.1.

    ``sock`` is a listening socket to serve on instead of a fresh one on an ephemeral port.
    """
    servers: list[Server] = []

    async def start(*, limits: Limits = Limits(), clock: Clock = SYSTEM_CLOCK,
                    sock: socket.socket | None = None) -> Server:
        server = Server(app, limits=limits, clock=clock)
        await server.start("127.0.0.1", 0, sock=sock)
        servers.append(server)
        return server

    yield start
    app.release.set()  # let held handlers finish so shutdown does not wait out its grace
    for server in servers:
        await server.shutdown(grace=1.0)


@pytest.fixture
async def server(start_server: StartServer) -> Server:
    """A server with the default limits."""
    return await start_server()


@pytest.fixture
async def raw_peer() -> AsyncIterator[Callable[..., Awaitable[RawPeer]]]:
    """``await raw_peer(port)``: a :class:`RawPeer` connected (not yet handshaken)."""
    peers: list[RawPeer] = []

    async def open_peer(port: int, *, receive_buffer: int | None = None) -> RawPeer:
        peer = await RawPeer.connect(port, receive_buffer=receive_buffer)
        peers.append(peer)
        return peer

    yield open_peer
    for peer in peers:
        await peer.close()


@pytest.fixture
async def client() -> AsyncIterator[Callable[..., Awaitable[Http2Connection]]]:
    """``await client(port, limits=...)``: a ``mesh.http2`` client connection."""
    connections: list[Http2Connection] = []

    async def open_client(port: int, *, limits: Limits = Limits()) -> Http2Connection:
        connection = await connect("127.0.0.1", port, limits=limits)
        connections.append(connection)
        return connection

    yield open_client
    for connection in connections:
        await connection.shutdown(grace=1.0)

"""An HTTP/2 server: a listening socket whose connections run a handler per request stream.

    async def hello(stream: Stream) -> None:
        stream.send_headers([(":status", "200"), ("content-type", "text/plain")])
        await stream.send_data(b"hello\\n", end_stream=True)

    server = await serve(hello, "127.0.0.1", 8080)          # h2c (prior knowledge)
    server = await serve(hello, "127.0.0.1", 8443, ssl=ctx)  # h2 over TLS, ALPN "h2"
"""

from __future__ import annotations

import asyncio
import socket
import ssl as ssl_module

from mesh.clock import SYSTEM_CLOCK, Clock
from mesh.http2.connection import Handler, Http2Connection
from mesh.http2.limits import Limits


class Server:
    """Listens, accepts, and remembers its connections so it can drain them on shutdown."""

    def __init__(self, handler: Handler, *, limits: Limits = Limits(),
                 clock: Clock = SYSTEM_CLOCK) -> None:
        self.handler = handler
        self.limits = limits
        self.connections: set[Http2Connection] = set()
        self._clock = clock
        self._server: asyncio.Server | None = None

    def _new_connection(self) -> Http2Connection:
        # Tracked from connection_made on: a TLS handshake that fails never gets that far,
        # and must leave nothing behind.
        return Http2Connection(client_side=False, handler=self.handler, limits=self.limits,
                               clock=self._clock, on_open=self.connections.add,
                               on_close=self.connections.discard)

    async def start(self, host: str, port: int, *, ssl: ssl_module.SSLContext | None = None,
                    sock: socket.socket | None = None) -> None:
        """Start listening on ``host:port`` (port 0 picks a free one: see :attr:`port`)."""
        loop = asyncio.get_running_loop()
        if sock is not None:
            self._server = await loop.create_server(self._new_connection, sock=sock, ssl=ssl)
        else:
            self._server = await loop.create_server(self._new_connection, host, port, ssl=ssl,
                                                    reuse_address=True)

    @property
    def port(self) -> int:
        """The port actually bound."""
        assert self._server is not None, "server not started"
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def shutdown(self, grace: float = 5.0) -> None:
        """Stop accepting, send GOAWAY on every connection, let streams finish for ``grace``."""
        if self._server is not None:
            self._server.close()
        await asyncio.gather(*(c.shutdown(grace) for c in list(self.connections)))
        if self._server is not None:
            await self._server.wait_closed()


async def serve(handler: Handler, host: str, port: int, *,
                ssl: ssl_module.SSLContext | None = None, limits: Limits = Limits(),
                clock: Clock = SYSTEM_CLOCK) -> Server:
    """Start an HTTP/2 server and return it (listening)."""
    server = Server(handler, limits=limits, clock=clock)
    await server.start(host, port, ssl=ssl)
    return server

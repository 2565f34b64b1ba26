"""The upstream connection pool: HTTP/2 connections to one endpoint, shared by every request.

A TCP + TLS handshake costs round trips and CPU; an HTTP/2 connection carries many requests at
once. So the pool keeps connections open and puts each new request on one that has room,
opening another only when every connection is full — at the peer's
SETTINGS_MAX_CONCURRENT_STREAMS, or at our own ``max_streams_per_connection``
(:data:`DEFAULT_MAX_STREAMS`), because ``h2`` gets slower as streams pile up on one connection.

Requests that arrive while a connection is being opened wait for that one rather than each
opening their own — up to ``max_streams_per_connection`` of them; a bigger burst opens more
connections side by side. A connection that received GOAWAY drains (its streams finish) and is
replaced for new requests; a dead one is dropped. Idle connections close themselves after
``idle_timeout`` — shorter than the server's, so the client, not the server, decides when a
connection is done (the "503 on a reused keep-alive connection" race).

A pool may be told the SPIFFE ID its endpoint registered with (``peer_identity``): a new
connection whose certificate proves another ID — a certificate of the mesh CA, but not of
the service this endpoint is — is closed at once and counts as a failure to connect, as
Envoy does with the subject alt names Istio puts in each cluster's TLS context.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl as ssl_module
from collections.abc import Callable
from typing import cast

from mesh.http2 import (
    ConnectionClosed,
    ErrorCode,
    Headers,
    Http2Connection,
    Limits,
    Stream,
    connect,
)
from mesh.tls import peer_spiffe_id

log = logging.getLogger("sidecar.pool")

DEFAULT_MAX_STREAMS = 25
"""Streams per connection before another is opened. ``h2``'s cost per frame grows with the
streams open on its connection, and the two sidecars of a hop work on different connections'
batches at once: in ``bench/sidecar_pair.py`` 25 gave about 1.3× the req/s of 100 at 100
streams in flight. A burst opens its connections side by side (see above); opened one after
another, 5,000 streams took 23 s instead of 4 s to reach the app."""


DEFAULT_IDLE_TIMEOUT = 60.0
"""Seconds a pooled connection may idle before the pool closes it: shorter than the servers'
(Envoy's and nghttpd's idle timeouts are longer), so the client decides when it is done."""


class ConnectFailure(Exception):
    """No connection to the endpoint could be made (refused, timed out, TLS failed)."""


class WrongPeer(Exception):
    """The endpoint's certificate proves another identity than the one that registered it."""


class ConnectionPool:
    """Connections to ``host:port``; :meth:`open_stream` starts a request on one of them."""

    def __init__(self, host: str, port: int, *, ssl: ssl_module.SSLContext | None,
                 connect_timeout: float = 1.0,
                 max_streams_per_connection: int = DEFAULT_MAX_STREAMS,
                 idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
                 on_connect: Callable[[], None] | None = None,
                 peer_identity: str = "") -> None:
        """Args:
            peer_identity: the SPIFFE ID the endpoint's certificate must prove ("": any).
        """
        self.host, self.port = host, port
        self.ssl = ssl
        self.peer_identity = peer_identity
        self.connect_timeout = connect_timeout
        self.max_streams_per_connection = max_streams_per_connection
        self.limits = Limits(idle_timeout=idle_timeout)
        self.connections: list[Http2Connection] = []
        self.connections_opened = 0
        self.streams_opened = 0
        # Connections being opened, each with the number of requests waiting for it: a burst
        # opens connections side by side, each awaited by up to max_streams_per_connection.
        self._connecting: dict[asyncio.Task[Http2Connection], int] = {}
        self._on_connect = on_connect

    def __repr__(self) -> str:
        return f"<ConnectionPool {self.host}:{self.port} connections={len(self.connections)}>"

    async def open_stream(self, headers: Headers, *, end_stream: bool = False) -> Stream:
        """Send ``headers`` on a new stream of a pooled (or new) connection.

        Raises:
            ConnectFailure: a new connection was needed and could not be made.
        """
        while True:
            connection = self._with_room()
            if connection is not None:
                try:
                    stream = connection.open_stream(headers, end_stream=end_stream)
                except ConnectionClosed:
                    continue  # it started draining just now: try another
                self.streams_opened += 1
                return stream
            connecting = next((task for task, waiting in self._connecting.items()
                               if waiting < self.max_streams_per_connection), None)
            if connecting is None:
                connecting = asyncio.create_task(self._connect())
                self._connecting[connecting] = 0
            self._connecting[connecting] += 1
            try:
                await asyncio.shield(connecting)
            except Exception as error:
                raise ConnectFailure(f"{self.host}:{self.port}: {error}") from error

    def has_room(self) -> bool:
        """True when a new stream can start now, without waiting for a connection."""
        return self._with_room() is not None

    def _with_room(self) -> Http2Connection | None:
        for connection in self.connections:
            if (connection.available_streams > 0 and  # 0 once draining or closed
                    len(connection.streams) < self.max_streams_per_connection):
                return connection
        return None

    async def _connect(self) -> Http2Connection:
        try:
            connection = await connect(self.host, self.port, ssl=self.ssl, limits=self.limits,
                                       connect_timeout=self.connect_timeout)
            if self.peer_identity and connection.ssl_object is not None:
                self._check_peer(connection)
        except BaseException as error:
            log.warning("cannot connect to %s:%d: %s", self.host, self.port,
                        error or type(error).__name__)
            raise
        finally:
            self._connecting.pop(cast("asyncio.Task[Http2Connection]", asyncio.current_task()),
                                 None)
        self.connections_opened += 1
        self.connections.append(connection)
        # Forgotten as soon as it closes (idle, GOAWAY drained, peer gone), so the pool's
        # count — what /clusters shows — is the connections that are really open.
        connection.closed.add_done_callback(lambda _: self._forget(connection))
        if self._on_connect is not None:
            self._on_connect()
        return connection

    def _check_peer(self, connection: Http2Connection) -> None:
        assert connection.ssl_object is not None
        try:
            proved = str(peer_spiffe_id(connection.ssl_object))
        except ValueError as error:
            proved = f"no mesh identity ({error})"
        if proved != self.peer_identity:
            problem = (f"its certificate proves {proved}, not {self.peer_identity}, which "
                       f"registered this endpoint")
            connection.abort(ErrorCode.INADEQUATE_SECURITY, problem)
            raise WrongPeer(problem)

    def _forget(self, connection: Http2Connection) -> None:
        if connection in self.connections:
            self.connections.remove(connection)

    async def close(self, grace: float = 5.0) -> None:
        """Drain every connection (GOAWAY; streams in flight finish), then close."""
        for connecting in list(self._connecting):
            connecting.cancel()
            with contextlib.suppress(BaseException):
                await connecting
        await asyncio.gather(*(c.shutdown(grace) for c in self.connections))
        self.connections.clear()

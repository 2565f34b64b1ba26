"""One HTTP/2 stream as an application sees it: headers, a flow-controlled body, trailers.

A stream is one request/response exchange. Each side sends headers, then any number of DATA
frames, then optionally trailers, and ends its half with END_STREAM; either side may abort the
whole stream with RST_STREAM.

Flow control is what keeps a slow reader from being flooded. Received data is *acknowledged*
(its window reopened) only when the application reads it, so a peer can send at most one window
ahead of the reader. Sending waits for the peer's window and for the socket to drain.

The :class:`Stream` never touches ``h2`` or the socket itself: it asks its connection
(:class:`StreamOwner`) to act, and the connection feeds it events through the ``on_*`` methods.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from typing import Any, Protocol

from mesh.http2.errors import ConnectionClosed, ErrorCode, Http2Error, StreamRefused, StreamReset

Headers = list[tuple[str, str]]


class StreamOwner(Protocol):
    """What a stream needs from its connection."""

    peer: Any  # the peer's socket address
    ssl_object: ssl.SSLObject | None  # the TLS session, for the peer's certificate

    def send_headers(self, stream_id: int, headers: Headers, end_stream: bool) -> None: ...
    def send_data(self, stream_id: int, data: bytes | memoryview, end_stream: bool) -> int: ...
    def reset_stream(self, stream_id: int, code: int) -> None: ...
    def acknowledge(self, stream_id: int, size: int) -> None: ...
    def stream_closed(self, stream: Stream) -> None: ...
    @property
    def write_paused(self) -> bool: ...
    async def writable(self) -> None: ...


class Stream:
    """One exchange on a connection.

    ``headers`` are what the peer sent (the request on a server, the response on a client,
    after :meth:`receive_headers`); ``trailers`` are the peer's trailers once the body ended.

    States, per direction: open → closed (END_STREAM) for receiving and for sending; a reset or
    a lost connection closes both with an error that every later call raises.
    """

    __slots__ = ("_chunks", "_conn", "_error", "_headers_waiter", "_read_waiter",
                 "_recv_closed", "_send_closed", "_send_error", "_task", "_window_waiter",
                 "headers", "id", "opened_at", "trailers")

    def __init__(self, conn: StreamOwner, stream_id: int, headers: Headers | None = None,
                 opened_at: float = 0.0) -> None:
        self.id = stream_id
        self.opened_at = opened_at  # clock time; a server tells premature resets by it
        self.headers: Headers | None = headers
        self.trailers: Headers | None = None
        self._conn = conn
        self._chunks: deque[tuple[bytes, int]] = deque()
        self._recv_closed = False
        self._send_closed = False
        self._error: Http2Error | None = None
        self._send_error: Http2Error | None = None  # reset after a complete response
        self._read_waiter: asyncio.Future[None] | None = None
        self._headers_waiter: asyncio.Future[None] | None = None
        self._window_waiter: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None  # a server's handler, cancelled on reset

    def __repr__(self) -> str:
        return f"<Stream {self.id} recv_closed={self._recv_closed} send_closed={self._send_closed}>"

    @property
    def connection(self) -> StreamOwner:
        """The connection this stream runs on (its peer address and TLS session)."""
        return self._conn

    # -- receiving ---------------------------------------------------------------------------

    async def receive_headers(self) -> Headers:
        """The peer's headers, waiting for them if needed (a client waits for the response)."""
        while self.headers is None:
            if self._error is not None:
                raise self._error
            self._headers_waiter = asyncio.get_running_loop().create_future()
            try:
                await self._headers_waiter
            finally:
                self._headers_waiter = None
        return self.headers

    async def read(self) -> bytes:
        """The next chunk of the body; ``b""`` once the peer ended it.

        Raises:
            StreamReset: the stream was reset; ConnectionClosed: the connection was lost.
        """
        while not self._chunks:
            if self._error is not None:
                raise self._error
            if self._recv_closed:
                return b""
            self._read_waiter = asyncio.get_running_loop().create_future()
            try:
                await self._read_waiter
            finally:
                self._read_waiter = None
        data, flow_controlled = self._chunks.popleft()
        if flow_controlled:
            self._conn.acknowledge(self.id, flow_controlled)
        return data

    async def read_all(self, limit: int | None = None) -> bytes:
        """The whole remaining body; resets the stream if it grows past ``limit`` bytes."""
        parts = []
        size = 0
        while chunk := await self.read():
            size += len(chunk)
            if limit is not None and size > limit:
                self.reset(ErrorCode.CANCEL)
                raise ValueError(f"body of stream {self.id} is larger than {limit} bytes")
            parts.append(chunk)
        return b"".join(parts)

    @property
    def ended(self) -> bool:
        """True once the peer has finished sending (END_STREAM, reset or connection lost)."""
        return self._recv_closed

    @property
    def complete(self) -> bool:
        """True when the peer ended its side normally and every body chunk has been read."""
        return self._recv_closed and self._error is None and not self._chunks

    # -- sending -----------------------------------------------------------------------------

    def send_headers(self, headers: Headers, *, end_stream: bool = False) -> None:
        """Send the response (server) or request (client) headers, or trailers later on."""
        self._check_can_send()
        self._conn.send_headers(self.id, headers, end_stream)
        if end_stream:
            self._close_send()

    async def send_data(self, data: bytes, *, end_stream: bool = False) -> None:
        """Send body bytes, waiting as the peer's flow-control window and the socket allow."""
        self._check_can_send()
        if self._conn.write_paused:  # the socket is full already: add nothing to it yet
            await self._conn.writable()
            self._check_can_send()
        remaining: bytes | memoryview = data
        while True:
            sent = self._conn.send_data(self.id, remaining, end_stream)
            if sent == len(remaining):
                break
            remaining = memoryview(remaining)[sent:]  # what is left, without copying it
            if self._conn.write_paused:
                await self._conn.writable()
            elif sent == 0:
                await self._wait_for_window()
            self._check_can_send()
        if end_stream:
            self._close_send()
        if self._conn.write_paused:  # checked first: most sends never wait
            await self._conn.writable()

    def send_trailers(self, trailers: Headers) -> None:
        """End the stream with trailers (gRPC puts its status here)."""
        self.send_headers(trailers, end_stream=True)

    def end(self) -> None:
        """End our half of the stream with an empty DATA frame carrying END_STREAM."""
        self._check_can_send()
        self._conn.send_data(self.id, b"", True)
        self._close_send()

    def reset(self, code: int = ErrorCode.CANCEL, *, reason: str = "") -> None:
        """Abort the stream in both directions with RST_STREAM (no-op once it is closed);
        ``reason`` goes into the error that waiting readers and writers get."""
        if self._error is not None or (self._recv_closed and self._send_closed):
            return
        self._conn.reset_stream(self.id, code)
        self._fail(StreamReset(self.id, code, by_peer=False, reason=reason))

    @property
    def send_closed(self) -> bool:
        """True once we can send nothing more on this stream."""
        return self._send_closed

    # -- events from the connection ----------------------------------------------------------

    def on_headers(self, headers: Headers) -> None:
        self.headers = headers
        _wake(self._headers_waiter)

    def on_data(self, data: bytes, flow_controlled: int) -> None:
        self._chunks.append((data, flow_controlled))
        _wake(self._read_waiter)

    def on_trailers(self, trailers: Headers) -> None:
        self.trailers = trailers

    def on_end(self) -> None:
        self._recv_closed = True
        _wake(self._read_waiter)
        _wake(self._headers_waiter)
        if self._send_closed:
            self._finish()

    def on_window(self) -> None:
        _wake(self._window_waiter)

    def on_reset(self, code: int) -> None:
        if code == ErrorCode.NO_ERROR and self._recv_closed and self._error is None:
            # RFC 9113 §8.1: a server that has answered in full may reset with NO_ERROR to
            # say "stop sending the request". The response stays readable; sending stops.
            self._send_error = StreamReset(self.id, code, by_peer=True)
            self._send_closed = True
            _wake(self._window_waiter)
            self._finish()
            return
        error_type = StreamRefused if code == ErrorCode.REFUSED_STREAM else StreamReset
        self._fail(error_type(self.id, code, by_peer=True))

    def on_refused(self) -> None:
        """The peer's GOAWAY says it never started on this stream."""
        self._fail(StreamRefused(self.id, ErrorCode.REFUSED_STREAM, by_peer=True))

    def on_connection_lost(self, error: ConnectionClosed) -> None:
        self._fail(error)

    # -- internals ---------------------------------------------------------------------------

    def _check_can_send(self) -> None:
        if self._error is not None:
            raise self._error
        if self._send_error is not None:
            raise self._send_error
        if self._send_closed:
            raise RuntimeError(f"stream {self.id}: cannot send after END_STREAM")

    async def _wait_for_window(self) -> None:
        self._window_waiter = asyncio.get_running_loop().create_future()
        try:
            await self._window_waiter
        finally:
            self._window_waiter = None

    def _close_send(self) -> None:
        self._send_closed = True
        if self._recv_closed:
            self._finish()

    def _finish(self) -> None:
        # Both halves are done. Body bytes the application has not read yet stay readable, but
        # their connection window is given back now: nothing more can arrive on this stream.
        if self._chunks and any(flow_controlled for _, flow_controlled in self._chunks):
            for _, flow_controlled in self._chunks:
                if flow_controlled:
                    self._conn.acknowledge(self.id, flow_controlled)
            self._chunks = deque((data, 0) for data, _ in self._chunks)
        self._conn.stream_closed(self)

    def _fail(self, error: Http2Error) -> None:
        if self._error is not None:
            return
        self._error = error
        was_open = not (self._recv_closed and self._send_closed)
        self._recv_closed = self._send_closed = True
        # Unread data still holds connection window: give it back, or the connection stalls.
        for _, flow_controlled in self._chunks:
            if flow_controlled:
                self._conn.acknowledge(self.id, flow_controlled)
        self._chunks.clear()
        for waiter in (self._read_waiter, self._headers_waiter, self._window_waiter):
            _wake(waiter)
        if self._task is not None and self._task is not asyncio.current_task():
            self._task.cancel()
        if was_open:
            self._conn.stream_closed(self)


def _wake(waiter: asyncio.Future[None] | None) -> None:
    if waiter is not None and not waiter.done():
        waiter.set_result(None)

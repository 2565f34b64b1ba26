"""A gRPC client: a :class:`Channel` to one server, and a :class:`Call` per RPC.

    channel = Channel("127.0.0.1", 50051)
    say_hello = channel.unary_unary("/hello.Greeter/SayHello", HelloReply.FromString)
    reply = await say_hello(HelloRequest(name="mesh"), timeout=0.5)

The deadline is enforced here too, from the start: connecting and waiting for a free stream
count against it. When it passes, the stream is reset with RST_STREAM(CANCEL) (so the server
stops working on it) and the call fails with DEADLINE_EXCEEDED. Cancelling the calling task
cancels the call the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl as ssl_module
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable
from typing import Any, Generic, TypeVar

from mesh.clock import SYSTEM_CLOCK, Clock
from mesh.grpc.deadline import Deadline
from mesh.grpc.framing import DEFAULT_MAX_MESSAGE_SIZE, MessageDecoder, encode_message
from mesh.grpc.server import Message
from mesh.grpc.status import (
    GrpcError,
    StatusCode,
    code_for_http_status,
    code_for_reset,
    code_of,
    unquote_message,
)
from mesh.http2 import (
    ConnectionClosed,
    ErrorCode,
    Headers,
    Http2Connection,
    Limits,
    NoStreamAvailable,
    Stream,
    StreamReset,
    connect,
)
from mesh.tls import peer_spiffe_id

R = TypeVar("R")


class Channel:
    """A lazily connected HTTP/2 connection to one gRPC server, reconnected when lost."""

    def __init__(self, host: str, port: int, *, ssl: ssl_module.SSLContext | None = None,
                 authority: str | None = None, server_hostname: str | None = None,
                 limits: Limits = Limits(), max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
                 clock: Clock = SYSTEM_CLOCK, local_address: str | None = None,
                 peer_identity: str | None = None) -> None:
        """Args:
            peer_identity: the SPIFFE ID the server's certificate must prove (TLS only); a
                connection to another is closed and the call fails with ConnectionError.
        """
        self.host, self.port = host, port
        self.peer_identity = peer_identity
        self.authority = authority or f"{host}:{port}"
        self.scheme = "https" if ssl is not None else "http"
        self.max_message_size = max_message_size
        self.clock = clock
        self._ssl = ssl
        self._server_hostname = server_hostname
        self._limits = limits
        self._local_address = local_address
        self._connection: Http2Connection | None = None
        self._connecting = asyncio.Lock()

    async def connection(self) -> Http2Connection:
        """The live connection, (re)connecting if needed."""
        async with self._connecting:
            conn = self._connection
            if conn is None or conn.close_reason is not None or conn.draining:
                conn = await connect(
                    self.host, self.port, ssl=self._ssl, server_hostname=self._server_hostname,
                    limits=self._limits, clock=self.clock, local_address=self._local_address)
                if self.peer_identity is not None:
                    self._check_peer(conn)
                self._connection = conn
            return conn

    def _check_peer(self, conn: Http2Connection) -> None:
        try:
            proved = str(peer_spiffe_id(conn.ssl_object)) if conn.ssl_object else "no TLS"
        except ValueError as error:
            proved = f"no mesh identity ({error})"
        if proved != self.peer_identity:
            problem = (f"{self.host}:{self.port} proved {proved}, not {self.peer_identity}")
            conn.abort(ErrorCode.INADEQUATE_SECURITY, problem)
            raise ConnectionError(problem)

    async def open_stream(self, headers: Headers, *, deadline: Deadline | None = None,
                          metadata: Headers | None = None) -> Stream:
        """Open a stream, waiting for a free slot under the server's stream limit.

        ``deadline`` is sent as ``grpc-timeout`` when the stream opens, so time spent waiting
        for a slot is not promised to the server; ``metadata`` follows it.
        """
        while True:
            conn = await self.connection()
            timeout = [] if deadline is None else [("grpc-timeout", deadline.header())]
            try:
                return conn.open_stream([*headers, *timeout, *(metadata or [])])
            except NoStreamAvailable:
                with contextlib.suppress(ConnectionClosed):  # draining now: as below
                    await conn.wait_for_stream_slot()
            except ConnectionClosed:
                continue  # draining or gone: the next loop connects afresh

    async def close(self) -> None:
        if self._connection is not None:
            await self._connection.shutdown(grace=1.0)
            self._connection = None

    def call(self, path: str, parse_response: Callable[[bytes], R], *,
             timeout: float | None = None, deadline: Deadline | None = None,
             metadata: Headers | None = None) -> Call[R]:
        """A new call of ``path``; use it as ``async with`` to be sure it is cleaned up."""
        if timeout is not None:
            deadline = (deadline or Deadline.after(timeout, self.clock)).earliest(timeout)
        return Call(self, path, parse_response, deadline, metadata or [])

    def unary_unary(self, path: str, parse_response: Callable[[bytes], R]
                    ) -> Callable[..., Any]:
        async def invoke(request: Message, **options: Any) -> R:
            async with self.call(path, parse_response, **options) as call:
                await call.send(request, end=True)
                return await call.single_response()
        return invoke

    def unary_stream(self, path: str, parse_response: Callable[[bytes], R]
                     ) -> Callable[..., AsyncIterator[R]]:
        async def invoke(request: Message, **options: Any) -> AsyncIterator[R]:
            async with self.call(path, parse_response, **options) as call:
                await call.send(request, end=True)
                async for response in call:
                    yield response
        return invoke

    def stream_unary(self, path: str, parse_response: Callable[[bytes], R]
                     ) -> Callable[..., Any]:
        async def invoke(requests: Iterable[Message] | AsyncIterable[Message],
                         **options: Any) -> R:
            async with self.call(path, parse_response, **options) as call:
                await call.send_all(requests)
                return await call.single_response()
        return invoke

    def stream_stream(self, path: str, parse_response: Callable[[bytes], R]
                      ) -> Callable[..., Call[R]]:
        """Bidirectional: returns the :class:`Call`; ``send`` and iterate at will."""
        def invoke(**options: Any) -> Call[R]:
            return self.call(path, parse_response, **options)
        return invoke


class Call(Generic[R]):
    """One RPC in progress: send requests, iterate responses, then read :attr:`code`."""

    def __init__(self, channel: Channel, path: str, parse_response: Callable[[bytes], R],
                 deadline: Deadline | None, metadata: Headers) -> None:
        self.path = path
        self.deadline = deadline
        self.code: StatusCode | None = None
        self.message = ""
        self.initial_metadata: Headers = []
        self.trailing_metadata: Headers = []
        self._channel = channel
        self._parse = parse_response
        self._metadata = metadata
        self._stream: Stream | None = None
        self._decoder = MessageDecoder(channel.max_message_size)
        self._ready: list[bytes] = []
        self._timer: asyncio.TimerHandle | None = None
        self._expired = False
        self._headers_checked = False

    async def __aenter__(self) -> Call[R]:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.cancel()

    async def start(self) -> None:
        """Open the stream and send the request headers.

        Raises:
            GrpcError: DEADLINE_EXCEEDED when the deadline passes first (connecting and waiting
            for a stream slot count against it); UNAVAILABLE when the server cannot be reached.
        """
        channel = self._channel
        headers = [(":method", "POST"), (":scheme", channel.scheme), (":path", self.path),
                   (":authority", channel.authority), ("te", "trailers"),
                   ("content-type", "application/grpc"), ("grpc-accept-encoding", "identity")]
        deadline = self.deadline
        if deadline is not None and deadline.expired:
            raise GrpcError(StatusCode.DEADLINE_EXCEEDED, "deadline passed before the call")
        try:
            async with asyncio.timeout(None if deadline is None else deadline.remaining()) \
                    as opening:
                self._stream = await channel.open_stream(headers, deadline=deadline,
                                                         metadata=self._metadata)
        except (ConnectionError, OSError, ConnectionClosed) as error:
            if opening.expired():  # asyncio.timeout's TimeoutError is an OSError
                raise GrpcError(StatusCode.DEADLINE_EXCEEDED,
                                f"deadline passed while opening a stream to "
                                f"{channel.authority}") from error
            raise GrpcError(StatusCode.UNAVAILABLE, f"cannot reach {channel.authority}: "
                                                    f"{error}") from error
        if deadline is not None:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(max(deadline.remaining(), 0.0), self._expire)

    async def send(self, request: Message, *, end: bool = False) -> None:
        """Send one request message (``end=True``: and no more)."""
        assert self._stream is not None, "call not started"
        try:
            await self._stream.send_data(encode_message(request.SerializeToString()),
                                         end_stream=end)
        except (StreamReset, ConnectionClosed) as error:
            raise self._failure(error) from error

    async def send_all(self, requests: Iterable[Message] | AsyncIterable[Message]) -> None:
        """Send every request, then end the request stream."""
        if isinstance(requests, AsyncIterable):
            async for request in requests:
                await self.send(request)
        else:
            for request in requests:
                await self.send(request)
        await self.done_writing()

    async def done_writing(self) -> None:
        """End the request stream (half-close)."""
        assert self._stream is not None, "call not started"
        if not self._stream.send_closed:
            try:
                self._stream.end()
            except (StreamReset, ConnectionClosed) as error:
                raise self._failure(error) from error

    async def receive(self) -> R | None:
        """The next response message, or None once the call ended with OK.

        Raises:
            GrpcError: the call ended with any other status.
        """
        stream = self._stream
        assert stream is not None, "call not started"
        try:
            if not self._headers_checked:  # even if they arrived before this first receive
                headers = await stream.receive_headers()
                self._headers_checked = True
                self._check_response_headers(headers)
            while not self._ready:
                if self.code is not None:
                    self._raise_if_failed()
                    return None
                chunk = await stream.read()
                if chunk:
                    self._ready.extend(self._decoder.feed(chunk))
                else:
                    self._finish(stream.trailers or stream.headers or [])
        except (StreamReset, ConnectionClosed) as error:
            raise self._failure(error) from error
        except asyncio.CancelledError:
            self.cancel()
            raise
        return self._parse(self._ready.pop(0))

    def __aiter__(self) -> AsyncIterator[R]:
        return self._responses()

    async def _responses(self) -> AsyncIterator[R]:
        while (response := await self.receive()) is not None:
            yield response

    async def single_response(self) -> R:
        """The one response of a unary or client-streaming call."""
        response = await self.receive()
        if response is None or await self.receive() is not None:
            raise GrpcError(StatusCode.INTERNAL, f"{self.path}: expected exactly one response")
        return response

    def cancel(self) -> None:
        """Abandon the call: RST_STREAM(CANCEL) if it is still open."""
        self._stop_timer()
        if self._stream is not None and not (self._stream.ended and self._stream.send_closed):
            self._stream.reset(ErrorCode.CANCEL)
        if self.code is None:
            self.code = StatusCode.CANCELLED

    # -- internals ---------------------------------------------------------------------------

    def _check_response_headers(self, headers: Headers) -> None:
        values = dict(headers)
        status = int(values.get(":status", "0"))
        if status != 200:
            self._finish_with(code_for_http_status(status), f"HTTP status {status}")
        elif not values.get("content-type", "").startswith("application/grpc"):
            self._finish_with(StatusCode.UNKNOWN, f"content-type {values.get('content-type')!r}"
                                                  f" is not gRPC")
        elif "grpc-status" in values:  # trailers-only
            self._finish(headers)
        else:
            self.initial_metadata = [(k, v) for k, v in headers if k[0] != ":"]

    def _finish(self, trailers: Headers) -> None:
        if self.code is not None:
            return
        values = dict(trailers)
        # content-type: a trailers-only response's one HEADERS frame is headers and trailers.
        self.trailing_metadata = [(k, v) for k, v in trailers if k[0] != ":"
                                  and not k.startswith("grpc-") and k != "content-type"]
        if self._decoder.pending:
            self._finish_with(StatusCode.INTERNAL, "response ended inside a message")
        elif "grpc-status" not in values:
            self._finish_with(StatusCode.UNKNOWN, "response ended without grpc-status")
        else:
            self._finish_with(code_of(values["grpc-status"]),
                              unquote_message(values.get("grpc-message", "")))

    def _finish_with(self, code: StatusCode, message: str) -> None:
        self._stop_timer()
        self.code, self.message = code, message
        self._raise_if_failed()

    def _raise_if_failed(self) -> None:
        if self.code is not None and self.code != StatusCode.OK:
            if self._stream is not None and not self._stream.ended:
                self._stream.reset(ErrorCode.CANCEL)
            raise GrpcError(self.code, self.message, self.trailing_metadata)

    def _failure(self, error: Exception) -> GrpcError:
        self._stop_timer()
        if self._expired:
            self.code = StatusCode.DEADLINE_EXCEEDED
            self.message = "deadline exceeded (the client cancelled the stream)"
        elif isinstance(error, StreamReset):
            self.code, self.message = code_for_reset(error.code), str(error)
        else:
            self.code, self.message = StatusCode.UNAVAILABLE, str(error)
        return GrpcError(self.code, self.message)

    def _expire(self) -> None:
        self._timer = None
        if self.code is None and self._stream is not None:
            self._expired = True
            self._stream.reset(ErrorCode.CANCEL)

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

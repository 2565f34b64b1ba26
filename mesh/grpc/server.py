"""A gRPC server: a ``mesh.http2`` handler that maps ``:path`` to methods.

One call on the wire:

    HEADERS  :method POST  :path /hello.Greeter/SayHello  content-type application/grpc
             grpc-timeout 500m                     (optional: the caller's remaining time)
    DATA     [0][len][protobuf] ...                 (zero or more request messages)
    ------------------------------------------------ response
    HEADERS  :status 200  content-type application/grpc
    DATA     [0][len][protobuf] ...                 (zero or more response messages)
    HEADERS  grpc-status 0  grpc-message ...        (trailers, END_STREAM)

A call that fails before any response message is a *trailers-only* response: one HEADERS frame
with ``:status``, ``grpc-status`` and END_STREAM. The deadline from ``grpc-timeout`` bounds the
handler; when it passes, the handler is cancelled and the status is DEADLINE_EXCEEDED.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any, NoReturn, Protocol

from mesh.clock import SYSTEM_CLOCK, Clock
from mesh.grpc.deadline import Deadline, parse_timeout
from mesh.grpc.framing import DEFAULT_MAX_MESSAGE_SIZE, MessageDecoder, encode_message
from mesh.grpc.status import GrpcError, StatusCode, quote_message
from mesh.http2 import Headers, Stream

log = logging.getLogger("mesh.grpc")


class Message(Protocol):
    """A protobuf message (what ``protoc`` generates)."""

    def SerializeToString(self) -> bytes: ...


class Cardinality(Enum):
    """How many messages each side sends."""

    UNARY_UNARY = "unary"  # one request, one response
    UNARY_STREAM = "server streaming"  # one request, many responses
    STREAM_UNARY = "client streaming"  # many requests, one response
    STREAM_STREAM = "bidirectional"  # many each way, interleaved as the handler likes


class Context:
    """What a handler knows about its call, and how it ends the call with a status."""

    def __init__(self, stream: Stream, deadline: Deadline | None) -> None:
        self.stream = stream
        self.deadline = deadline
        self.metadata: Headers = [(k, v) for k, v in stream.headers or [] if k[0] != ":"]
        self.path = next((v for k, v in stream.headers or [] if k == ":path"), "")
        self.trailing_metadata: Headers = []
        self.peer = stream.connection.peer
        self.ssl_object = stream.connection.ssl_object

    def time_remaining(self) -> float | None:
        """Seconds until the caller's deadline, or None when the caller set none."""
        return None if self.deadline is None else self.deadline.remaining()

    def header(self, name: str) -> str | None:
        """The first value of request metadata ``name``, or None."""
        return next((v for k, v in self.metadata if k == name), None)

    def abort(self, code: StatusCode, message: str) -> NoReturn:
        """End the call with ``code``; never returns."""
        raise GrpcError(code, message)


Handler = Callable[..., Any]


@dataclass(frozen=True, slots=True)
class Method:
    """One registered method: its cardinality, how to parse requests, and the handler."""

    cardinality: Cardinality
    parse_request: Callable[[bytes], Any]
    handler: Handler


class GrpcServer:
    """Routes calls to handlers. Use :meth:`handle` as a ``mesh.http2`` server handler.

    Handler shapes, by cardinality (``ctx`` is a :class:`Context`):
        unary            ``async def f(request, ctx) -> response``
        server streaming ``async def f(request, ctx) -> AsyncIterator[response]`` (async gen)
        client streaming ``async def f(requests: AsyncIterator, ctx) -> response``
        bidirectional    ``async def f(requests: AsyncIterator, ctx) -> AsyncIterator``
    """

    def __init__(self, *, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
                 clock: Clock = SYSTEM_CLOCK) -> None:
        self.methods: dict[str, Method] = {}
        self.max_message_size = max_message_size
        self._clock = clock

    def add(self, path: str, cardinality: Cardinality, parse_request: Callable[[bytes], Any],
            handler: Handler) -> None:
        """Register ``handler`` for ``path`` (``/package.Service/Method``)."""
        if not path.startswith("/") or path.count("/") != 2:
            raise ValueError(f"gRPC method path must look like /package.Service/Method, "
                             f"got {path!r}")
        self.methods[path] = Method(cardinality, parse_request, handler)

    async def handle(self, stream: Stream) -> None:
        """Serve one HTTP/2 stream as a gRPC call."""
        headers = dict(stream.headers or [])
        path = headers.get(":path", "")
        if headers.get(":method") != "POST" or \
                not headers.get("content-type", "").startswith("application/grpc"):
            stream.send_headers([(":status", "415"), ("content-type", "text/plain")])
            await stream.send_data(b"gRPC needs POST with content-type application/grpc\n",
                                   end_stream=True)
            return
        method = self.methods.get(path)
        if method is None:
            self._send_status(stream, False, StatusCode.UNIMPLEMENTED,
                              f"unknown method {path}", [])
            return
        deadline = None
        if "grpc-timeout" in headers:
            try:
                deadline = Deadline.after(parse_timeout(headers["grpc-timeout"]), self._clock)
            except ValueError as error:
                self._send_status(stream, False, StatusCode.INTERNAL, str(error), [])
                return
        context = Context(stream, deadline)
        call = _ServerCall(stream, method, context, self.max_message_size)
        code, message = StatusCode.OK, ""
        try:
            async with asyncio.timeout(None if deadline is None else deadline.remaining()) \
                    as running:
                await call.run()
        except GrpcError as error:
            code, message = error.code, error.message
        except Exception as error:
            if isinstance(error, TimeoutError) and running.expired():
                code, message = StatusCode.DEADLINE_EXCEEDED, "deadline exceeded on the server"
            else:  # including a TimeoutError of the handler's own: that is not our deadline
                log.exception("gRPC handler for %s failed", path)
                code, message = StatusCode.UNKNOWN, f"{type(error).__name__}: {error}"
        if not stream.send_closed:
            self._send_status(stream, call.headers_sent, code, message,
                              context.trailing_metadata)

    @staticmethod
    def _send_status(stream: Stream, headers_sent: bool, code: StatusCode, message: str,
                     metadata: Headers) -> None:
        status: Headers = [("grpc-status", str(int(code)))]
        if message:
            status.append(("grpc-message", quote_message(message)))
        if headers_sent:
            stream.send_trailers([*status, *metadata])
        else:  # trailers-only: the whole response is one HEADERS frame
            stream.send_headers([(":status", "200"), ("content-type", "application/grpc"),
                                 *status, *metadata], end_stream=True)


class _ServerCall:
    """The state of one call on the server: request decoding and response sending."""

    def __init__(self, stream: Stream, method: Method, context: Context,
                 max_message_size: int) -> None:
        self.stream = stream
        self.method = method
        self.context = context
        self.headers_sent = False
        self._decoder = MessageDecoder(max_message_size)

    async def run(self) -> None:
        kind, handler = self.method.cardinality, self.method.handler
        if kind in (Cardinality.UNARY_UNARY, Cardinality.UNARY_STREAM):
            request: Any = await self._single_request()
        else:
            request = self._requests()
        if kind in (Cardinality.UNARY_UNARY, Cardinality.STREAM_UNARY):
            await self._send(await handler(request, self.context))
        else:
            responses: AsyncIterator[Message] = handler(request, self.context)
            async for response in responses:
                await self._send(response)

    async def _requests(self) -> AsyncIterator[Any]:
        while chunk := await self.stream.read():
            for payload in self._decoder.feed(chunk):
                yield self.method.parse_request(payload)
        if self._decoder.pending:
            raise GrpcError(StatusCode.INTERNAL, "request ended inside a message")

    async def _single_request(self) -> Any:
        requests = [request async for request in self._requests()]
        if len(requests) != 1:
            raise GrpcError(StatusCode.UNIMPLEMENTED if requests else StatusCode.INTERNAL,
                            f"{self.method.cardinality.value} method got {len(requests)} "
                            f"request messages, expected 1")
        return requests[0]

    async def _send(self, response: Message) -> None:
        if not self.headers_sent:
            self.stream.send_headers([(":status", "200"), ("content-type", "application/grpc"),
                                      ("grpc-accept-encoding", "identity")])
            self.headers_sent = True
        await self.stream.send_data(encode_message(response.SerializeToString()))


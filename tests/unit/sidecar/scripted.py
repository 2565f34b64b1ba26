"""Scripted peers for the outbound path's tests: a caller, and upstreams that do as told.

No sockets. ``Caller`` is the app's side of one request (a ``Downstream``) and records what the
sidecar answered. ``Upstreams`` stands in for ``UpstreamCluster.open_stream``: each stream it
opens plays the next step of its script, so a test reads like the transcript of a call::

    upstreams = Upstreams(Reset(), Answer(200, body=[b"ok"]))  # the retry gets the answer

Steps: ``ConnectFails`` (no connection), ``Reset`` (the upstream resets the stream before
answering), ``Hang`` (it never answers), ``Answer`` (headers once the whole request is in and
``delay`` seconds have passed, then the body, then ``then``: "end" with the trailers, "stall"
for ever, or "fail" with a reset).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

from mesh.http2 import ErrorCode, Headers, StreamReset
from sidecar.pool import ConnectFailure


class Caller:
    """The app's side of one request: sends ``body`` chunk by chunk, records the answer."""

    def __init__(self, headers: Headers, body: Iterable[bytes] = ()) -> None:
        self.headers: Headers | None = headers
        self.trailers: Headers | None = None  # request trailers: none
        self._body = deque(body)
        self.response: Headers | None = None  # the answer's headers
        self.received = b""  # its body
        self.response_trailers: Headers | None = None
        self.reset_code: int | None = None  # set if the sidecar reset the caller's stream
        self._send_closed = False

    @property
    def status(self) -> str | None:
        return dict(self.response or ()).get(":status")

    @property
    def ended(self) -> bool:
        return not self._body

    @property
    def complete(self) -> bool:
        return not self._body

    @property
    def send_closed(self) -> bool:
        return self._send_closed

    async def read(self) -> bytes:
        if not self._body:
            return b""
        await asyncio.sleep(0)  # as from a socket: other tasks run between chunks
        return self._body.popleft()

    def send_headers(self, headers: Headers, *, end_stream: bool = False) -> None:
        assert not self._send_closed and self.response is None, "one answer per call"
        self.response = headers
        self._send_closed = end_stream

    async def send_data(self, data: bytes, *, end_stream: bool = False) -> None:
        assert not self._send_closed, "data after the end of the answer"
        self.received += data
        self._send_closed = end_stream

    def send_trailers(self, trailers: Headers) -> None:
        assert not self._send_closed, "trailers after the end of the answer"
        self.response_trailers = trailers
        self._send_closed = True

    def end(self) -> None:
        self._send_closed = True

    def reset(self, code: int = ErrorCode.CANCEL) -> None:
        if not self._send_closed:
            self.reset_code = code
        self._send_closed = True


@dataclass(frozen=True, slots=True)
class ConnectFails:
    """No connection to the endpoint can be made."""


@dataclass(frozen=True, slots=True)
class Reset:
    """The upstream resets the stream before any response."""


@dataclass(frozen=True, slots=True)
class Hang:
    """The upstream never answers."""


@dataclass(frozen=True, slots=True)
class Answer:
    """Response headers once the whole request is in, then ``body``, then ``then``."""

    status: int = 200
    body: tuple[bytes, ...] = ()
    grpc: bool = False  # content-type application/grpc
    grpc_status: int | None = None  # in the headers (trailers-only)
    trailers: Headers | None = None
    then: Literal["end", "stall", "fail"] = "end"
    delay: float = 0.0  # seconds the upstream works before its headers (a slow replica)


Step = ConnectFails | Reset | Hang | Answer


class ScriptedStream:
    """One upstream stream (an ``Upstream``), playing one step; records what it was sent."""

    def __init__(self, address: str, request: Headers, end_stream: bool, step: Step) -> None:
        self.address = address
        self.request = request
        self.sent = b""  # the request body as received
        self.request_ended = end_stream
        self.step = step
        self.headers: Headers | None = None
        self.trailers: Headers | None = None
        self.reset_code: int | None = None  # set if the sidecar reset this stream
        self._chunks: deque[bytes] = deque(step.body if isinstance(step, Answer) else ())
        self._recv_closed = False
        self._error: StreamReset | None = None
        self._changed = asyncio.Event()

    @property
    def attempt(self) -> str:
        return dict(self.request)["x-mesh-attempt"]

    @property
    def ended(self) -> bool:
        return self._recv_closed

    @property
    def complete(self) -> bool:
        return self._recv_closed and self._error is None and not self._chunks

    @property
    def send_closed(self) -> bool:
        return self.request_ended or self._error is not None

    async def receive_headers(self) -> Headers:
        step = self.step
        if isinstance(step, Reset):
            self._fail(StreamReset(1, ErrorCode.INTERNAL_ERROR, by_peer=True))
        await self._until(lambda: isinstance(step, Answer) and self.request_ended)
        assert isinstance(step, Answer)
        if step.delay:
            await asyncio.sleep(step.delay)
            self._check()  # reset while it worked
        headers = [(":status", str(step.status))]
        if step.grpc:
            headers.append(("content-type", "application/grpc"))
        if step.grpc_status is not None:
            headers.append(("grpc-status", str(step.grpc_status)))
        if not step.body and step.trailers is None and step.then == "end":
            self._recv_closed = True
        self.headers = headers
        return headers

    async def read(self) -> bytes:
        step = self.step
        assert isinstance(step, Answer)
        if self._chunks:
            chunk = self._chunks.popleft()
            if not self._chunks and step.then == "end":
                self.trailers = step.trailers
                self._recv_closed = True
            return chunk
        if step.then == "fail":
            self._fail(StreamReset(1, ErrorCode.INTERNAL_ERROR, by_peer=True))
        await self._until(lambda: self._recv_closed)
        return b""

    async def send_data(self, data: bytes, *, end_stream: bool = False) -> None:
        self._check()
        self.sent += data
        if end_stream:
            self.end()
        await asyncio.sleep(0)

    def send_trailers(self, trailers: Headers) -> None:
        self.end()

    def end(self) -> None:
        self._check()
        self.request_ended = True
        self._changed.set()

    def reset(self, code: int = ErrorCode.CANCEL) -> None:
        if self._error is not None or (self._recv_closed and self.request_ended):
            return  # as a real stream: a no-op once it is closed
        self.reset_code = code
        self._fail(StreamReset(1, code, by_peer=False))

    def _fail(self, error: StreamReset) -> None:
        self._error = error
        self._changed.set()

    def _check(self) -> None:
        if self._error is not None:
            raise self._error

    async def _until(self, condition: Callable[[], bool]) -> None:
        while True:
            self._check()
            if condition():
                return
            self._changed.clear()
            await self._changed.wait()


class Upstreams:
    """Plays ``steps`` in order, one per stream opened; ``streams`` are those opened."""

    def __init__(self, *steps: Step) -> None:
        self._steps = deque(steps)
        self.streams: list[ScriptedStream] = []
        self.opened = asyncio.Event()  # set whenever a stream opens

    async def open_stream(self, address: str, headers: Headers, *,
                          end_stream: bool = False) -> ScriptedStream:
        step = self._steps.popleft()
        if isinstance(step, ConnectFails):
            raise ConnectFailure(f"{address}: connection refused")
        stream = ScriptedStream(address, headers, end_stream, step)
        self.streams.append(stream)
        self.opened.set()
        return stream

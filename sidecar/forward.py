"""Forwarding: the pieces of relaying one exchange between a downstream and an upstream.

A *downstream* is whoever called us (an app on the outbound side, a peer sidecar on the
inbound side); an *upstream* is where the call goes. Both are HTTP/2 streams — an HTTP/1.1
caller or app is adapted to look like one (:mod:`sidecar.http1`) — so relaying is the same
everywhere: headers one way, then body chunks both ways as they come, then trailers. Flow
control passes through: a chunk is read from one side only when the other side took the last.
When the chunk just read is known to be the last (its END_STREAM has arrived too, and no
trailers follow), it goes out carrying END_STREAM: a small body stays one DATA frame, as the
peer sent it, rather than the body and then an empty frame to end it — a frame that ``h2``
would build, send, parse and dispatch again at every hop (``bench/sidecar_pair.py``).

*Local replies* are answers the sidecar gives itself (no route, no endpoint, overload,
deadline): an HTTP status with a plain-text reason, or for gRPC a trailers-only response with
the matching status — never a hang.

A call's timeout (:class:`CallTimeout`) bounds the whole exchange at either hop.
"""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import Protocol

from mesh.grpc import StatusCode
from mesh.grpc.status import quote_message
from mesh.http2 import Headers
from sidecar import headers as mesh_headers


class CallTimeout:
    """``asyncio.timeout`` for the task that serves a call, for less work per call.

    ``with CallTimeout(seconds):`` cancels the task after ``seconds`` (None: never) and turns
    that cancellation, and only that one, into :class:`TimeoutError` on the way out — what
    ``asyncio.timeout`` does, less what a call never needs: an ``async with``, a timer that
    can be rescheduled, and the state machine that goes with it. Every request arms one at each
    hop (the caller's deadline travels with the call), and they cost 2 to 3 µs of CPU per
    request each less than ``asyncio.timeout`` (``bench/sidecar_ab.py``).
    """

    __slots__ = ("_cancelling", "_expired", "_task", "_timer")

    def __init__(self, timeout: float | None) -> None:
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("CallTimeout must be used inside a task")
        self._task = task
        self._cancelling = task.cancelling()  # cancellations already asked for by others
        self._expired = False
        self._timer = None if timeout is None else \
            asyncio.get_running_loop().call_later(timeout, self._expire)

    def _expire(self) -> None:
        self._expired = True
        self._task.cancel()

    def __enter__(self) -> CallTimeout:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None  # it holds self._expire: no cycle left for the collector
        # As asyncio.timeout: a cancellation that came from elsewhere too stays a cancellation.
        if self._expired and self._task.uncancel() <= self._cancelling and \
                exc_type is asyncio.CancelledError:
            raise TimeoutError from exc


class Downstream(Protocol):
    """The side that called us: what a ``mesh.http2.Stream`` offers as a server stream."""

    headers: Headers | None
    trailers: Headers | None

    @property
    def ended(self) -> bool: ...
    @property
    def complete(self) -> bool: ...
    @property
    def send_closed(self) -> bool: ...
    async def read(self) -> bytes: ...
    def send_headers(self, headers: Headers, *, end_stream: bool = False) -> None: ...
    async def send_data(self, data: bytes, *, end_stream: bool = False) -> None: ...
    def send_trailers(self, trailers: Headers) -> None: ...
    def end(self) -> None: ...
    def reset(self, code: int = ...) -> None: ...


class Upstream(Protocol):
    """Where the call goes: what a ``mesh.http2.Stream`` offers as a client stream."""

    headers: Headers | None
    trailers: Headers | None

    @property
    def ended(self) -> bool: ...
    @property
    def complete(self) -> bool: ...
    @property
    def send_closed(self) -> bool: ...
    async def receive_headers(self) -> Headers: ...
    async def read(self) -> bytes: ...
    async def send_data(self, data: bytes, *, end_stream: bool = False) -> None: ...
    def send_trailers(self, trailers: Headers) -> None: ...
    def end(self) -> None: ...
    def reset(self, code: int = ...) -> None: ...


class Replay:
    """The request body kept for retries, up to ``limit`` bytes; past that, nothing is kept
    and the call can no longer be retried."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.chunks: list[bytes] = []
        self.size = 0
        self.overflowed = False

    def add(self, chunk: bytes) -> None:
        if self.overflowed:
            return
        self.size += len(chunk)
        if self.size > self.limit:
            self.overflowed = True
            self.chunks.clear()
        else:
            self.chunks.append(chunk)


async def send_request_body(down: Downstream, up: Upstream, replay: Replay | None) -> None:
    """Copy the rest of the request body (and trailers) from ``down`` to ``up``.

    Each chunk goes into ``replay`` before it is sent, so that a retry can send the body again
    even if this copy is cancelled halfway.
    """
    while chunk := await down.read():
        if replay is not None:
            replay.add(chunk)
        if down.complete and not down.trailers:
            await up.send_data(chunk, end_stream=True)
            return
        await up.send_data(chunk)
    end_body(down, up)


def end_body(down: Downstream, up: Upstream) -> None:
    """End the request to ``up`` once ``down``'s body has been sent: with its trailers, or
    with an empty DATA frame carrying END_STREAM."""
    if down.trailers:
        up.send_trailers(mesh_headers.response(down.trailers))
    else:
        up.end()


async def send_response(up: Upstream, down: Downstream, response_headers: Headers) -> None:
    """Relay the response: its headers, every body chunk, then trailers or the end."""
    if up.complete and not up.trailers:  # headers only (a gRPC trailers-only answer)
        down.send_headers(mesh_headers.response(response_headers), end_stream=True)
        return
    down.send_headers(mesh_headers.response(response_headers))
    while chunk := await up.read():
        if up.complete and not up.trailers:
            await down.send_data(chunk, end_stream=True)
            return
        await down.send_data(chunk)
    if up.trailers:
        down.send_trailers(mesh_headers.response(up.trailers))
    else:
        down.end()


async def local_reply(down: Downstream, *, grpc: bool, status: int, grpc_status: StatusCode,
                      message: str, extra: Headers | None = None) -> None:
    """Answer ``down`` ourselves: HTTP ``status`` with ``message``, or a gRPC status."""
    if down.send_closed:
        return
    headers: Headers = list(extra or [])
    if grpc:
        down.send_headers([(":status", "200"), ("content-type", "application/grpc"),
                           ("grpc-status", str(int(grpc_status))),
                           ("grpc-message", quote_message(message)), *headers],
                          end_stream=True)
    else:
        body = (message + "\n").encode()
        down.send_headers([(":status", str(status)), ("content-type", "text/plain"),
                           ("content-length", str(len(body))), *headers])
        await down.send_data(body, end_stream=True)

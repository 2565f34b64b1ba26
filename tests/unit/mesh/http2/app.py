"""The application the HTTP/2 tests serve: a few routes, each recording what its handler saw.

Tests wait on what a handler recorded (it started, it was cancelled, it read a chunk), not for
time to pass. Routes, by ``:path``:

    /echo             read the whole body; answer it back with trailers ``x-length`` (the body's
                      size) followed by the request's own trailers
    /hold             record the stream as started, wait for :attr:`App.release`, answer "released"
    /read-on-demand   read one body chunk per :meth:`App.allow_read`, recording each size
    /download/<n>     send ``n`` bytes in :data:`CHUNK` pieces, recording the bytes handed over
    /digest[/slow]    read the body as it comes; answer its size and SHA-256 (``slow``: let
                      the event loop turn a few times after every chunk, so the writer outpaces
                      the reader unless flow control holds it back)
    /reset/<code>     reset the stream with RST_STREAM(<code>) before answering
    /crash            raise (the server resets with INTERNAL_ERROR)
    /forget           return without ending the stream (also INTERNAL_ERROR)
"""

from __future__ import annotations

import asyncio
import hashlib

from mesh.http2 import Stream

CHUNK = 64 * 1024
SLOW_READER_TURNS = 4
PATTERN = bytes(range(256)) * (CHUNK // 256)  # one CHUNK, reused: big bodies cost no memory


class App:
    """A handler (``await app(stream)``) and the record of what its handlers went through."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.started: asyncio.Queue[int] = asyncio.Queue()  # stream ids of /hold handlers
        self.cancelled: asyncio.Queue[int] = asyncio.Queue()  # handlers cancelled by a reset
        self.reads: asyncio.Queue[int] = asyncio.Queue()  # chunk sizes /read-on-demand read
        self.handed_over: dict[int, int] = {}  # stream id -> bytes /download gave send_data
        self.largest_unread = 0  # most body bytes /digest ever found waiting for it
        self._read_permits: asyncio.Queue[None] = asyncio.Queue()

    def allow_read(self, chunks: int = 1) -> None:
        """Let /read-on-demand read ``chunks`` more chunks."""
        for _ in range(chunks):
            self._read_permits.put_nowait(None)

    async def __call__(self, stream: Stream) -> None:
        assert stream.headers is not None
        path = dict(stream.headers)[":path"]
        route, _, argument = path.lstrip("/").partition("/")
        try:
            await getattr(self, "_" + route.replace("-", "_"))(stream, argument)
        except asyncio.CancelledError:
            self.cancelled.put_nowait(stream.id)
            raise

    async def _echo(self, stream: Stream, _: str) -> None:
        body = await stream.read_all()
        stream.send_headers([(":status", "200")])
        await stream.send_data(body)
        stream.send_trailers([("x-length", str(len(body))), *(stream.trailers or [])])

    async def _hold(self, stream: Stream, _: str) -> None:
        self.started.put_nowait(stream.id)
        await self.release.wait()
        await stream.read_all()
        stream.send_headers([(":status", "200")])
        await stream.send_data(b"released", end_stream=True)

    async def _read_on_demand(self, stream: Stream, _: str) -> None:
        while True:
            await self._read_permits.get()
            chunk = await stream.read()
            self.reads.put_nowait(len(chunk))
            if not chunk:
                break
        stream.send_headers([(":status", "200")], end_stream=True)

    async def _download(self, stream: Stream, size: str) -> None:
        remaining = int(size)
        self.handed_over[stream.id] = 0
        stream.send_headers([(":status", "200"), ("content-length", size)])
        while remaining > 0:
            piece = PATTERN if remaining >= CHUNK else PATTERN[:remaining]
            remaining -= len(piece)
            self.handed_over[stream.id] += len(piece)
            await stream.send_data(piece, end_stream=remaining == 0)

    async def _digest(self, stream: Stream, pace: str) -> None:
        digest = hashlib.sha256()
        size = 0
        while chunk := await stream.read():
            digest.update(chunk)
            size += len(chunk)
            if pace == "slow":
                await dawdle()
            # Accepted by the connection but not read yet: flow control bounds it by the window.
            self.largest_unread = max(self.largest_unread, unread_bytes(stream))
        stream.send_headers([(":status", "200")])
        await stream.send_data(f"{size} {digest.hexdigest()}".encode(), end_stream=True)

    async def _reset(self, stream: Stream, code: str) -> None:
        stream.reset(int(code))

    async def _crash(self, stream: Stream, _: str) -> None:
        raise RuntimeError("the handler failed")

    async def _forget(self, stream: Stream, _: str) -> None:
        stream.send_headers([(":status", "200")])


async def dawdle() -> None:
    """Let the event loop turn a few times: a reader slower than the writer."""
    for _ in range(SLOW_READER_TURNS):
        await asyncio.sleep(0)


def unread_bytes(stream: Stream) -> int:
    """Body bytes the connection accepted for ``stream`` that its reader has not read yet."""
    return sum(len(data) for data, _ in stream._chunks)

"""HTTP/2 by hand, for tests that read like transcripts: a frame factory and a raw peer.

:class:`Frames` builds frames the way h2's own ``tests/helpers.py`` does (hyperframe objects,
headers HPACK-encoded by one encoder per connection). :class:`RawPeer` is a client on a real
loopback socket that sends exactly the frames a test names, well-formed or not, and reads back
every frame the server sends, parsed and with header blocks decoded::

    peer = await RawPeer.connect(port)
    await peer.handshake()
    await peer.send(peer.frames.headers(1, GET, end_stream=True))
    response = await peer.response(1)
    assert response.status == "200"

Nothing here is clever: it is the smallest HTTP/2 client that lets a test break the rules.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TypeVar

from hpack import Decoder, Encoder
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
READ_TIMEOUT = 5.0  # a frame that has not come by then is not coming
DEFAULT_WINDOW = 65_535  # every flow-control window starts here (RFC 9113 §6.9.2)
FRAME_SIZE = 16_384  # the default SETTINGS_MAX_FRAME_SIZE

Headers = list[tuple[str, str]]
F = TypeVar("F", bound=Frame)


def request_headers(method: str = "GET", path: str = "/", *extra: tuple[str, str]) -> Headers:
    """The pseudo-headers of a request to ``path``, then ``extra``."""
    return [(":method", method), (":scheme", "http"), (":authority", "test"), (":path", path),
            *extra]


class Frames:
    """A frame factory: one method per frame type, named after it."""

    def __init__(self) -> None:
        self.encoder = Encoder()

    def headers(self, stream_id: int, headers: Headers, *, end_stream: bool = False,
                end_headers: bool = True) -> HeadersFrame:
        frame = HeadersFrame(stream_id, self.encoder.encode(headers))
        if end_headers:
            frame.flags.add("END_HEADERS")
        if end_stream:
            frame.flags.add("END_STREAM")
        return frame

    def continuation(self, stream_id: int, block: bytes, *,
                     end_headers: bool = False) -> ContinuationFrame:
        frame = ContinuationFrame(stream_id, block)
        if end_headers:
            frame.flags.add("END_HEADERS")
        return frame

    def data(self, stream_id: int, data: bytes, *, end_stream: bool = False) -> DataFrame:
        frame = DataFrame(stream_id, data)
        if end_stream:
            frame.flags.add("END_STREAM")
        return frame

    def settings(self, settings: dict[int, int] | None = None, *,
                 ack: bool = False) -> SettingsFrame:
        frame = SettingsFrame(0, settings or {})
        if ack:
            frame.flags.add("ACK")
        return frame

    def window_update(self, stream_id: int, increment: int) -> WindowUpdateFrame:
        return WindowUpdateFrame(stream_id, window_increment=increment)

    def ping(self, opaque: bytes = b"\0" * 8, *, ack: bool = False) -> PingFrame:
        frame = PingFrame(0, opaque)
        if ack:
            frame.flags.add("ACK")
        return frame

    def rst_stream(self, stream_id: int, error_code: int) -> RstStreamFrame:
        return RstStreamFrame(stream_id, error_code=error_code)

    def goaway(self, last_stream_id: int, error_code: int = 0) -> GoAwayFrame:
        return GoAwayFrame(0, last_stream_id=last_stream_id, error_code=error_code)


@dataclass
class RawResponse:
    """What came back on one stream: headers, body, trailers, and how it ended."""

    headers: Headers = field(default_factory=list)
    body: bytes = b""
    trailers: Headers | None = None
    reset_code: int | None = None  # set when the stream ended with RST_STREAM

    @property
    def status(self) -> str:
        return dict(self.headers)[":status"]


class RawPeer:
    """A hand-driven HTTP/2 client connection on a real socket.

    Every frame read is kept in :attr:`received`, decoded header blocks included (as
    ``(stream_id, headers)`` in :attr:`header_blocks`), so a test can assert on what came
    before the frame it waited for.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.frames = Frames()
        self.decoder = Decoder()
        self.received: list[Frame] = []
        self.header_blocks: list[tuple[int, Headers]] = []
        self._pending_block: list[bytes] = []
        # What the server lets us send (RFC 9113 §6.9), for send_body; raw send() ignores it.
        self.connection_window = DEFAULT_WINDOW
        self.initial_stream_window = DEFAULT_WINDOW
        self.stream_windows: dict[int, int] = {}

    @classmethod
    async def connect(cls, port: int, *, receive_buffer: int | None = None,
                      tls: ssl.SSLContext | None = None) -> RawPeer:
        """Connect to 127.0.0.1:``port``; ``receive_buffer`` shrinks the socket's SO_RCVBUF;
        ``tls`` speaks HTTP/2 over TLS (the context offers ALPN ``h2``) instead of h2c.

        A small receive buffer makes a peer that does not read fill the server's send buffer
        quickly (set before connecting, so TCP advertises the small window from the start).
        """
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if receive_buffer is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        reader, writer = await asyncio.open_connection(
            sock=sock, ssl=tls, server_hostname="127.0.0.1" if tls is not None else None)
        return cls(reader, writer)

    # -- sending ---------------------------------------------------------------------------

    async def send(self, *frames: Frame) -> None:
        """Write the frames in one go, whether the windows allow them or not."""
        for frame in frames:
            if isinstance(frame, DataFrame):
                self.connection_window -= len(frame.data)
                self.stream_windows[frame.stream_id] = self._stream_window(frame.stream_id) - \
                    len(frame.data)
        await self.send_bytes(b"".join(frame.serialize() for frame in frames))

    async def send_body(self, stream_id: int, body: bytes, *, end_stream: bool = True) -> None:
        """Send ``body`` as DATA frames, as a well-behaved peer does: within the windows."""
        sent = 0
        while sent < len(body):
            room = min(self.connection_window, self._stream_window(stream_id), FRAME_SIZE)
            if room <= 0:
                await self.next_frame()  # wait for a WINDOW_UPDATE
                continue
            piece = body[sent:sent + room]
            sent += len(piece)
            await self.send(self.frames.data(stream_id, piece,
                                             end_stream=end_stream and sent == len(body)))

    async def send_bytes(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def handshake(self, settings: dict[int, int] | None = None) -> SettingsFrame:
        """Send the preface and our SETTINGS, acknowledge the server's; return its SETTINGS."""
        await self.send_bytes(PREFACE + self.frames.settings(settings).serialize())
        server_settings = await self.next_frame()
        assert isinstance(server_settings, SettingsFrame), server_settings
        assert "ACK" not in server_settings.flags
        await self.send(self.frames.settings(ack=True))
        return server_settings

    # -- receiving -------------------------------------------------------------------------

    async def next_frame(self, timeout: float = READ_TIMEOUT) -> Frame:
        """The next frame from the server (raises ``EOFError`` if the connection ends first)."""
        try:
            head = await asyncio.wait_for(self.reader.readexactly(9), timeout)
            frame, length = Frame.parse_frame_header(memoryview(head))
            frame.parse_body(memoryview(await asyncio.wait_for(
                self.reader.readexactly(length), timeout)))
        except asyncio.IncompleteReadError as error:
            raise EOFError(f"connection closed after {len(self.received)} frames") from error
        self.received.append(frame)
        if isinstance(frame, WindowUpdateFrame):
            if frame.stream_id == 0:
                self.connection_window += frame.window_increment
            else:
                self.stream_windows[frame.stream_id] = self._stream_window(frame.stream_id) + \
                    frame.window_increment
        elif isinstance(frame, SettingsFrame) and "ACK" not in frame.flags:
            self.initial_stream_window = frame.settings.get(SettingsFrame.INITIAL_WINDOW_SIZE,
                                                            self.initial_stream_window)
        if isinstance(frame, HeadersFrame | ContinuationFrame):
            self._pending_block.append(frame.data)
            if "END_HEADERS" in frame.flags:
                block = b"".join(self._pending_block)
                self._pending_block.clear()
                decoded = self.decoder.decode(block, raw=False)
                self.header_blocks.append((frame.stream_id, list(decoded)))  # type: ignore[arg-type]
        return frame

    async def until(self, kind: type[F], *, stream_id: int | None = None,
                    timeout: float = READ_TIMEOUT) -> F:
        """Read frames until one of type ``kind`` (on ``stream_id``, if given); return it."""
        while True:
            frame = await self.next_frame(timeout)
            if isinstance(frame, kind) and stream_id in (None, frame.stream_id):
                return frame

    async def goaway(self) -> GoAwayFrame:
        """Read until the server's GOAWAY."""
        return await self.until(GoAwayFrame)

    async def closed(self, timeout: float = READ_TIMEOUT) -> list[Frame]:
        """Read until the server closes the connection; return the frames read meanwhile."""
        start = len(self.received)
        try:
            while True:
                await self.next_frame(timeout)
        except EOFError:
            return self.received[start:]
        except ConnectionResetError:
            return self.received[start:]

    async def round_trip(self, opaque: bytes = b"roundtrp") -> list[Frame]:
        """PING and read up to its ACK: every frame the server sent before answering.

        The server handles frames in order, so whatever it would send in reaction to what we
        sent before the PING is in the returned list.
        """
        await self.send(self.frames.ping(opaque))
        start = len(self.received)
        while True:
            frame = await self.next_frame()
            if isinstance(frame, PingFrame) and "ACK" in frame.flags and \
                    frame.opaque_data == opaque:
                return self.received[start:-1]

    async def response(self, stream_id: int) -> RawResponse:
        """Read until stream ``stream_id`` ends (END_STREAM or RST_STREAM); return what it got.

        Frames for the stream that arrived earlier (in :attr:`received`) count too.
        """
        result = RawResponse()
        body: list[bytes] = []
        blocks = 0
        seen = 0
        while True:
            while seen < len(self.received):
                frame = self.received[seen]
                seen += 1
                if frame.stream_id != stream_id:
                    continue
                if isinstance(frame, RstStreamFrame):
                    result.reset_code = frame.error_code
                    return result
                if isinstance(frame, HeadersFrame | ContinuationFrame) and \
                        "END_HEADERS" in frame.flags:
                    block = self._block(stream_id, blocks)
                    blocks += 1
                    if not result.headers:
                        result.headers = block
                    else:
                        result.trailers = block
                if isinstance(frame, DataFrame):
                    body.append(frame.data)
                if isinstance(frame, HeadersFrame | DataFrame) and "END_STREAM" in frame.flags:
                    result.body = b"".join(body)
                    return result
            await self.next_frame()

    def data_on(self, stream_id: int, frames: Iterable[Frame] | None = None) -> int:
        """How many DATA payload bytes arrived on ``stream_id`` (in ``frames``, or so far)."""
        return sum(len(frame.data) for frame in (self.received if frames is None else frames)
                   if isinstance(frame, DataFrame) and frame.stream_id == stream_id)

    def _stream_window(self, stream_id: int) -> int:
        return self.stream_windows.get(stream_id, self.initial_stream_window)

    def _block(self, stream_id: int, index: int) -> Headers:
        return [headers for sid, headers in self.header_blocks if sid == stream_id][index]

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, OSError):  # the server may have reset it
            await self.writer.wait_closed()

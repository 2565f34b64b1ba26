"""Six adjustments to the ``h2`` state machine that a long-lived mesh connection needs.

``h2`` is the sans-IO HTTP/2 state machine everything here stands on. Six of its choices do
not fit a proxy, and all are corrected here, in one place, by subclassing:

1. **Graceful GOAWAY.** ``h2`` treats any GOAWAY, sent or received, as the end of the
   connection: its state becomes CLOSED and every later frame is a protocol error. RFC 9113
   §6.8 says otherwise: streams up to the GOAWAY's last stream id carry on to completion. So a
   GOAWAY(NO_ERROR) leaves the state machine open here, and :meth:`MeshH2Connection.send_goaway`
   announces a drain without closing. A GOAWAY with an error code still closes at once.
2. **Bounded header blocks.** ``h2`` buffers up to 64 CONTINUATION frames of a header block
   before it looks at the size, i.e. up to 64 × the frame size, and calls a 65th frame a
   PROTOCOL_ERROR. :class:`BoundedFrameBuffer` cuts a header block off as soon as its encoded
   size passes ``max_header_block_size``, or its frames pass h2's 64 (empty frames grow no
   block) — the defence against the 2024 CONTINUATION flood — with GOAWAY(ENHANCE_YOUR_CALM).
3. **No formatting for a log nobody reads.** ``h2`` formats every frame it receives for a
   trace log (``repr(frame)``, evaluated before the logger is even called): 4 % of a
   sidecar's time at one stream in ``bench/sidecar_pair.py``. :meth:`_receive_frame` is h2's
   own, without that line.
4. **Bounded work per call.** ``h2`` parses every frame of the bytes it is handed before it
   returns a single event, and a read can be large: asyncio reads up to 256 KiB at a time
   (29,000 empty SETTINGS frames, 6,000 streams opened and reset), and its TLS transport
   hands over all it decrypted in one call. No limit can act before the last of them is
   parsed. :class:`BoundedFrameBuffer` parses at most :attr:`~BoundedFrameBuffer.budget`
   frames per ``receive_data`` call and keeps the rest, whole or in part, for the next call
   (``receive_data(b"")`` carries on with them).
5. **No walk over every stream to open one.** Before a stream opens, ``h2`` counts the open
   streams to check ``MAX_CONCURRENT_STREAMS``, by walking every stream it holds — and purges
   the closed ones on the way, which is the only place they are purged. That is two walks per
   proxied request (a stream in, a stream out), each as long as the streams in flight: 4 % of
   a sidecar's time with 100 in flight, and growing with them. :meth:`MeshH2Connection.
   open_inbound_streams` answers the number of streams held instead — never fewer than the
   open ones, so a check it lets pass would pass — and walks only when that number nears the
   limit or has doubled since the last walk: the limit holds exactly as before, the walks cost
   O(1) per stream opened, and the closed streams held stay fewer than twice the open ones
   (plus :data:`PURGE_SLACK`). And a stream that ends is purged at once
   (:meth:`MeshH2Connection.forget`, as the walk would): else, with streams in flight near
   the limit, the closed ones soon made the number held pass it, and every stream opened
   walked them all again (with 1,000 in flight, 250 a connection under a limit of 256).
6. **Header blocks sent without frame objects.** To send a header block, ``h2`` builds a
   ``HeadersFrame`` (with its ``Flags``, ``Padding`` and ``Priority`` parts), scans the block
   for checks a mesh has switched off, re-encodes every field for its encoder, and serializes
   the frame: 18 µs a block, of which HPACK is 2 — two blocks sent per request at each hop.
   :meth:`MeshH2Connection.send_block` makes the same state transitions on the connection and
   the stream, in the same order and with the same errors, then writes the frames' 9-byte
   headers itself around the encoded block (HEADERS, then CONTINUATION past the frame size),
   for a block :func:`mesh.http2.fields.for_sending` prepared: about 7 µs a block.
   ``tests/unit/mesh/http2/test_h2_state.py`` checks that the bytes and states are h2's own.
"""

from __future__ import annotations

import struct

from mesh.http2.engine import (
    CONTINUATION_BACKLOG,
    ENCODES_TRIPLES,
    AllowedStreamIDs,
    ConnectionInputs,
    ConnectionTerminated,
    ContinuationFrame,
    DenialOfServiceError,
    ErrorCodes,
    Event,
    Frame,
    FrameBuffer,
    GoAwayFrame,
    H2Configuration,
    H2Connection,
    HeadersFrame,
    NeverIndexedHeaderTuple,
    ProtocolError,
    PushPromiseFrame,
    RstStreamFrame,
    StreamClosedError,
    StreamIDTooLowError,
    StreamInputs,
    TooManyStreamsError,
)
from mesh.http2.fields import Field

_HEADER_FRAMES = (HeadersFrame, ContinuationFrame, PushPromiseFrame)
PURGE_SLACK = 16  # closed streams held past twice the open ones before a walk purges them
# A frame's header (RFC 9113 §4.1): length in 24 bits (16 + 8), type, flags, stream id.
_FRAME_HEADER = struct.Struct(">HBBBL")
_HEADERS, _CONTINUATION = 0x1, 0x9  # frame types
_END_STREAM, _END_HEADERS = 0x1, 0x4  # their flags


class BoundedFrameBuffer(FrameBuffer):
    """h2's frame buffer, refusing header blocks past a size limit or h2's 64 frames, and
    parsing at most :attr:`budget` frames until the budget is set again."""

    def __init__(self, *, server: bool, max_header_block_size: int) -> None:
        super().__init__(server=server)
        self.max_header_block_size = max_header_block_size
        self.budget = 0  # frames it may still parse: set before each receive_data

    def __next__(self) -> Frame:
        # h2 iterates over the buffer until StopIteration; the bytes not parsed stay buffered.
        # A header block's frames are parsed by recursion into here, so they count one by one.
        if self.budget <= 0:
            raise StopIteration
        return super().__next__()

    def _update_header_buffer(self, f: Frame | None) -> Frame | None:
        self.budget -= 1  # called once for every frame parsed
        # Only a block spread over several frames can outgrow the limit unnoticed: a single
        # frame is bounded by the frame size and then by HPACK's header list limit. Checking
        # only while a block is pending keeps this off the per-frame hot path.
        if self._headers_buffer and isinstance(f, _HEADER_FRAMES):
            frames = len(self._headers_buffer) + 1
            size = len(f.data) + sum(len(pending.data) for pending in self._headers_buffer)
            if size > self.max_header_block_size or frames > CONTINUATION_BACKLOG:
                self._headers_buffer = []
                raise DenialOfServiceError(
                    f"header block of stream {f.stream_id} passed {self.max_header_block_size} "
                    f"bytes or {CONTINUATION_BACKLOG} frames: {size} bytes in "
                    f"{frames} frames (CONTINUATION flood?)"
                )
        return super()._update_header_buffer(f)


class MeshH2Connection(H2Connection):
    """h2's connection with graceful GOAWAY, bounded header blocks and bounded work per call
    (see the module docstring)."""

    def __init__(self, config: H2Configuration, *, max_header_block_size: int) -> None:
        super().__init__(config)
        self.incoming_buffer: BoundedFrameBuffer = BoundedFrameBuffer(
            server=not config.client_side, max_header_block_size=max_header_block_size
        )
        self._walk_at = PURGE_SLACK  # streams held when the next count walks them all

    # h2 reads these only to check MAX_CONCURRENT_STREAMS as a stream opens (adjustment 5).
    @property
    def open_inbound_streams(self) -> int:
        """The open streams the peer started, or a number not smaller (see the module
        docstring) while that is below the limit."""
        return self._open_at_most(int(not self.config.client_side),
                                  self.local_settings.max_concurrent_streams)

    @property
    def open_outbound_streams(self) -> int:
        """The open streams this side started, or a number not smaller while below the
        limit."""
        return self._open_at_most(int(self.config.client_side),
                                  self.remote_settings.max_concurrent_streams)

    def _open_at_most(self, remainder: int, limit: int) -> int:
        held = len(self.streams)
        if held < limit and held < self._walk_at:
            return held  # open streams of one side are among them: the check passes as exact
        count = self._open_streams(remainder)  # h2's walk: exact, and purges the closed
        self._walk_at = 2 * len(self.streams) + PURGE_SLACK
        return count

    def send_block(self, stream_id: int, block: list[Field], end_stream: bool = False) -> None:
        """``send_headers`` for a block from :func:`mesh.http2.fields.for_sending`, its frames
        written without frame objects (adjustment 6): the request on a client, the response
        or trailers on either side.

        Raises:
            TooManyStreamsError: it would open a stream past the peer's limit;
            StreamClosedError: the stream is closed; ProtocolError: the stream's state allows
            no headers now, or END_STREAM on an informational response, or trailers without.
        """
        # h2's H2Connection.send_headers, then H2Stream.send_headers, without their logging
        # and their frames.
        if stream_id not in self.streams:
            limit = self.remote_settings.max_concurrent_streams
            opened = self.open_outbound_streams
            if opened + 1 > limit:
                raise TooManyStreamsError(f"Max outbound streams is {limit}, {opened} open")
        self.state_machine.process_input(ConnectionInputs.SEND_HEADERS)
        stream = self._get_or_create_stream(stream_id,
                                            AllowedStreamIDs(self.config.client_side))
        machine = stream.state_machine
        status = method = authority = None
        for name, value, _ in block:  # the pseudo-header fields come first
            if name[:1] != b":":
                break
            if name == b":status" and status is None:
                status = value
            elif name == b":method" and method is None:
                method = value
            elif name == b":authority" and authority is None:
                authority = value
        if not machine.client and status is not None and status[:1] == b"1":
            if end_stream:
                raise ProtocolError("Cannot set END_STREAM on informational responses.")
            machine.process_input(StreamInputs.SEND_INFORMATIONAL_HEADERS)
        else:
            machine.process_input(StreamInputs.SEND_HEADERS)
        encoded = self._encode(block)
        if end_stream:
            machine.process_input(StreamInputs.SEND_END_STREAM)
        elif machine.trailers_sent:
            raise ProtocolError("Trailers must have END_STREAM set.")
        if machine.client and stream._authority is None:
            stream._authority = authority
        stream.request_method = method
        self._data_to_send += _header_frames(stream_id, encoded, self.max_outbound_frame_size,
                                             end_stream)

    def _encode(self, block: list[Field]) -> bytes:
        if ENCODES_TRIPLES:
            return self.encoder.encode(block)  # jh2's native encoder takes the triples as they are
        return self.encoder.encode([NeverIndexedHeaderTuple(name, value) if hidden
                                    else (name, value) for name, value, hidden in block])

    def forget(self, stream_id: int) -> None:
        """Purge ``stream_id`` if it is closed, as h2's walk would (adjustment 5)."""
        stream = self.streams.get(stream_id)
        if stream is not None and stream.closed:
            del self.streams[stream_id]
            self._closed_streams[stream_id] = stream.closed_by

    def send_goaway(self, last_stream_id: int, error_code: int = ErrorCodes.NO_ERROR,
                    debug: bytes = b"") -> None:
        """Queue a GOAWAY without closing: streams up to ``last_stream_id`` go on."""
        frame = GoAwayFrame(0, last_stream_id=last_stream_id, error_code=error_code,
                            additional_data=debug)
        self._data_to_send += frame.serialize()

    def _receive_goaway_frame(self, frame: GoAwayFrame) -> tuple[list[Frame], list[Event]]:
        if frame.error_code != ErrorCodes.NO_ERROR:
            return super()._receive_goaway_frame(frame)
        event = ConnectionTerminated()
        event.error_code = ErrorCodes.NO_ERROR
        event.last_stream_id = frame.last_stream_id
        event.additional_data = frame.additional_data or None
        return [], [event]

    def _receive_frame(self, frame: Frame) -> list[Event]:
        # h2's H2Connection._receive_frame without its trace line (see the module docstring);
        # tests/unit/mesh/http2/test_h2_state.py checks that it is h2's otherwise.
        events: list[Event]
        try:
            frames, events = self._frame_dispatch_table[frame.__class__](frame)
        except StreamClosedError as e:
            # Closed by RST_STREAM: a stream error (answered with RST_STREAM); else a
            # connection error.
            if self._stream_is_closed_by_reset(e.stream_id):
                f = RstStreamFrame(e.stream_id)
                f.error_code = e.error_code
                self._prepare_for_sending([f])
                events = e._events
            else:
                raise
        except StreamIDTooLowError as e:
            # A frame for a stream that is gone: a stream error if it was reset; a connection
            # error if it ended (STREAM_CLOSED) or was closed implicitly (PROTOCOL_ERROR).
            if self._stream_is_closed_by_reset(e.stream_id):
                f = RstStreamFrame(e.stream_id)
                f.error_code = ErrorCodes.STREAM_CLOSED
                self._prepare_for_sending([f])
                events = []
            elif self._stream_is_closed_by_end(e.stream_id):
                raise StreamClosedError(e.stream_id) from e
            else:
                raise
        else:
            self._prepare_for_sending(frames)

        return events


def _header_frames(stream_id: int, block: bytes, frame_size: int, end_stream: bool) -> bytes:
    """A header block as frames: HEADERS, then CONTINUATION frames past ``frame_size``."""
    flags = _END_STREAM if end_stream else 0
    size = len(block)
    if size <= frame_size:
        return _FRAME_HEADER.pack(size >> 8, size & 0xFF, _HEADERS, flags | _END_HEADERS,
                                  stream_id) + block
    frames: list[bytes] = []
    kind = _HEADERS
    for start in range(0, size, frame_size):
        chunk = block[start:start + frame_size]
        if start + frame_size >= size:
            flags |= _END_HEADERS
        frames += (_FRAME_HEADER.pack(len(chunk) >> 8, len(chunk) & 0xFF, kind, flags,
                                      stream_id), chunk)
        kind, flags = _CONTINUATION, 0
    return b"".join(frames)

"""One HTTP/2 connection, client or server side: the only module that drives ``h2`` and a socket.

This is an ``asyncio.Protocol`` (callbacks, not streams: it is the hot path). Bytes from the
socket go into the sans-IO ``h2`` state machine, at most :data:`_FRAMES_PER_TURN` frames per
event-loop turn (the rest of a large read waits for the next turn, so that a flood neither
outruns the limits nor holds up other connections); the events it returns are dispatched to
:class:`~mesh.http2.stream.Stream` objects; frames ``h2`` wants to send are written in batches:
at the end of each event-loop turn, and every :data:`_BATCH_BLOCKS` header blocks — or at once
when a stream ends that is alone on its connection, with nothing to share the write.

A server connection starts a handler task per request stream. A client connection opens
streams with :meth:`Http2Connection.open_stream`.

Lifecycle: open → draining (GOAWAY(NO_ERROR) sent or received: streams in flight finish, new
ones are refused) → closed. A protocol violation by the peer, or an abusive peer (see
:mod:`mesh.http2.limits`), skips draining: GOAWAY with the error code, then close. Either way
only this connection is affected.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import ssl
from collections.abc import Awaitable, Callable
from typing import Any, cast

from mesh.clock import SYSTEM_CLOCK, Clock
from mesh.http2 import fields
from mesh.http2.engine import (
    ConnectionState,
    ConnectionTerminated,
    DataReceived,
    H2Configuration,
    NoAvailableStreamIDError,
    PingAckReceived,
    ProtocolError,
    RemoteSettingsChanged,
    RequestReceived,
    ResponseReceived,
    SettingCodes,
    Settings,
    StreamClosedError,
    StreamEnded,
    StreamReset,
    TooManyStreamsError,
    TrailersReceived,
    WindowUpdated,
)
from mesh.http2.errors import ConnectionClosed, ErrorCode, Http2Error, NoStreamAvailable, code_name
from mesh.http2.fields import Block, MalformedHeaders
from mesh.http2.h2_state import MeshH2Connection
from mesh.http2.limits import Limits
from mesh.http2.stream import Headers, Stream
from mesh.token_bucket import TokenBucket

log = logging.getLogger("mesh.http2")

Handler = Callable[[Stream], Awaitable[None]]
"""A server's application: called once per request stream, in its own task."""

_BATCH_BLOCKS = 8
"""Header blocks queued before they are written, without waiting for the end of the loop turn:
a proxy that answers 100 streams in one turn would otherwise hand the next hop all 100 at
once and then wait for it, the two taking turns; written in eights, the next hop starts on the
first while this one works on the rest (``bench/sidecar_pair.py``: about 1.15× the req/s at
100 streams in flight, for one more write per eight streams)."""
_FRAMES_PER_TURN = 64
"""Frames taken in from one connection per event-loop turn. h2 parses every frame it is handed
before it returns a single event, and one read can hold thousands of frames (asyncio reads up
to 256 KiB at a time, and its TLS transport hands over all it decrypted in one call): no
limit could act before the last was parsed, and no other connection was served meanwhile
(``bench/floods.py``: a rapid-reset flood took in 3,800 to 8,500 frames where the limit
trips at 2,004, over mTLS as over h2c, while another caller waited up to 0.6 s; behind a
SETTINGS flood, 7 to 12 s). Now the rest of a read waits in h2's buffer, the socket unread,
until every other connection has had its turn: a limit acts within 64 frames, and a flood
delays other connections by a few turns of 64 frames (same bench: 5 to 20 ms at worst;
256 frames a turn made it 30 to 45 ms, 16 no better than 64 but slower to cut a flood off).
Bulk data is unaffected: 64 frames of 16 KiB are more than one read."""
_DEFAULT_WINDOW = 65_535  # every connection-level window starts here (RFC 9113 §6.9.2)
_BURST = 1024 * 1024  # body bytes queued before they are written and the socket is asked
# whether to pause. Without it a stream whose peer grants a huge window queues its whole body in
# one loop turn (test_flow_control.py, a peer with huge windows); 64 or 256 KiB cost a third
# more CPU per byte than 1 MiB in bulk transfers. Capped at half of max_write_buffer, so
# stream data alone never passes that limit.


class Http2Connection(asyncio.Protocol):
    """An HTTP/2 connection on an asyncio transport (TCP or TLS with ALPN ``h2``)."""

    def __init__(self, *, client_side: bool, handler: Handler | None = None,
                 limits: Limits = Limits(), clock: Clock = SYSTEM_CLOCK,
                 on_open: Callable[[Http2Connection], None] | None = None,
                 on_close: Callable[[Http2Connection], None] | None = None) -> None:
        if not client_side and handler is None:
            raise ValueError("a server connection needs a handler")
        self.client_side = client_side
        self.limits = limits
        self.streams: dict[int, Stream] = {}
        self.peer: Any = None
        self.ssl_object: ssl.SSLObject | None = None
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.close_reason: ConnectionClosed | None = None
        self.streams_opened = 0
        self.frames_received = 0  # frames h2 has taken in from the peer (bench/floods.py)
        self._handler = handler
        self._on_open = on_open
        self._on_close = on_close
        self._clock = clock
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._flush_scheduled = False
        self._backlog_scheduled = False  # frames of the last read wait for the next turn
        self._write_paused = False
        self._drain_waiters: list[asyncio.Future[None]] = []  # streams waiting in writable()
        self._unflushed_data = 0  # body bytes queued in h2 since the last write
        self._unflushed_blocks = 0  # header blocks queued since the last write
        self._burst = min(_BURST, max(1, limits.max_write_buffer // 2))
        self._draining = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._pings: dict[bytes, asyncio.Future[float]] = {}
        self._ping_ids = itertools.count(1)
        self._slot_waiters: list[asyncio.Future[None]] = []
        self._resets = TokenBucket(burst=limits.reset_burst, rate=limits.reset_rate, clock=clock)
        self._idle_since: float | None = None
        self._idle_timer: asyncio.TimerHandle | None = None

        # Header blocks are checked, decoded and prepared by mesh.http2.fields, in one pass
        # each way, instead of by h2 (five times slower, see there).
        config = H2Configuration(client_side=client_side, header_encoding=None,
                                 validate_inbound_headers=False, normalize_inbound_headers=False,
                                 validate_outbound_headers=False,
                                 normalize_outbound_headers=False)
        self._h2 = MeshH2Connection(config, max_header_block_size=limits.max_header_block_size)
        # Every setting announced explicitly, so that the wire is the same on either engine
        # (jh2's defaults differ from h2's: a 64 KiB HPACK table, no ENABLE_CONNECT_PROTOCOL).
        self._h2.local_settings = Settings(client=client_side, initial_values={
            SettingCodes.HEADER_TABLE_SIZE: 4096,  # RFC 9113's: what a peer's HPACK may keep
            SettingCodes.ENABLE_CONNECT_PROTOCOL: 0,  # no extended CONNECT (RFC 8441)
            SettingCodes.MAX_CONCURRENT_STREAMS: limits.max_concurrent_streams,
            SettingCodes.MAX_HEADER_LIST_SIZE: limits.max_header_list_size,
            SettingCodes.INITIAL_WINDOW_SIZE: limits.stream_window,
            SettingCodes.MAX_FRAME_SIZE: limits.max_frame_size,
            SettingCodes.ENABLE_PUSH: 0,
        })
        self._h2.max_inbound_frame_size = limits.max_frame_size
        self._h2.decoder.max_header_list_size = limits.max_header_list_size

    # -- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self.peer = transport.get_extra_info("peername")
        self.ssl_object = transport.get_extra_info("ssl_object")
        if self.ssl_object is not None and self.ssl_object.selected_alpn_protocol() != "h2":
            log.warning("closing connection from %s: TLS without ALPN h2 (got %r)", self.peer,
                        self.ssl_object.selected_alpn_protocol())
            transport.close()
            return
        self._h2.initiate_connection()
        if self.limits.connection_window > _DEFAULT_WINDOW:
            self._h2.increment_flow_control_window(self.limits.connection_window - _DEFAULT_WINDOW)
        self._transport.write(self._h2.data_to_send())
        self._became_idle()
        if self._on_open is not None:
            self._on_open(self)

    def data_received(self, data: bytes) -> None:
        self._take_in(data)

    def _take_in(self, data: bytes) -> None:
        """Give ``data`` to h2, which parses at most :data:`_FRAMES_PER_TURN` of the frames it
        holds, and act on their events; if frames may be left, stop reading and carry on with
        them in the next turn."""
        buffer = self._h2.incoming_buffer
        buffer.budget = _FRAMES_PER_TURN
        try:
            events = self._h2.receive_data(data)
        except ProtocolError as error:
            self._on_protocol_error(error)
            return
        finally:
            self.frames_received += _FRAMES_PER_TURN - buffer.budget
        if buffer.budget == 0 and not self._backlog_scheduled:
            # Queued before the events start handlers: in the next turn, the rest of a burst
            # of requests is taken in before the first of them is handled, as it was when a
            # read was taken in whole (tests/interop/test_h2load.py: 100 streams at once).
            assert self._transport is not None
            self._backlog_scheduled = True
            self._transport.pause_reading()
            self._loop.call_soon(self._take_in_backlog)
        for event in events:
            if self.close_reason is not None:
                return  # closed by an earlier event (a limit): the rest would be wasted work
            self._dispatch(event)
        self._schedule_flush()

    def _take_in_backlog(self) -> None:
        self._backlog_scheduled = False
        transport = self._transport
        if self.close_reason is not None or transport is None or transport.is_closing():
            return
        self._take_in(b"")
        if not self._backlog_scheduled:  # all taken in (or closed: then this does nothing)
            transport.resume_reading()

    def _on_protocol_error(self, error: ProtocolError) -> None:
        code = int(getattr(error, "error_code", ErrorCode.PROTOCOL_ERROR))
        if self._h2.state_machine.state is not ConnectionState.CLOSED:
            # h2 queues a GOAWAY for errors inside a frame, but not for an invalid preface.
            self._h2.close_connection(code, additional_data=str(error).encode()[:256])
        log.warning("closing connection from %s: GOAWAY(%s): %s", self.peer,
                    code_name(code), error)
        self._close(ConnectionClosed(f"protocol error by peer: {error}", code))

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._drain_waiters = _wake_all(self._drain_waiters)

    def connection_lost(self, exc: Exception | None) -> None:
        reason = self.close_reason or ConnectionClosed(
            f"connection lost: {exc}" if exc else "peer closed the connection",
            ErrorCode.INTERNAL_ERROR if exc else ErrorCode.NO_ERROR)
        self._fail_everything(reason)
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        if not self.closed.done():
            self.closed.set_result(None)
        if self._on_close is not None:
            self._on_close(self)

    # -- events from h2 ----------------------------------------------------------------------

    def _dispatch(self, event: object) -> None:
        # A table, not a chain of isinstance/match: it is one lookup per event on the hot path.
        handler = _EVENT_HANDLERS.get(type(event))
        if handler is not None:
            handler(self, event)
        # Anything else (SETTINGS and PING acks, PRIORITY, unknown frames, 1xx responses):
        # h2 has already done what the protocol requires.

    def _on_data(self, event: DataReceived) -> None:
        stream = self.streams.get(event.stream_id)
        if stream is not None:
            stream.on_data(event.data, event.flow_controlled_length)
        else:  # we reset it already; the bytes still count against the connection window
            self._h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)

    def _on_request_received(self, event: RequestReceived) -> None:
        try:
            headers = fields.received(_raw(event.headers), Block.REQUEST)
        except MalformedHeaders as error:
            log.warning("resetting stream %d from %s: malformed request: %s", event.stream_id,
                        self.peer, error)
            self.reset_stream(event.stream_id, ErrorCode.PROTOCOL_ERROR)
            self._count_premature_reset()
            return
        self._on_request(event.stream_id, headers)

    def _on_response(self, event: ResponseReceived) -> None:
        stream = self.streams.get(event.stream_id)
        if stream is not None and (headers := self._received(stream, event.headers,
                                                              Block.RESPONSE)) is not None:
            stream.on_headers(headers)

    def _on_trailers(self, event: TrailersReceived) -> None:
        stream = self.streams.get(event.stream_id)
        if stream is not None and (headers := self._received(stream, event.headers,
                                                              Block.TRAILERS)) is not None:
            stream.on_trailers(headers)

    def _received(self, stream: Stream, raw: object, block: Block) -> Headers | None:
        """A block for an open stream, checked; None if malformed: the stream is reset."""
        try:
            return fields.received(_raw(raw), block)
        except MalformedHeaders as error:
            log.warning("resetting stream %d from %s: malformed %s: %s", stream.id, self.peer,
                        block.value, error)
            stream.reset(ErrorCode.PROTOCOL_ERROR, reason=f"malformed {block.value}: {error}")
            if not self.client_side:
                self._count_premature_reset()
            return None

    def _on_stream_ended(self, event: StreamEnded) -> None:
        if (stream := self.streams.get(event.stream_id)) is not None:
            stream.on_end()

    def _on_stream_reset(self, event: StreamReset) -> None:
        self._on_reset(event.stream_id, int(event.error_code or 0))

    def _on_window_updated(self, event: WindowUpdated) -> None:
        if event.stream_id == 0:
            for blocked in list(self.streams.values()):
                blocked.on_window()
        elif (stream := self.streams.get(event.stream_id)) is not None:
            stream.on_window()

    def _on_settings(self, event: RemoteSettingsChanged) -> None:
        if SettingCodes.INITIAL_WINDOW_SIZE in event.changed_settings:
            for stream in list(self.streams.values()):
                stream.on_window()
        if SettingCodes.MAX_CONCURRENT_STREAMS in event.changed_settings:
            self._wake_slot_waiters()

    def _on_ping_ack(self, event: PingAckReceived) -> None:
        waiter = self._pings.pop(bytes(event.ping_data or b""), None)
        if waiter is not None and not waiter.done():
            waiter.set_result(self._clock.now())

    def _on_terminated(self, event: ConnectionTerminated) -> None:
        self._on_goaway(int(event.error_code or 0), event.last_stream_id or 0,
                        event.additional_data)

    def _on_request(self, stream_id: int, headers: Headers) -> None:
        if self._draining:
            self.reset_stream(stream_id, ErrorCode.REFUSED_STREAM)
            return
        stream = Stream(self, stream_id, headers, self._clock.now())
        self.streams[stream_id] = stream
        self.streams_opened += 1
        self._idle_since = None
        assert self._handler is not None
        task = self._loop.create_task(self._serve(stream, self._handler))
        stream._task = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, stream: Stream, handler: Handler) -> None:
        try:
            await handler(stream)
        except (Http2Error, asyncio.CancelledError):
            return  # the peer reset the stream or went away: there is nobody to answer
        except Exception:
            log.exception("handler failed on stream %d from %s", stream.id, self.peer)
            stream.reset(ErrorCode.INTERNAL_ERROR)
            return
        if not stream.send_closed:
            log.error("handler returned without ending stream %d from %s", stream.id, self.peer)
            stream.reset(ErrorCode.INTERNAL_ERROR)

    def _on_reset(self, stream_id: int, code: int) -> None:
        stream = self.streams.get(stream_id)
        if stream is not None:
            stream.on_reset(code)
        # Every reset h2 reports was caused by the peer: its own RST_STREAM (Rapid Reset,
        # CVE-2023-44487), or a frame that h2 answered with one (MadeYouReset, CVE-2025-8671).
        # Our own resets (Stream.reset) never come through here. Only premature resets take a
        # token: a stream that lived reset_min_lifetime held a concurrency slot that long, so
        # such resets are already bounded by max_concurrent_streams — and they are how a
        # proxy's per-try timeouts and deadlines cancel work, which must not close the
        # connection (Envoy's "premature reset" idea).
        if self.client_side:
            return
        if stream is None or \
                self._clock.now() - stream.opened_at < self.limits.reset_min_lifetime:
            self._count_premature_reset()

    def _count_premature_reset(self) -> None:
        """A stream the peer made end early (its reset, or its malformed frame): past the
        limit, the connection closes."""
        if not self._resets.take():
            self.abort(ErrorCode.ENHANCE_YOUR_CALM,
                       f"more than {self.limits.reset_burst} premature stream resets "
                       f"(refill {self.limits.reset_rate}/s): rapid reset")

    def _on_goaway(self, code: int, last_stream_id: int, debug: bytes | None) -> None:
        detail = f": {debug.decode(errors='replace')}" if debug else ""
        if code != ErrorCode.NO_ERROR:
            log.warning("peer %s sent GOAWAY(%s)%s", self.peer, code_name(code), detail)
            self._close(ConnectionClosed(f"peer sent GOAWAY{detail}", code))
            return
        self._draining = True
        for stream in list(self.streams.values()):
            if stream.id > last_stream_id and (stream.id % 2 == 1) == self.client_side:
                stream.on_refused()
        self._wake_slot_waiters()
        self._close_if_drained()

    # -- what streams ask of the connection (StreamOwner) ------------------------------------

    def send_headers(self, stream_id: int, headers: Headers, end_stream: bool) -> None:
        self._h2.send_block(stream_id, fields.for_sending(headers), end_stream)
        self._unflushed_blocks += 1
        if self._unflushed_blocks >= _BATCH_BLOCKS or (end_stream and self._alone(stream_id)):
            self._flush()
        else:
            self._schedule_flush()

    def send_data(self, stream_id: int, data: bytes | memoryview, end_stream: bool) -> int:
        """Queue as much of ``data`` as the windows allow now, up to one burst (:data:`_BURST`).

        Returns how many bytes were queued; the caller waits (for a window, or for the socket
        to drain) before it sends the rest.
        """
        h2 = self._h2
        window = h2.local_flow_control_window(stream_id)
        frame_size = h2.max_outbound_frame_size
        size = len(data)
        # The common case is one frame; an empty one (END_STREAM alone) needs no window.
        if (size <= window and size <= frame_size) or size == 0:
            h2.send_data(stream_id, data, end_stream=end_stream)
            sent = size
        else:
            budget = min(size, window, self._burst)
            sent = 0
            while sent < budget:
                chunk = min(budget - sent, frame_size)
                last = sent + chunk == size
                h2.send_data(stream_id, data[sent:sent + chunk], end_stream=end_stream and last)
                sent += chunk
        self._unflushed_data += sent
        if self._unflushed_data >= self._burst:
            self._flush()  # now, not at the end of the turn: the transport says "pause" now
        elif end_stream and sent == size and self._alone(stream_id):
            self._flush()
        else:
            self._schedule_flush()
        return sent

    def _alone(self, stream_id: int) -> bool:
        """True when ``stream_id`` is the only stream open here: nothing else could share the
        write of its last frame, so it goes now rather than a loop turn later (0.03 ms less
        per hop at one stream in ``bench/sidecar_pair.py``)."""
        return len(self.streams) == 1 and stream_id in self.streams

    def reset_stream(self, stream_id: int, code: int) -> None:
        if self._transport is None or self._transport.is_closing():
            return
        try:
            self._h2.reset_stream(stream_id, code)
        except StreamClosedError:
            return  # it is closed in h2 already (the peer reset it, or ended it): nothing to send
        self._schedule_flush()

    def acknowledge(self, stream_id: int, size: int) -> None:
        if self._transport is None or self._transport.is_closing():
            return
        self._h2.acknowledge_received_data(size, stream_id)
        self._schedule_flush()

    def stream_closed(self, stream: Stream) -> None:
        if self.streams.pop(stream.id, None) is None:
            return
        self._h2.forget(stream.id)
        if self.client_side:
            self._wake_slot_waiters()
        if not self.streams:
            self._became_idle()
            self._close_if_drained()

    @property
    def write_paused(self) -> bool:
        """True while the transport's buffer is above its high-water mark."""
        return self._write_paused

    async def writable(self) -> None:
        """Return once the socket accepts more data (the transport's buffer drained)."""
        while self._write_paused:
            if self.close_reason is not None:
                raise self.close_reason
            waiter = self._loop.create_future()
            self._drain_waiters.append(waiter)
            await waiter

    # -- client side -------------------------------------------------------------------------

    @property
    def available_streams(self) -> int:
        """How many more streams the peer lets us open now (0 while draining or closed)."""
        if self._draining or self.close_reason is not None:
            return 0
        return max(0, self._h2.remote_settings.max_concurrent_streams - len(self.streams))

    def open_stream(self, headers: Headers, *, end_stream: bool = False) -> Stream:
        """Start a request stream by sending its headers.

        Raises:
            NoStreamAvailable: the peer's stream limit is reached; ConnectionClosed: the
            connection is draining or closed.
        """
        if self.close_reason is not None:
            raise self.close_reason
        if self._draining:
            raise ConnectionClosed("connection is draining after GOAWAY")
        if self.available_streams == 0:
            raise NoStreamAvailable(
                f"peer allows {self._h2.remote_settings.max_concurrent_streams} streams")
        try:
            stream_id = self._h2.get_next_available_stream_id()
        except NoAvailableStreamIDError:
            self._draining = True
            raise ConnectionClosed("stream ids exhausted") from None
        stream = Stream(self, stream_id)
        self.streams[stream_id] = stream
        self.streams_opened += 1
        self._idle_since = None
        try:
            stream.send_headers(headers, end_stream=end_stream)
        except TooManyStreamsError as error:
            del self.streams[stream_id]
            raise NoStreamAvailable(str(error)) from None
        return stream

    async def wait_for_stream_slot(self) -> None:
        """Wait until :attr:`available_streams` is positive (raises if the connection ends)."""
        while self.available_streams == 0:
            if self.close_reason is not None:
                raise self.close_reason
            if self._draining:
                raise ConnectionClosed("connection is draining after GOAWAY")
            waiter = self._loop.create_future()
            self._slot_waiters.append(waiter)
            await waiter

    async def ping(self) -> float:
        """Send a PING and return the round-trip time in seconds.

        Raises:
            ConnectionClosed: the connection is closed, or closes before the answer comes.
        """
        if self.close_reason is not None:
            raise self.close_reason
        opaque = next(self._ping_ids).to_bytes(8, "big")
        waiter: asyncio.Future[float] = self._loop.create_future()
        self._pings[opaque] = waiter
        started = self._clock.now()
        self._h2.ping(opaque)
        self._schedule_flush()
        return await waiter - started

    # -- closing -----------------------------------------------------------------------------

    @property
    def draining(self) -> bool:
        return self._draining

    async def shutdown(self, grace: float | None = None) -> None:
        """Graceful close: GOAWAY(NO_ERROR), let streams in flight finish, then close.

        After ``grace`` seconds, whatever is still open is cut off with GOAWAY(NO_ERROR) and
        a closed socket.
        """
        if self._transport is None:  # never connected (a failed TLS handshake)
            if not self.closed.done():
                self.closed.set_result(None)
            return
        if not self._transport.is_closing() and not self._draining:
            self._draining = True
            last = self._h2.highest_inbound_stream_id
            self._h2.send_goaway(last, ErrorCode.NO_ERROR, b"shutting down")
            self._schedule_flush()
            self._wake_slot_waiters()
            self._close_if_drained()
        try:
            await asyncio.wait_for(asyncio.shield(self.closed), grace)
        except TimeoutError:
            self.abort(ErrorCode.NO_ERROR, f"streams still open after {grace}s of draining")
            if self._transport is not None and not self.closed.done():
                # A TLS close waits for the peer's close_notify (up to 30 s): grace is over.
                self._transport.abort()
            await self.closed

    def abort(self, code: int, reason: str) -> None:
        """Close at once: GOAWAY(``code``) with ``reason`` as debug data, then the socket."""
        if self._transport is None or self._transport.is_closing():
            return
        log.warning("closing connection to %s: GOAWAY(%s): %s", self.peer, code_name(code),
                    reason)
        self._h2.close_connection(code, additional_data=reason.encode()[:256])
        self._close(ConnectionClosed(reason, code))

    def _close(self, reason: ConnectionClosed) -> None:
        if self.close_reason is None:
            self.close_reason = reason
        self._fail_everything(reason)
        self._flush()
        if self._transport is not None:
            self._transport.close()

    def _close_if_drained(self) -> None:
        if self._draining and not self.streams and self._transport is not None:
            self._flush()
            self._transport.close()

    def _fail_everything(self, reason: ConnectionClosed) -> None:
        if self.close_reason is None:
            self.close_reason = reason
        for stream in list(self.streams.values()):
            stream.on_connection_lost(reason)
        self.streams.clear()
        waiters: list[asyncio.Future[Any]] = [*self._pings.values(), *self._slot_waiters]
        for waiter in waiters:
            if not waiter.done():
                waiter.set_exception(reason)
                waiter.exception()  # mark retrieved: nobody may be waiting any more
        self._pings.clear()
        self._slot_waiters.clear()
        self._drain_waiters = _wake_all(self._drain_waiters)  # they raise close_reason

    def _wake_slot_waiters(self) -> None:
        self._slot_waiters = _wake_all(self._slot_waiters)

    # -- idle timeout ------------------------------------------------------------------------

    def _became_idle(self) -> None:
        if self.limits.idle_timeout is None:
            return
        self._idle_since = self._clock.now()
        if self._idle_timer is None:
            self._idle_timer = self._loop.call_later(self.limits.idle_timeout, self._check_idle)

    def _check_idle(self) -> None:
        # One timer per connection, re-armed lazily: streams coming and going cost nothing.
        self._idle_timer = None
        timeout = self.limits.idle_timeout
        if self._idle_since is None or timeout is None or self.close_reason is not None:
            return
        remaining = self._idle_since + timeout - self._clock.now()
        if remaining > 0.001:
            self._idle_timer = self._loop.call_later(remaining, self._check_idle)
            return
        log.info("closing idle connection to %s after %.1fs", self.peer, timeout)
        self._draining = True
        self._h2.send_goaway(self._h2.highest_inbound_stream_id, ErrorCode.NO_ERROR, b"idle")
        self.close_reason = ConnectionClosed(f"idle for {timeout}s", ErrorCode.NO_ERROR)
        self._close_if_drained()

    # -- writing -----------------------------------------------------------------------------

    def _schedule_flush(self) -> None:
        # Every stream that answers in this loop turn shares one transport.write: measured
        # by bench/http2_server.py, batching is what keeps the abstraction near the bare loop.
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._scheduled_flush)

    def _scheduled_flush(self) -> None:
        self._flush_scheduled = False
        self._flush()

    def _flush(self) -> None:
        # Called directly too (a batch is full, a lone stream ends): a scheduled flush still
        # comes at the end of the turn and writes whatever was queued since.
        self._unflushed_data = 0
        self._unflushed_blocks = 0
        data = self._h2.data_to_send()
        transport = self._transport
        if data and transport is not None and not transport.is_closing():
            transport.write(data)
            if transport.get_write_buffer_size() > self.limits.max_write_buffer:
                self._unread_overflow()

    def _unread_overflow(self) -> None:
        # Stream data waits for the socket (Stream.send_data), but answers to PING and SETTINGS
        # and RST_STREAM do not: a peer that floods them without reading fills this buffer.
        assert self._transport is not None
        size = self._transport.get_write_buffer_size()
        log.warning("aborting connection to %s: %d bytes unread by the peer (limit %d)",
                    self.peer, size, self.limits.max_write_buffer)
        reason = ConnectionClosed(f"peer left {size} bytes unread (control-frame flood?)",
                                  ErrorCode.ENHANCE_YOUR_CALM)
        self.close_reason = reason
        self._fail_everything(reason)
        self._transport.abort()  # a GOAWAY would only queue behind what it does not read


def _wake_all(waiters: list[asyncio.Future[None]]) -> list[asyncio.Future[None]]:
    """Wake every waiter still waiting; return the empty list that replaces them."""
    for waiter in waiters:
        if not waiter.done():
            waiter.set_result(None)
    return []


def _raw(headers: object) -> list[tuple[bytes, bytes]]:
    """h2's header list, typed as what ``header_encoding=None`` makes it: bytes pairs."""
    return cast("list[tuple[bytes, bytes]]", headers)


_EVENT_HANDLERS: dict[type, Callable[[Http2Connection, Any], None]] = {
    DataReceived: Http2Connection._on_data,
    RequestReceived: Http2Connection._on_request_received,
    ResponseReceived: Http2Connection._on_response,
    TrailersReceived: Http2Connection._on_trailers,
    StreamEnded: Http2Connection._on_stream_ended,
    StreamReset: Http2Connection._on_stream_reset,
    WindowUpdated: Http2Connection._on_window_updated,
    RemoteSettingsChanged: Http2Connection._on_settings,
    PingAckReceived: Http2Connection._on_ping_ack,
    ConnectionTerminated: Http2Connection._on_terminated,
}

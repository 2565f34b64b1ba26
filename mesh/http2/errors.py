"""What can go wrong on an HTTP/2 connection, as exceptions that carry their wire code.

    Http2Error
    ├── ConnectionClosed     the connection ended (GOAWAY sent or received, socket lost);
    │                        carries the GOAWAY error code and the reason
    ├── StreamReset          a stream ended early with RST_STREAM (either side); carries the code
    │   └── StreamRefused    REFUSED_STREAM, or above a GOAWAY's last stream id: the peer never
    │                        started on it, so it is always safe to retry elsewhere
    └── NoStreamAvailable    the peer's SETTINGS_MAX_CONCURRENT_STREAMS is reached on this
                             connection (a pool opens another one)

Protocol violations by the peer never surface as exceptions to the application: the connection
answers them with GOAWAY and closes, and every stream on it fails with ``ConnectionClosed``.
A malformed header block (:mod:`mesh.http2.fields`) spoils only its stream: that stream is reset
with PROTOCOL_ERROR (``StreamReset`` saying what was malformed) and the others carry on.
"""

from __future__ import annotations

from enum import IntEnum


class ErrorCode(IntEnum):
    """HTTP/2 error codes (RFC 9113 §7), used in RST_STREAM and GOAWAY."""

    NO_ERROR = 0x0  # graceful shutdown, or "done with this stream"
    PROTOCOL_ERROR = 0x1  # the peer broke the protocol (bad preface, too many streams, ...)
    INTERNAL_ERROR = 0x2  # we broke: an application handler failed
    FLOW_CONTROL_ERROR = 0x3  # the peer overran a flow-control window
    SETTINGS_TIMEOUT = 0x4  # the peer never acknowledged our SETTINGS
    STREAM_CLOSED = 0x5  # a frame arrived for a half-closed stream
    FRAME_SIZE_ERROR = 0x6  # a frame larger than SETTINGS_MAX_FRAME_SIZE
    REFUSED_STREAM = 0x7  # the stream was not processed at all: safe to retry
    CANCEL = 0x8  # the stream is no longer needed (a caller gave up, a deadline passed)
    COMPRESSION_ERROR = 0x9  # HPACK state can no longer be trusted
    CONNECT_ERROR = 0xA  # a CONNECT tunnel failed
    ENHANCE_YOUR_CALM = 0xB  # the peer is abusive: reset floods, header floods
    INADEQUATE_SECURITY = 0xC  # TLS too weak
    HTTP_1_1_REQUIRED = 0xD  # the peer should retry with HTTP/1.1

    @classmethod
    def of(cls, code: int | None) -> ErrorCode | int:
        """The enum member for ``code`` when it is known, else the raw integer."""
        if code is None:
            return cls.NO_ERROR
        try:
            return cls(code)
        except ValueError:
            return code


def code_name(code: int) -> str:
    """``ErrorCode`` name for known codes, hex for unknown ones (for messages and logs)."""
    known = ErrorCode.of(code)
    return known.name if isinstance(known, ErrorCode) else hex(code)


class Http2Error(Exception):
    """Base of every HTTP/2 error the application can see."""


class ConnectionClosed(Http2Error):
    """The connection ended; every stream still open on it failed."""

    def __init__(self, reason: str, code: int = ErrorCode.NO_ERROR) -> None:
        super().__init__(f"connection closed ({code_name(code)}): {reason}")
        self.code = code
        self.reason = reason


class StreamReset(Http2Error):
    """The stream was reset with RST_STREAM before it completed."""

    def __init__(self, stream_id: int, code: int, *, by_peer: bool, reason: str = "") -> None:
        who = "peer" if by_peer else "us"
        super().__init__(f"stream {stream_id} reset by {who} ({code_name(code)})"
                         + (f": {reason}" if reason else ""))
        self.stream_id = stream_id
        self.code = code
        self.by_peer = by_peer


class StreamRefused(StreamReset):
    """The peer did not process the stream at all; retrying it elsewhere is always safe."""


class NoStreamAvailable(Http2Error):
    """Opening a stream would exceed the peer's SETTINGS_MAX_CONCURRENT_STREAMS."""

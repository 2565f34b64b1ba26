"""The limits that keep one HTTP/2 connection bounded, whatever the peer does.

Each limit turns a known attack or mistake into a clean error on the offending connection:

- ``max_concurrent_streams`` is advertised in SETTINGS; a peer that opens more gets
  GOAWAY(PROTOCOL_ERROR) (RFC 9113 §5.1.2).
- ``max_header_list_size`` is advertised and enforced while decoding HPACK, so a header
  "bomb" stops as soon as it grows past the limit: GOAWAY(ENHANCE_YOUR_CALM).
- ``max_header_block_size`` caps the *encoded* header block buffered across HEADERS +
  CONTINUATION frames; an endless CONTINUATION sequence (the 2024 "CONTINUATION flood",
  VU#421644) is cut off at that many bytes, or at 64 frames if they are empty:
  GOAWAY(ENHANCE_YOUR_CALM).
- ``reset_burst`` / ``reset_rate`` is a token bucket of premature stream resets the peer may
  cause: by RST_STREAM ("Rapid Reset", CVE-2023-44487, opens and cancels streams faster than
  the refill), or by frames we must answer with RST_STREAM ("MadeYouReset", CVE-2025-8671).
  Past it: GOAWAY(ENHANCE_YOUR_CALM). The defaults are nghttp2's (burst 1000, 33/s). A reset
  is premature when its stream lived less than ``reset_min_lifetime``; later resets are
  bounded by ``max_concurrent_streams`` already, and are how callers' deadlines and a
  proxy's per-try timeouts cancel work (a retry storm must not look like an attack).
- ``max_frame_size`` is advertised in SETTINGS; a larger frame gets GOAWAY(FRAME_SIZE_ERROR).
- ``stream_window`` / ``connection_window`` bound what a slow reader buffers: the peer may
  send only that much before we have read it; more gets GOAWAY(FLOW_CONTROL_ERROR).
- ``max_write_buffer`` bounds what waits in our socket buffer for a peer that does not read
  (stream data waits politely, but PING/SETTINGS acks do not): past it the connection is
  aborted — the answer to PING and SETTINGS floods and to zero-window stalls. A peer that
  does read its answers is served like any other: one turn's frames at a time (below).
- ``idle_timeout`` closes a connection with no open stream for that long (GOAWAY NO_ERROR).

Whatever the size of a read, h2c or TLS, a connection's frames are taken in at most 64 per
event-loop turn (``mesh/http2/connection.py``), the rest waiting for the next turn: so every
limit above acts within 64 frames of being passed, and a flood holds up the other
connections for a few such turns, milliseconds (``bench/floods.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

KIB = 1024
MIB = 1024 * KIB


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    """Per-connection limits; the defaults suit a sidecar. Sizes are in bytes."""

    max_concurrent_streams: int = 256
    max_header_list_size: int = 64 * KIB
    max_header_block_size: int = 64 * KIB
    max_frame_size: int = 16 * KIB
    stream_window: int = 1 * MIB
    connection_window: int = 4 * MIB
    reset_burst: int = 1000
    reset_rate: float = 33.0
    reset_min_lifetime: float = 0.1  # seconds; resets of older streams take no token
    max_write_buffer: int = 8 * MIB
    idle_timeout: float | None = 300.0

    def __post_init__(self) -> None:
        for name in ("max_concurrent_streams", "max_header_list_size", "max_header_block_size",
                     "reset_burst", "max_write_buffer"):
            if getattr(self, name) < 1:
                raise ValueError(f"Limits.{name} must be at least 1, got {getattr(self, name)}")
        if not 16 * KIB <= self.max_frame_size <= 16 * MIB - 1:
            raise ValueError(f"Limits.max_frame_size must be in [16384, 16777215], "
                             f"got {self.max_frame_size}")
        for name in ("stream_window", "connection_window"):
            if not 65_535 <= getattr(self, name) <= 2**31 - 1:
                raise ValueError(f"Limits.{name} must be in [65535, 2**31-1], "
                                 f"got {getattr(self, name)}")
        if self.reset_min_lifetime < 0:
            raise ValueError(f"Limits.reset_min_lifetime must not be negative, "
                             f"got {self.reset_min_lifetime}")
        if self.reset_rate <= 0:
            raise ValueError(f"Limits.reset_rate must be positive, got {self.reset_rate}")
        if self.idle_timeout is not None and self.idle_timeout <= 0:
            raise ValueError(f"Limits.idle_timeout must be positive or None, "
                             f"got {self.idle_timeout}")

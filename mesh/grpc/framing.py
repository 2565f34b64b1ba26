"""gRPC's message framing: each protobuf message is sent as a 5-byte prefix plus its bytes.

    | compressed flag (1 byte) | length (4 bytes, big-endian) | message (length bytes) |

HTTP/2 DATA frames do not line up with messages: one frame may carry several messages, and a
4 MiB message spans hundreds of frames. :class:`MessageDecoder` reassembles them.
"""

from __future__ import annotations

import struct

from mesh.grpc.status import GrpcError, StatusCode

_PREFIX = struct.Struct(">BI")
DEFAULT_MAX_MESSAGE_SIZE = 4 * 1024 * 1024  # gRPC's default receive limit


def encode_message(payload: bytes) -> bytes:
    """Frame one serialized message (never compressed here)."""
    return _PREFIX.pack(0, len(payload)) + payload


class MessageDecoder:
    """Turns DATA chunks back into whole messages, refusing ones larger than the limit."""

    def __init__(self, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE) -> None:
        self.max_message_size = max_message_size
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        """Add received bytes; return every message now complete.

        Raises:
            GrpcError: RESOURCE_EXHAUSTED for a message over the limit, INTERNAL for a
            compressed one (no ``grpc-encoding`` was negotiated).
        """
        buffer = self._buffer
        buffer += data
        messages = []
        while len(buffer) >= _PREFIX.size:
            compressed, length = _PREFIX.unpack_from(buffer)
            if compressed:
                raise GrpcError(StatusCode.INTERNAL,
                                "compressed message received but no grpc-encoding was agreed")
            if length > self.max_message_size:
                raise GrpcError(StatusCode.RESOURCE_EXHAUSTED,
                                f"message of {length} bytes exceeds the limit of "
                                f"{self.max_message_size}")
            end = _PREFIX.size + length
            if len(buffer) < end:
                break
            messages.append(bytes(buffer[_PREFIX.size:end]))
            del buffer[:end]
        return messages

    @property
    def pending(self) -> int:
        """Bytes of an incomplete message still buffered (non-zero at the end is an error)."""
        return len(self._buffer)

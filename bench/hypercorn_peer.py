"""Hypercorn (pure Python, on ``h2`` too) as a peer of ``bench/http2_server.py``: an ASGI app
answering every request with the same 100 bytes, and the configuration the benchmark runs it
with::

    hypercorn --config python:bench.hypercorn_peer --worker-class uvloop \\
        --bind 127.0.0.1:PORT bench.hypercorn_peer:app

Hypercorn closes a connection after ``keep_alive_max_requests`` requests (1,000 by default);
h2load's ten connections carry 5,000 requests each, so the cap is lifted, as the other
contestants have none.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from bench.http2_server import BODY

keep_alive_max_requests = 2**31  # read by hypercorn's --config python:bench.hypercorn_peer
HEADERS = [(b"content-type", b"text/html"), (b"content-length", str(len(BODY)).encode())]

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    """The ASGI application: 200 and :data:`BODY` for any HTTP request."""
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": BODY})

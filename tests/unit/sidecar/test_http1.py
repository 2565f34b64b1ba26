"""The HTTP/1.1 app adapter: a failure to reach the app keeps its cause.

The inbound side logs the failure and puts it in its 503, so the operator reads why the app
could not be reached (refused, timed out) rather than a bare reset.
"""

from __future__ import annotations

import socket

import aiohttp
import pytest

from sidecar.http1 import Http1App
from sidecar.pool import ConnectFailure


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


async def test_an_app_that_refuses_the_connection_is_a_connect_failure_with_its_cause() -> None:
    port = closed_port()
    app = Http1App("127.0.0.1", port)
    try:
        exchange = await app.open_stream([(":method", "GET"), (":path", "/"),
                                          (":authority", "app")], end_stream=True)
        with pytest.raises(ConnectFailure, match=rf"http://127.0.0.1:{port}/: .*") as failure:
            await exchange.receive_headers()
    finally:
        await app.close()
    assert isinstance(failure.value.__cause__, aiohttp.ClientConnectorError)
    assert "Cannot connect" in str(failure.value)

"""An HTTP/2 client: connect, open streams, and a one-call ``request`` for simple exchanges.

    conn = await connect("127.0.0.1", 8080)                       # h2c, prior knowledge
    response = await request(conn, "GET", "/hello", authority="orders")
    print(response.status, response.body)
"""

from __future__ import annotations

import asyncio
import ssl as ssl_module
from dataclasses import dataclass

from mesh.clock import SYSTEM_CLOCK, Clock
from mesh.http2.connection import Http2Connection
from mesh.http2.limits import Limits
from mesh.http2.stream import Headers


async def connect(host: str, port: int, *, ssl: ssl_module.SSLContext | None = None,
                  server_hostname: str | None = None, limits: Limits = Limits(),
                  connect_timeout: float | None = 10.0, local_address: str | None = None,
                  clock: Clock = SYSTEM_CLOCK) -> Http2Connection:
    """Open a client connection (TCP, plus TLS with ALPN ``h2`` when ``ssl`` is given).

    ``local_address`` binds the connection's source address (a workload that must be seen
    coming from its own address, e.g. one of several on the loopback interface).

    Raises:
        TimeoutError: the TCP or TLS handshake took longer than ``connect_timeout``.
        OSError / ssl.SSLError: the connection or the handshake failed.
    """
    loop = asyncio.get_running_loop()
    if ssl is not None and server_hostname is None:
        server_hostname = host
    _, connection = await asyncio.wait_for(
        loop.create_connection(lambda: Http2Connection(client_side=True, limits=limits,
                                                       clock=clock),
                               host, port, ssl=ssl, server_hostname=server_hostname,
                               local_addr=(local_address, 0) if local_address else None),
        connect_timeout)
    if connection.close_reason is not None or connection.closed.done():
        raise ConnectionError(f"{host}:{port} did not negotiate h2 over TLS (ALPN)")
    return connection


@dataclass(frozen=True, slots=True, kw_only=True)
class Response:
    """A whole response, read to the end."""

    status: int
    headers: Headers
    body: bytes
    trailers: Headers | None

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (lower case), or None."""
        return next((value for key, value in self.headers if key == name), None)


async def request(conn: Http2Connection, method: str, path: str, *, authority: str,
                  scheme: str = "http", headers: Headers | None = None,
                  body: bytes = b"") -> Response:
    """Send one request and read the whole response."""
    request_headers = [(":method", method), (":scheme", scheme), (":authority", authority),
                       (":path", path), *(headers or [])]
    stream = conn.open_stream(request_headers, end_stream=not body)
    if body:
        await stream.send_data(body, end_stream=True)
    response_headers = await stream.receive_headers()
    data = await stream.read_all()
    status = int(next(v for k, v in response_headers if k == ":status"))
    return Response(status=status, headers=response_headers, body=data, trailers=stream.trailers)

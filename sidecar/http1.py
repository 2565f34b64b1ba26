"""HTTP/1.1 at the edges: apps may speak it, the mesh between sidecars never does.

Two adapters make HTTP/1.1 look like an HTTP/2 stream to the forwarding code:

- :class:`Http1Downstream`: a request an app sent to the outbound listener over HTTP/1.1
  (served by aiohttp), seen as a ``Downstream``; ``Host`` becomes ``:authority``.
- :class:`Http1App`: the local app behind the inbound listener, when it speaks HTTP/1.1
  (called with aiohttp's client, connections kept alive), seen as a pool of ``Upstream``
  streams.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

from mesh.http2 import ErrorCode, Headers, StreamReset
from sidecar.headers import HOP_BY_HOP
from sidecar.pool import ConnectFailure

_CONNECT_ERRORS = (aiohttp.ClientConnectorError, aiohttp.ServerTimeoutError)
"""No connection to the app could be made (refused, or the connect timeout, the only timeout
the app's session sets): a ``ConnectFailure``, as from the h2c app's pool. Anything else that
ends the exchange before a response resets it."""


class Http1Downstream:
    """An aiohttp request/response pair with the ``Downstream`` interface."""

    def __init__(self, request: web.BaseRequest) -> None:
        self.request = request
        self.response: web.StreamResponse | None = None
        self.trailers: Headers | None = None
        self.headers: Headers | None = [
            (":method", request.method), (":scheme", "http"),
            (":authority", request.host), (":path", request.path_qs),
            *((k.lower(), v) for k, v in request.headers.items()
              if k.lower() not in HOP_BY_HOP)]
        self._ended = not request.body_exists
        self._send_closed = False

    @property
    def ended(self) -> bool:
        return self._ended

    @property
    def complete(self) -> bool:
        return self._ended

    @property
    def send_closed(self) -> bool:
        return self._send_closed

    async def read(self) -> bytes:
        if self._ended:
            return b""
        chunk = await self.request.content.readany()
        if not chunk:
            self._ended = True
        return chunk

    def send_headers(self, headers: Headers, *, end_stream: bool = False) -> None:
        status = 200
        response = web.StreamResponse()
        for name, value in headers:
            if name == ":status":
                status = int(value)
            elif not name.startswith(":") and name not in HOP_BY_HOP:
                response.headers.add(name, value)
        response.set_status(status)
        self.response = response
        if end_stream:
            self._send_closed = True

    async def _prepared(self) -> web.StreamResponse:
        assert self.response is not None, "headers first"
        if not self.response.prepared:
            await self.response.prepare(self.request)
        return self.response

    async def send_data(self, data: bytes, *, end_stream: bool = False) -> None:
        response = await self._prepared()
        await response.write(data)
        if end_stream:
            self._send_closed = True

    def send_trailers(self, trailers: Headers) -> None:
        # HTTP/1.1 trailers need chunked encoding that few clients read; the status is in them
        # for gRPC only, which never comes over HTTP/1.1. They are dropped.
        self._send_closed = True

    def end(self) -> None:
        self._send_closed = True

    def reset(self, code: int = ErrorCode.CANCEL) -> None:
        self._send_closed = True
        if self.request.transport is not None:
            self.request.transport.close()

    async def finish(self) -> web.StreamResponse:
        """The response for aiohttp to complete once forwarding is done."""
        response = await self._prepared()
        await response.write_eof()
        return response


class _Http1Exchange:
    """One request to the HTTP/1.1 app, with the ``Upstream`` interface."""

    def __init__(self, session: aiohttp.ClientSession, base: str, headers: Headers,
                 end_stream: bool) -> None:
        values = dict(headers)
        self.headers: Headers | None = None
        self.trailers: Headers | None = None
        self._body: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._send_closed = end_stream
        self._chunks: AsyncIterator[bytes] | None = None
        self._ended = False
        self._response: aiohttp.ClientResponse | None = None
        self._headers_ready: asyncio.Future[Headers] = \
            asyncio.get_running_loop().create_future()
        # A list, not a dict: a header sent twice (accept, cookie, ...) stays twice.
        request_headers = [("host", values.get(":authority", "")),
                           *((k, v) for k, v in headers
                             if not k.startswith(":") and k not in HOP_BY_HOP)]
        self._task = asyncio.create_task(self._send(
            session, values.get(":method", "GET"), base + values.get(":path", "/"),
            request_headers, end_stream))

    async def _send(self, session: aiohttp.ClientSession, method: str, url: str,
                    headers: Headers, end_stream: bool) -> None:
        async def body() -> AsyncIterator[bytes]:
            while (chunk := await self._body.get()) is not None:
                yield chunk

        try:
            response = await session.request(method, url, headers=headers,
                                              data=None if end_stream else body(),
                                              allow_redirects=False, auto_decompress=False)
        except (aiohttp.ClientError, OSError) as error:
            # The cause goes with the failure: the inbound side logs it and answers with it.
            cause = str(error) or type(error).__name__
            failure: Exception = (
                ConnectFailure(f"{url}: {cause}") if isinstance(error, _CONNECT_ERRORS)
                else StreamReset(0, ErrorCode.CONNECT_ERROR, by_peer=True,
                                 reason=f"{url}: {cause}"))
            failure.__cause__ = error
            self._headers_ready.set_exception(failure)
            self._headers_ready.exception()  # retrieved by receive_headers, if anyone asks
            return
        self._response = response
        self._headers_ready.set_result(
            [(":status", str(response.status)),
             *((k.lower(), v) for k, v in response.headers.items()
               if k.lower() not in HOP_BY_HOP and k.lower() != "content-length")])

    @property
    def ended(self) -> bool:
        return self._ended

    @property
    def complete(self) -> bool:
        return False  # unknown until the body has been read: the relay reads to the end

    @property
    def send_closed(self) -> bool:
        return self._send_closed

    async def receive_headers(self) -> Headers:
        self.headers = await asyncio.shield(self._headers_ready)
        return self.headers

    async def read(self) -> bytes:
        if self._response is None or self._ended:
            return b""
        chunk = await self._response.content.readany()
        if not chunk:
            self._ended = True
            self._response.release()
        return chunk

    async def send_data(self, data: bytes, *, end_stream: bool = False) -> None:
        await self._body.put(data)
        if end_stream:
            self.end()

    def send_trailers(self, trailers: Headers) -> None:
        self.end()  # HTTP/1.1 apps get no request trailers

    def end(self) -> None:
        if not self._send_closed:
            self._send_closed = True
            self._body.put_nowait(None)

    def reset(self, code: int = ErrorCode.CANCEL) -> None:
        self._task.cancel()
        if self._response is not None:
            self._response.close()
        self._ended = self._send_closed = True


APP_CONNECTIONS = 64
"""Connections to an HTTP/1.1 app, each carrying one request at a time; fewer than the listen
backlog servers default to (asyncio 100, aiohttp 128)."""


class Http1App:
    """The local HTTP/1.1 app as a pool of ``Upstream`` exchanges (keep-alive connections)."""

    def __init__(self, host: str, port: int, *, connect_timeout: float = 1.0) -> None:
        self.base = f"http://{host}:{port}"
        self._connect_timeout = connect_timeout
        self._session: aiohttp.ClientSession | None = None

    async def open_stream(self, headers: Headers, *, end_stream: bool = False
                          ) -> _Http1Exchange:
        if self._session is None:
            # At most APP_CONNECTIONS connections: a burst of requests beyond them waits for
            # a free one (within the caller's deadline) instead of connecting all at once and
            # overflowing the app's listen backlog, whose dropped SYNs outlast the connect
            # timeout (test_load.py: 400 requests at once, a few refused). The connect
            # timeout covers making a connection, not waiting for one.
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=self._connect_timeout),
                connector=aiohttp.TCPConnector(limit=APP_CONNECTIONS, keepalive_timeout=30))
        return _Http1Exchange(self._session, self.base, headers, end_stream)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

"""Interop under load: ``h2load`` (nghttp2's benchmark client) against a ``mesh.http2`` server.

20,000 requests over 100 concurrent streams must all succeed: over h2c whether the 100 streams
share one connection (``-c1 -m100``) or four (``-c4 -m25``), and over TLS on one connection.
The server runs in this test's event loop and counts what it served; h2load runs as a
subprocess.

Over TLS the server does not ask for a client certificate (``require_client_cert=False``, the
form ``mesh.tls`` offers the control plane's bootstrap): h2load cannot present one. mTLS with
a peer we did not write is covered by ``test_curl.py``.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import pytest

from mesh import tls
from mesh.http2 import Http2Connection, Server, Stream
from tests.pki_fixtures import MeshPki
from tests.pki_fixtures import mesh_pki as mesh_pki  # a pytest fixture, used by name

H2LOAD = shutil.which("h2load")
H2LOAD_TIMEOUT = 90.0
REQUESTS = 20_000
BODY = b"x" * 100

pytestmark = [
    pytest.mark.interop,
    pytest.mark.timeout(120),
    pytest.mark.skipif(H2LOAD is None, reason="h2load is not installed (nghttp2-client)"),
]


class Counter:
    """The server's handler: a 100-byte answer; counts requests and concurrent streams."""

    def __init__(self) -> None:
        self.requests = 0
        self.most_concurrent = 0  # the most streams ever open on one connection at once

    async def __call__(self, stream: Stream) -> None:
        self.requests += 1
        connection = stream.connection
        assert isinstance(connection, Http2Connection)
        self.most_concurrent = max(self.most_concurrent, len(connection.streams))
        stream.send_headers([(":status", "200"), ("content-length", str(len(BODY)))])
        await stream.send_data(BODY, end_stream=True)


@asynccontextmanager
async def serving(handler: Counter, context: ssl.SSLContext | None) -> AsyncIterator[int]:
    server = Server(handler)
    await server.start("127.0.0.1", 0, ssl=context)
    try:
        yield server.port
    finally:
        await server.shutdown(grace=2.0)


@dataclass(frozen=True, slots=True)
class LoadResult:
    succeeded: int
    failed: int
    errored: int
    status_2xx: int
    output: str


async def h2load(url: str, *, clients: int, streams: int) -> LoadResult:
    """Run h2load to the end; parse its summary."""
    assert H2LOAD is not None
    process = await asyncio.create_subprocess_exec(
        H2LOAD, "-n", str(REQUESTS), "-c", str(clients), "-m", str(streams), url,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    try:
        out, _ = await asyncio.wait_for(process.communicate(), H2LOAD_TIMEOUT)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    output = out.decode(errors="replace")
    assert process.returncode == 0, output
    summary = re.search(r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded, "
                        r"(\d+) failed, (\d+) errored", output)
    codes = re.search(r"status codes: (\d+) 2xx", output)
    assert summary is not None and codes is not None, output
    succeeded, failed, errored = (int(n) for n in summary.groups())
    return LoadResult(succeeded, failed, errored, int(codes.group(1)), output)


SHAPES = [pytest.param(1, 100, id="c1-m100"), pytest.param(4, 25, id="c4-m25")]


@pytest.mark.parametrize(("clients", "streams"), SHAPES)
async def test_h2load_over_h2c(clients: int, streams: int) -> None:
    counter = Counter()
    async with serving(counter, None) as port:
        result = await h2load(f"http://127.0.0.1:{port}/", clients=clients, streams=streams)
    assert (result.succeeded, result.failed, result.errored) == (REQUESTS, 0, 0), result.output
    assert result.status_2xx == REQUESTS
    assert counter.requests == REQUESTS
    assert counter.most_concurrent == streams  # h2load really kept that many in flight


async def test_h2load_over_tls(mesh_pki: MeshPki) -> None:
    clients, streams = 1, 100
    context = tls.server_context(mesh_pki.server.cert, mesh_pki.server.key, mesh_pki.ca_cert,
                                 require_client_cert=False)
    counter = Counter()
    async with serving(counter, context) as port:
        result = await h2load(f"https://127.0.0.1:{port}/", clients=clients, streams=streams)
    assert (result.succeeded, result.failed, result.errored) == (REQUESTS, 0, 0), result.output
    assert result.status_2xx == REQUESTS
    assert "Application protocol: h2" in result.output
    assert "TLSv1.3" in result.output
    assert counter.requests == REQUESTS
    assert counter.most_concurrent == streams

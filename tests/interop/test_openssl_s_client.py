"""Interop: ``openssl s_client`` against an asyncio server built from ``mesh.tls.server_context``.

A peer we did not write must complete mTLS with our certificate files and negotiate ``h2``, and
must be refused when it brings no certificate. The server is what a sidecar runs:
``asyncio.start_server(ssl=server_context(...))``; it greets each verified peer by SPIFFE ID.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import pytest

from mesh import tls
from tests.pki_fixtures import MeshPki
from tests.pki_fixtures import mesh_pki as mesh_pki  # a pytest fixture, used by name

OPENSSL = shutil.which("openssl")
S_CLIENT_TIMEOUT = 10.0

pytestmark = [
    pytest.mark.interop,
    pytest.mark.skipif(OPENSSL is None, reason="openssl is not installed"),
]


@asynccontextmanager
async def greeting_server(pki: MeshPki) -> AsyncIterator[int]:
    """Serve mTLS on an ephemeral loopback port; yield the port."""

    async def greet(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = tls.peer_spiffe_id(writer.get_extra_info("ssl_object"))
        writer.write(f"hello {peer}\n".encode())
        await writer.drain()
        writer.close()

    context = tls.server_context(pki.server.cert, pki.server.key, pki.ca_cert)
    server = await asyncio.start_server(greet, "127.0.0.1", 0, ssl=context)
    async with server:
        yield server.sockets[0].getsockname()[1]


async def s_client(port: int, pki: MeshPki, *extra: str) -> tuple[int, str]:
    """Run ``openssl s_client`` until the server hangs up; return its status and stdout."""
    args: Sequence[str] = (
        "s_client", "-connect", f"127.0.0.1:{port}", "-alpn", "h2",
        "-CAfile", str(pki.ca_cert), "-verify_return_error",
        "-ign_eof",  # stdin is empty: keep reading until the server closes
        *extra,
    )  # fmt: skip
    assert OPENSSL is not None
    process = await asyncio.create_subprocess_exec(
        OPENSSL,
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        output, _ = await asyncio.wait_for(process.communicate(), S_CLIENT_TIMEOUT)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode is not None
    return process.returncode, output.decode(errors="replace")


async def test_s_client_with_a_mesh_certificate_completes_mtls_and_negotiates_h2(
    mesh_pki: MeshPki,
) -> None:
    async with greeting_server(mesh_pki) as port:
        status, output = await s_client(
            port, mesh_pki, "-cert", str(mesh_pki.client.cert), "-key", str(mesh_pki.client.key)
        )
    assert status == 0, output
    assert "ALPN protocol: h2" in output
    assert "Protocol  : TLSv1.3" in output
    assert "Verify return code: 0 (ok)" in output
    assert f"hello {mesh_pki.client.spiffe_id}" in output  # the server verified our client


async def test_s_client_without_a_certificate_is_refused(mesh_pki: MeshPki) -> None:
    async with greeting_server(mesh_pki) as port:
        status, output = await s_client(port, mesh_pki)
    assert status != 0, output
    assert "hello" not in output

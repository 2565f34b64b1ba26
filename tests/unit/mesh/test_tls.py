"""Tests for mesh.tls: real TLS handshakes between asyncio streams on 127.0.0.1.

The server accepts plain TCP and upgrades with ``start_tls``, so each test can see how the
*server's* handshake ended: with the peer's SPIFFE ID, or with the error it refused the peer
for. (``asyncio.start_server(ssl=...)`` only logs such errors; the openssl interop test uses
that form.)
"""

from __future__ import annotations

import asyncio
import re
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, cast

import pytest

from mesh import tls
from mesh.identity import SpiffeId
from tests.pki_fixtures import MeshPki
from tests.pki_fixtures import mesh_pki as mesh_pki  # a pytest fixture, used by name

BANNER = b"hello from the server\n"
HANDSHAKE_TIMEOUT = 5.0


@dataclass(frozen=True, slots=True, kw_only=True)
class TlsServer:
    """A TLS server on an ephemeral loopback port and the outcome of each handshake."""

    port: int
    handshakes: asyncio.Queue[SpiffeId | ssl.SSLError | None]


@asynccontextmanager
async def tls_server(context: ssl.SSLContext) -> AsyncIterator[TlsServer]:
    """Serve ``context`` on 127.0.0.1; after a handshake, send BANNER and close."""
    outcomes: asyncio.Queue[SpiffeId | ssl.SSLError | None] = asyncio.Queue()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await writer.start_tls(context, ssl_handshake_timeout=HANDSHAKE_TIMEOUT)
        except ssl.SSLError as exc:
            outcomes.put_nowait(exc)
            writer.transport.abort()
            return
        outcomes.put_nowait(tls.peer_spiffe_id(writer.get_extra_info("ssl_object")))
        writer.write(BANNER)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    async with server:
        yield TlsServer(port=server.sockets[0].getsockname()[1], handshakes=outcomes)


async def connect(
    port: int, context: ssl.SSLContext
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", port, ssl=context), HANDSHAKE_TIMEOUT
    )


async def read_until_closed(reader: asyncio.StreamReader) -> bytes:
    """Everything the server sent; b"" if it hung up or sent an alert instead."""
    try:
        return await asyncio.wait_for(reader.read(), HANDSHAKE_TIMEOUT)
    except (ssl.SSLError, ConnectionResetError):
        return b""


def server_context(pki: MeshPki) -> ssl.SSLContext:
    return tls.server_context(pki.server.cert, pki.server.key, pki.ca_cert)


def client_context(pki: MeshPki) -> ssl.SSLContext:
    return tls.client_context(pki.client.cert, pki.client.key, pki.ca_cert)


async def test_mutual_tls_each_side_sees_the_others_spiffe_id(mesh_pki: MeshPki) -> None:
    async with tls_server(server_context(mesh_pki)) as server:
        reader, writer = await connect(server.port, client_context(mesh_pki))
        assert tls.peer_spiffe_id(writer.get_extra_info("ssl_object")) == mesh_pki.server.spiffe_id
        assert await server.handshakes.get() == mesh_pki.client.spiffe_id
        assert await read_until_closed(reader) == BANNER
        writer.close()


async def test_the_handshake_is_tls13_and_negotiates_h2(mesh_pki: MeshPki) -> None:
    async with tls_server(server_context(mesh_pki)) as server:
        reader, writer = await connect(server.port, client_context(mesh_pki))
        ssl_object = writer.get_extra_info("ssl_object")
        assert ssl_object.version() == "TLSv1.3"
        assert ssl_object.selected_alpn_protocol() == "h2"
        await read_until_closed(reader)
        writer.close()


async def refusal(pki: MeshPki, client: ssl.SSLContext) -> ssl.SSLError:
    """Connect to a mesh server with ``client``; return the error the server refused it with.

    In TLS 1.3 the client finishes its half of the handshake first and the server verifies the
    client's certificate after, so the client connects and then finds the connection closed.
    """
    async with tls_server(server_context(pki)) as server:
        reader, writer = await connect(server.port, client)
        outcome = await server.handshakes.get()
        assert await read_until_closed(reader) == b""
        writer.close()
    assert isinstance(outcome, ssl.SSLError), f"the server accepted {outcome}"
    return outcome


async def test_a_client_without_a_certificate_is_refused(mesh_pki: MeshPki) -> None:
    anonymous = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    anonymous.check_hostname = False
    anonymous.load_verify_locations(mesh_pki.ca_cert)
    error = await refusal(mesh_pki, anonymous)
    assert error.reason == "PEER_DID_NOT_RETURN_A_CERTIFICATE"


async def test_a_client_certified_by_another_ca_is_refused(mesh_pki: MeshPki) -> None:
    # The rogue claims the client's SPIFFE ID; the name means nothing without our CA's signature.
    assert mesh_pki.rogue.spiffe_id == mesh_pki.client.spiffe_id
    rogue = tls.client_context(mesh_pki.rogue.cert, mesh_pki.rogue.key, mesh_pki.ca_cert)
    error = await refusal(mesh_pki, rogue)
    assert isinstance(error, ssl.SSLCertVerificationError)
    assert error.verify_message == "unable to get local issuer certificate"


async def test_a_client_refuses_a_server_certified_by_another_ca(mesh_pki: MeshPki) -> None:
    impostor = tls.server_context(mesh_pki.rogue.cert, mesh_pki.rogue.key, mesh_pki.ca_cert)
    async with tls_server(impostor) as server:
        with pytest.raises(ssl.SSLCertVerificationError, match="unable to get local issuer"):
            await connect(server.port, client_context(mesh_pki))


def test_the_system_trust_store_is_not_used(mesh_pki: MeshPki) -> None:
    for context in (server_context(mesh_pki), client_context(mesh_pki)):
        assert context.cert_store_stats()["x509_ca"] == 1
        assert context.verify_mode == ssl.CERT_REQUIRED
        assert context.minimum_version == ssl.TLSVersion.TLSv1_3
        assert not context.check_hostname


async def test_alpn_is_configurable_on_the_client(mesh_pki: MeshPki) -> None:
    http1_only = tls.client_context(
        mesh_pki.client.cert, mesh_pki.client.key, mesh_pki.ca_cert, alpn=["http/1.1"]
    )
    async with tls_server(server_context(mesh_pki)) as server:
        reader, writer = await connect(server.port, http1_only)
        # No protocol in common: the handshake succeeds without ALPN; the caller decides.
        assert writer.get_extra_info("ssl_object").selected_alpn_protocol() is None
        await read_until_closed(reader)
        writer.close()


class FakeSslObject:
    """Just enough of ``ssl.SSLObject`` for ``peer_spiffe_id``: a decoded peer certificate."""

    def __init__(self, certificate: dict[str, Any]) -> None:
        self._certificate = certificate

    def getpeercert(self) -> dict[str, Any]:
        return self._certificate


def peer_id(certificate: dict[str, Any]) -> SpiffeId | None:
    return tls.peer_spiffe_id(cast(ssl.SSLObject, FakeSslObject(certificate)))


def test_peer_spiffe_id_is_none_without_a_uri_san() -> None:
    assert peer_id({}) is None
    assert peer_id({"subjectAltName": (("DNS", "checkout"), ("IP Address", "127.0.0.1"))}) is None


def test_peer_spiffe_id_refuses_several_uri_sans() -> None:
    sans = (
        ("URI", "spiffe://cluster.local/ns/a/sa/one"),
        ("URI", "spiffe://cluster.local/ns/a/sa/two"),
    )
    with pytest.raises(ValueError, match="2 URI SANs"):
        peer_id({"subjectAltName": sans})


def test_peer_spiffe_id_refuses_a_uri_that_is_not_a_mesh_identity() -> None:
    with pytest.raises(
        ValueError, match=re.escape("invalid SPIFFE ID 'spiffe://cluster.local/web'")
    ):
        peer_id({"subjectAltName": (("URI", "spiffe://cluster.local/web"),)})

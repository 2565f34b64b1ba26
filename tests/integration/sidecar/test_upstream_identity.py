"""A caller's sidecar connects to an endpoint only if its certificate proves the identity that
registered it: a certificate of the mesh CA is not enough, it must be the right workload's."""

from __future__ import annotations

import pytest

from mesh.http2 import Server, Stream
from mesh.tls import client_context, server_context
from sidecar.pool import ConnectFailure, ConnectionPool
from tests.pki_fixtures import MeshPki
from tests.pki_fixtures import mesh_pki as mesh_pki  # a fixture, used by name

SERVER = "spiffe://cluster.local/ns/default/sa/server"
REQUEST = [(":method", "GET"), (":scheme", "https"), (":authority", "server"), (":path", "/")]


async def ok(stream: Stream) -> None:
    stream.send_headers([(":status", "200")], end_stream=True)


@pytest.mark.parametrize("expected", [SERVER, ""])
async def test_the_registered_identity_connects(mesh_pki: MeshPki, expected: str) -> None:
    server = Server(ok)
    await server.start("127.0.0.1", 0, ssl=server_context(
        mesh_pki.server.cert, mesh_pki.server.key, mesh_pki.ca_cert))
    pool = ConnectionPool("127.0.0.1", server.port, peer_identity=expected, ssl=client_context(
        mesh_pki.client.cert, mesh_pki.client.key, mesh_pki.ca_cert))
    try:
        stream = await pool.open_stream(REQUEST, end_stream=True)
        assert dict(await stream.receive_headers())[":status"] == "200"
    finally:
        await pool.close(grace=1.0)
        await server.shutdown(grace=1.0)


async def test_another_workloads_certificate_is_a_connect_failure(mesh_pki: MeshPki) -> None:
    """The server holds a good certificate of the mesh CA, for `server`; the endpoint was
    registered by `payments`. The connection is closed at once and the call fails to connect
    (so retries on connect-failure and outlier detection treat it as a dead endpoint)."""
    served: list[Stream] = []

    async def record(stream: Stream) -> None:
        served.append(stream)
        await ok(stream)

    server = Server(record)
    await server.start("127.0.0.1", 0, ssl=server_context(
        mesh_pki.server.cert, mesh_pki.server.key, mesh_pki.ca_cert))
    payments = "spiffe://cluster.local/ns/default/sa/payments"
    pool = ConnectionPool("127.0.0.1", server.port, peer_identity=payments, ssl=client_context(
        mesh_pki.client.cert, mesh_pki.client.key, mesh_pki.ca_cert))
    try:
        with pytest.raises(ConnectFailure) as failure:
            await pool.open_stream(REQUEST, end_stream=True)
        assert f"its certificate proves {SERVER}, not {payments}, which registered this " \
               f"endpoint" in str(failure.value)
        assert pool.connections == [] and served == []
    finally:
        await pool.close(grace=1.0)
        await server.shutdown(grace=1.0)

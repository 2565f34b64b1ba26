"""Interop: ``curl`` against a ``mesh.http2`` server, as h2c and as h2 over mTLS.

curl is a peer we did not write (libcurl on nghttp2 and OpenSSL). Over plain TCP it speaks
HTTP/2 with prior knowledge; over TLS it negotiates ``h2`` by ALPN and presents a client
certificate, which the server's context from ``mesh.tls`` requires and verifies against the
mesh CA: without one, or with one from another CA, the handshake fails and no request is
ever served. The server runs in this test's event loop; curl runs as a subprocess.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import shutil
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from mesh import tls
from mesh.http2 import Server, Stream
from tests.pki_fixtures import MeshPki
from tests.pki_fixtures import mesh_pki as mesh_pki  # a pytest fixture, used by name

CURL = shutil.which("curl")
CURL_TIMEOUT = 20.0
DOWNLOAD = 64 * 1024 * 1024  # bytes

pytestmark = [
    pytest.mark.interop,
    pytest.mark.timeout(60),
    pytest.mark.skipif(CURL is None, reason="curl is not installed"),
]


@dataclass
class Recorder:
    """The server's handler: answers a few paths and remembers what it served."""

    paths: list[str] = field(default_factory=list)
    connections: set[int] = field(default_factory=set)  # id() of each connection seen

    async def __call__(self, stream: Stream) -> None:
        assert stream.headers is not None
        path = dict(stream.headers)[":path"]
        self.paths.append(path)
        self.connections.add(id(stream.connection))
        body = await stream.read_all()
        if path == "/whoami":  # the identity the TLS handshake proved, if any
            ssl_object = stream.connection.ssl_object
            peer = tls.peer_spiffe_id(ssl_object) if ssl_object is not None else None
            answer = f"{peer or 'anonymous'}".encode()
        elif path == "/echo":
            answer = body
        elif path.startswith("/bytes/"):
            answer = b"b" * int(path.removeprefix("/bytes/"))
        else:
            stream.send_headers([(":status", "404")], end_stream=True)
            return
        stream.send_headers([(":status", "200"), ("content-length", str(len(answer)))])
        await stream.send_data(answer, end_stream=True)


@asynccontextmanager
async def serving(recorder: Recorder, *, pki: MeshPki | None = None) -> AsyncIterator[int]:
    """A ``mesh.http2`` server on 127.0.0.1 (mTLS when ``pki`` is given); yield its port."""
    context = tls.server_context(pki.server.cert, pki.server.key, pki.ca_cert) if pki else None
    server = Server(recorder)
    await server.start("127.0.0.1", 0, ssl=context)
    try:
        yield server.port
    finally:
        await server.shutdown(grace=2.0)


@dataclass(frozen=True, slots=True)
class CurlResult:
    status: int  # curl's exit status: 0, or the error it gave up with
    stdout: bytes
    stderr: str


async def curl(*args: str) -> CurlResult:
    """Run curl with ``args`` (silent, errors shown); the server keeps serving meanwhile."""
    assert CURL is not None
    process = await asyncio.create_subprocess_exec(
        CURL, "--silent", "--show-error", "--max-time", str(CURL_TIMEOUT), *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(process.communicate(), CURL_TIMEOUT + 5)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode is not None
    return CurlResult(process.returncode, out, err.decode(errors="replace"))


@asynccontextmanager
async def handshake_failures(
    caplog: pytest.LogCaptureFixture,
) -> AsyncIterator[list[BaseException]]:
    """Collect why the server refused TLS handshakes during the block.

    curl cannot tell: asyncio drops the connection without sending the TLS alert, so curl
    sees a reset. asyncio only logs the server's reason, and only in debug mode.
    """
    loop = asyncio.get_running_loop()
    failures: list[BaseException] = []
    loop.set_debug(True)
    caplog.set_level(logging.DEBUG, logger="asyncio")
    try:
        yield failures
    finally:
        loop.set_debug(False)
    failures += [record.exc_info[1] for record in caplog.records
                 if record.name == "asyncio" and "SSL handshake failed" in record.getMessage()
                 and record.exc_info is not None and record.exc_info[1] is not None]


def mtls_args(pki: MeshPki, *, cert: Path | None, key: Path | None) -> list[str]:
    client = ["--cert", str(cert), "--key", str(key)] if cert and key else []
    return ["--http2", "--cacert", str(pki.ca_cert), *client]


# -- h2c, prior knowledge ----------------------------------------------------------------------

async def test_curl_speaks_h2c_with_prior_knowledge() -> None:
    recorder = Recorder()
    async with serving(recorder) as port:
        result = await curl("--http2-prior-knowledge", "--write-out", " %{http_version}",
                            f"http://127.0.0.1:{port}/whoami")
    assert result.status == 0, result.stderr
    assert result.stdout == b"anonymous 2"
    assert recorder.paths == ["/whoami"]


async def test_curl_uploads_and_downloads_bodies_larger_than_the_windows(tmp_path: Path) -> None:
    upload = tmp_path / "upload.bin"
    upload.write_bytes(hashlib.sha256(b"seed").digest() * (3 * 1024 * 1024 // 32))  # 3 MiB
    recorder = Recorder()
    async with serving(recorder) as port:
        echoed = await curl("--http2-prior-knowledge", "--data-binary", f"@{upload}",
                            f"http://127.0.0.1:{port}/echo")
        # curl opens windows of 32 MiB: the server must pace this by the socket, not queue it.
        download = await curl("--http2-prior-knowledge", "--output", str(tmp_path / "download"),
                              "--write-out", "%{size_download}",
                              f"http://127.0.0.1:{port}/bytes/{DOWNLOAD}")
    assert echoed.status == 0, echoed.stderr
    assert echoed.stdout == upload.read_bytes()
    assert download.status == 0, download.stderr
    assert download.stdout == str(DOWNLOAD).encode()
    assert (tmp_path / "download").read_bytes() == b"b" * DOWNLOAD


# -- h2 over mTLS ------------------------------------------------------------------------------

async def test_curl_with_a_mesh_certificate_gets_h2_over_mtls(mesh_pki: MeshPki) -> None:
    recorder = Recorder()
    async with serving(recorder, pki=mesh_pki) as port:
        result = await curl(*mtls_args(mesh_pki, cert=mesh_pki.client.cert,
                                       key=mesh_pki.client.key),
                            "--write-out", " %{http_version} %{ssl_verify_result}",
                            f"https://127.0.0.1:{port}/whoami")
    assert result.status == 0, result.stderr
    assert result.stdout == f"{mesh_pki.client.spiffe_id} 2 0".encode()


async def test_curl_multiplexes_parallel_transfers_on_one_connection(mesh_pki: MeshPki) -> None:
    # Over TLS: curl 7.88 fails parallel transfers with --http2-prior-knowledge against any
    # server, nghttpd included ("Error in the HTTP2 framing layer", curl/curl#10634).
    recorder = Recorder()
    urls = 20
    async with serving(recorder, pki=mesh_pki) as port:
        result = await curl(*mtls_args(mesh_pki, cert=mesh_pki.client.cert,
                                       key=mesh_pki.client.key),
                            "--parallel", "--parallel-max", str(urls),
                            "--write-out", "%{http_code}\\n",
                            *[f"https://127.0.0.1:{port}/bytes/{i}" for i in range(1, urls + 1)])
    assert result.status == 0, result.stderr
    assert result.stdout.count(b"200\n") == urls
    assert sorted(recorder.paths) == sorted(f"/bytes/{i}" for i in range(1, urls + 1))
    assert len(recorder.connections) == 1


async def test_curl_without_a_certificate_is_refused_at_the_handshake(
    mesh_pki: MeshPki, caplog: pytest.LogCaptureFixture,
) -> None:
    recorder = Recorder()
    async with serving(recorder, pki=mesh_pki) as port, handshake_failures(caplog) as failures:
        result = await curl(*mtls_args(mesh_pki, cert=None, key=None),
                            f"https://127.0.0.1:{port}/whoami")
    assert result.status != 0, result.stdout
    assert recorder.paths == []  # no request got through
    (failure,) = failures
    assert isinstance(failure, ssl.SSLError)
    assert failure.reason == "PEER_DID_NOT_RETURN_A_CERTIFICATE"


async def test_curl_with_a_certificate_from_another_ca_is_refused_at_the_handshake(
    mesh_pki: MeshPki, caplog: pytest.LogCaptureFixture,
) -> None:
    recorder = Recorder()
    async with serving(recorder, pki=mesh_pki) as port, handshake_failures(caplog) as failures:
        result = await curl(*mtls_args(mesh_pki, cert=mesh_pki.rogue.cert, key=mesh_pki.rogue.key),
                            f"https://127.0.0.1:{port}/whoami")
    assert result.status != 0, result.stdout
    assert recorder.paths == []
    (failure,) = failures
    assert isinstance(failure, ssl.SSLCertVerificationError)
    assert failure.verify_message == "unable to get local issuer certificate"

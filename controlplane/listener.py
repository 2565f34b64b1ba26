"""The control plane's listener: TLS handshakes done in the open, so every refusal is logged.

A caller whose certificate comes from another CA, or has expired, is refused by the TLS
handshake itself, before any gRPC call exists to answer with a status. asyncio hides such a
failure (it logs it only in debug mode), and a refused handshake is exactly what an operator
wants to see: a workload with a stale certificate, or someone probing the registry. So this
listener accepts each connection itself and runs its handshake with
``loop.connect_accepted_socket``, which raises when the handshake fails: the refusal is logged
with the peer's address and the reason, and counted. A connection whose handshake succeeds
becomes an HTTP/2 connection of the :class:`mesh.http2.Server`, which serves and drains it as
its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Callable, Coroutine

from mesh.http2 import Server
from mesh.http2.connection import Http2Connection

log = logging.getLogger("controlplane.listener")

HANDSHAKE_TIMEOUT = 10.0  # seconds a caller has to finish the TLS handshake
BACKLOG = 1024  # a fleet of sidecars reconnecting at once after a control-plane restart

# OpenSSL's X509_V_ERR_* codes a caller meets most, said in the mesh's words.
_VERIFY_MEANINGS = {
    2: "not issued by the mesh CA",  # unable to get issuer certificate
    7: "not signed by the mesh CA",  # certificate signature failure
    9: "not valid yet",
    10: "expired",
    18: "self-signed, not issued by the mesh CA",
    19: "not issued by the mesh CA",  # self-signed certificate in chain
    20: "not issued by the mesh CA",  # unable to get local issuer certificate
}


class TlsListener:
    """Accepts connections for ``server`` and makes each do its TLS handshake first."""

    def __init__(self, server: Server, context: ssl.SSLContext, *,
                 on_failed: Callable[[str], None] | None = None) -> None:
        """Args:
            on_failed: called with the reason of every failed handshake (for metrics).
        """
        self._server = server
        self._context = context
        self._on_failed = on_failed
        self._socket: socket.socket | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self, host: str, port: int) -> None:
        """Listen on ``host:port`` (0: any free port, see :attr:`port`)."""
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(BACKLOG)
        sock.setblocking(False)
        self._socket = sock
        self._spawn(self._accept(sock))

    @property
    def port(self) -> int:
        assert self._socket is not None, "not started"
        port: int = self._socket.getsockname()[1]
        return port

    async def close(self) -> None:
        """Stop accepting and abandon handshakes in progress (the server drains the rest)."""
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._socket is not None:
            self._socket.close()

    def _spawn(self, work: Coroutine[None, None, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _accept(self, listening: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                sock, peer = await loop.sock_accept(listening)
            except OSError as error:  # out of file descriptors, say: keep serving the others
                log.warning("accept failed: %s", error)
                await asyncio.sleep(0.1)
                continue
            # Small messages (ACKs, pushes) must not wait for Nagle's algorithm; asyncio's
            # connect_accepted_socket, unlike its create_server, does not set this itself.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._spawn(self._handshake(sock, peer))

    async def _handshake(self, sock: socket.socket, peer: tuple[str, int]) -> None:
        try:
            await asyncio.get_running_loop().connect_accepted_socket(
                self._connection, sock, ssl=self._context,
                ssl_handshake_timeout=HANDSHAKE_TIMEOUT)
        except ConnectionError as error:  # gone before a word was said: a TCP probe, say
            log.info("connection from %s:%d closed during the TLS handshake (%s)", peer[0],
                     peer[1], type(error).__name__)
            sock.close()
        except (ssl.SSLError, OSError, TimeoutError) as error:
            reason = _reason(error)
            log.warning("TLS handshake from %s:%d failed: %s", peer[0], peer[1], reason)
            if self._on_failed is not None:
                self._on_failed(reason)
            sock.close()

    def _connection(self) -> Http2Connection:
        server = self._server
        return Http2Connection(client_side=False, handler=server.handler, limits=server.limits,
                               on_open=server.connections.add,
                               on_close=server.connections.discard)


def _reason(error: BaseException) -> str:
    if isinstance(error, ssl.SSLCertVerificationError):
        meaning = _VERIFY_MEANINGS.get(error.verify_code)
        detail = f"{meaning} ({error.verify_message})" if meaning else error.verify_message
        return f"client certificate refused: {detail}"
    if isinstance(error, ssl.SSLError):
        return error.reason or str(error)
    if isinstance(error, TimeoutError):
        return f"no handshake within {HANDSHAKE_TIMEOUT:.0f}s"
    return str(error) or type(error).__name__

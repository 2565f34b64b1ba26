"""What the benchmark servers share: the TLS context h2load can talk to, and an aiohttp
application served on a free loopback port."""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import AsyncIterator

from aiohttp import web


def server_only_tls(cert: str, key: str) -> ssl.SSLContext:
    """TLS 1.3 with ALPN h2 and no client certificate (h2load cannot present one)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.load_cert_chain(cert, key)
    context.set_alpn_protocols(["h2"])
    return context


@contextlib.asynccontextmanager
async def serving(app: web.Application) -> AsyncIterator[int]:
    """``app`` on 127.0.0.1 at a free port, which is yielded; stopped on the way out."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        port: int = runner.addresses[0][1]
        yield port
    finally:
        await runner.cleanup()

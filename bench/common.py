"""What the benchmark servers share: the TLS context h2load can talk to."""

from __future__ import annotations

import ssl


def server_only_tls(cert: str, key: str) -> ssl.SSLContext:
    """TLS 1.3 with ALPN h2 and no client certificate (h2load cannot present one)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.load_cert_chain(cert, key)
    context.set_alpn_protocols(["h2"])
    return context

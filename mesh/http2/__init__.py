"""HTTP/2 on asyncio, on the sans-IO ``h2`` state machine (or its fork ``jh2``: :mod:`.engine`).

Glossary:
    connection   one TCP (h2c) or TLS (ALPN ``h2``) connection carrying many streams
                 (:mod:`~mesh.http2.connection`, the only module that drives ``h2``).
    stream       one request/response exchange: headers, body, trailers (:mod:`.stream`).
    window       how many body bytes a peer may send before the reader acknowledges them:
                 HTTP/2's flow control, per stream and per connection.
    GOAWAY       "no new streams on this connection"; with NO_ERROR the streams in flight
                 finish (draining), with an error code the connection ends now.
    RST_STREAM   ends one stream early; the connection and its other streams carry on.
    limits       the bounds that turn abusive peers into clean errors (:mod:`.limits`).
    engine       the state machine underneath: ``h2``, or ``jh2`` with the same API and
                 native parsing, chosen by ``MESH_HTTP2_ENGINE`` (:mod:`.engine`).
"""

from mesh.http2.client import Response, connect, request
from mesh.http2.connection import Handler, Http2Connection
from mesh.http2.errors import (
    ConnectionClosed,
    ErrorCode,
    Http2Error,
    NoStreamAvailable,
    StreamRefused,
    StreamReset,
)
from mesh.http2.limits import Limits
from mesh.http2.server import Server, serve
from mesh.http2.stream import Headers, Stream

__all__ = [
    "ConnectionClosed", "ErrorCode", "Handler", "Headers", "Http2Connection", "Http2Error",
    "Limits", "NoStreamAvailable", "Response", "Server", "Stream", "StreamRefused",
    "StreamReset", "connect", "request", "serve",
]

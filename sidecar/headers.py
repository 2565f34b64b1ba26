"""Which headers cross the sidecar, which are dropped, and which the mesh sets itself.

- Hop-by-hop headers (``connection``, ``keep-alive``, ``transfer-encoding``, ...) belong to one
  connection and never travel on (RFC 9110 §7.6.1); HTTP/2 forbids them anyway. The one
  exception is ``te: trailers``, the only ``te`` HTTP/2 allows (RFC 9113 §8.2.2): gRPC
  servers refuse a call without it, so it travels on between HTTP/2 hops.
- Mesh headers (``x-mesh-*``) and ``x-forwarded-client-cert`` are the mesh's to set. An app
  may not forge them: the outbound listener drops what the app sent, and the inbound listener
  replaces ``x-forwarded-client-cert`` with what the mTLS handshake proved. The app's deadline
  (``grpc-timeout``, or ``x-mesh-timeout-ms``, the app's way to set one over HTTP) is read
  first (:func:`caller_timeout`); what travels on is the time that remains of it.
- ``x-forwarded-for`` from a caller is not trusted (it would let any caller claim any address
  and slip past IP allow-lists): the inbound listener drops it.
"""

from __future__ import annotations

import hashlib
import ssl

from mesh.grpc.deadline import parse_timeout
from mesh.http2 import Headers

HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "transfer-encoding",
                        "upgrade", "te", "host", "proxy-authenticate", "proxy-authorization"})
TIMEOUT_HEADER = "x-mesh-timeout-ms"  # an HTTP caller's deadline, like gRPC's grpc-timeout
ATTEMPT_HEADER = "x-mesh-attempt"  # which attempt this is (1 = first; retries count up)
OVERLOADED_HEADER = "x-mesh-overloaded"  # which circuit breaker limit refused the call
XFCC = "x-forwarded-client-cert"
XFF = "x-forwarded-for"


def is_grpc(headers: Headers) -> bool:
    return any(k == "content-type" and v.startswith("application/grpc") for k, v in headers)


def _te_trailers(name: str, value: str) -> bool:
    return name == "te" and value.strip().lower() == "trailers"


def from_app(headers: Headers) -> Headers:
    """An app's request as the outbound sidecar forwards it, before it adds the remaining
    timeout and the attempt (mesh headers are ours to set)."""
    return [(k, v) for k, v in headers
            if (k not in HOP_BY_HOP or _te_trailers(k, v)) and k != XFCC and
            k != "grpc-timeout" and not k.startswith("x-mesh-")]


def from_peer(headers: Headers, *, client_cert: Headers) -> Headers:
    """A peer sidecar's request as the inbound sidecar hands it to its app.

    ``client_cert`` is the ``x-forwarded-client-cert`` the handshake proved; anything the
    caller sent under that name, or as ``x-forwarded-for``, is dropped.
    """
    kept = [(k, v) for k, v in headers
            if (k not in HOP_BY_HOP or _te_trailers(k, v)) and k != XFCC and k != XFF]
    return kept + client_cert


def response(headers: Headers) -> Headers:
    """A response's headers (or trailers) as forwarded: hop-by-hop ones removed."""
    return [(k, v) for k, v in headers if k not in HOP_BY_HOP]


def xfcc(own_id: str, peer_der: bytes | None, peer_id: str | None) -> str:
    """Envoy's ``x-forwarded-client-cert``: ``By=<us>;Hash=<sha256 of peer cert>;URI=<peer>``."""
    parts = [f"By={own_id}"]
    if peer_der is not None:
        parts.append(f"Hash={hashlib.sha256(peer_der).hexdigest()}")
    if peer_id is not None:
        parts.append(f"URI={peer_id}")
    return ";".join(parts)


def peer_certificate_der(ssl_object: ssl.SSLObject | None) -> bytes | None:
    if ssl_object is None:
        return None
    return ssl_object.getpeercert(binary_form=True)


def caller_timeout(values: dict[str, str]) -> float | None:
    """The caller's own deadline in seconds, if it sent one (a malformed one is ignored)."""
    try:
        if "grpc-timeout" in values:
            return parse_timeout(values["grpc-timeout"])
        if TIMEOUT_HEADER in values:
            return max(0.0, int(values[TIMEOUT_HEADER]) / 1000)
    except ValueError:
        pass
    return None

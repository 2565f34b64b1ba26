"""mTLS for the mesh: the ``SSLContext`` each side uses, and the SPIFFE ID the peer proved.

Both sides present a certificate and both require one (mutual TLS), verified against the mesh
CA only: the contexts never load the system trust store, so a certificate from a public CA
proves nothing here. TLS 1.3 is the minimum and ALPN offers ``h2``.

Host names are *not* checked (``check_hostname = False``): the mesh authenticates workloads by
the SPIFFE ID in the certificate's URI SAN, not by the DNS name dialled. After the handshake,
:func:`peer_spiffe_id` reads that ID and authorization decides what it may do. This is what
Istio and Linkerd do; a caller that must reach one service only compares the peer's SPIFFE ID
to the one it expected.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Sequence
from typing import TypeAlias, cast

from mesh.identity import SpiffeId, parse

PathLike: TypeAlias = str | os.PathLike[str]


def server_context(cert_file: PathLike, key_file: PathLike, ca_file: PathLike, *,
                   require_client_cert: bool = True) -> ssl.SSLContext:
    """The context a sidecar accepts mesh connections with; clients must present a certificate.

    Args:
        cert_file: this workload's certificate (PEM).
        key_file: its private key (PEM).
        ca_file: the mesh CA certificate, the only trust anchor.
        require_client_cert: False only where a client may not have a certificate yet: the
            control plane, where a new sidecar trades a join token for its first one. A
            certificate that *is* presented must still verify.

    Raises:
        OSError, ssl.SSLError: a file is missing or is not what it should be.
    """
    context = _mesh_context(cert_file, key_file, ca_file, alpn=["h2"], server_side=True)
    if not require_client_cert:
        context.verify_mode = ssl.CERT_OPTIONAL
    return context


def client_context(
    cert_file: PathLike,
    key_file: PathLike,
    ca_file: PathLike,
    *,
    alpn: Sequence[str] = ("h2",),
) -> ssl.SSLContext:
    """The context a sidecar dials mesh peers with; it presents our certificate.

    Args:
        cert_file, key_file, ca_file: as :func:`server_context`.
        alpn: the application protocols to offer, most preferred first.

    Raises:
        OSError, ssl.SSLError: a file is missing or is not what it should be.
    """
    return _mesh_context(cert_file, key_file, ca_file, alpn=alpn, server_side=False)


def bootstrap_context(ca_file: PathLike) -> ssl.SSLContext:
    """The context of a client with no certificate yet: it verifies the server, shows nothing.

    A new sidecar uses it once, to send its join token and CSR to the control plane.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.check_hostname = False  # the server's SPIFFE ID is checked instead (Channel)
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(cafile=ca_file)
    context.set_alpn_protocols(["h2"])
    return context


def peer_spiffe_id(ssl_object: ssl.SSLObject | ssl.SSLSocket) -> SpiffeId | None:
    """The SPIFFE ID in the verified peer certificate's URI SAN, or None if there is none.

    ``ssl_object`` is what ``writer.get_extra_info("ssl_object")`` returns. Python only decodes
    a peer certificate that passed verification, so an ID returned here was signed by the CA.

    Raises:
        ValueError: the certificate has several URI SANs, or one that is not a mesh SPIFFE ID.
    """
    certificate = ssl_object.getpeercert()
    if not certificate:
        return None
    # The ssl module documents subjectAltName as ((type, value), ...); typeshed is looser.
    sans = cast("tuple[tuple[str, str], ...]", certificate.get("subjectAltName", ()))
    uris = [value for kind, value in sans if kind == "URI"]
    if not uris:
        return None
    if len(uris) > 1:
        raise ValueError(f"peer certificate has {len(uris)} URI SANs {uris}; SPIFFE allows one")
    return parse(uris[0])


def _mesh_context(
    cert_file: PathLike,
    key_file: PathLike,
    ca_file: PathLike,
    *,
    alpn: Sequence[str],
    server_side: bool,
) -> ssl.SSLContext:
    # Unlike ssl.create_default_context, a bare SSLContext trusts nothing until told to.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server_side else ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.check_hostname = False  # we authenticate SPIFFE IDs, not host names (see above)
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(cafile=ca_file)
    context.load_cert_chain(cert_file, key_file)
    context.set_alpn_protocols(list(alpn))
    return context

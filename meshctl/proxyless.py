"""``meshctl proxyless SERVICE``: what an unmodified grpcio workload needs to join the mesh.

A proxyless gRPC workload has no sidecar: grpcio's own xDS client talks to the control plane
(Envoy's ADS, on the same mTLS port as our ``/mesh.v1.*`` services) and does discovery,
balancing and mTLS by itself. It needs two things it cannot make: a mesh certificate, and a
bootstrap file (gRFC A27) that says where the control plane is and who the workload is. This
command makes both, in one folder (``--out``, default ``.mesh/proxyless/<namespace>/<service>``):

    bootstrap.json   GRPC_XDS_BOOTSTRAP: the control plane with TLS channel credentials from
                     the files below (gRFC A65; the control plane requires a client
                     certificate), the node (id, ``cluster`` = service, NAMESPACE metadata,
                     zone), the ``mesh`` certificate provider (a file watcher, gRFC A29) that
                     our xDS TLS contexts name, and the inbound listener template (gRFC A36)
    cert.pem         the workload certificate, proving spiffe://<td>/ns/<namespace>/sa/<service>
    key.pem          its private key (0600), made here; only a CSR leaves this machine
    ca.pem           the mesh CA

How the certificate is bought, in order (unless the folder already holds one of this mesh
for this identity, good for more than ``REUSE_MARGIN``: a restarted agent keeps it, since the
token it was bought with is spent):

1. a join token: from ``--join-token-file`` (or ``MESH_JOIN_TOKEN``) when an operator handed
   one over, else minted here through the operator API (``POST /tokens``, with the operator
   token found as every meshctl command finds it);
2. the token and a CSR go to the control plane's gRPC port (``--control-plane``, default the
   API's host at port 15012) over TLS that must prove the control plane's identity
   (:func:`sidecar.identity.bootstrap`), verified with the mesh CA (``--bootstrap-ca``, else
   ``$MESH_PKI_DIR/ca.crt``, else, for a control plane on loopback, a local mesh's: the demo's,
   compose's, ``.mesh/pki``). The control plane decides the identity; the certificate is
   refused here if it is not the one asked for.

Certificates expire (1 h by default). ``--renew`` stays in the foreground and renews at 70 % of
the lifetime over mTLS with the current certificate (:class:`sidecar.identity.Rotation`'s rule)
until SIGTERM or SIGINT: Istio's agent beside a proxyless gRPC workload. gRPC's file watcher
re-reads the files every ``refresh_interval``, so nothing is reloaded from here.

**Why the files are links into a generation folder.** The file watcher reads the key and then
the certificate, and accepts the pair when neither file's modification time (in seconds)
changed while it read. Two files replaced one after the other leave a moment when the new key
sits beside the old certificate; a read that falls there passes that check, and gRPC would
present a certificate its key cannot sign for until the next refresh (10 s of failed
handshakes). So each certificate is written into a fresh folder ``..<UTC time>.<random>`` and
published by one ``rename`` of the link ``..data`` to it; ``cert.pem``, ``key.pem`` and
``ca.pem`` are links through ``..data`` (Kubernetes' atomic writer gives a Secret volume the
same layout, for the same readers). A read that straddles the swap sees a modification time
change and reads again, so the watcher never takes a mixed pair. The previous generation
is kept until the next renewal, since a read may still be under way in it.

**Node id.** ``<namespace>/<service>@proxyless-<host name>-<6 hex digits>``: the host name
says where it runs, and the random suffix tells apart two bootstraps on one machine (the demo
runs every workload on one host; a process id would be this command's, not the workload's).
It has no ``:port``, so it is never taken for an instance's name (``ns/svc@address:port``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import shlex
import shutil
import signal
import socket
import sys
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from controlplane.xds.resources import (
    CERTIFICATE_PROVIDER,
    INBOUND_LISTENER_TEMPLATE,
    NAMESPACE_METADATA,
)
from mesh.address import host_port
from mesh.grpc import Channel, GrpcError
from mesh.identity import SCHEME, SpiffeId, check_trust_domain, control_plane_id
from mesh.loop import run
from mesh.tls import client_context
from meshctl import demo
from sidecar.identity import CertificateFiles, Rotation, bootstrap, obtain

log = logging.getLogger("meshctl.proxyless")

DEFAULT_OUT = Path(".mesh/proxyless")  # then <namespace>/<service>
CONTROL_PLANE_PORT = 15012  # `python -m controlplane`'s default --listen port
TOKEN_TTL = 60.0  # a token minted here is spent within seconds; a leaked one soon dies
JOIN_TIMEOUT = 20.0  # seconds an unreachable control plane is tried for, then we give up
REFRESH_INTERVAL = "10s"  # how often gRPC re-reads the certificate files
# A certificate already in --out with more life than this left is kept (no join token spent).
REUSE_MARGIN = timedelta(minutes=1)
# Names every workload certificate carries (certs/pki.py sign_csr), so a control plane reached
# by one of them is told from a workload by nothing grpcio checks.
SHARED_HOST_NAMES = frozenset({"127.0.0.1", "localhost"})
DATA = "..data"  # the link to the current generation folder
BOOTSTRAP = "bootstrap.json"
PKI_FOLDERS = (".mesh/compose", ".mesh/pki")  # after the demo's: where a local mesh CA lives


class ProxylessError(Exception):
    """What stopped ``meshctl proxyless``; the message says what was wrong and where."""


# -- the bootstrap (gRFC A27) ---------------------------------------------------------------

def node_id(namespace: str, service: str, hostname: str, rng: random.Random) -> str:
    """This bootstrap's node id (why this form: the module docstring)."""
    return f"{namespace}/{service}@proxyless-{hostname}-{rng.getrandbits(24):06x}"


def bootstrap_config(*, service: str, namespace: str, zone: str, control_plane: str,
                     files: CertificateFiles, node: str) -> dict[str, Any]:
    """The bootstrap grpcio reads from ``GRPC_XDS_BOOTSTRAP``, naming ``files`` as they are
    (absolute, links not followed: they must keep naming the current generation)."""
    certificates = {"ca_certificate_file": str(files.ca.absolute()),
                    "certificate_file": str(files.cert.absolute()),
                    "private_key_file": str(files.key.absolute()),
                    "refresh_interval": REFRESH_INTERVAL}
    return {
        "xds_servers": [{
            "server_uri": control_plane,
            # gRFC A65: TLS with a client certificate; the same files, re-read as they change.
            "channel_creds": [{"type": "tls", "config": certificates}],
            "server_features": ["xds_v3"],
        }],
        "node": {
            "id": node,
            "cluster": service,
            "metadata": {NAMESPACE_METADATA: namespace},
            **({"locality": {"zone": zone}} if zone else {}),
        },
        # gRFC A29: the provider our Listeners' and Clusters' TLS contexts name.
        "certificate_providers": {
            CERTIFICATE_PROVIDER: {"plugin_name": "file_watcher", "config": certificates},
        },
        "server_listener_resource_name_template": INBOUND_LISTENER_TEMPLATE,
    }


# -- the certificate files ------------------------------------------------------------------

class CertificateFolder:
    """``cert.pem``, ``key.pem`` and ``ca.pem``, replaced together by one rename.

    Layout (why: the module docstring)::

        cert.pem -> ..data/cert.pem     key.pem -> ..data/key.pem     ca.pem -> ..data/ca.pem
        ..data   -> ..2026_12_03_11_48_22.k3j2x9    the current generation
        ..2026_12_03_10_50_22.a8d7f1                the previous one, until the next swap
    """

    NAMES = ("cert.pem", "key.pem", "ca.pem")

    def __init__(self, folder: Path) -> None:
        self.folder = folder.absolute()
        self.files = CertificateFiles(*(self.folder / name for name in self.NAMES))

    def new_generation(self) -> CertificateFiles:
        """An empty folder for the next certificate (published by :meth:`publish`)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(UTC).strftime("%Y_%m_%d_%H_%M_%S")
        generation = Path(tempfile.mkdtemp(prefix=f"..{stamp}.", dir=self.folder))
        generation.chmod(0o755)  # as readable as the files in it (the key stays 0600)
        return CertificateFiles(*(generation / name for name in self.NAMES))

    def publish(self, generation: CertificateFiles) -> None:
        """Make ``generation`` the current files, all three at once; forget older ones."""
        previous = self._current()
        _link(self.folder / DATA, generation.cert.parent.name)  # the one atomic step
        for path in (self.files.cert, self.files.key, self.files.ca):
            if not path.is_symlink():  # the first time (or a folder from another tool)
                _link(path, f"{DATA}/{path.name}")
        keep = {DATA, generation.cert.parent.name, previous}
        for entry in self.folder.iterdir():
            if entry.name.startswith("..") and entry.name not in keep and entry.is_dir() \
                    and not entry.is_symlink():
                shutil.rmtree(entry)

    def discard(self, generation: CertificateFiles) -> None:
        """Remove a generation that will not be published."""
        shutil.rmtree(generation.cert.parent, ignore_errors=True)

    def _current(self) -> str | None:
        try:
            return os.readlink(self.folder / DATA)
        except OSError:
            return None


def _link(path: Path, target: str) -> None:
    """``path`` becomes a link to ``target``, atomically (a new link renamed over it)."""
    temporary = path.with_name(path.name + ".new")
    temporary.unlink(missing_ok=True)
    os.symlink(target, temporary)
    os.replace(temporary, path)


class FileRotation(Rotation):
    """Renews the certificate into a new generation and publishes it; gRPC's file watcher
    picks it up (there are no SSL contexts of ours to reload)."""

    def __init__(self, host: str, port: int, folder: CertificateFolder) -> None:
        super().__init__(host, port, folder.files, contexts=[])
        self.folder = folder

    async def renew(self) -> None:
        identity = self.files.identity()
        tls = client_context(self.files.cert, self.files.key, self.files.ca)
        channel = Channel(self.host, self.port, ssl=tls, authority="controlplane",
                          peer_identity=str(control_plane_id(identity.trust_domain)))
        generation = self.folder.new_generation()
        try:
            await obtain(channel, generation, identity)
        except BaseException:
            self.folder.discard(generation)
            raise
        finally:
            await channel.close()
        self.folder.publish(generation)
        self.renewals += 1
        log.info("certificate renewed (until %s)", self.files.not_after().isoformat())


# -- joining ----------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True, kw_only=True)
class Enrollment:
    """What to enroll, and where to; read from the command line by :func:`enrollment`."""

    service: str
    namespace: str
    zone: str
    control_plane: tuple[str, int]
    bootstrap_ca: Path
    out: Path

    @property
    def server_uri(self) -> str:
        return f"{self.control_plane[0]}:{self.control_plane[1]}"


async def join(enrollment: Enrollment, folder: CertificateFolder, token: str,
               wanted: SpiffeId, *, reach_within: float = JOIN_TIMEOUT) -> None:
    """Redeem ``token`` for a certificate proving ``wanted`` and publish it in ``folder``.

    Raises:
        ProxylessError: the control plane refused the token, could not be reached within
            ``reach_within`` seconds, or issued a certificate for another identity.
    """
    generation = folder.new_generation()
    published = False
    try:
        async with asyncio.timeout(reach_within):
            await bootstrap(*enrollment.control_plane, enrollment.bootstrap_ca, generation,
                            wanted, token)
        issued = generation.identity()
        if issued != wanted:
            raise ProxylessError(f"the join token was for {issued}, not {wanted}: ask for a "
                                 f"token for {wanted.service} in namespace {wanted.namespace}")
        folder.publish(generation)
        published = True
    except TimeoutError:
        raise ProxylessError(
            f"control plane {enrollment.server_uri} unreachable for {reach_within:.0f}s (the "
            f"reasons are above): is it running there (--control-plane), and does "
            f"{enrollment.bootstrap_ca} (--bootstrap-ca) hold the CA that signed it?") from None
    except GrpcError as error:
        raise ProxylessError(f"the control plane at {enrollment.server_uri} refused the join "
                             f"token: {error}") from None
    finally:
        if not published:
            folder.discard(generation)


def mint_token(api: str, wanted: SpiffeId) -> str:
    """A join token for ``wanted`` from the operator API at ``api``.

    Raises:
        ProxylessError: no operator token for ``api``, or the API refused or is unreachable.
    """
    # Imported here: meshctl/__main__.py imports this module to register the command.
    from meshctl.__main__ import ApiError, call, operator_token_file
    if operator_token_file(api) is None:
        raise ProxylessError(
            f"no operator token to ask the operator API at {api} for a join token: set "
            f"MESH_OPERATOR_TOKEN_FILE, or have an operator run `meshctl token create "
            f"{wanted.service} --namespace {wanted.namespace}` and pass that token with "
            f"--join-token-file FILE or MESH_JOIN_TOKEN")
    body = {"service": wanted.service, "namespace": wanted.namespace, "ttl": TOKEN_TTL}
    try:
        result = call(api, "POST", "/tokens", json.dumps(body).encode())
    except ApiError as error:
        raise ProxylessError(f"no join token from the operator API: {error}") from None
    return str(result["token"])


def given_token(token_file: Path | None) -> str | None:
    """The join token an operator handed over (``--join-token-file``, else
    ``MESH_JOIN_TOKEN``), or None.

    Raises:
        ProxylessError: the file cannot be read or is empty.
    """
    if token_file is None:
        return os.environ.get("MESH_JOIN_TOKEN") or None
    try:
        token = token_file.read_text().strip()
    except OSError as error:
        raise ProxylessError(f"--join-token-file {token_file}: {error.strerror}") from None
    if not token:
        raise ProxylessError(f"--join-token-file {token_file} is empty")
    return token


def trust_domain(ca_file: Path) -> str:
    """The trust domain the mesh CA certificate in ``ca_file`` names (its URI SAN).

    Raises:
        ProxylessError: the file is unreadable or not a mesh CA certificate.
    """
    try:
        ca = x509.load_pem_x509_certificate(ca_file.read_bytes())
        san = ca.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        uris = san.value.get_values_for_type(x509.UniformResourceIdentifier)
        if len(uris) != 1 or not uris[0].startswith(SCHEME):
            raise ValueError(f"its URI SANs are {uris}, not one spiffe://<trust-domain>")
        return check_trust_domain(uris[0].removeprefix(SCHEME))
    except OSError as error:
        raise ProxylessError(f"--bootstrap-ca {ca_file}: {error.strerror}") from None
    except (ValueError, x509.ExtensionNotFound) as error:
        raise ProxylessError(f"--bootstrap-ca {ca_file}: not a mesh CA certificate: "
                             f"{error}") from None


def find_bootstrap_ca(control_plane: str) -> Path | None:
    """``$MESH_PKI_DIR/ca.crt``, else, for a control plane on loopback, the first ``ca.crt``
    of a local mesh (the demo's, compose's, the control plane's default folder)."""
    from meshctl.__main__ import _loopback  # see mint_token
    pki = os.environ.get("MESH_PKI_DIR")
    if pki and (Path(pki) / "ca.crt").is_file():
        return Path(pki) / "ca.crt"
    if not _loopback(control_plane):
        return None
    state = os.environ.get("DEMO_STATE_DIR") or demo.DEFAULT_STATE_DIR
    for folder in (f"{state}/pki", *PKI_FOLDERS):
        if (Path(folder) / "ca.crt").is_file():
            return Path(folder) / "ca.crt"
    return None


def reusable(folder: CertificateFolder, wanted: SpiffeId, ca_file: Path) -> bool:
    """Whether ``folder`` already holds a certificate of the mesh CA in ``ca_file`` proving
    ``wanted`` for a while yet (``REUSE_MARGIN``), so that no join token is needed."""
    try:
        certificate = x509.load_pem_x509_certificate(folder.files.cert.read_bytes())
        ca = x509.load_pem_x509_certificate(ca_file.read_bytes())
        certificate.verify_directly_issued_by(ca)
        identity = folder.files.identity()
    except (OSError, ValueError, TypeError, IndexError, InvalidSignature,
            x509.ExtensionNotFound):
        return False  # none yet, or not of this mesh
    left = certificate.not_valid_after_utc - datetime.now(UTC)
    return identity == wanted and left > REUSE_MARGIN


async def enroll(enrollment: Enrollment, api: str, token_file: Path | None, *,
                 renew: bool, rng: random.Random) -> CertificateFolder:
    """Get the certificate, write the bootstrap and say what to export.

    Raises:
        ProxylessError: no join token, or none that the control plane took.
    """
    wanted = SpiffeId(trust_domain=trust_domain(enrollment.bootstrap_ca),
                      namespace=enrollment.namespace, service=enrollment.service)
    if enrollment.control_plane[0] in SHARED_HOST_NAMES:
        log.warning("grpcio checks the control plane at %s by host name only, and every "
                    "workload certificate names localhost and 127.0.0.1: where other "
                    "workloads run, serve the control plane on an address of its own (the "
                    "demo's is 127.0.10.1)", enrollment.server_uri)
    folder = CertificateFolder(enrollment.out)
    if reusable(folder, wanted, enrollment.bootstrap_ca):
        # A restart (of the workload's agent, of a compose pod): the certificate is still
        # good, and the join token it was bought with is spent. Renewal takes it from here.
        log.info("keeping the certificate of %s in %s (valid until %s)", wanted,
                 folder.folder, folder.files.not_after().isoformat(timespec="seconds"))
    else:
        token = given_token(token_file)
        if token is None:
            token = await asyncio.to_thread(mint_token, api, wanted)
        await join(enrollment, folder, token, wanted)
    config = bootstrap_config(
        service=enrollment.service, namespace=enrollment.namespace, zone=enrollment.zone,
        control_plane=enrollment.server_uri, files=folder.files,
        node=node_id(enrollment.namespace, enrollment.service, socket.gethostname(), rng))
    path = folder.folder / BOOTSTRAP
    temporary = path.with_name(path.name + ".new")
    temporary.write_text(json.dumps(config, indent=2) + "\n")
    os.replace(temporary, path)
    until = folder.files.not_after().isoformat(timespec="seconds")
    print(f"# {wanted}: certificate (until {until}), key and CA in {folder.folder}"
          f"{'; renewed at 70 % of its lifetime until stopped' if renew else ''}\n"
          f"export GRPC_XDS_BOOTSTRAP={shlex.quote(str(path))}\n"
          f"# target: xds:///{enrollment.service} (a server: grpc.server(executor, xds=True) with "
          f"grpc.xds_server_credentials)", flush=True)
    return folder


# -- the command ------------------------------------------------------------------------------

def register(sub: Any) -> None:
    """Add ``proxyless`` to meshctl's subcommands."""
    env = os.environ.get
    p = sub.add_parser("proxyless", help="certificate and xDS bootstrap for a grpcio workload",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("service", help="the workload's service (its SPIFFE ID's account)")
    p.add_argument("--namespace", default="default", help="its namespace (default: default)")
    p.add_argument("--zone", default=env("MESH_ZONE", ""),
                   help="its zone, for locality-aware balancing [MESH_ZONE]")
    p.add_argument("--out", type=Path,
                   help=f"where to write (default {DEFAULT_OUT}/<namespace>/<service>)")
    p.add_argument("--api", default=argparse.SUPPRESS,
                   help="the operator API (same as meshctl --api) [MESH_CP_API]")
    p.add_argument("--control-plane", type=host_port, default=env("MESH_CONTROL_PLANE"),
                   help=f"the control plane's gRPC address (default: the API's host, port "
                        f"{CONTROL_PLANE_PORT}) [MESH_CONTROL_PLANE]")
    p.add_argument("--bootstrap-ca", type=Path, default=env("MESH_BOOTSTRAP_CA"),
                   help="the mesh CA certificate, to verify the control plane (default: "
                        "ca.crt in MESH_PKI_DIR, else a local mesh's) [MESH_BOOTSTRAP_CA]")
    p.add_argument("--join-token-file", type=Path, default=env("MESH_JOIN_TOKEN_FILE"),
                   help="a join token from an operator (meshctl token create), instead of "
                        "minting one with the operator token; or the token itself in "
                        "MESH_JOIN_TOKEN [MESH_JOIN_TOKEN_FILE]")
    p.add_argument("--renew", action="store_true",
                   help="stay running and renew the certificate until SIGTERM or SIGINT")
    p.set_defaults(run=main)


def enrollment(args: argparse.Namespace) -> Enrollment:
    """The enrollment the command line asks for.

    Raises:
        ProxylessError: no mesh CA to verify the control plane with.
    """
    api_host = args.api.rpartition(":")[0] or args.api
    control_plane = args.control_plane or (api_host.strip("[]"), CONTROL_PLANE_PORT)
    address = f"{control_plane[0]}:{control_plane[1]}"
    ca = args.bootstrap_ca or find_bootstrap_ca(address)
    if ca is None:
        raise ProxylessError(f"no mesh CA to verify the control plane at {address} with: "
                             f"pass --bootstrap-ca FILE (the mesh CA's ca.crt)")
    return Enrollment(service=args.service, namespace=args.namespace, zone=args.zone,
                      control_plane=control_plane, bootstrap_ca=ca,
                      out=args.out or DEFAULT_OUT / args.namespace / args.service)


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="meshctl proxyless: %(message)s")
    try:
        wanted = enrollment(args)
        return run(_run(wanted, args))
    except (ProxylessError, ValueError) as error:  # ValueError: a service name SpiffeId refuses
        print(f"meshctl proxyless: {error}", file=sys.stderr)
        return 1


async def _run(wanted: Enrollment, args: argparse.Namespace) -> int:
    task = asyncio.current_task()
    assert task is not None
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, task.cancel)
    try:
        folder = await enroll(wanted, args.api, args.join_token_file, renew=args.renew,
                              rng=random.Random())
    except asyncio.CancelledError:
        return 130  # interrupted before the files were ready
    if args.renew:
        try:
            await FileRotation(*wanted.control_plane, folder).run()
        except asyncio.CancelledError:
            log.info("stopped; the certificate stays valid until %s",
                     folder.files.not_after().isoformat(timespec="seconds"))
    return 0

"""meshctl proxyless: the bootstrap's shape, where the files go, and how they are replaced."""

from __future__ import annotations

import argparse
import os
import random
import re
import socket
import stat
from pathlib import Path

import pytest

from certs.pki import create_ca, write_ca
from controlplane.xds.resources import (
    CERTIFICATE_PROVIDER,
    INBOUND_LISTENER_TEMPLATE,
    NAMESPACE_METADATA,
)
from mesh.identity import SpiffeId
from meshctl.__main__ import main as meshctl
from meshctl.proxyless import (
    DATA,
    CertificateFolder,
    Enrollment,
    ProxylessError,
    bootstrap_config,
    enrollment,
    given_token,
    join,
    node_id,
    trust_domain,
)
from sidecar.identity import CertificateFiles

ENV = ("MESH_PKI_DIR", "MESH_OPERATOR_TOKEN_FILE", "MESH_BOOTSTRAP_CA", "MESH_CONTROL_PLANE",
       "MESH_JOIN_TOKEN", "MESH_JOIN_TOKEN_FILE", "MESH_ZONE", "DEMO_STATE_DIR", "MESH_CP_API")


@pytest.fixture(autouse=True)
def clean_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no local mesh's folders but those a test makes
    for name in ENV:
        monkeypatch.delenv(name, raising=False)


def args(*argv: str) -> argparse.Namespace:
    """The proxyless command line as meshctl parses it."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--api", default="127.0.0.1:15014")
    from meshctl import proxyless
    proxyless.register(parser.add_subparsers())
    return parser.parse_args(argv)


def test_the_bootstrap_names_the_control_plane_the_node_and_the_certificate_files() -> None:
    files = CertificateFolder(Path("out")).files
    config = bootstrap_config(service="orders", namespace="shop", zone="z1",
                              control_plane="127.0.10.1:15012", files=files,
                              node="shop/orders@proxyless-vm-0a1b2c")
    out = Path.cwd() / "out"
    certificates = {"ca_certificate_file": f"{out}/ca.pem",
                    "certificate_file": f"{out}/cert.pem",
                    "private_key_file": f"{out}/key.pem", "refresh_interval": "10s"}
    assert config == {
        "xds_servers": [{"server_uri": "127.0.10.1:15012",
                         "channel_creds": [{"type": "tls", "config": certificates}],
                         "server_features": ["xds_v3"]}],
        "node": {"id": "shop/orders@proxyless-vm-0a1b2c", "cluster": "orders",
                 "metadata": {"NAMESPACE": "shop"}, "locality": {"zone": "z1"}},
        "certificate_providers": {"mesh": {"plugin_name": "file_watcher",
                                           "config": certificates}},
        "server_listener_resource_name_template": "mesh/inbound/%s",
    }
    # The names the control plane's resources use, from their one home.
    assert CERTIFICATE_PROVIDER in config["certificate_providers"]
    assert config["server_listener_resource_name_template"] == INBOUND_LISTENER_TEMPLATE
    assert NAMESPACE_METADATA in config["node"]["metadata"]


def test_a_node_without_a_zone_has_no_locality() -> None:
    config = bootstrap_config(service="orders", namespace="default", zone="",
                              control_plane="cp:15012", files=CertificateFolder(Path("o")).files,
                              node="n")
    assert "locality" not in config["node"]


def test_the_node_id_names_the_workload_and_tells_two_bootstraps_on_a_host_apart() -> None:
    first = node_id("shop", "orders", "vm", random.Random(1))
    assert first == node_id("shop", "orders", "vm", random.Random(1))
    assert first != node_id("shop", "orders", "vm", random.Random(2))
    namespace_service, _, host = first.partition("@")
    assert namespace_service == "shop/orders" and host.startswith("proxyless-vm-")
    assert len(host.removeprefix("proxyless-vm-")) == 6 and ":" not in first  # no instance


def generation(folder: CertificateFolder, text: str) -> CertificateFiles:
    files = folder.new_generation()
    for path, mode in ((files.cert, 0o644), (files.key, 0o600), (files.ca, 0o644)):
        path.write_text(f"{text} {path.name}")
        path.chmod(mode)
    return files


def test_the_files_are_links_through_one_link_swapped_by_a_rename(tmp_path: Path) -> None:
    folder = CertificateFolder(tmp_path / "out")
    first = generation(folder, "first")
    folder.publish(first)
    for path in (folder.files.cert, folder.files.key, folder.files.ca):
        assert os.readlink(path) == f"{DATA}/{path.name}"  # never changes
        assert path.read_text() == f"first {path.name}"
    assert stat.S_IMODE(folder.files.key.stat().st_mode) == 0o600
    assert stat.S_IMODE(folder.files.cert.stat().st_mode) == 0o644
    assert os.readlink(tmp_path / "out" / DATA) == first.cert.parent.name
    assert first.cert.parent.name.startswith("..")

    second = generation(folder, "second")
    folder.publish(second)
    assert folder.files.cert.read_text() == "second cert.pem"
    assert folder.files.key.read_text() == "second key.pem"
    assert first.cert.exists()  # kept: a read may still be under way in it
    third = generation(folder, "third")
    folder.publish(third)
    assert not first.cert.parent.exists() and second.cert.exists()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        [DATA, second.cert.parent.name, third.cert.parent.name, "ca.pem", "cert.pem",
         "key.pem"])


def test_regular_files_left_in_the_folder_become_the_links(tmp_path: Path) -> None:
    (tmp_path / "cert.pem").write_text("old")
    folder = CertificateFolder(tmp_path)
    folder.publish(generation(folder, "new"))
    assert folder.files.cert.is_symlink() and folder.files.cert.read_text() == "new cert.pem"


def test_the_defaults_follow_the_api_and_a_local_mesh(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    ca = tmp_path / ".mesh" / "demo" / "pki" / "ca.crt"
    ca.parent.mkdir(parents=True)
    ca.write_text("")
    wanted = enrollment(args("--api", "127.0.10.1:15014", "proxyless", "orders"))
    assert wanted == Enrollment(service="orders", namespace="default", zone="",
                                control_plane=("127.0.10.1", 15012),
                                bootstrap_ca=Path(".mesh/demo/pki/ca.crt"),
                                out=Path(".mesh/proxyless/default/orders"))
    monkeypatch.setenv("MESH_CONTROL_PLANE", "127.0.0.1:25012")
    wanted = enrollment(args("proxyless", "orders", "--namespace", "shop", "--zone", "z2",
                             "--out", "x", "--api", "127.0.10.1:15014"))
    assert (wanted.control_plane, wanted.namespace, wanted.zone, wanted.out) == \
        (("127.0.0.1", 25012), "shop", "z2", Path("x"))
    # A local mesh's CA is not taken for a control plane elsewhere.
    monkeypatch.delenv("MESH_CONTROL_PLANE")
    with pytest.raises(ProxylessError, match=re.escape(
            "no mesh CA to verify the control plane at 10.1.2.3:15012 with: pass --bootstrap-ca")):
        enrollment(args("--api", "10.1.2.3:15014", "proxyless", "orders"))


def test_no_mesh_ca_is_an_error_that_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    assert meshctl(["--api", "10.1.2.3:15014", "proxyless", "orders"]) == 1
    assert capsys.readouterr().err == (
        "meshctl proxyless: no mesh CA to verify the control plane at 10.1.2.3:15012 with: "
        "pass --bootstrap-ca FILE (the mesh CA's ca.crt)\n")


def test_the_trust_domain_is_read_from_the_mesh_ca(tmp_path: Path) -> None:
    write_ca(create_ca(trust_domain="example.org"), tmp_path)
    assert trust_domain(tmp_path / "ca.crt") == "example.org"
    with pytest.raises(ProxylessError, match=r"--bootstrap-ca .*missing.crt: No such file"):
        trust_domain(tmp_path / "missing.crt")
    (tmp_path / "bad.crt").write_text("not a certificate")
    with pytest.raises(ProxylessError, match="not a mesh CA certificate"):
        trust_domain(tmp_path / "bad.crt")


def test_a_given_token_comes_from_the_file_else_the_environment(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert given_token(None) is None  # then the operator API mints one
    monkeypatch.setenv("MESH_JOIN_TOKEN", "from-env")
    assert given_token(None) == "from-env"
    (tmp_path / "token").write_text("from-file\n")
    assert given_token(tmp_path / "token") == "from-file"
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ProxylessError, match="empty"):
        given_token(tmp_path / "empty")
    with pytest.raises(ProxylessError, match="No such file"):
        given_token(tmp_path / "missing")


async def test_an_unreachable_control_plane_ends_the_attempt_and_leaves_nothing(
        tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    write_ca(create_ca(), tmp_path / "pki")
    wanted = Enrollment(service="orders", namespace="default", zone="",
                        control_plane=("127.0.0.1", port), bootstrap_ca=tmp_path / "pki/ca.crt",
                        out=tmp_path / "out")
    folder = CertificateFolder(wanted.out)
    identity = SpiffeId(trust_domain="cluster.local", namespace="default", service="orders")
    with pytest.raises(ProxylessError, match=f"control plane 127.0.0.1:{port} unreachable "
                                             f"for 1s"):
        await join(wanted, folder, "token", identity, reach_within=0.6)
    assert list(wanted.out.iterdir()) == []

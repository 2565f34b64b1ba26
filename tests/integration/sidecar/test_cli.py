"""``python -m sidecar``: every flag documented and readable from the environment; bad input
refused at start with a message that names what was wrong and where."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.integration.sidecar.conftest import (
    INBOUND,
    ROOT,
    W1_HOST,
    Mesh,
    SidecarProcess,
    run_tool,
    stopping,
)

pytestmark = [pytest.mark.asyncio(loop_scope="package"), pytest.mark.interop,
              pytest.mark.timeout(60)]

ENV_HOST = "127.0.20.30"


@dataclass(frozen=True, slots=True)
class Done:
    returncode: int
    stdout: str
    stderr: str


async def sidecar_cli(*args: str, env: dict[str, str] | None = None) -> Done:
    """Run ``python -m sidecar ARGS`` to its end (these all exit at once)."""
    return Done(*await run_tool(sys.executable, "-m", "sidecar", *args,
                                env={**os.environ, **(env or {})}))


async def test_help_documents_every_flag_with_its_environment_variable() -> None:
    done = await sidecar_cli("--help")

    flags = re.findall(r"^  (--[a-z-]+)", done.stdout, re.MULTILINE)
    assert done.returncode == 0
    assert len(flags) >= 19, done.stdout
    for flag in flags:
        # argparse wraps help text; the flag's entry runs until the next flag.
        entry = done.stdout.split(f"  {flag}", 1)[1].split("\n  --", 1)[0]
        wanted = "MESH_" + flag[2:].upper().replace("-", "_")
        assert f"[{wanted}" in " ".join(entry.split()), f"{flag}: no [{wanted}] in {entry!r}"


@pytest.mark.parametrize(("config", "message"), [
    ({"clusters": [{"name": "x", "lb_policy": "FASTEST"}]},
     "Invalid enum value FASTEST for enum type mesh.v1.Cluster.LbPolicy"),
    ({"routes": [{"name": "r", "virtual_hosts": [
        {"name": "v", "domains": ["v"], "routes": [{"route": {"cluster": "nope"}}]}]}]},
     "route v/0: unknown cluster 'nope'"),
    ({"endpoints": {"orders": [{"address": "127.0.0.1", "prot": 1}]}},
     'endpoints.orders: want a list of {address, port, weight} entries: Message type '
     '"mesh.v1.Endpoint" has no field named "prot"'),
    (["clusters"], "want a mapping of clusters, endpoints, routes and authorization at the "
                   "top, got list"),
])
async def test_a_bad_static_configuration_is_refused_naming_the_file_and_the_field(
        tmp_path: Path, mesh: Mesh, config: object, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))

    done = await sidecar_cli("--service", "x", "--static-config", str(path),
                       "--cert", str(mesh.pki.cert("client")),
                       "--key", str(mesh.pki.key("client")), "--ca", str(mesh.pki.ca_cert),
                       "--outbound", f"{ENV_HOST}:15001", "--inbound", f"{ENV_HOST}:15006",
                       "--admin", f"{ENV_HOST}:15000")

    assert done.returncode == 2
    assert done.stderr.startswith(f"sidecar: {path}: ")
    assert message in done.stderr


async def test_a_missing_static_configuration_is_named(tmp_path: Path, mesh: Mesh) -> None:
    done = await sidecar_cli("--service", "x", "--static-config", str(tmp_path / "none.yaml"),
                       "--cert", str(mesh.pki.cert("client")),
                       "--key", str(mesh.pki.key("client")), "--ca", str(mesh.pki.ca_cert))

    assert done.returncode == 2
    assert done.stderr == (f"sidecar: {tmp_path / 'none.yaml'}: cannot read the static "
                           f"configuration: No such file or directory\n")


async def test_static_mode_without_certificates_says_what_is_missing() -> None:
    done = await sidecar_cli("--service", "x", "--admin", f"{ENV_HOST}:15000")

    assert done.returncode == 2
    assert done.stderr == "sidecar: without a control plane, --cert, --key and --ca are " \
                          "needed\n"


async def test_a_bad_environment_value_is_named() -> None:
    done = await sidecar_cli("--service", "x", env={"MESH_APP_PROTOCOL": "h3"})

    assert done.returncode == 2
    assert "MESH_APP_PROTOCOL: want h2c or http1, got 'h3'" in done.stderr


def _spawn_from_environment(env: dict[str, str], log: Path) -> SidecarProcess:
    with log.open("ab") as out:
        process = subprocess.Popen([sys.executable, "-m", "sidecar"], cwd=ROOT, stdout=out,
                                   stderr=subprocess.STDOUT, env={**os.environ, **env})
    return SidecarProcess(name="from-env", host=ENV_HOST, process=process, log=log)


async def test_a_sidecar_configured_only_by_environment_serves(mesh: Mesh,
                                                                tmp_path: Path) -> None:
    config = tmp_path / "env.yaml"
    config.write_text(yaml.safe_dump(
        {"endpoints": {"web": [{"address": W1_HOST, "port": INBOUND}]}}))
    env = {"MESH_SERVICE": "client", "MESH_OUTBOUND": f"{ENV_HOST}:15001",
           "MESH_INBOUND": f"{ENV_HOST}:15006", "MESH_ADMIN": f"{ENV_HOST}:15000",
           "MESH_STATIC_CONFIG": str(config), "MESH_CERT": str(mesh.pki.cert("client")),
           "MESH_KEY": str(mesh.pki.key("client")), "MESH_CA": str(mesh.pki.ca_cert)}

    with stopping([_spawn_from_environment(env, tmp_path / "sidecar.log")]) as (sidecar,):
        await sidecar.wait_ready()
        code, out, err = await run_tool("curl", "-sS", "-H", "Host: web", sidecar.url("/"))

    assert (code, out) == (0, "web\n"), err

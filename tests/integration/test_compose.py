"""The compose demo on a real Docker engine: up, traffic through the sidecars, Prometheus up on
every target, credentials only where they belong, a control-plane replica and an etcd member
killed with orders still placed and every pod still registered, down — and the host's
networking exactly as it was before.

``scripts/compose-up --detach`` starts a private dockerd, builds the images FROM the local
debootstrap base (cached in /var/lib/asyncmesh-docker after the first run) and starts the shop;
``scripts/compose-down`` stops it all and restores the host. Needs root and a Debian-like
machine where docker.io, docker-compose, debootstrap and iptables are installed or can be
(apt-get): CI is one. Elsewhere the test is skipped, saying why.

Published ports listen on 127.0.77.1, so a person's demo (or anything else on 127.0.0.1)
is never in the way.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
PUBLISH = "127.0.77.1"
SPIFFE_ID = "spiffe://cluster.local/ns/shop/sa/{}"
STATE = Path(os.environ.get("MESH_DOCKER_STATE", "/var/lib/asyncmesh-docker"))
UP_TIMEOUT = 900.0  # seconds: a cold start (debootstrap, pip, apt) takes a few minutes
BACKENDS = ["frontend", "orders", "inventory-1", "inventory-2", "inventory-3",
            "payments-1", "payments-2", "payments-3"]
PODS = [*BACKENDS, "loadgen"]  # each: X-pod, X-sidecar and X (loadgen's X: the load generator)
REPLICAS = ["controlplane", "controlplane-2", "controlplane-3"]  # sharing etcd-1..3
ETCD = ["etcd-1", "etcd-2", "etcd-3"]
LEASE_TTL = 10.0  # seconds: the control plane's default; a pod unrenewed for longer is gone
TOOLS = ["dockerd", "docker-compose", "debootstrap", "iptables"]
DOCKER = "/usr/bin/docker" if os.access("/usr/bin/docker", os.X_OK) else "docker"  # as engine.sh


def why_not() -> str | None:
    """Why the compose demo cannot run here, or None when it can."""
    if not sys.platform.startswith("linux"):
        return "Docker engine tests run on Linux only"
    if os.geteuid() != 0:
        return "needs root: it starts a Docker engine and changes iptables"
    path = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
    missing = [t for t in TOOLS if shutil.which(t, path=path) is None]
    if missing and shutil.which("apt-get") is None:
        return f"needs {', '.join(missing)} (or apt-get to install them)"
    return None


pytestmark = [
    pytest.mark.skipif(why_not() is not None, reason=why_not() or ""),
    pytest.mark.timeout(UP_TIMEOUT + 300),
]


# -- the host's networking, written down --------------------------------------------------------

SEARCH = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"  # root's tools, whatever PATH says
READERS = ["iptables-save", "ip6tables-save", "nft"]  # what reads the firewall


def _run(*command: str) -> str:
    try:
        return subprocess.run([shutil.which(command[0], path=SEARCH) or command[0],
                               *command[1:]], capture_output=True, text=True, timeout=30).stdout
    except FileNotFoundError:
        return f"({command[0]} not installed)\n"


def engine_packages() -> None:
    """Install what compose-up needs when missing (deploy/engine.sh's ``engine_packages``:
    docker.io, docker-compose, iptables, debootstrap) before the host is first written down.

    The host as found must be read with the tools that read it after. Without iptables the
    firewall cannot be read at all (it would look empty, whatever the kernel holds), and
    compose-up installs iptables, so a "before" taken first would never equal the "after".
    scripts/test has installed them already; this is for pytest run by itself.
    """
    done = subprocess.run(["bash", "-c", "source deploy/engine.sh && engine_packages"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"installing the engine's packages failed:\n{done.stderr}"


_COUNTERS = re.compile(r" ?\[\d+:\d+\]|counter packets \d+ bytes \d+")


def host_networking() -> dict[str, list[str]]:
    """Rules, links, addresses, routes, forwarding and netns mounts, normalized for comparison,
    and the tools that read the firewall: two snapshots compare only if read the same way."""
    readers = {tool: shutil.which(tool, path=SEARCH) for tool in READERS}
    assert readers["iptables-save"] and readers["ip6tables-save"], \
        f"the firewall cannot be written down without iptables: {readers}"

    def lines(text: str) -> list[str]:
        return [_COUNTERS.sub("", line).rstrip() for line in text.splitlines()
                if line.strip() and not line.startswith("#")]

    forwarding = sorted(f"{p}={p.read_text().strip()}" for p in
                        [Path("/proc/sys/net/ipv4/ip_forward"),
                         *Path("/proc/sys/net/ipv4/conf").glob("*/forwarding"),
                         *Path("/proc/sys/net/ipv6/conf").glob("*/forwarding")])
    links = [" ".join(line.split()[1:5]) for line in _run("ip", "-o", "link", "show").splitlines()]
    addresses = [" ".join(line.split()[1:4]) for line in
                 _run("ip", "-o", "addr", "show").splitlines()]
    mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()
              if "docker" in line or "netns" in line]
    return {
        "read with": [f"{tool}: {path or 'not installed'}" for tool, path in readers.items()],
        "iptables": lines(_run("iptables-save")),
        "ip6tables": lines(_run("ip6tables-save")),
        "nft": lines(_run("nft", "list", "ruleset")) if readers["nft"] else [],
        "links": links,
        "addresses": addresses,
        "routes": lines(_run("ip", "-4", "route", "show", "table", "all")
                        + _run("ip", "-6", "route", "show", "table", "all")),
        "forwarding": forwarding,
        "mounts": mounts,
    }


def differences(before: dict[str, list[str]], after: dict[str, list[str]]) -> str:
    out = []
    for key in before:
        if before[key] != after[key]:
            out += [f"## {key}", *difflib.unified_diff(before[key], after[key], "before",
                                                       "after", lineterm="")]
    return "\n".join(out)


# -- talking to the demo --------------------------------------------------------------------------

ENGINE = {"DOCKER_HOST": f"unix://{STATE}/run/docker.sock", "COMPOSE_PROJECT_NAME": "asyncmesh"}


def compose(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker-compose", "--ansi", "never", *args], cwd=ROOT,
                          env={**os.environ, **ENGINE}, capture_output=True, text=True,
                          timeout=timeout)


def docker(*args: str, stdin: str | None = None) -> str:
    """What ``docker ARGS`` printed (the Go client: much quicker to start than compose's)."""
    done = subprocess.run([DOCKER, *args], env={**os.environ, **ENGINE}, input=stdin,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"docker {' '.join(args)}: {done.stderr}"
    return done.stdout


def container(service: str) -> str:
    """The container of a compose service (docker-compose 1's naming)."""
    return f"asyncmesh_{service}_1"


def recent_warnings(seconds: float) -> str:
    """The warnings and errors every container logged in the last ``seconds``: what a failed
    step shows, since the containers are gone once the test ends."""
    found = []
    for name in docker("ps", "--format", "{{.Names}}").split():
        done = subprocess.run([DOCKER, "logs", "--since", f"{seconds:.0f}s", name],
                              env={**os.environ, **ENGINE}, capture_output=True, text=True,
                              timeout=60)
        found += [f"{name}: {line}" for line in (done.stdout + done.stderr).splitlines()
                  if " WARNING " in line or " ERROR " in line]
    return "\n".join(found[-80:]) or "(no warning or error logged)"


def get_json(url: str, token: str | None = None) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers),
                                timeout=10) as response:
        return json.loads(response.read())


def prometheus(path: str, **query: str) -> Any:
    url = f"http://{PUBLISH}:9090{path}"
    if query:
        url += "?" + urllib.parse.urlencode(query)
    body = get_json(url)
    assert body["status"] == "success", body
    return body["data"]


def eventually(check: Any, timeout: float, what: str) -> Any:
    """``check()``'s first truthy result within ``timeout`` seconds, else fail naming ``what``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except (OSError, ValueError, KeyError) as error:
            last = error
        time.sleep(1.0)
    pytest.fail(f"{what}: not within {timeout:.0f} s (last: {last!r})")


def in_pod(pod: str, code: str) -> str:
    """Run Python ``code`` in the app container of ``pod``; what it printed. The code goes in on
    stdin, never on a command line: some of it carries a secret."""
    return docker("exec", "-i", container(pod), "python", "-", stdin=code).strip()


def read_in(service: str, path: str) -> str:
    """The file ``path`` in the container of ``service``."""
    return docker("exec", container(service), "cat", path).strip()


# Through the pod's own sidecar to the frontend: the status, and the body's first line.
GET_PRODUCTS = """
import urllib.error, urllib.request
request = urllib.request.Request("http://127.0.0.1:15001/products", headers={"Host": "frontend"})
try:
    with urllib.request.urlopen(request, timeout=10) as response:
        print(response.status, response.read().decode().splitlines()[0][:80])
except urllib.error.HTTPError as error:
    print(error.code, error.read().decode().splitlines()[0][:80])
"""


# From another pod, straight to the frontend app's port, bypassing its sidecar.
DIAL_FRONTEND_APP = """
import socket
try:
    socket.create_connection(("frontend", 8080), timeout=5).close()
    print("connected")
except ConnectionRefusedError:
    print("refused")
"""


# From an app container, the operator API without its token: what it answers.
OPERATOR_API_WITHOUT_TOKEN = """
import json, urllib.error, urllib.request
answers = {}
for method, path, body in [("GET", "/healthz", None),
                           ("POST", "/tokens", b'{"service": "payments", "namespace": "shop"}'),
                           ("POST", "/policy", b"clusters: []")]:
    request = urllib.request.Request("http://controlplane:15014" + path, data=body,
                                     method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            answers[path] = [response.status, response.read().decode().strip()]
    except urllib.error.HTTPError as error:
        answers[path] = [error.code, sorted(json.loads(error.read()))]
print(json.dumps(answers))
"""


# From an app container, the first-certificate call a sidecar makes (sidecar/identity.py's
# obtain), with the join token in ARGS: the status it ends with. ARGS is put in front.
SIGN_WITH_JOIN_TOKEN = """
import asyncio, tempfile
from pathlib import Path
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from certs.pki import make_csr
from mesh.grpc import Channel, GrpcError
from mesh.identity import parse
from mesh.proto.registry_pb2 import SignCertificateRequest, SignCertificateResponse
from mesh.tls import bootstrap_context

async def main():
    ca = Path(tempfile.mkdtemp()) / "ca.crt"
    ca.write_text(ARGS["ca"])
    csr = make_csr(ec.generate_private_key(ec.SECP256R1()), parse(ARGS["identity"]))
    channel = Channel("controlplane", 15012, ssl=bootstrap_context(ca),
                      authority="controlplane")
    sign = channel.unary_unary("/mesh.v1.Identity/SignCertificate",
                               SignCertificateResponse.FromString)
    try:
        await sign(SignCertificateRequest(csr_pem=csr.public_bytes(serialization.Encoding.PEM),
                                          join_token=ARGS["token"]), timeout=10.0)
        print("OK: a certificate was issued")
    except GrpcError as error:
        print(f"{error.code.name}: {error.message}")
    finally:
        await channel.close()

asyncio.run(main())
"""


def ports_free() -> None:
    for port in (9090, 15000, 15014, 15020):
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as docker-proxy binds
            try:
                s.bind((PUBLISH, port))
            except OSError as error:
                pytest.fail(f"{PUBLISH}:{port} is taken ({error}); the test publishes there")


EVERY_POD = {"frontend": 1, "orders": 1, "inventory": 3, "payments": 3, "loadgen": 1}


def registered(operator_token: str) -> dict[str, int]:
    """The healthy instances of each shop service, as the first replica's operator API says."""
    services = {row["service"]: row for row in
                get_json(f"http://{PUBLISH}:15014/services", operator_token)}
    return {s: services[s]["healthy"] for s in EVERY_POD if s in services}


def place_orders(*, rate: int, count: int) -> dict[str, Any]:
    """Orders placed from the loadgen pod, through its sidecar: the load generator's JSON."""
    load = compose("exec", "-T", "loadgen", "python", "-m", "demo_services.loadgen",
                   "http://127.0.0.1:15001/orders", "--authority", "frontend",
                   "--body", '{"sku": "tea", "quantity": 1}', "--rate", str(rate),
                   "--count", str(count), "--timeout", "5", "--json", timeout=120)
    assert load.returncode == 0, load.stderr
    result: dict[str, Any] = json.loads(load.stdout)
    assert result["sent"] == count
    return result


# -- the test ---------------------------------------------------------------------------------

def test_compose_demo_runs_and_leaves_the_host_as_found() -> None:
    ports_free()
    engine_packages()  # first: the host as found is read with the tools that read it after
    before = host_networking()
    env = {**os.environ, "MESH_PUBLISH": PUBLISH, "MESH_LOAD_RATE": "5"}
    started = time.monotonic()
    try:
        up = subprocess.run([str(ROOT / "scripts/compose-up"), "--detach"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=UP_TIMEOUT)
        up_seconds = time.monotonic() - started
        assert up.returncode == 0, f"compose-up failed:\n{up.stdout}\n{up.stderr}"
        print(f"\ncompose-up: {up_seconds:.0f} s\n{up.stderr}")

        # Containers cannot leave this machine: the rule is in place while the engine runs.
        egress = _run("ip", "route", "show", "default").split()[4]
        assert f"-A DOCKER-USER -o {egress} -j DROP" in _run("iptables", "-S", "DOCKER-USER")

        # The operator token: in the control plane's pki volume, and only there (and in the
        # one-shot mesh-init, long gone). Every pod's own join token: in its sidecar's volume.
        operator_token = read_in("controlplane", "/mesh/pki/operator.token")
        join_tokens = {pod: read_in(f"{pod}-sidecar", "/mesh/bootstrap/token")
                       for pod in PODS}
        assert all(len(t) >= 32 for t in [operator_token, *join_tokens.values()])
        assert len(set(join_tokens.values())) == len(PODS)

        # Every pod registered with the control plane (its API is published for meshctl).
        assert registered(operator_token) == EVERY_POD
        # Each replica announces itself by its own name (they all listen on 0.0.0.0).
        replicas = get_json(f"http://{PUBLISH}:15014/status?streams=0", operator_token)
        assert sorted(r["name"] for r in replicas["replicas"]) == \
            sorted(f"{r}:15012" for r in REPLICAS)

        # Traffic through the sidecars: orders placed from the loadgen pod, through its sidecar,
        # the frontend's, orders', and on to the inventory and payments replicas.
        result = place_orders(rate=10, count=40)
        # Nearly all succeed (a busy machine may time out a few; a broken hop fails them all),
        # and each hop's sidecar counted at least as many calls in (the running loadgen's too).
        placed = result["outcomes"].get("201", 0)
        assert placed >= 34, result["outcomes"]
        received = {name: (c or {}).get("requests", 0) for name, c in result["backends"].items()}
        for service in ("frontend", "orders", "inventory", "payments"):
            assert sum(n for name, n in received.items() if name.startswith(service)) >= placed, \
                (service, received)

        # The sidecars authenticate each other: the frontend takes calls from the loadgen's
        # identity only, so the orders pod is refused by the frontend's sidecar (403) ...
        assert in_pod("loadgen", GET_PRODUCTS).startswith('200 {"products": [')
        assert in_pod("orders", GET_PRODUCTS) == \
            "403 cluster.local/ns/shop/sa/orders is not allowed to call /products"
        # ... and an app is not on the network at all: only its sidecar reaches it.
        assert in_pod("loadgen", DIAL_FRONTEND_APP) == "refused"

        # Prometheus scrapes every sidecar and the control plane, and sees every backend serve.
        def targets_up() -> dict[str, str] | None:
            health = {t["labels"]["instance"]: t["health"]
                      for t in prometheus("/api/v1/targets")["activeTargets"]}
            return health if set(health.values()) == {"up"} else None

        health = eventually(targets_up, 60, "every Prometheus target up")
        assert sorted(health) == sorted([*PODS, *(f"{r}:15014" for r in REPLICAS),
                                         *(f"{m}:2379" for m in ETCD)])

        def every_backend_served() -> dict[str, float] | None:
            rows = prometheus("/api/v1/query", query='sum by (instance) '
                              '(mesh_sidecar_requests_total{direction="inbound",code="2xx"})')
            served = {r["metric"]["instance"]: float(r["value"][1]) for r in rows["result"]}
            return served if all(served.get(b, 0) > 0 for b in BACKENDS) else None

        eventually(every_backend_served, 60, "inbound 2xx in Prometheus for every backend pod")

        # The dashboard (published): every service a node, and the golden metrics of the calls
        # an order makes, asked of Prometheus. It holds the operator token alone, not the pki.
        def dashboard_shows_the_shop() -> dict[str, Any] | None:
            state: dict[str, Any] = get_json(f"http://{PUBLISH}:15020/api/state")
            edges = {(e["source"], e["destination"]): e["rps"]
                     for e in state.get("golden", {}).get("15", {}).get("edges", [])}
            loaded = [("loadgen", "frontend"), ("frontend", "orders"), ("orders", "inventory"),
                      ("orders", "payments")]
            shown = {s["service"] for s in state.get("services", [])}
            if set(EVERY_POD) <= shown and all((edges.get(e) or 0) > 0 for e in loaded):
                return state
            return None

        state = eventually(dashboard_shows_the_shop, 60, "the shop's edges on the dashboard")
        assert state["source"] == "http://prometheus:9090" and state["errors"] == []
        # every discovery stream, at whichever replica: every pod's sidecar and the auditor
        assert len(state["policy"]["streams"]) == len(PODS) + 1, state["policy"]["streams"]
        mounts = docker("exec", container("dashboard"), "cat", "/proc/self/mounts")
        assert " /mesh/pki " not in mounts and " /mesh/dashboard " in mounts

        # -- credentials: who holds which, and what a pod can do without them --

        # A pod's sidecar holds the CA certificate and its own join token, nothing else; its
        # app holds neither; no container of a pod has the pki volume.
        for pod in PODS:
            sidecar, app = container(f"{pod}-sidecar"), container(pod)
            assert docker("exec", sidecar, "ls", "-A", "/mesh/bootstrap").split() == \
                ["ca.crt", "token"], pod
            assert " /mesh/pki " not in docker("exec", sidecar, "cat", "/proc/self/mounts"), pod
            mounts = docker("exec", app, "cat", "/proc/self/mounts")
            assert " /mesh/bootstrap " not in mounts and " /mesh/pki " not in mounts, pod
            assert docker("exec", app, "ls", "-A", "/mesh/bootstrap") == "", pod

        # An app that calls the operator API without the token changes nothing: no join token
        # for itself, no policy of its own.
        policy_version = get_json(f"http://{PUBLISH}:15014/status?streams=0",
                                  operator_token)["policy_version"]
        answers = json.loads(in_pod("orders", OPERATOR_API_WITHOUT_TOKEN))
        assert answers == {"/healthz": [200, "ok"], "/tokens": [401, ["error"]],
                           "/policy": [401, ["error"]]}
        assert get_json(f"http://{PUBLISH}:15014/status?streams=0",
                        operator_token)["policy_version"] == policy_version

        # A join token works once: the frontend's, already redeemed by its sidecar, is refused
        # when the orders app presents it.
        args = {"token": join_tokens["frontend"], "identity": SPIFFE_ID.format("frontend"),
                "ca": read_in("frontend-sidecar", "/mesh/bootstrap/ca.crt")}
        signed = in_pod("orders", f"ARGS = {json.dumps(args)}\n{SIGN_WITH_JOIN_TOKEN}")
        assert signed.startswith("PERMISSION_DENIED: "), signed

        # No secret on any command line: every process of every container, read from /proc.
        secrets = {"operator token": operator_token,
                   **{f"{pod}'s join token": token for pod, token in join_tokens.items()}}
        containers = docker("ps", "--format", "{{.Names}}").split()
        assert len(containers) >= 3 * len(BACKENDS), containers
        for name in containers:
            cmdlines = docker("exec", name, "sh", "-c",
                              "cat /proc/[0-9]*/cmdline 2>/dev/null || true")
            assert any(p in cmdlines for p in ("sleep", "python", "prometheus", "etcd"))
            shown = [what for what, secret in secrets.items() if secret in cmdlines]
            assert not shown, f"{name}: {', '.join(shown)} on a command line"

        # -- failover: a control-plane replica and an etcd member killed --

        # Every sidecar was given the three replicas; the replicas share the etcd cluster.
        for pod in PODS:
            environ = docker("exec", container(f"{pod}-sidecar"), "sh", "-c",
                             "tr '\\0' '\\n' </proc/1/environ")
            assert "MESH_CONTROL_PLANE=" + ",".join(f"{r}:15012" for r in REPLICAS) in \
                environ.splitlines(), pod
        # etcd-1 is the member every replica asks first: they move on to the next.
        killed = time.monotonic()
        docker("kill", container("controlplane-2"), container("etcd-1"))
        # Orders for longer than a lease: the data plane never needed the control plane, and
        # the sidecars that used controlplane-2 renew their leases at another replica.
        result = place_orders(rate=5, count=75)
        assert result["outcomes"].get("201", 0) >= 68, \
            f"{result['outcomes']}\n{recent_warnings(time.monotonic() - killed + 5)}"
        assert time.monotonic() - killed > LEASE_TTL
        assert registered(operator_token) == EVERY_POD
        print(f"controlplane-2 and etcd-1 killed: {result['outcomes']} of 75 orders; every pod "
              f"still registered {time.monotonic() - killed:.0f} s later")
    finally:
        down = subprocess.run([str(ROOT / "scripts/compose-down")], cwd=ROOT,
                              capture_output=True, text=True, timeout=180)
        print(f"compose-down: exit {down.returncode}; "
              f"whole test {time.monotonic() - started:.0f} s")
    assert down.returncode == 0, f"compose-down failed:\n{down.stdout}\n{down.stderr}"
    assert compose("ps", "-q").returncode != 0  # the engine is gone
    after = host_networking()
    assert after == before, "the host's networking changed:\n" + differences(before, after)

"""The compose demo on a real Docker engine: up, traffic through the sidecars, Prometheus up on
every target, down — and the host's networking exactly as it was before.

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
STATE = Path(os.environ.get("MESH_DOCKER_STATE", "/var/lib/asyncmesh-docker"))
UP_TIMEOUT = 900.0  # seconds: a cold start (debootstrap, pip, apt) takes a few minutes
BACKENDS = ["frontend", "orders", "inventory-1", "inventory-2", "inventory-3",
            "payments-1", "payments-2", "payments-3"]
SIDECARS = [*BACKENDS, "loadgen"]
TOOLS = ["dockerd", "docker-compose", "debootstrap", "iptables"]


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

def _run(*command: str) -> str:
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=30).stdout
    except FileNotFoundError:
        return f"({command[0]} not installed)\n"


_COUNTERS = re.compile(r" ?\[\d+:\d+\]|counter packets \d+ bytes \d+")


def host_networking() -> dict[str, list[str]]:
    """Rules, links, addresses, routes, forwarding and netns mounts, normalized for comparison."""
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
        "iptables": lines(_run("iptables-save")),
        "ip6tables": lines(_run("ip6tables-save")),
        "nft": lines(_run("nft", "list", "ruleset")) if shutil.which("nft") else [],
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

def compose(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DOCKER_HOST": f"unix://{STATE}/run/docker.sock",
           "COMPOSE_PROJECT_NAME": "asyncmesh"}
    return subprocess.run(["docker-compose", "--ansi", "never", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
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
    """Run Python ``code`` in the app container of ``pod``; what it printed."""
    done = compose("exec", "-T", pod, "python", "-c", code)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


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


def ports_free() -> None:
    for port in (9090, 15000, 15014):
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as docker-proxy binds
            try:
                s.bind((PUBLISH, port))
            except OSError as error:
                pytest.fail(f"{PUBLISH}:{port} is taken ({error}); the test publishes there")


# -- the test ---------------------------------------------------------------------------------

def test_compose_demo_runs_and_leaves_the_host_as_found() -> None:
    ports_free()
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

        # Every pod registered with the control plane (its API is published for meshctl).
        services = {row["service"]: row for row in
                    get_json(f"http://{PUBLISH}:15014/services")}
        assert {s: services[s]["healthy"] for s in ("frontend", "orders", "inventory",
                                                    "payments", "loadgen")} == \
            {"frontend": 1, "orders": 1, "inventory": 3, "payments": 3, "loadgen": 1}

        # Traffic through the sidecars: orders placed from the loadgen pod, through its sidecar,
        # the frontend's, orders', and on to the inventory and payments replicas.
        load = compose("exec", "-T", "loadgen", "python", "-m", "demo_services.loadgen",
                       "http://127.0.0.1:15001/orders", "--authority", "frontend",
                       "--body", '{"sku": "tea", "quantity": 1}', "--rate", "10",
                       "--count", "40", "--timeout", "5", "--json", timeout=120)
        assert load.returncode == 0, load.stderr
        result = json.loads(load.stdout)
        assert result["sent"] == 40
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
        assert sorted(health) == sorted([*SIDECARS, "controlplane:15014"])

        def every_backend_served() -> dict[str, float] | None:
            rows = prometheus("/api/v1/query", query='sum by (instance) '
                              '(mesh_sidecar_requests_total{direction="inbound",code="2xx"})')
            served = {r["metric"]["instance"]: float(r["value"][1]) for r in rows["result"]}
            return served if all(served.get(b, 0) > 0 for b in BACKENDS) else None

        eventually(every_backend_served, 60, "inbound 2xx in Prometheus for every backend pod")
    finally:
        down = subprocess.run([str(ROOT / "scripts/compose-down")], cwd=ROOT,
                              capture_output=True, text=True, timeout=180)
        print(f"compose-down: exit {down.returncode}; "
              f"whole test {time.monotonic() - started:.0f} s")
    assert down.returncode == 0, f"compose-down failed:\n{down.stdout}\n{down.stderr}"
    assert compose("ps", "-q").returncode != 0  # the engine is gone
    after = host_networking()
    assert after == before, "the host's networking changed:\n" + differences(before, after)

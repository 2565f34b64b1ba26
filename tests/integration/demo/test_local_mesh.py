"""The local mesh end to end: `meshctl demo up`, steady load, a crashed replica, a brownout.

One mesh for the module (``meshctl demo up --detach`` on 127.0.55.x, state in a temporary
folder), driven the way a person drives it: ``meshctl fault`` for the knobs, the load generator
for traffic, the sidecars' admin endpoints and Prometheus' API to see what happened. The tests
run in file order, each leaving the mesh as the next one expects: the proxyless auditor
stopped after the first (its calls would count in the exact totals the later ones assert), all
payments replicas up until the crash test, one down after it.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import stat
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from demo_services import prometheus
from demo_services.loadgen import HttpClient, LoadPlan, LoadResult, run_load
from demo_services.processes import Record, alive, stop
from tests.integration.demo.sockets import listening

ROOT = Path(__file__).resolve().parents[3]
NET = "127.0.55"
ORDER = b'{"sku": "tea", "quantity": 1}'
RATE = 20.0  # orders per second: steady, and light enough for a shared 2-core machine


class Mesh:
    """The running mesh, as its state file describes it."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.state: dict[str, Any] = json.loads((state_dir / "state.json").read_text())
        self.instances = {i["name"]: i for i in self.state["instances"]}

    def meshctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "DEMO_STATE_DIR": str(self.state_dir)}
        return subprocess.run([sys.executable, "-m", "meshctl", *args], env=env, cwd=ROOT,
                              capture_output=True, text=True, timeout=60)

    def get(self, address: str, path: str) -> Any:
        with urllib.request.urlopen(f"http://{address}{path}", timeout=5) as response:
            return json.loads(response.read())

    def endpoints(self, caller: str, cluster: str) -> dict[str, dict[str, Any]]:
        """The endpoints of ``cluster`` in the /clusters view of ``caller``'s sidecar."""
        view = self.get(self.instances[caller]["sidecar_admin"], "/clusters")
        return {e["address"]: e for e in view[cluster]["endpoints"]}

    def inbound(self, name: str) -> str:
        return f"{self.instances[name]['ip']}:15006"

    async def load(self, rate: float, duration: float) -> LoadResult:
        client = HttpClient(f"http://{self.instances['loadgen']['outbound']}/orders",
                            method="POST", body=ORDER,
                            headers={"host": "frontend", "content-type": "application/json"},
                            connections=16)
        backends = {n: i["sidecar_admin"] for n, i in self.instances.items()}
        return await run_load(client, LoadPlan(rate=rate, duration=duration),
                              "POST /orders", backends=backends)

    def received(self, result: LoadResult, service: str) -> int:
        return sum(c.inbound_total for n, c in result.backends.items()
                   if c is not None and self.instances[n]["service"] == service)

    @property
    def operator_token(self) -> str:
        return (self.state_dir / "pki" / "operator.token").read_text().strip()

    def status(self) -> dict[str, Any]:
        """The control plane's ``GET /status``, as the operator."""
        request = urllib.request.Request(f"http://{self.state['api']}/status",
                                         headers={"Authorization":
                                                  f"Bearer {self.operator_token}"})
        with urllib.request.urlopen(request, timeout=5) as response:
            data: dict[str, Any] = json.loads(response.read())
            return data

    def apply_policy(self, policy: dict[str, Any]) -> None:
        request = urllib.request.Request(f"http://{self.state['api']}/policy?source=test",
                                         data=yaml.safe_dump(policy).encode(), method="POST",
                                         headers={"Authorization":
                                                  f"Bearer {self.operator_token}"})
        with urllib.request.urlopen(request, timeout=5) as response:
            assert response.status == 200


def _down(state_dir: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "meshctl", "demo", "down", "--state-dir",
                           str(state_dir)], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=60)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    state_dir = tmp_path_factory.mktemp("demo") / "state"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    started = time.monotonic()
    try:
        up = subprocess.run([sys.executable, "-m", "meshctl", "demo", "up", "--detach",
                             "--net", NET, "--state-dir", str(state_dir),
                             "--load-duration", "0"],
                            env=env, cwd=ROOT, capture_output=True, text=True, timeout=90)
    except subprocess.TimeoutExpired:
        _down(state_dir, env)  # whatever it had started, by the PIDs in its state file
        raise
    if up.returncode != 0:
        _down(state_dir, env)
        pytest.fail(f"meshctl demo up failed:\n{up.stdout}{up.stderr}")
    print(f"\nthe mesh came up in {time.monotonic() - started:.1f} s")
    the_mesh = Mesh(state_dir)
    records = [Record.from_json(r) for r in the_mesh.state["processes"]]
    try:
        yield the_mesh
    finally:
        down = _down(state_dir, env)
        print(down.stdout)
        assert down.returncode == 0, down.stdout + down.stderr
        # Nothing left behind: no process, no listening socket, no state but the logs.
        assert [r.name for r in records if alive(r)] == []
        assert listening(NET) == []
        assert sorted(p.name for p in state_dir.iterdir()) == ["logs"]


def test_the_proxyless_auditor_streams_xds_and_takes_a_policy_change(mesh: Mesh) -> None:
    def auditor_route() -> dict[str, Any]:
        (stream,) = [s for s in mesh.status()["streams"] if s["service"] == "auditor"]
        assert stream["protocol"] == "xds.v3"
        route: dict[str, Any] = stream["types"]["RouteConfiguration"]
        return route

    shown = mesh.meshctl("--api", mesh.state["api"], "status")
    assert shown.returncode == 0, shown.stderr
    assert "(9 sidecars, 1 proxyless gRPC)" in shown.stdout
    rows = [line.split() for line in shown.stdout.splitlines()
            if line.startswith("shop/auditor@")]
    assert {row[1] for row in rows} == {"xds.v3"} and len(rows) == 4
    assert all(row[5] == "yes" for row in rows), shown.stdout  # every type in sync
    before = auditor_route()

    # A change to inventory's retries reaches its stream (the route it holds), ACKed.
    original = yaml.safe_load((ROOT / "demo_services/policy/shop.yaml").read_text())
    changed = yaml.safe_load((ROOT / "demo_services/policy/shop.yaml").read_text())
    (inventory,) = [c for c in changed["clusters"] if c["name"] == "inventory"]
    inventory["retry_policy"]["num_retries"] = 2
    mesh.apply_policy(changed)
    deadline = time.monotonic() + 10
    while (after := auditor_route())["acked"] in (before["acked"], None) or \
            after["acked"] != after["sent"]:
        assert time.monotonic() < deadline, f"the auditor never ACKed the change: {after}"
        time.sleep(0.1)
    mesh.apply_policy(original)

    # It calls every inventory replica itself (round robin, mTLS), a call a second.
    def answered() -> set[str]:
        log = (mesh.state_dir / "logs" / "app:auditor.log").read_text()
        return {line.split(": ")[2].split(" answered")[0] for line in log.splitlines()
                if " answered in " in line}
    deadline = time.monotonic() + 10
    while (replicas := answered()) != {"inventory-1", "inventory-2", "inventory-3"}:
        assert time.monotonic() < deadline, f"the auditor's calls were answered by {replicas}"
        time.sleep(0.5)
    auditor = next(Record.from_json(r) for r in mesh.state["processes"]
                   if r["name"] == "app:auditor")
    assert stop([auditor], grace=5) == []


def test_every_sidecar_is_a_prometheus_target_and_up(mesh: Mesh) -> None:
    if shutil.which("prometheus") is None:
        pytest.skip("Debian's prometheus is not installed (scripts/demo installs it as root)")
    address = mesh.state["prometheus"]
    sidecars = {i["sidecar_admin"] for i in mesh.instances.values()}
    deadline = time.monotonic() + 20
    while True:
        targets = prometheus.targets(address)
        health = {t["labels"]["instance"]: t["health"] for t in targets}
        if all(health.get(s) == "up" for s in sidecars) and \
                health.get(mesh.state["api"]) == "up":
            break
        assert time.monotonic() < deadline, f"targets not all up: {health}"
        time.sleep(0.5)
    jobs = {t["labels"]["job"] for t in targets}
    assert jobs == {"sidecar", "controlplane"}
    print(f"prometheus: {len(sidecars)} sidecar targets and the control plane, all up")


def test_no_secret_is_on_any_command_line_and_meshctl_finds_its_token(mesh: Mesh) -> None:
    """Join tokens reach the sidecars in their environment and the operator token stays in
    its file: neither shows in any process's argv (what `ps` shows every user)."""
    records = [Record.from_json(r) for r in mesh.state["processes"]]
    secrets = {mesh.operator_token}
    records = [r for r in records if alive(r)]  # (the auditor was stopped)
    for record in records:
        environ = Path(f"/proc/{record.pid}/environ").read_bytes().split(b"\0")
        secrets |= {v.split(b"=", 1)[1].decode() for v in environ
                    if v.startswith(b"MESH_JOIN_TOKEN=")}
    joining = [r for r in records if r.name.startswith(("sidecar:", "agent:"))]
    assert len(secrets) == 1 + len(joining)
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().decode(errors="replace")
        except OSError:
            continue  # a process that ended meanwhile
        assert not [s for s in secrets if s in argv], f"a secret in {cmdline}"
    assert stat.S_IMODE((mesh.state_dir / "pki" / "operator.token").stat().st_mode) == 0o600
    status = mesh.meshctl("--api", mesh.state["api"], "status")  # no credential flag
    assert status.returncode == 0, status.stderr
    assert "discovery streams" in status.stdout


async def test_steady_load_has_no_errors_and_reaches_every_replica(mesh: Mesh) -> None:
    result = await mesh.load(RATE, 20.0)
    r = result.recorder
    print(f"\nsteady: {r.count} orders, p50 {r.percentile(50) * 1000:.1f} ms, "
          f"p99 {r.percentile(99) * 1000:.1f} ms, outcomes {dict(r.outcomes)}")
    assert r.count == 400
    assert r.outcomes == {"201": 400}
    # Every order was one call to orders, one reservation and one charge: no retries needed.
    assert mesh.received(result, "orders") == 400
    assert mesh.received(result, "inventory") == 400
    assert mesh.received(result, "payments") == 400
    for name in ("inventory-1", "inventory-2", "inventory-3", "payments-1", "payments-2",
                 "payments-3"):
        counts = result.backends[name]
        assert counts is not None and counts.inbound_total > 0, f"{name} got no calls"


async def test_a_crashed_payments_replica_costs_no_order_and_is_ejected(mesh: Mesh) -> None:
    app = next(Record.from_json(r) for r in mesh.state["processes"]
               if r["name"] == "app:payments-2")
    load = asyncio.create_task(mesh.load(RATE, 10.0))
    await asyncio.sleep(2.0)
    crash = await asyncio.to_thread(mesh.meshctl, "fault", "payments", "--replica", "2",
                                    "--crash")
    assert crash.returncode == 0, crash.stderr
    assert "payments-2: crashing now" in crash.stdout
    result = await load
    r = result.recorder
    dead = mesh.endpoints("orders", "payments")[mesh.inbound("payments-2")]
    print(f"\ncrash: {r.count} orders, outcomes {dict(r.outcomes)}, payments-2 in orders' "
          f"/clusters: {dead}")
    assert not alive(app), "the crash knob did not end the process"
    assert r.outcomes == {"201": 200}, "a crashed replica cost orders"
    assert dead["ejected"] is True and dead["healthy"] is True  # registered, but not working
    others = [mesh.endpoints("orders", "payments")[mesh.inbound(n)]
              for n in ("payments-1", "payments-3")]
    assert [e["ejected"] for e in others] == [False, False]
    counts = result.backends["orders"]
    assert counts is not None and counts.retries["payments"] >= 1
    assert counts.ejections == {"payments": 1}


async def test_a_brownout_with_and_without_a_retry_budget(mesh: Mesh) -> None:
    policy = yaml.safe_load((ROOT / "demo_services/policy/shop.yaml").read_text())
    ratios = {}
    for budget in ("with", "without"):
        if budget == "without":
            inventory = next(c for c in policy["clusters"] if c["name"] == "inventory")
            inventory["retry_budget"] = {"disabled": True}
            mesh.apply_policy(policy)
            deadline = time.monotonic() + 10
            while mesh.get(mesh.instances["orders"]["sidecar_admin"], "/config_dump")[
                    "effective_cluster_settings"]["inventory"]["retry_budget"] is not None:
                assert time.monotonic() < deadline, "the sidecar never took the new policy"
                await asyncio.sleep(0.1)
        brownout = await asyncio.to_thread(
            mesh.meshctl, "fault", "inventory", "--brownout", "12", "--latency", "20ms",
            "--error-rate", "0.5")
        assert brownout.returncode == 0, brownout.stderr
        assert brownout.stdout.count("BROWNOUT") == 3
        result = await mesh.load(RATE, 10.0)
        await asyncio.to_thread(mesh.meshctl, "fault", "inventory", "--clear")
        sent = result.recorder.count
        ratios[budget] = mesh.received(result, "inventory") / sent
        orders = result.backends["orders"]
        assert orders is not None
        print(f"\nbrownout {budget} a retry budget: inventory received "
              f"{ratios[budget]:.2f}× the orders sent; errors "
              f"{result.recorder.error_rate:.0%}; retries {orders.retries['inventory']}, "
              f"refused {dict(orders.refused)}")
        if budget == "with":
            assert orders.refused["inventory/budget-exhausted"] > 0
    # 50 % failing, three retries: 1 + 0.5 + 0.25 + 0.125 = 1.875× unchecked. The budget
    # holds retries to 20 % of requests plus 3 per second (and what the 10 s window held).
    print(f"\ninventory load ratio: {ratios['with']:.2f}× with the budget, "
          f"{ratios['without']:.2f}× without")
    assert ratios["without"] > 1.6
    assert ratios["with"] < 1.55
    assert ratios["without"] - ratios["with"] > 0.25

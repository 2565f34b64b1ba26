"""The dashboard in a real browser: headless Chromium against a running local mesh.

One mesh for the module (``meshctl demo up --detach`` on 127.0.61.x, state in a temporary
folder) with the dashboard the demo starts (``NET.1:15020``; its golden metrics from the demo's
Prometheus when Debian's ``prometheus`` is installed, else from the sidecars). Each test loads
the page, does what a person would (orders through the load generator, a fault knob, a policy
edit) and reads the page as Chromium shows it — each reading one script run in the page, so it
sees one drawing whole — until it shows what it should, or fails naming what is missing. Each
test keeps a screenshot in its temporary folder. ``docs/dashboard.png`` is the fault test's page
whole, made with ``DASHBOARD_DOCS_SCREENSHOT=docs/dashboard.png pytest -k failing`` on this
file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from bench.browser import CHROMEDRIVER, CHROMIUM, MISSING, chromium, read
from tests.integration.demo.commands import ROOT, meshctl
from tests.integration.demo.sockets import listening

if TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver

NET = "127.0.61"
SERVICES = ("loadgen", "frontend", "orders", "inventory", "payments")
# What one order travels: loadgen → frontend → orders → inventory and payments.
LOADED = (("loadgen", "frontend"), ("frontend", "orders"), ("orders", "inventory"),
          ("orders", "payments"))
FAULT_SHOWN_WITHIN = 5.0  # seconds, from the fault knob turned to the page showing it
EJECTED_WITHIN = 30.0  # seconds more for the ejection (see the test)

pytestmark = pytest.mark.skipif(CHROMIUM is None or CHROMEDRIVER is None, reason=MISSING)


@dataclass(frozen=True, slots=True)
class Mesh:
    state_dir: Path
    dashboard: str  # host:port
    state: dict[str, Any]  # the demo's state.json


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    """A demo mesh with its dashboard."""
    state_dir = tmp_path_factory.mktemp("dashboard") / "state"
    up = meshctl(state_dir, "demo", "up", "--detach", "--net", NET, "--state-dir",
                 str(state_dir), "--load-duration", "0")
    try:
        assert up.returncode == 0, f"meshctl demo up failed:\n{up.stdout}{up.stderr}"
        state = json.loads((state_dir / "state.json").read_text())
        assert f"http://{state['dashboard']}/" in up.stdout  # the demo says where it is
        yield Mesh(state_dir, state["dashboard"], state)
    finally:
        down = meshctl(state_dir, "demo", "down", "--state-dir", str(state_dir))
        assert down.returncode == 0, down.stdout + down.stderr
        assert listening(NET) == []  # the mesh and its dashboard: nothing left behind


@pytest.fixture
def browser() -> Iterator[WebDriver]:
    with chromium() as made:
        yield made


def until_shown(browser: WebDriver, screenshot: Path, missing: Callable[[], list[str]],
                timeout: float, every: float = 0.1) -> float:
    """Seconds until ``missing()`` (what the page does not show yet, each named) is empty;
    fails with what is still missing after ``timeout``. The screenshot is kept either way."""
    started = time.monotonic()
    while (problems := missing()) and time.monotonic() - started < timeout:
        time.sleep(every)
    took = time.monotonic() - started
    browser.save_screenshot(str(screenshot))
    assert problems == [], f"after {took:.1f} s: {problems} (screenshot: {screenshot})"
    return took


def page(browser: WebDriver) -> dict[str, Any]:
    """What the page shows now, read in one go."""
    shown: dict[str, Any] = read(browser, """
        const text = (el) => el ? el.textContent : null;
        const edges = {};
        for (const g of document.querySelectorAll('#topology g.edge')) {
          edges[g.id] = {cls: g.querySelector('path').getAttribute('class'),
                         rps: Number(g.dataset.rps), label: text(g.querySelector('text'))};
        }
        const rows = {};
        for (const tr of document.querySelectorAll('#edges tbody tr')) {
          rows[tr.id] = [...tr.cells].map((td) => td.textContent);
        }
        const endpoints = [...document.querySelectorAll('#clusters tr[id^="ep-"]')].map(
          (tr) => ({id: tr.id, address: tr.cells[0].textContent, ejected: tr.dataset.ejected,
                    cost: Number(tr.cells[3].textContent), why: tr.cells[4].textContent}));
        const streams = [...document.querySelectorAll('#rollout tbody tr')].map(
          (tr) => ({id: tr.id, version: tr.dataset.policyVersion, nack: tr.cells[4].textContent}));
        const top = [...document.querySelectorAll('#top tbody tr')].map(
          (tr) => [...tr.cells].map((td) => td.textContent));
        return {nodes: [...document.querySelectorAll('#topology g.node')].map((g) => g.id),
                top,
                edges, rows, endpoints, streams,
                policy: text(document.getElementById('policy-version')),
                history: [...document.querySelectorAll('#history details')].map(
                  (d) => ({id: d.id, diff: text(d.querySelector('pre'))})),
                services: [...document.querySelectorAll('#services tbody tr')].map((tr) => tr.id)};
    """)
    return shown


def background_load(mesh: Mesh, seconds: int, rate: int = 20) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "meshctl", "load", "--rate", str(rate), "--duration", str(seconds)],
        env={**os.environ, "PYTHONPATH": str(ROOT), "DEMO_STATE_DIR": str(mesh.state_dir)},
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True)


def test_the_topology_shows_every_service_and_the_load_on_every_edge(
        mesh: Mesh, browser: WebDriver, tmp_path: Path) -> None:
    load = meshctl(mesh.state_dir, "load", "--rate", "20", "--duration", "3", timeout=30)
    assert load.returncode == 0, load.stdout + load.stderr
    browser.get(f"http://{mesh.dashboard}/")

    def missing() -> list[str]:
        shown, problems = page(browser), []
        problems += [f"no topology node #node-{s}" for s in SERVICES
                     if f"node-{s}" not in shown["nodes"]]
        problems += [f"no stat row #svc-{s}" for s in SERVICES[1:]
                     if f"svc-{s}" not in shown["services"]]
        for source, destination in LOADED:
            edge = shown["edges"].get(f"edge-{source}-{destination}")
            row = shown["rows"].get(f"row-{source}-{destination}")
            if edge is None or not edge["rps"] > 0:
                problems.append(f"#edge-{source}-{destination} shows no load: {edge}")
            elif "rps" not in edge["label"] or "p99" not in edge["label"]:
                problems.append(f"#edge-{source}-{destination} label: {edge['label']!r}")
            if row is None or not float(row[3]) > 0:  # the edges table's RPS column
                problems.append(f"#row-{source}-{destination} shows no load: {row}")
            elif row[-1] != "100.00 %":  # every open connection between sidecars is mTLS
                problems.append(f"#row-{source}-{destination} mTLS: {row[-1]!r}")
        return problems

    until_shown(browser, tmp_path / "topology.png", missing, timeout=15)


def test_a_failing_replica_turns_its_edge_and_shows_its_ejection(
        mesh: Mesh, browser: WebDriver, tmp_path: Path) -> None:
    instances = {i["name"]: i for i in mesh.state["instances"]}
    inventory_1, orders = instances["inventory-1"], instances["orders"]
    browser.get(f"http://{mesh.dashboard}/?service=orders&top=1")
    started = time.time()
    load = background_load(mesh, 30, rate=40)  # five failures in a row come sooner
    try:
        def healthy() -> list[str]:  # first, this load flowing, and nothing failing
            shown = page(browser)
            edge = shown["edges"].get("edge-orders-inventory")
            with urllib.request.urlopen(f"http://{mesh.dashboard}/api/state") as answer:
                top = json.loads(answer.read())["top"] or []
            if not any(r["cluster"] == "inventory" and r["at"] > started for r in top):
                return ["no call to inventory since the load started, in the state's top"]
            # Peak EWMA compares two endpoints drawn at random: the costliest of three is never
            # chosen, and a fast failure keeps its cost, so a costly inventory-1 would be tried
            # too seldom for five failures in a row within the 5 s. The knob is turned when it
            # is the cheapest (chosen in two draws of three), as it is a third of the time.
            # (read from the orders sidecar itself: the page is up to a round behind)
            with urllib.request.urlopen(f"http://{orders['sidecar_admin']}/clusters") as answer:
                cluster = json.loads(answer.read())["inventory"]
            costs = {e["address"]: e["cost"] for e in cluster["endpoints"]}
            one = costs.pop(f"{inventory_1['ip']}:15006", None)
            if one is None or not costs or one > min(costs.values()):
                return [f"inventory-1's cost {one} is not the lowest yet: {costs}"]
            return [] if edge and edge["rps"] > 0 and edge["cls"] == "healthy" else \
                [f"#edge-orders-inventory is not carrying healthy load yet: {edge}"]

        until_shown(browser, tmp_path / "before.png", healthy, timeout=30, every=0.02)
        fault = meshctl(mesh.state_dir, "fault", "inventory", "--replica", "1",
                        "--error-rate", "1")
        assert fault.returncode == 0, fault.stdout + fault.stderr

        def failing() -> list[str]:
            shown, problems = page(browser), []
            edge = shown["edges"].get("edge-orders-inventory")
            row = shown["rows"].get("row-orders-inventory")
            if edge is None or edge["cls"] not in ("degraded", "failing"):
                problems.append(f"#edge-orders-inventory not drawn failing: {edge}")
            if row is None or row[2] == "100.00 %":  # the "tries ok" column
                problems.append(f"#row-orders-inventory tries not below 100 %: {row}")
            # top: live requests, orders' calls to inventory among them (time, source,
            # destination, request, status, ms, retries, hedges)
            if not any(r[2] == "inventory" and "/shop.Inventory/" in r[3] for r in shown["top"]):
                problems.append(f"#top shows no call to inventory: {shown['top'][:3]}")
            return problems

        def ejected() -> list[str]:
            shown = page(browser)
            out = [e["address"] for e in shown["endpoints"]
                   if e["id"].endswith(f"-inventory-{e['address']}") and e["ejected"] == "1"]
            return [] if out == [f"{inventory_1['ip']}:15006"] else \
                [f"inventory-1 not shown ejected in orders' inventory cluster: "
                 f"{shown['endpoints']}"]

        took = until_shown(browser, tmp_path / "fault.png", failing, FAULT_SHOWN_WITHIN)
        # Outlier detection ejects after five failures in a row; peak EWMA may route around
        # the failing replica first (a fast failure keeps its cost while the others' fall),
        # so on a busy machine the fifth failure can take longer than the edge's first.
        out = until_shown(browser, tmp_path / "ejected.png", ejected, EJECTED_WITHIN)
        if docs_screenshot := os.environ.get("DASHBOARD_DOCS_SCREENSHOT"):
            browser.set_window_size(1400, read(browser, "return document.body.scrollHeight"))
            browser.save_screenshot(docs_screenshot)
        print(f"\nfault on inventory-1 shown after the knob was turned: edge and tries "
              f"{took:.1f} s, ejection {took + out:.1f} s")
    finally:
        meshctl(mesh.state_dir, "fault", "inventory", "--clear")
        load.terminate()
        load.wait(timeout=10)


def test_a_policy_change_is_shown_acked_by_every_sidecar(
        mesh: Mesh, browser: WebDriver, tmp_path: Path) -> None:
    browser.get(f"http://{mesh.dashboard}/")

    def read_version() -> list[str]:
        shown = page(browser)
        return [] if shown["policy"] not in (None, "–") and shown["streams"] else \
            ["no #policy-version or no #rollout rows yet"]

    until_shown(browser, tmp_path / "before.png", read_version, timeout=10)
    before = int(page(browser)["policy"])
    policy = mesh.state_dir / "policy" / "shop.yaml"
    text = policy.read_text()
    assert "  timeout: 1s\n" in text
    policy.write_text(text.replace("  timeout: 1s\n", "  timeout: 1.5s\n", 1))  # inventory's
    streams = len(mesh.state["instances"]) + len(mesh.state["proxyless"])

    def rolled_out() -> list[str]:
        shown, problems = page(browser), []
        if shown["policy"] != str(before + 1):
            problems.append(f"#policy-version is {shown['policy']}, not {before + 1}")
        behind = [s for s in shown["streams"] if s["version"] != str(before + 1) or s["nack"]]
        if behind or len(shown["streams"]) != streams:
            problems.append(f"{len(shown['streams'])} #rollout rows (want {streams}), not at "
                            f"{before + 1}: {behind}")
        diffs = {h["id"]: h["diff"] for h in shown["history"]}
        diff = diffs.get(f"version-{before + 1}") or ""
        if "-  timeout: 1s\n" not in diff or "+  timeout: 1.5" not in diff:
            problems.append(f"#version-{before + 1} diff: {diff!r}")
        return problems

    took = until_shown(browser, tmp_path / "policy.png", rolled_out, timeout=15)
    print(f"\npolicy version {before + 1} shown ACKed by {streams} streams {took:.1f} s after "
          f"the file was saved")

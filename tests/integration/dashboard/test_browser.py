"""The dashboard in a real browser: headless Chromium against a running local mesh.

One mesh (``meshctl demo up --detach`` on 127.0.61.x, state in a temporary folder), the
dashboard against its control plane (``meshctl dashboard``), a few seconds of orders through
the load generator, then the page as Chromium shows it: every service a node of the topology,
every edge the orders travel with a non-zero RPS on the graph and in the table. The
screenshot stays in the test's temporary folder.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.demo.commands import meshctl
from tests.integration.demo.sockets import listening

ROOT = Path(__file__).resolve().parents[3]
NET = "127.0.61"
DASHBOARD = f"{NET}.99:15020"
SERVICES = ("loadgen", "frontend", "orders", "inventory", "payments")
# What one order travels: loadgen → frontend → orders → inventory and payments.
LOADED = (("loadgen", "frontend"), ("frontend", "orders"), ("orders", "inventory"),
          ("orders", "payments"))
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")

pytestmark = pytest.mark.skipif(CHROMIUM is None or CHROMEDRIVER is None,
                                reason="needs Debian's chromium and chromium-driver")


@pytest.fixture
def dashboard(tmp_path: Path) -> Iterator[Path]:
    """A demo mesh with the dashboard in front of it; yields the mesh's state folder."""
    state_dir = tmp_path / "state"
    up = meshctl(state_dir, "demo", "up", "--detach", "--net", NET, "--state-dir",
                 str(state_dir), "--load-duration", "0")
    if up.returncode != 0:
        meshctl(state_dir, "demo", "down", "--state-dir", str(state_dir))
        pytest.fail(f"meshctl demo up failed:\n{up.stdout}{up.stderr}")
    log = (tmp_path / "dashboard.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "meshctl", "--api", f"{NET}.1:15014", "dashboard",
         "--listen", DASHBOARD],
        env={**os.environ, "PYTHONPATH": str(ROOT), "DEMO_STATE_DIR": str(state_dir)},
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        yield state_dir
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()
        down = meshctl(state_dir, "demo", "down", "--state-dir", str(state_dir))
        assert down.returncode == 0, down.stdout + down.stderr
        assert listening(NET) == []  # the mesh and the dashboard: nothing left behind


def test_the_topology_shows_every_service_and_the_load_on_every_edge(
        dashboard: Path, tmp_path: Path) -> None:
    from selenium import webdriver
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    load = meshctl(dashboard, "load", "--rate", "20", "--duration", "3", timeout=30)
    assert load.returncode == 0, load.stdout + load.stderr
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                 "--window-size=1400,1000"):
        options.add_argument(flag)
    browser = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)),
                               options=options)
    try:
        browser.get(f"http://{DASHBOARD}/")

        def missing() -> list[str]:
            """What the page does not show yet, each named by its element."""
            problems = []
            for service in SERVICES:
                try:
                    browser.find_element(By.ID, f"node-{service}")
                except NoSuchElementException:
                    problems.append(f"no topology node #node-{service}")
            for source, destination in LOADED:
                for kind in ("edge", "row"):
                    element_id = f"{kind}-{source}-{destination}"
                    try:
                        element = browser.find_element(By.ID, element_id)
                    except NoSuchElementException:
                        problems.append(f"no #{element_id}")
                        continue
                    if kind == "edge":  # the graph's edge: its label, its data-rps
                        text = element.find_element(By.CSS_SELECTOR, "text").text
                        rps = float(element.get_attribute("data-rps") or 0)
                    else:  # the table's row: its RPS column
                        text = element.text
                        rps = float(element.find_elements(By.TAG_NAME, "td")[2].text)
                    if rps <= 0:
                        problems.append(f"#{element_id} shows no load: {text!r}")
            return problems

        def looked() -> list[str]:
            try:
                return missing()
            except StaleElementReferenceException:  # re-drawn by an update while being read
                return ["the page was re-drawn while it was read"]

        deadline = time.monotonic() + 10
        while (problems := looked()) and time.monotonic() < deadline:
            time.sleep(0.5)
        screenshot = tmp_path / "dashboard.png"
        browser.save_screenshot(str(screenshot))
        assert problems == [], f"{problems} (screenshot: {screenshot})"
        def label() -> str:
            try:
                return str(browser.find_element(By.CSS_SELECTOR,
                                                "#edge-frontend-orders text").text)
            except StaleElementReferenceException:  # re-drawn between finding and reading
                return ""

        deadline = time.monotonic() + 5
        while not (text := label()) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "rps" in text and "p99" in text, text
    finally:
        browser.quit()

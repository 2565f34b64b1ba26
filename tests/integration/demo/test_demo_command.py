"""`meshctl demo up` as the README runs it: summary in time, then Ctrl-C stops everything."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from demo_services.processes import Record, alive, read_state
from tests.integration.demo.sockets import listening

ROOT = Path(__file__).resolve().parents[3]
NET = "127.0.56"
SUMMARY_WITHIN = 60.0  # seconds, the promise for a new user's first run


def test_demo_up_reaches_the_summary_and_ctrl_c_leaves_nothing(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    log = tmp_path / "up.log"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    started = time.monotonic()
    with log.open("w") as out:
        up = subprocess.Popen([sys.executable, "-m", "meshctl", "demo", "up", "--net", NET,
                               "--state-dir", str(state_dir), "--load-duration", "3"],
                              env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                              start_new_session=True)
    records: list[Record] = []
    try:
        while "Stop it with Ctrl-C" not in log.read_text():
            assert up.poll() is None, log.read_text()
            assert time.monotonic() - started < SUMMARY_WITHIN, log.read_text()
            time.sleep(0.2)
        took = time.monotonic() - started
        text = log.read_text()
        print(f"\nmeshctl demo up reached its summary in {took:.1f} s")
        state = read_state(state_dir / "state.json")
        assert state is not None and state["status"] == "ready"
        processes = state["processes"]
        assert isinstance(processes, list)
        records = [Record.from_json(r) for r in processes]
        assert len([r for r in records if alive(r)]) == len(records) >= 18
        assert "outcomes: 201 ×120  (errors 0, 0.00%)" in text
        # The auditor's calls to inventory (one a second, proxyless) count there too.
        assert re.search(r"inventory \(all\)  12[0-9] ", text), text
        assert "payments (all)   120" in text
        assert f"http://{NET}.20:15000/clusters" in text
        assert f"meshctl --api {NET}.1:15014 status" in text
        up.send_signal(signal.SIGINT)  # what Ctrl-C in its terminal does
        assert up.wait(timeout=30) == 130
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
            subprocess.run([sys.executable, "-m", "meshctl", "demo", "down", "--state-dir",
                            str(state_dir)], env=env, cwd=ROOT, timeout=60)
    assert "stopped; logs kept in" in log.read_text()
    assert [r.name for r in records if alive(r)] == []
    assert listening(NET) == []
    assert sorted(p.name for p in state_dir.iterdir()) == ["logs"]

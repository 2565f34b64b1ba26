"""``meshctl`` run as a user of a local demo mesh runs it: for the tests that start one."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def meshctl(state_dir: Path, *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    """``meshctl ARGS`` with ``DEMO_STATE_DIR`` naming the demo's state folder."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DEMO_STATE_DIR": str(state_dir)}
    return subprocess.run([sys.executable, "-m", "meshctl", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)

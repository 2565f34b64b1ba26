"""``mesh/http2`` on the engine this run does not use: its tests, again, in a process of their
own (an engine is chosen once per process: ``mesh/http2/engine.py``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from mesh.http2 import engine

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[3]


def test_the_http2_tests_pass_on_the_other_engine() -> None:
    other = next(name for name in engine.ENGINES if name != engine.NAME)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", "-p", "no:cacheprovider",
         str(HERE), f"--ignore={Path(__file__).resolve()}"],
        env={**os.environ, "MESH_HTTP2_ENGINE": other}, cwd=ROOT, capture_output=True,
        text=True, timeout=600)
    assert done.returncode == 0, f"on {other}:\n{done.stdout[-3000:]}{done.stderr[-2000:]}"
    assert " passed" in done.stdout.splitlines()[-1]

"""The README's demo command runs end to end: two processes, mTLS, every call shape."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_hello_demo_runs_and_narrates(tmp_path: Path) -> None:
    # Run from a scratch directory so the demo's .mesh/ state lands there, not in the checkout.
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-m", "demo_services.hello"], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=60)
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "the client verified the server as spiffe://cluster.local/ns/demo/sa/greeter" in out
    assert "the server verified the client as spiffe://cluster.local/ns/demo/sa/client" in out
    assert "streams opened on it: 201, connections: 1" in out
    assert "server streaming: ['hello #0, stream', 'hello #1, stream', 'hello #2, stream']" in out
    assert "got 'hello, grace'" in out
    assert "FAILED_PRECONDITION 'out of stock'" in out
    assert "6. deadline: DEADLINE_EXCEEDED" in out
    assert "refused at the TLS handshake" in out and "UNEXPECTED" not in out
    assert "greeter: drained and stopped" in out
    key = tmp_path / ".mesh/hello-demo/greeter.key"
    assert key.stat().st_mode & 0o777 == 0o600

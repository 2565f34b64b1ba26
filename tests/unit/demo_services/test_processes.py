"""The local mesh stops processes by PID, and only a PID that still runs the command it started."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from demo_services.processes import Record, alive, spawn, stop

SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]
STUBBORN = [sys.executable, "-c",
            "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "print('up', flush=True); time.sleep(60)"]


def started(record: Record) -> bool:
    """Wait for the exec to finish (its command line appears a moment after spawn returns)."""
    deadline = time.monotonic() + 5
    while not alive(record):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_spawn_then_stop_leaves_nothing(tmp_path: Path) -> None:
    record, process = spawn("sleeper", SLEEPER, log=tmp_path / "logs" / "sleeper.log", env={})
    assert started(record)
    assert stop([record], grace=5, children={record.pid: process}) == []
    assert not alive(record)
    assert process.returncode is not None  # reaped: no zombie left


def test_one_that_ignores_sigterm_is_killed_after_the_grace(tmp_path: Path) -> None:
    log = tmp_path / "stubborn.log"
    record, process = spawn("stubborn", STUBBORN, log=log, env={})
    while "up" not in log.read_text():  # its SIGTERM handler is in place
        pass
    assert stop([record], grace=0.3, children={record.pid: process}) == ["stubborn"]
    assert not alive(record)


def test_a_pid_running_something_else_is_never_signalled(tmp_path: Path) -> None:
    record, process = spawn("sleeper", SLEEPER, log=tmp_path / "sleeper.log", env={})
    try:
        assert started(record)
        impostor = Record(name="old", pid=record.pid, argv=("python", "-m", "sidecar"), log="-")
        assert not alive(impostor)
        stop([impostor], grace=0.2)
        assert alive(record), "a PID that runs another command was signalled"
    finally:
        stop([record], grace=5, children={record.pid: process})

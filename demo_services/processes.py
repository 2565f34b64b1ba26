"""The local mesh's processes: started in their own sessions, recorded, stopped by PID only.

Each process is started with its output in a log file and in a session of its own, so a Ctrl-C
in the terminal reaches the supervisor alone, which then stops them in order (callers first,
the control plane last, so sidecars can still deregister). Every process is recorded in the
state file with its PID *and* its command line; before signalling a PID, :func:`alive` checks
that ``/proc/PID/cmdline`` is still that command — a PID left over from a crashed run may by
now belong to something else, which must never be killed.

Stopping is SIGTERM (a graceful drain), then, after a grace period, SIGKILL for whatever is
left. Nothing is matched by name (no ``pkill``): only the PIDs this mesh started.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

POLL = 0.05  # seconds between checks while waiting for processes to exit


@dataclass(frozen=True, slots=True, kw_only=True)
class Record:
    """One process the mesh started."""

    name: str  # "sidecar:payments-2", "app:payments-2", "controlplane", "prometheus"
    pid: int
    argv: tuple[str, ...]
    log: str  # path of its output

    def to_json(self) -> dict[str, object]:
        return {**asdict(self), "argv": list(self.argv)}

    @classmethod
    def from_json(cls, data: dict[str, object]) -> Record:
        argv = data["argv"]
        assert isinstance(argv, list)
        return cls(name=str(data["name"]), pid=int(str(data["pid"])),
                   argv=tuple(str(a) for a in argv), log=str(data["log"]))


def spawn(name: str, argv: Sequence[str], *, log: Path, env: dict[str, str],
          cwd: Path | None = None) -> tuple[Record, subprocess.Popen[bytes]]:
    """Start ``argv`` in a new session, output to ``log``; return its record and handle."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        process = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=out,
                                   stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                   start_new_session=True)
    return Record(name=name, pid=process.pid, argv=tuple(argv), log=str(log)), process


def alive(record: Record) -> bool:
    """True while ``record``'s PID runs the command it was started with (zombies are dead)."""
    proc = Path(f"/proc/{record.pid}")
    try:
        cmdline = (proc / "cmdline").read_bytes().split(b"\0")
        stat = (proc / "stat").read_text()
    except OSError:
        return False
    if stat.rpartition(")")[2].split()[0] in ("Z", "X"):
        return False
    return [a.decode(errors="replace") for a in cmdline if a] == list(record.argv)


def _signal(record: Record, sig: signal.Signals) -> None:
    if alive(record):
        with contextlib.suppress(ProcessLookupError):  # it ended just now
            os.kill(record.pid, sig)


def stop(records: Sequence[Record], *, grace: float,
         children: dict[int, subprocess.Popen[bytes]] | None = None) -> list[str]:
    """SIGTERM every record at once, wait up to ``grace`` s, SIGKILL the rest.

    ``children`` are the ones this process started (they are reaped, leaving no zombies).
    Returns the names of those that had to be killed.
    """
    for record in records:
        _signal(record, signal.SIGTERM)
    deadline = time.monotonic() + grace
    left = list(records)
    while left and time.monotonic() < deadline:
        _reap(children)
        left = [r for r in left if alive(r)]
        if left:
            time.sleep(POLL)
    killed = []
    for record in left:
        _signal(record, signal.SIGKILL)
        killed.append(record.name)
    end = time.monotonic() + 2.0
    while any(alive(r) for r in left) and time.monotonic() < end:
        _reap(children)
        time.sleep(POLL)
    for record in records:  # an exiting process drops its cmdline before it can be reaped
        process = (children or {}).get(record.pid)
        if process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=2.0)
    return killed


def _reap(children: dict[int, subprocess.Popen[bytes]] | None) -> None:
    for process in (children or {}).values():
        process.poll()


def exited(record: Record, children: dict[int, subprocess.Popen[bytes]]) -> int | None:
    """The exit status of a child that has ended, or None while it runs."""
    process = children.get(record.pid)
    if process is not None:
        return process.poll()
    return None if alive(record) else -1


def tail(path: str | Path, lines: int = 15) -> str:
    """The last ``lines`` lines of a log file (empty when there is none)."""
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def write_state(path: Path, state: dict[str, object]) -> None:
    """Write the state file atomically (a reader never sees half of it)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2) + "\n")
    tmp.replace(path)


def read_state(path: Path) -> dict[str, object] | None:
    """The state file's contents, or None when there is none.

    Raises:
        ValueError: the file exists but is not a state file.
    """
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not a state file ({error}); remove it by hand") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not a state file; remove it by hand")
    return data

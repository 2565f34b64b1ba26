"""Run an experiment the way a reader does, in its short form, and read back its numbers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[3]


def run_quick(name: str, out: Path, *, via_meshctl: bool = False,
              seconds: float = 100) -> dict[str, Any]:
    """``python -m experiments.NAME --quick --out OUT``; return its JSON, check its files."""
    command = (["-m", "meshctl", "experiment", name] if via_meshctl
               else ["-m", f"experiments.{name}"])
    result = subprocess.run([sys.executable, *command, "--quick", "--out", str(out)],
                            cwd=ROOT, capture_output=True, text=True, timeout=seconds)
    assert result.returncode == 0, result.stdout + result.stderr
    table = (out / f"{name}.md").read_text()
    assert table.splitlines()[0].startswith("# ")
    assert "|---" in table and f"![{name}]({name}.png)" in table
    assert "## Headlines" in table and "## Headlines" in result.stdout  # with their spread
    assert "|---" in result.stdout  # the table is printed too
    assert (out / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data: dict[str, Any] = json.loads((out / f"{name}.json").read_text())
    print(result.stdout)  # shown by pytest when the test fails: every repeat's figures
    return data


def every_repeat(data: dict[str, Any]) -> str:
    """Each headline's median and its value in every repeat, for an assertion's message."""
    return "\n".join(
        f"{key}: median {h['median']:.3g}, repeats {', '.join(f'{v:.3g}' for v in h['repeats'])}"
        for key, h in data["headlines"].items())

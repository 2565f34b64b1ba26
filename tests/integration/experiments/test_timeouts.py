"""timeouts: only propagated deadlines stop the work downstream when the caller gives up."""

from __future__ import annotations

from pathlib import Path

from tests.integration.experiments.helpers import run_quick


def test_propagated_deadlines_stop_downstream_work(tmp_path: Path) -> None:
    data = run_quick("timeouts", tmp_path)
    by = {m["mode"]: m for m in data["modes"]}
    plan = data["plan"]
    deadlines = by["deadlines"]
    assert deadlines["reached_c"] > 0 and deadlines["finished_at_c"] == 0
    assert deadlines["work_after_give_up_per_call_ms"] < 100
    assert deadlines["still_working_after_give_up"] <= 0.1 * deadlines["calls"]
    for mode in ("none", "timeouts"):
        assert by[mode]["work_after_give_up_per_call_ms"] > \
            5 * deadlines["work_after_give_up_per_call_ms"] + 200
    assert by["none"]["client_p50"] >= plan["cap"] * 0.9  # without timeouts: wait to the cap
    assert by["deadlines"]["client_p50"] < plan["deadline"] + 0.3

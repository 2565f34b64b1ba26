"""timeouts: only propagated deadlines stop the work downstream when the caller gives up.

Each claim is the median over the seeded repeats; what must hold in every repeat (C never
finishes a call whose deadline passed) is checked in every repeat. Measured here, idle to both
cores kept busy: C's work after the give-up 2–7 ms per call with deadlines, 502–522 ms without.
"""

from __future__ import annotations

from pathlib import Path

from tests.integration.experiments.helpers import every_repeat, run_quick


def test_propagated_deadlines_stop_downstream_work(tmp_path: Path) -> None:
    data = run_quick("timeouts", tmp_path)
    claims, shown = data["headlines"], every_repeat(data)
    by = {m["mode"]: m for m in data["modes"]}  # each figure over the repeats
    plan = data["plan"]
    for repeat in data["repeats"]:
        deadlines = repeat["deadlines"]
        assert deadlines["reached_c"] > 0 and deadlines["finished_at_c"] == 0, deadlines
    wasted = claims["deadlines_work_after_give_up"]["median"]
    assert wasted < 100, shown  # ms per call
    assert claims["deadlines_still_working"]["median"] <= 0.1, shown
    for mode in ("none", "timeouts"):
        assert claims[f"{mode}_work_after_give_up"]["median"] > 5 * wasted + 200, shown
    assert by["none"]["client_p50"]["median"] >= plan["cap"] * 0.9  # no timeouts: to the cap
    assert by["deadlines"]["client_p50"]["median"] < plan["deadline"] + 0.3

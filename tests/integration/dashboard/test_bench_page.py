"""The dashboard page's benchmark runs in its shortened form: every event is drawn on the
page, and the figures are printed (no timing is asserted: this machine's speed varies)."""

from __future__ import annotations

import re

import pytest

from bench import dashboard_page
from bench.browser import CHROMEDRIVER, CHROMIUM, MISSING

pytestmark = pytest.mark.skipif(CHROMIUM is None or CHROMEDRIVER is None, reason=MISSING)


def test_benchmark_short_run(capsys: pytest.CaptureFixture[str]) -> None:
    # An exception when an event is never drawn, or the page shows another number of edges.
    assert dashboard_page.main(["--services", "12", "--edges", "20", "--events", "4",
                                "--every", "0.3"]) == 0
    out = capsys.readouterr().out
    print(out)
    assert "# dashboard page: 12 services, 20 edges, 4 events" in out
    for label in ("event → screen", "of which waiting for the next round",
                  r"round, push and draw \(\d+ drawings\)"):
        row = re.search(rf"^\| {label} \| (\d+) / (\d+) / (\d+) ms \|$", out, re.MULTILINE)
        assert row is not None, (label, out)
        p50, p99, worst = (int(v) for v in row.groups())
        assert p50 <= p99 <= worst

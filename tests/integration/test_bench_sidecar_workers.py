"""The workers benchmark runs in its quick form: both sidecars answer every request, and the
report has a row for each with the two workers' parts (no timing assertions: the machine is
shared)."""

from __future__ import annotations

import shutil

import pytest

from bench import sidecar_workers
from tests.integration.test_bench_sidecar_pair import number, table_rows

pytestmark = pytest.mark.skipif(shutil.which("h2load") is None or shutil.which("nghttpd") is None,
                                reason="needs h2load and nghttpd (nghttp2-client, -server)")


def test_quick_run_reports_one_and_two_workers(capsys: pytest.CaptureFixture[str]) -> None:
    assert sidecar_workers.main(["--quick"]) == 0  # non-zero when any request failed
    out = capsys.readouterr().out

    rows = table_rows(out, "| workers |")
    assert set(rows) == {"1", "2"}, out
    for row in rows.values():
        assert number(row[0]) > 0, out  # req/s
        assert number(row[1]) > 0, out  # CPU µs/req
        assert row[-1] == "0", out  # failed
    assert rows["1"][5] == "100%", out
    assert len(rows["2"][5].split(" / ")) == 2, out
    assert "req/s, 2 workers / 1: **" in out

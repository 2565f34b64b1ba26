"""The sidecar pair benchmark runs in its quick form: every path answers every request, and the
report has a sane row for each (no timing assertions: the machine is shared)."""

from __future__ import annotations

import re
import shutil

import pytest

from bench import sidecar_pair

pytestmark = pytest.mark.skipif(shutil.which("h2load") is None or shutil.which("nghttpd") is None,
                                reason="needs h2load and nghttpd (nghttp2-client, -server)")


def table_rows(out: str, header: str) -> dict[str, list[str]]:
    """The rows of the Markdown table whose header row starts with ``header``, by first cell."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows: dict[str, list[str]] = {}
    for line in lines[start + 2:]:  # past the header and the |---| line
        if not line.startswith("|"):
            break
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        rows[cells[0]] = cells[1:]
    return rows


def number(cell: str) -> float:
    return float(cell.replace(",", ""))


def test_quick_run_reports_every_path(capsys: pytest.CaptureFixture[str]) -> None:
    assert sidecar_pair.main(["--quick"]) == 0  # non-zero when any request failed
    out = capsys.readouterr().out

    paths = table_rows(out, "| path |")
    expected = {"direct", "sidecar", "sidecar (h2)", "bare"} | \
        ({"haproxy"} if shutil.which("haproxy") else set())
    assert set(paths) == expected
    direct = paths["direct"]
    for name, (*rates, p50, p99, hop50, hop99, cpu, failed) in paths.items():
        assert len(rates) == len(sidecar_pair.LOADS), name
        assert all(number(rate) > 0 for rate in rates), name
        assert 0 < number(p50) <= number(p99), name
        assert failed == "0", name
        if name == "direct":
            assert hop50 == hop99 == cpu == "—"
        else:  # (pair - direct) / 2, whatever its sign on a busy machine
            # Python hops spend well over 10 µs (a clock tick per 1,000 requests) per request.
            busy, one = (number(c) for c in cpu.split(","))
            assert min(busy, one) > 0 if name.startswith(("sidecar", "bare")) else \
                min(busy, one) >= 0
            assert number(hop50) == pytest.approx(
                (number(p50) - number(direct[len(sidecar_pair.LOADS)])) / 2, abs=0.002), name
            assert number(hop99) == pytest.approx(
                (number(p99) - number(direct[len(sidecar_pair.LOADS) + 1])) / 2, abs=0.002), name
    if "haproxy" not in paths:
        assert "haproxy not found" in out
    assert re.search(r"sidecar / bare req/s: [\d.]+ at -c1 -m100, [\d.]+ at -c4 -m25, "
                     r"[\d.]+ at -c4 -m250", out)
    assert re.search(r"sidecar \(h2\) / sidecar req/s: [\d.]+ at -c1 -m100", out)
    assert re.search(r"req/s with 1,000 streams in flight / with 100: direct", out) is None
    assert re.search(r"req/s with 1,000 streams in flight / with 100: sidecar [\d.]+, "
                     r"sidecar \(h2\) [\d.]+, bare [\d.]+", out)
    assert re.search(r"added per hop at one stream \(p50\): -?[\d.]+ ms", out)

    memory = table_rows(out, "| state |")
    assert list(memory) == ["ready, nothing open", "100 idle downstream connections",
                            "500 streams in flight"]
    for state, (a, b) in memory.items():
        assert 10 < number(a) < 2000 and 10 < number(b) < 2000, state

"""The flood benchmark runs in its quick form: a row for every flood and server, the other
caller answered throughout, and the figures printed (no timing assertions: the machine is
shared)."""

from __future__ import annotations

import re
import shutil

import pytest

from bench import floods
from bench.flooder import FLOODS

pytestmark = pytest.mark.timeout(300)


def number(cell: str) -> float:
    return float(cell.replace(",", ""))


def test_quick_run_reports_every_flood(capsys: pytest.CaptureFixture[str]) -> None:
    assert floods.main(["--quick"]) == 0  # non-zero when the other caller got no answer
    out = capsys.readouterr().out

    servers = ["mesh/http2"] + (["nghttpd"] if shutil.which("nghttpd") else [])
    lines = [line for line in out.splitlines() if line.startswith("| ")]
    assert lines[0].startswith("| flood | server | frames in: h2c | mTLS |")
    table = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[1:]]
    assert [(row[0], row[1]) for row in table] == \
        [(flood, server) for server in servers for flood in FLOODS]
    for flood, server, h2c_in, mtls_in, _, h2c_cut, mtls_cut, *latencies in table:
        for cell in latencies:  # worst and p99, over h2c and over mTLS
            assert number(cell) >= 0, (flood, server)
        if server == "nghttpd":
            assert h2c_in == mtls_in == "—"
            continue
        for taken_in, cut in ((h2c_in, h2c_cut), (mtls_in, mtls_cut)):
            assert number(taken_in) > 0, (flood, server)
            if flood in ("settings", "ping"):
                assert cut == "no"  # answers that are read are not a flood to cut off
            elif cut != "no":  # a slow machine may end the flood before its limit is reached
                assert re.fullmatch(r"(GOAWAY 0xb|closed), \d+ ms", cut), (flood, cut)
    for flood in FLOODS:
        assert re.search(rf"^- {flood} \(mesh/http2\): .*worst latency mTLS / h2c [\d.]+", out,
                         re.MULTILINE), flood

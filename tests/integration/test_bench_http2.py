"""The HTTP/2 server benchmark runs in its shortened form: every contestant answers all."""

from __future__ import annotations

import shutil

import pytest

from bench import http2_server

pytestmark = pytest.mark.skipif(shutil.which("h2load") is None or shutil.which("nghttpd") is None,
                                reason="needs h2load and nghttpd (nghttp2-client, -server)")


@pytest.mark.parametrize("tls", [False, True], ids=["h2c", "tls"])
def test_benchmark_short_run(tls: bool, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--requests", "2000", "--rounds", "1", *(["--tls"] if tls else [])]
    assert http2_server.main(args) == 0  # non-zero when any request failed
    out = capsys.readouterr().out
    for contestant in ("nghttpd (C)", "bare h2 loop", "mesh/http2", "mesh/http2 (h2)",
                       "hypercorn"):
        assert contestant in out
    assert "mesh/http2 / bare h2 loop =" in out
    assert "mesh/http2 / hypercorn    =" in out

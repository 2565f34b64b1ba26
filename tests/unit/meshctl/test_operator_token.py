"""meshctl finds the operator token by itself, and gives a found one to this machine only."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshctl.__main__ import operator_token_file


@pytest.fixture
def demo_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    for name in ("MESH_OPERATOR_TOKEN_FILE", "MESH_PKI_DIR", "DEMO_STATE_DIR"):
        monkeypatch.delenv(name, raising=False)
    token = tmp_path / ".mesh" / "demo" / "pki" / "operator.token"
    token.parent.mkdir(parents=True)
    token.write_text("t\n")
    return token


@pytest.mark.parametrize("api", ["127.0.10.1:15014", "localhost:15014", "[::1]:15014"])
def test_a_default_folders_token_goes_to_loopback(demo_token: Path, api: str) -> None:
    assert operator_token_file(api) == Path(".mesh/demo/pki/operator.token")


@pytest.mark.parametrize("api", ["10.1.2.3:15014", "controlplane:15014", "example.com:80"])
def test_a_default_folders_token_is_not_sent_elsewhere(demo_token: Path, api: str) -> None:
    assert operator_token_file(api) is None


def test_a_token_named_explicitly_goes_where_it_is_told(
        demo_token: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESH_PKI_DIR", str(demo_token.parent))
    assert operator_token_file("controlplane:15014") == demo_token
    monkeypatch.setenv("MESH_OPERATOR_TOKEN_FILE", "/elsewhere/operator.token")
    assert operator_token_file("10.1.2.3:15014") == Path("/elsewhere/operator.token")

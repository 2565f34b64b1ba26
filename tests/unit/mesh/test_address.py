"""``HOST:PORT`` parsing shared by every command line."""

from __future__ import annotations

import argparse

import pytest

from mesh.address import host_port


def test_host_and_port() -> None:
    assert host_port("127.0.10.2:15001") == ("127.0.10.2", 15001)
    assert host_port("[::1]:8080") == ("[::1]", 8080)  # the last colon splits


@pytest.mark.parametrize("text", ["15001", ":15001", "localhost", "localhost:http"])
def test_a_missing_host_or_port_is_refused_naming_the_input(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=f"want HOST:PORT, got '{text}'"):
        host_port(text)

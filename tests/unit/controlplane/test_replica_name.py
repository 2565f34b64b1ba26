"""What a replica announces: an address others can reach, never a wildcard (several replicas
listening on 0.0.0.0 would all be "0.0.0.0:15012", one key in the store)."""

from __future__ import annotations

import socket

from controlplane.server import announced_address, announced_host


def test_a_wildcard_is_announced_as_this_machines_name() -> None:
    here = socket.gethostname()
    assert [announced_host(h) for h in ("0.0.0.0", "::", "")] == [here] * 3
    assert announced_address("0.0.0.0:15014") == f"{here}:15014"
    assert announced_address("[::]:15014") == f"{here}:15014"


def test_an_address_is_announced_as_it_is() -> None:
    assert announced_host("127.0.10.1") == "127.0.10.1"
    assert announced_address("127.0.10.1:15014") == "127.0.10.1:15014"
    assert announced_address("") == ""  # no operator API

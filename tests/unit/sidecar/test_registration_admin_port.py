"""Which admin port a sidecar publishes with its endpoint: only one reachable at its address."""

from __future__ import annotations

import pytest

from sidecar.registration import published_admin_port


@pytest.mark.parametrize(("admin_host", "registered"), [
    ("10.0.0.5", "10.0.0.5"),  # the same IP
    ("0.0.0.0", "10.0.0.5"),  # every IPv4 interface (compose)
    ("", "10.0.0.5"),  # every interface of both families
    ("::", "fd00::5"),  # every IPv6 interface
    ("fd00:0:0::5", "fd00::5"),  # the same IPv6 address, written differently
    ("127.0.10.20", "127.0.10.20"),  # the local demo: each instance on its own loopback IP
])
def test_an_admin_reachable_at_the_registered_address_is_published(
        admin_host: str, registered: str) -> None:
    assert published_admin_port((admin_host, 15000), registered) == 15000


@pytest.mark.parametrize(("admin_host", "registered"), [
    ("127.0.0.1", "10.0.0.5"),  # loopback only: reachable from its own machine alone
    ("127.0.0.1", "127.0.10.20"),  # another loopback address is another address
    ("::", "10.0.0.5"),  # asyncio binds :: to IPv6 only
    ("0.0.0.0", "fd00::5"),
    ("localhost", "127.0.0.1"),  # names are not resolved
])
def test_an_admin_elsewhere_is_not_published(admin_host: str, registered: str) -> None:
    assert published_admin_port((admin_host, 15000), registered) == 0

"""``HOST:PORT`` on a command line: the one parser every entry point shares."""

from __future__ import annotations

import argparse

Address = tuple[str, int]  # (host, port)


def host_port(text: str) -> tuple[str, int]:
    """``"127.0.0.1:15001"`` as ``("127.0.0.1", 15001)``; an argparse ``type``.

    Raises:
        argparse.ArgumentTypeError: no host, or the port is not a number.
    """
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"want HOST:PORT, got {text!r}")
    return host, int(port)


def host_ports(text: str) -> tuple[Address, ...]:
    """``"a:15012,b:15012"`` as ``(("a", 15012), ("b", 15012))``: several replicas of one
    service (the control plane's); an argparse ``type``.

    Raises:
        argparse.ArgumentTypeError: an entry is not HOST:PORT, or there is none.
    """
    addresses = tuple(host_port(entry.strip()) for entry in text.split(",") if entry.strip())
    if not addresses:
        raise argparse.ArgumentTypeError(f"want HOST:PORT[,HOST:PORT...], got {text!r}")
    return addresses

"""``HOST:PORT`` on a command line: the one parser every entry point shares."""

from __future__ import annotations

import argparse


def host_port(text: str) -> tuple[str, int]:
    """``"127.0.0.1:15001"`` as ``("127.0.0.1", 15001)``; an argparse ``type``.

    Raises:
        argparse.ArgumentTypeError: no host, or the port is not a number.
    """
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"want HOST:PORT, got {text!r}")
    return host, int(port)

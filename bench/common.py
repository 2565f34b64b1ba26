"""What the benchmarks share: the TLS context h2load can talk to, an aiohttp application
served on a free loopback port, and the CPU time a process (and its children) used."""

from __future__ import annotations

import contextlib
import os
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web


def server_only_tls(cert: str, key: str) -> ssl.SSLContext:
    """TLS 1.3 with ALPN h2 and no client certificate (h2load cannot present one)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.load_cert_chain(cert, key)
    context.set_alpn_protocols(["h2"])
    return context


@contextlib.asynccontextmanager
async def serving(app: web.Application) -> AsyncIterator[int]:
    """``app`` on 127.0.0.1 at a free port, which is yielded; stopped on the way out."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        port: int = runner.addresses[0][1]
        yield port
    finally:
        await runner.cleanup()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used so far (Linux ``/proc/<pid>/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(pid: int) -> float:
    """:func:`cpu_seconds` of ``pid`` and every process under it that is still running (a
    server that runs its work in worker processes: Hypercorn, a sidecar's workers)."""
    total, parents = 0.0, [pid]
    while parents:
        parent = parents.pop()
        try:
            total += cpu_seconds(parent)
            children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
        except OSError:  # it has just exited
            continue
        parents += [int(child) for child in children]
    return total

"""What every shop service shares: its flags, its fault knobs, its admin endpoint, its lifecycle.

    python -m demo_services.<name> --listen HOST:PORT --admin HOST:PORT [--sidecar HOST:PORT]
                                   [--replica NAME] [--seed N]

Every flag also reads an environment variable (``DEMO_LISTEN``, ``DEMO_ADMIN``,
``DEMO_SIDECAR``, ``DEMO_REPLICA``, ``DEMO_SEED``), so a compose file or a shell can set them.
``--sidecar`` is the local sidecar's outbound listener: the only way a service reaches another
one. It names the destination in ``:authority`` and lets the mesh find, balance, retry and
secure the call.

A service runs until SIGINT or SIGTERM, then stops accepting, lets calls in flight finish
(a short grace) and exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import random
import signal
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from demo_services.admin import make_admin
from demo_services.faults import Faults, Verdict
from mesh.address import host_port
from mesh.clock import SYSTEM_CLOCK
from mesh.grpc import Channel, GrpcError, GrpcServer, StatusCode
from mesh.http2 import serve

log = logging.getLogger("demo_services")

Address = tuple[str, int]
GRACE = 2.0  # seconds calls in flight get to finish on shutdown
APP_PORT = 8080  # every service's default; each instance has its own address (or netns)
ADMIN_PORT = 8081



@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceOptions:
    """Where one service instance listens, what it is called and how it reaches others."""

    service: str
    replica: str  # this instance's name, shown in replies (e.g. "payments-2")
    listen: Address  # the app port its sidecar forwards to
    admin: Address  # the fault knobs
    sidecar: Address | None  # the local sidecar's outbound listener (None: calls nobody)
    seed: int | None  # for the fault knobs' random draws


def parser(service: str, *, calls_others: bool) -> argparse.ArgumentParser:
    """The flags of ``service`` (``calls_others``: it needs ``--sidecar``)."""
    env = os.environ.get
    p = argparse.ArgumentParser(prog=f"python -m demo_services.{service}",
                                description=f"The shop's {service} service.")
    p.add_argument("--listen", type=host_port,
                   default=env("DEMO_LISTEN", f"127.0.0.1:{APP_PORT}"),
                   help="where the app listens (its sidecar's --app) [DEMO_LISTEN]")
    p.add_argument("--admin", type=host_port,
                   default=env("DEMO_ADMIN", f"127.0.0.1:{ADMIN_PORT}"),
                   help="the fault-knob admin endpoint [DEMO_ADMIN]")
    if calls_others:
        p.add_argument("--sidecar", type=host_port,
                       default=env("DEMO_SIDECAR", "127.0.0.1:15001"),
                       help="the local sidecar's outbound listener [DEMO_SIDECAR]")
    p.add_argument("--replica", default=env("DEMO_REPLICA", f"{service}@{socket.gethostname()}"),
                   help="this instance's name, shown in replies [DEMO_REPLICA]")
    p.add_argument("--seed", type=int, default=env("DEMO_SEED"),
                   help="seed for the fault knobs' randomness [DEMO_SEED]")
    p.add_argument("--log-level", default=env("DEMO_LOG_LEVEL", "INFO"),
                   help="logging level [DEMO_LOG_LEVEL]")
    return p


def options_from_command_line(service: str, *, calls_others: bool,
                              argv: list[str] | None) -> ServiceOptions:
    """Parse ``argv`` (and the environment) for ``service``; set up logging."""
    args = parser(service, calls_others=calls_others).parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return ServiceOptions(service=service, replica=args.replica, listen=args.listen,
                          admin=args.admin, sidecar=getattr(args, "sidecar", None),
                          seed=args.seed)


def new_faults(options: ServiceOptions) -> Faults:
    return Faults(clock=SYSTEM_CLOCK, rng=random.Random(options.seed))


def channel_to(options: ServiceOptions, destination: str) -> Channel:
    """A gRPC channel to ``destination``, through the local sidecar (h2c on loopback)."""
    assert options.sidecar is not None, f"{options.service} was started without --sidecar"
    return Channel(*options.sidecar, authority=destination)


async def carry_out(verdict: Verdict, replica: str) -> None:
    """Wait the verdict's delay, then fail the gRPC call if it says so."""
    if verdict.delay:
        await asyncio.sleep(verdict.delay)
    if verdict.fail:
        raise GrpcError(StatusCode.UNAVAILABLE, f"{replica}: injected failure "
                                                f"({verdict.reason})")


def remaining(timeout: float | None) -> float | None:
    """The time left to pass on to the next call (a little less, for the way back)."""
    return None if timeout is None else max(timeout * 0.95, 0.001)


async def _wait_for_signal() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def _start_admin(options: ServiceOptions, faults: Faults) -> web.AppRunner:
    runner = web.AppRunner(make_admin(options.service, options.replica, faults),
                           access_log=None)
    await runner.setup()
    await web.TCPSite(runner, *options.admin).start()
    return runner


async def run_grpc(options: ServiceOptions, server: GrpcServer, faults: Faults,
                   closers: list[Callable[[], Awaitable[None]]] | None = None) -> int:
    """Serve ``server`` (h2c) and the admin endpoint until a signal; then drain and close."""
    grpc = await serve(server.handle, *options.listen)
    admin = await _start_admin(options, faults)
    print(f"{options.replica}: gRPC (h2c) on {options.listen[0]}:{grpc.port}, fault knobs on "
          f"http://{options.admin[0]}:{options.admin[1]}/faults", flush=True)
    await _wait_for_signal()
    await grpc.shutdown(grace=GRACE)
    await admin.cleanup()
    for close in closers or []:
        await close()
    print(f"{options.replica}: stopped", flush=True)
    return 0


async def run_http(options: ServiceOptions, app: web.Application, faults: Faults,
                   closers: list[Callable[[], Awaitable[None]]] | None = None) -> int:
    """Serve the aiohttp ``app`` and the admin endpoint until a signal; then close."""
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=GRACE)
    await runner.setup()
    await web.TCPSite(runner, *options.listen).start()
    admin = await _start_admin(options, faults)
    print(f"{options.replica}: HTTP on {options.listen[0]}:{options.listen[1]}, fault knobs "
          f"on http://{options.admin[0]}:{options.admin[1]}/faults", flush=True)
    await _wait_for_signal()
    await runner.cleanup()
    await admin.cleanup()
    for close in closers or []:
        await close()
    print(f"{options.replica}: stopped", flush=True)
    return 0

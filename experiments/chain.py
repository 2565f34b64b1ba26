"""A call chain A → B → C of gRPC services, each calling the next through its sidecar.

    python -m experiments.chain --mode deadlines --a HOST:PORT --b HOST:PORT --c HOST:PORT
        --a-sidecar HOST:PORT --b-sidecar HOST:PORT --stats FILE

One process serves the three tiers (``hello.Greeter/SayHello``, the hello demo's messages).
A calls B and B calls C through their sidecars' outbound listeners (authorities ``b`` and
``c``); C stalls for ``delay_ms`` of the request (working, as far as anyone can tell). How a
tier treats its caller's deadline is the ``--mode``:

    none       no timeouts: calls wait as long as it takes, and a tier keeps going after its
               caller has gone (its downstream call is shielded from the caller's cancel)
    timeouts   every call has its own fixed timeout (``--hop-timeout``), unrelated to the
               caller's; a tier still keeps going after its caller has gone
    deadlines  every call carries the caller's deadline on (``grpc-timeout``), and a caller's
               cancel cancels the work below it

On SIGTERM it writes ``--stats``: for each request C saw, when it started and stopped working
(``time.monotonic()``) and whether it finished.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from demo_services.proto.hello_pb2 import HelloReply, HelloRequest
from mesh.address import host_port
from mesh.grpc import Cardinality, Channel, Context, GrpcServer
from mesh.http2 import serve
from mesh.loop import run

SAY_HELLO = "/hello.Greeter/SayHello"
MODES = ("none", "timeouts", "deadlines")


class Chain:
    """The three tiers and C's record of its work."""

    def __init__(self, mode: str, hop_timeout: float, b_via: tuple[str, int],
                 c_via: tuple[str, int]) -> None:
        self.mode = mode
        self.hop_timeout = hop_timeout
        self.to_b = Channel(*b_via, authority="b").unary_unary(SAY_HELLO, HelloReply.FromString)
        self.to_c = Channel(*c_via, authority="c").unary_unary(SAY_HELLO, HelloReply.FromString)
        self.work: dict[str, dict[str, Any]] = {}

    def forwarder(self, call: Callable[..., Awaitable[HelloReply]]
                  ) -> Callable[[HelloRequest, Context], Awaitable[HelloReply]]:
        async def forward(request: HelloRequest, context: Context) -> HelloReply:
            if self.mode == "deadlines":
                return await call(request, deadline=context.deadline)
            options = {"timeout": self.hop_timeout} if self.mode == "timeouts" else {}
            # Not tied to our caller: if it goes away, the call below goes on regardless.
            task = asyncio.ensure_future(call(request, **options))
            task.add_done_callback(_retrieve)
            return await asyncio.shield(task)
        return forward

    async def stall(self, request: HelloRequest, context: Context) -> HelloReply:
        record = self.work[request.name] = {"start": time.monotonic(), "end": None,
                                            "finished": False}
        try:
            await asyncio.sleep(request.delay_ms / 1000)  # the work; a cancel stops it
            record["finished"] = True
            return HelloReply(message=f"done {request.name}")
        finally:
            record["end"] = time.monotonic()


def _retrieve(task: asyncio.Future[HelloReply]) -> None:
    if not task.cancelled():
        task.exception()  # nobody waits for an abandoned call: collect its error quietly


async def serve_chain(args: argparse.Namespace) -> None:
    chain = Chain(args.mode, args.hop_timeout, args.a_sidecar, args.b_sidecar)
    servers = []
    for address, handler in ((args.a, chain.forwarder(chain.to_b)),
                             (args.b, chain.forwarder(chain.to_c)), (args.c, chain.stall)):
        grpc = GrpcServer()
        grpc.add(SAY_HELLO, Cardinality.UNARY_UNARY, HelloRequest.FromString, handler)
        servers.append(await serve(grpc.handle, *address))
    print(f"chain ready ({args.mode})", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    now = time.monotonic()
    for record in chain.work.values():
        if record["end"] is None:
            record["end"] = now  # still working when stopped
    args.stats.write_text(json.dumps(chain.work))
    for server in servers:
        await server.shutdown(grace=0.1)



def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.chain",
                                     description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--mode", choices=MODES, required=True)
    parser.add_argument("--hop-timeout", type=float, default=1.0,
                        help="mode timeouts: each call's own timeout, seconds")
    for tier in ("a", "b", "c"):
        parser.add_argument(f"--{tier}", type=host_port, required=True,
                            help=f"where tier {tier.upper()} listens (h2c)")
    parser.add_argument("--a-sidecar", type=host_port, required=True,
                        help="A's sidecar outbound listener (A calls b through it)")
    parser.add_argument("--b-sidecar", type=host_port, required=True,
                        help="B's sidecar outbound listener (B calls c through it)")
    parser.add_argument("--stats", type=Path, required=True, help="where C's record goes")
    run(serve_chain(parser.parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

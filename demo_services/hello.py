"""The mTLS gRPC hello: two processes, a mesh CA, and every call shape over HTTP/2 + mTLS.

    python -m demo_services.hello            # the whole demo: CA, certificates, server, calls
    python -m demo_services.hello serve --cert C --key K --ca CA [--port 50051]

The demo makes a mesh CA and two workload certificates (SPIFFE IDs ``.../sa/greeter`` and
``.../sa/client``), starts the greeter in its own process, then calls it from this one and
narrates what happened: who each side authenticated, what a fresh connection cost against
multiplexed calls on the pooled one, streaming, an error status, a deadline, and a client from
another CA being refused at the handshake.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import ssl
import statistics
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

from certs import pki
from demo_services.greeter import greeter
from demo_services.proto.hello_pb2 import HelloReply, HelloRequest
from mesh.grpc import Channel, GrpcError, GrpcServer
from mesh.http2 import serve
from mesh.identity import SpiffeId
from mesh.loop import run
from mesh.tls import client_context, peer_spiffe_id, server_context

STATE = Path(".mesh/hello-demo")
SAY_HELLO = "/hello.Greeter/SayHello"


def make_pki(directory: Path) -> None:
    """A fresh mesh CA with certificates for the greeter and the client, and a rogue CA."""
    ca = pki.create_ca(trust_domain="cluster.local")
    pki.write_ca(ca, directory, overwrite=True)
    for service in ("greeter", "client"):
        spiffe = SpiffeId(trust_domain="cluster.local", namespace="demo", service=service)
        pki.write_workload(pki.issue_workload(ca, spiffe, timedelta(hours=1)), directory)
    rogue_ca = pki.create_ca(trust_domain="cluster.local")
    spiffe = SpiffeId(trust_domain="cluster.local", namespace="demo", service="client")
    rogue = pki.issue_workload(rogue_ca, spiffe, timedelta(hours=1))
    pki.write_workload(rogue, directory / "rogue")


async def serve_greeter(cert: str, key: str, ca: str, host: str, port: int) -> None:
    server = await serve(greeter(GrpcServer()).handle, host, port,
                         ssl=server_context(cert, key, ca))
    print(f"greeter: serving gRPC over HTTP/2 + mTLS on {host}:{server.port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.shutdown(grace=2.0)
    print("greeter: drained and stopped", flush=True)


async def call_greeter(directory: Path, port: int) -> None:
    def context(prefix: Path) -> ssl.SSLContext:
        return client_context(prefix / "client.crt", prefix / "client.key",
                              directory / "ca.crt")

    channel = Channel("127.0.0.1", port, ssl=context(directory), authority="greeter")
    say_hello = channel.unary_unary(SAY_HELLO, HelloReply.FromString)

    started = time.perf_counter()
    reply = await say_hello(HelloRequest(name="mesh"), timeout=5.0)
    first = time.perf_counter() - started
    conn = await channel.connection()
    server_id = peer_spiffe_id(conn.ssl_object) if conn.ssl_object else None
    print(f"1. unary call: {reply.message!r}")
    print(f"   the client verified the server as {server_id}")
    print(f"   the server verified the client as {reply.peer}")
    print(f"   first call, with TCP + TLS 1.3 handshakes: {first * 1000:.1f} ms")

    async def timed() -> float:
        t0 = time.perf_counter()
        await say_hello(HelloRequest(name="again"), timeout=5.0)
        return time.perf_counter() - t0

    t0 = time.perf_counter()
    latencies = await asyncio.gather(*(timed() for _ in range(200)))
    wall = time.perf_counter() - t0
    print(f"2. 200 concurrent calls multiplexed on the same connection: {wall * 1000:.0f} ms "
          f"in all, p50 {statistics.median(latencies) * 1000:.1f} ms; streams opened on it: "
          f"{conn.streams_opened}, connections: 1")

    many = channel.unary_stream("/hello.Greeter/SayHelloMany", HelloReply.FromString)
    replies = [r.message async for r in many(HelloRequest(name="stream", count=3))]
    print(f"3. server streaming: {replies}")

    async with channel.stream_stream("/hello.Greeter/Chat", HelloReply.FromString)() as chat:
        for name in ("ada", "grace"):
            await chat.send(HelloRequest(name=name))
            answer = await chat.receive()
            print(f"4. bidirectional: sent {name!r}, got {answer.message if answer else None!r}")
        await chat.done_writing()
        await chat.receive()

    try:
        await say_hello(HelloRequest(name="x", fail_code=9, fail_message="out of stock"))
    except GrpcError as error:
        print(f"5. error status survives the trip: {error.code.name} {error.message!r}")

    t0 = time.perf_counter()
    try:
        await say_hello(HelloRequest(name="slow", delay_ms=1000), timeout=0.1)
    except GrpcError as error:
        print(f"6. deadline: {error.code.name} after {(time.perf_counter() - t0) * 1000:.0f} ms "
              f"(the server was asked to take 1000 ms; its handler was cancelled)")
    await channel.close()

    rogue = Channel("127.0.0.1", port, ssl=context(directory / "rogue"), authority="greeter")
    try:
        await rogue.unary_unary(SAY_HELLO, HelloReply.FromString)(HelloRequest(name="rogue"),
                                                                 timeout=2.0)
        print("7. UNEXPECTED: a client from another CA got an answer")
    except (GrpcError, ssl.SSLError, ConnectionError) as error:
        print(f"7. a client whose certificate comes from another CA is refused at the TLS "
              f"handshake: {error}")
    await rogue.close()


def demo() -> int:
    STATE.mkdir(parents=True, exist_ok=True)
    make_pki(STATE)
    port = 50051
    print(f"mesh CA and certificates written to {STATE}/ (keys mode 0600)")
    server = subprocess.Popen(
        [sys.executable, "-m", "demo_services.hello", "serve", "--port", str(port),
         "--cert", str(STATE / "greeter.crt"), "--key", str(STATE / "greeter.key"),
         "--ca", str(STATE / "ca.crt")], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        print(server.stdout.readline().rstrip())
        run(call_greeter(STATE, port))
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            out, _ = server.communicate(timeout=10)
            print(out.rstrip() or f"greeter exited with status {server.returncode}")
        except subprocess.TimeoutExpired:
            server.kill()
    return 0 if server.returncode == 0 else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    sub = parser.add_subparsers(dest="command")
    serve_cmd = sub.add_parser("serve", help="run the greeter (gRPC over mTLS)")
    serve_cmd.add_argument("--cert", required=True)
    serve_cmd.add_argument("--key", required=True)
    serve_cmd.add_argument("--ca", required=True)
    serve_cmd.add_argument("--host", default=os.environ.get("GREETER_HOST", "127.0.0.1"))
    serve_cmd.add_argument("--port", type=int, default=int(os.environ.get("GREETER_PORT",
                                                                         "50051")))
    args = parser.parse_args(argv)
    if args.command == "serve":
        run(serve_greeter(args.cert, args.key, args.ca, args.host, args.port))
        return 0
    return demo()


if __name__ == "__main__":
    sys.exit(main())

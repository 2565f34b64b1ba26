"""The apps behind the sidecars in these tests, served in the test's own event loop.

- :class:`Greeter`: the hello Greeter in ``grpcio`` (h2c), the app behind sidecar B. It echoes
  payloads, fails on request, sleeps on request, and records what it saw: the caller's
  ``x-forwarded-client-cert`` and ``x-forwarded-for``, the time left on its deadline, and
  whether a slow call was cancelled.
- :class:`WebApp`: an aiohttp HTTP/1.1 app behind sidecars W1 and W2. ``/echo`` answers with
  the request as JSON, ``/slow?ms=N`` sleeps (and records a cancellation when the sidecar hangs
  up), and every request is counted, so tests can see which backend a request reached.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator
from typing import Any

import grpc
from aiohttp import web

from demo_services.proto import hello_pb2_grpc
from demo_services.proto.hello_pb2 import HelloReply, HelloRequest

MIB = 1024 * 1024
MAX_MESSAGE = 8 * MIB  # the apps and clients take 4 MiB messages, once framed
GRPCIO_LIMITS = [("grpc.max_send_message_length", MAX_MESSAGE),
                 ("grpc.max_receive_message_length", MAX_MESSAGE)]
GRPCIO_CODES = {code.value[0]: code for code in grpc.StatusCode}


class Greeter(hello_pb2_grpc.GreeterServicer):
    """The Greeter in grpcio, recording what each call looked like on arrival."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []  # per SayHello: metadata and time remaining
        self.cancelled: asyncio.Queue[str] = asyncio.Queue()  # names of cancelled calls

    async def SayHello(self, request: HelloRequest, context: Any) -> HelloReply:
        metadata = {k: v for k, v in context.invocation_metadata()
                    if isinstance(v, str)}
        self.calls.append({"name": request.name, "metadata": metadata,
                           "time_remaining": context.time_remaining()})
        if request.delay_ms:
            try:
                await asyncio.sleep(request.delay_ms / 1000)
            except asyncio.CancelledError:
                self.cancelled.put_nowait(request.name)
                raise
        if request.fail_code:
            await context.abort(GRPCIO_CODES[request.fail_code], request.fail_message)
        return HelloReply(message=f"hi {request.name}", payload=request.payload,
                          peer=metadata.get("x-forwarded-client-cert", ""))

    async def SayHelloToAll(self, requests: Any, context: Any) -> HelloReply:
        names = [request.name async for request in requests]
        return HelloReply(message=f"hi {', '.join(names)}")

    async def Chat(self, requests: Any, context: Any) -> AsyncIterator[HelloReply]:
        async for request in requests:
            if request.fail_code:
                await context.abort(GRPCIO_CODES[request.fail_code], request.fail_message)
            yield HelloReply(message=f"hi {request.name}", payload=request.payload)

    def call_named(self, name: str) -> dict[str, Any]:
        """The last SayHello called with ``name``."""
        return next(call for call in reversed(self.calls) if call["name"] == name)


async def start_greeter(host: str, port: int) -> tuple[Any, Greeter]:
    """A started grpcio server (h2c) with a :class:`Greeter`; stop it with ``stop(None)``."""
    servicer = Greeter()
    server = grpc.aio.server(options=GRPCIO_LIMITS)
    hello_pb2_grpc.add_GreeterServicer_to_server(servicer, server)
    server.add_insecure_port(f"{host}:{port}")
    await server.start()
    return server, servicer


class WebApp:
    """An HTTP/1.1 app that counts what it serves; ``name`` tells backends apart."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.hits = 0
        self.requests: dict[str, dict[str, Any]] = {}  # by the caller's x-test-id
        self.cancelled: asyncio.Queue[str] = asyncio.Queue()  # x-test-id of cancelled calls

    def application(self) -> web.Application:
        app = web.Application()
        app.add_routes([web.get("/", self.root), web.route("*", "/echo", self.echo),
                        web.get("/slow", self.slow), web.get("/admin/{rest:.*}", self.root)])
        return app

    def _record(self, request: web.Request) -> None:
        self.hits += 1
        test_id = request.headers.get("x-test-id")
        if test_id is not None:
            self.requests[test_id] = {"headers": dict(request.headers), "path": request.path_qs}

    async def root(self, request: web.Request) -> web.Response:
        self._record(request)
        return web.Response(text=f"{self.name}\n")

    async def echo(self, request: web.Request) -> web.Response:
        self._record(request)
        body = await request.read()
        return web.json_response({
            "app": self.name, "method": request.method, "path": request.path_qs,
            "version": f"{request.version.major}.{request.version.minor}",
            "headers": {k.lower(): v for k, v in request.headers.items()},
            "forwarded_for": request.headers.getall("x-forwarded-for", []),
            "body_sha256": hashlib.sha256(body).hexdigest(), "body_length": len(body)},
            dumps=lambda data: json.dumps(data, sort_keys=True))

    async def slow(self, request: web.Request) -> web.Response:
        self._record(request)
        try:
            await asyncio.sleep(int(request.query["ms"]) / 1000)
        except asyncio.CancelledError:
            self.cancelled.put_nowait(request.headers.get("x-test-id", ""))
            raise
        return web.Response(text="slow\n")


async def start_web(app: WebApp, host: str, port: int) -> web.AppRunner:
    """Serve ``app`` on ``host:port``; a handler is cancelled when its client hangs up."""
    runner = web.AppRunner(app.application(), access_log=None, handler_cancellation=True)
    await runner.setup()
    await web.TCPSite(runner, host, port, reuse_address=True).start()
    return runner

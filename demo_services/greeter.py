"""The hello service (``demo_services/proto/hello.proto``) served with ``mesh.grpc``.

Every call shape in a few lines each; the request's fields let callers ask for a delay, a
failure status or a number of replies, so tests and the demo can make it misbehave on purpose.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from demo_services.proto.hello_pb2 import HelloReply, HelloRequest
from mesh.grpc import Cardinality, Context, GrpcError, GrpcServer, StatusCode
from mesh.tls import peer_spiffe_id

SERVICE = "/hello.Greeter/"


def _peer(context: Context) -> str:
    ssl_object = context.ssl_object
    identity = peer_spiffe_id(ssl_object) if ssl_object is not None else None
    return str(identity) if identity is not None else "plaintext"


async def _behave(request: HelloRequest) -> None:
    if request.delay_ms:
        await asyncio.sleep(request.delay_ms / 1000)
    if request.fail_code:
        raise GrpcError(StatusCode(request.fail_code), request.fail_message)


async def say_hello(request: HelloRequest, context: Context) -> HelloReply:
    await _behave(request)
    return HelloReply(message=f"hello, {request.name}", payload=request.payload,
                      peer=_peer(context), deadline=context.header("grpc-timeout") or "")


async def say_hello_many(request: HelloRequest, context: Context) -> AsyncIterator[HelloReply]:
    for i in range(request.count):
        await _behave(request)
        yield HelloReply(message=f"hello #{i}, {request.name}", peer=_peer(context))


async def say_hello_to_all(requests: AsyncIterator[HelloRequest],
                           context: Context) -> HelloReply:
    names = []
    async for request in requests:
        await _behave(request)
        names.append(request.name)
    return HelloReply(message=f"hello, {', '.join(names)}", peer=_peer(context))


async def chat(requests: AsyncIterator[HelloRequest],
               context: Context) -> AsyncIterator[HelloReply]:
    async for request in requests:
        await _behave(request)
        yield HelloReply(message=f"hello, {request.name}", payload=request.payload,
                         peer=_peer(context))


def greeter(server: GrpcServer) -> GrpcServer:
    """Register the Greeter's four methods on ``server`` and return it."""
    parse = HelloRequest.FromString
    server.add(SERVICE + "SayHello", Cardinality.UNARY_UNARY, parse, say_hello)
    server.add(SERVICE + "SayHelloMany", Cardinality.UNARY_STREAM, parse, say_hello_many)
    server.add(SERVICE + "SayHelloToAll", Cardinality.STREAM_UNARY, parse, say_hello_to_all)
    server.add(SERVICE + "Chat", Cardinality.STREAM_STREAM, parse, chat)
    return server

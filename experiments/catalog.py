"""The catalog service twice: gRPC (protobuf over HTTP/2) and REST (JSON over HTTP/1.1).

    python -m experiments.catalog grpc HOST:PORT     # mesh/grpc server, h2c
    python -m experiments.catalog rest HOST:PORT     # aiohttp server, HTTP/1.1

Both answer "product by id" with the same product, built from the id alone
(:func:`product`), so a comparison measures protocol and encoding, not the work:

    gRPC  POST /catalog.Catalog/GetProduct   ProductRequest{id}  →  Product
    REST  GET  /products/{id}                                    →  the Product as JSON
"""

from __future__ import annotations

import asyncio
import signal
import sys
from typing import Any

from aiohttp import web
from google.protobuf.json_format import MessageToDict

from experiments.proto.catalog_pb2 import Product, ProductRequest
from mesh.grpc import Cardinality, Context, GrpcServer
from mesh.http2 import serve
from mesh.loop import run

GET_PRODUCT = "/catalog.Catalog/GetProduct"
WORDS = ("light", "sturdy", "blue", "oak", "steel", "compact", "quiet", "warm", "classic",
         "modular", "folding", "cordless")


def product(product_id: int) -> Product:
    """The product with this id: the same fields and sizes for every protocol."""
    word = WORDS[product_id % len(WORDS)]
    return Product(
        id=product_id, name=f"{word.title()} desk lamp #{product_id}",
        description=(f"A {word} lamp for reading and work. Adjustable arm, warm LED, "
                     f"two-year warranty. Ships in recycled packaging. Item {product_id}."),
        price_cents=1999 + product_id % 5000, currency="EUR",
        tags=[WORDS[(product_id + i) % len(WORDS)] for i in range(5)],
        stock=product_id % 97, rating=3.5 + (product_id % 15) / 10,
        related_ids=[product_id + i for i in range(1, 9)])


def product_json(product_id: int) -> dict[str, Any]:
    """The product as REST returns it (protobuf's canonical JSON mapping)."""
    return MessageToDict(product(product_id), preserving_proto_field_name=True,
                         always_print_fields_with_no_presence=True)


async def get_product(request: ProductRequest, context: Context) -> Product:
    return product(request.id)


async def rest_product(request: web.Request) -> web.Response:
    try:
        product_id = int(request.match_info["id"])
    except ValueError:
        return web.json_response({"error": "id must be an integer"}, status=400)
    return web.json_response(product_json(product_id))


async def serve_catalog(kind: str, host: str, port: int) -> None:
    if kind == "grpc":
        grpc = GrpcServer()
        grpc.add(GET_PRODUCT, Cardinality.UNARY_UNARY, ProductRequest.FromString, get_product)
        server = await serve(grpc.handle, host, port)
    else:
        app = web.Application()
        app.router.add_get("/products/{id}", rest_product)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, host, port).start()
    print(f"catalog ({kind}) ready on {host}:{port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    if kind == "grpc":
        await server.shutdown(grace=0.5)
    else:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or args[0] not in ("grpc", "rest") or ":" not in args[1]:
        print("usage: python -m experiments.catalog grpc|rest HOST:PORT", file=sys.stderr)
        return 2
    host, _, port = args[1].rpartition(":")
    if not port.isdigit():
        print(f"catalog: port must be a number, got {port!r}", file=sys.stderr)
        return 2
    run(serve_catalog(args[0], host, int(port)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

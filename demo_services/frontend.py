"""The shop's front end (HTTP/JSON, aiohttp): list products, place orders.

    GET  /products                                 the catalogue (from inventory)
    POST /orders   {"sku": "tea", "quantity": 2}   201 with the order (orders → inventory,
                                                   payments), naming every replica that served it

    python -m demo_services.frontend --listen 127.0.10.10:8080 --admin 127.0.10.10:8081 \\
        --sidecar 127.0.10.10:15001 --replica frontend-1

Callers reach it through the mesh (their sidecar, ``Host: frontend``); it speaks HTTP/1.1 to
its own sidecar's inbound side, and gRPC over h2c to its sidecar's outbound side. The caller's
deadline arrives as ``x-mesh-timeout-ms`` and bounds the gRPC calls made for it. gRPC statuses
become HTTP ones the usual way (UNAVAILABLE 503, DEADLINE_EXCEEDED 504, NOT_FOUND 404,
INVALID_ARGUMENT 400, FAILED_PRECONDITION 409).
"""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from typing import Any

from aiohttp import web
from google.protobuf.json_format import MessageToDict

from demo_services.faults import Faults
from demo_services.proto.shop_pb2 import ListProductsRequest, Order, PlaceOrderRequest, ProductList
from demo_services.service import (
    ServiceOptions,
    channel_to,
    new_faults,
    options_from_command_line,
    remaining,
    run_http,
)
from mesh.grpc import GrpcError, StatusCode
from mesh.loop import run

DEFAULT_TIMEOUT = 2.0  # seconds, when the caller sent no deadline
TIMEOUT_HEADER = "x-mesh-timeout-ms"
MAX_QUANTITY = 100  # per order

HTTP_STATUS = {
    StatusCode.UNAVAILABLE: 503,
    StatusCode.DEADLINE_EXCEEDED: 504,
    StatusCode.NOT_FOUND: 404,
    StatusCode.INVALID_ARGUMENT: 400,
    StatusCode.FAILED_PRECONDITION: 409,
    StatusCode.PERMISSION_DENIED: 403,
    StatusCode.RESOURCE_EXHAUSTED: 429,
}


def _json(message: Any) -> dict[str, Any]:
    return MessageToDict(message, preserving_proto_field_name=True,
                         always_print_fields_with_no_presence=True)


def _error(status: int, message: str, replica: str) -> web.Response:
    return web.json_response({"error": message, "replica": replica}, status=status)


def _timeout(request: web.Request) -> float:
    header = request.headers.get(TIMEOUT_HEADER)
    if header is not None and header.isdigit():
        return int(header) / 1000
    return DEFAULT_TIMEOUT


class Frontend:
    """The HTTP handlers and the gRPC channels (through the sidecar) behind them."""

    def __init__(self, options: ServiceOptions, faults: Faults) -> None:
        self.replica = options.replica
        self.faults = faults
        self.orders = channel_to(options, "orders")
        self.inventory = channel_to(options, "inventory")
        self._place = self.orders.unary_unary("/shop.Orders/PlaceOrder", Order.FromString)
        self._list = self.inventory.unary_unary("/shop.Inventory/ListProducts",
                                                ProductList.FromString)

    async def _misbehave(self) -> web.Response | None:
        verdict = self.faults.decide()
        if verdict.delay:
            await asyncio.sleep(verdict.delay)
        if verdict.fail:
            return _error(503, f"{self.replica}: injected failure ({verdict.reason})",
                          self.replica)
        return None

    async def products(self, request: web.Request) -> web.Response:
        if (failed := await self._misbehave()) is not None:
            return failed
        try:
            listing = await self._list(ListProductsRequest(),
                                       timeout=remaining(_timeout(request)))
        except GrpcError as error:
            return _error(HTTP_STATUS.get(error.code, 502), f"inventory: {error.message}",
                          self.replica)
        return web.json_response({**_json(listing), "frontend_replica": self.replica})

    async def place_order(self, request: web.Request) -> web.Response:
        if (failed := await self._misbehave()) is not None:
            return failed
        try:
            body = await request.json() if request.can_read_body else {}
        except json.JSONDecodeError as error:
            return _error(400, f"POST /orders: body is not JSON: {error}", self.replica)
        if not isinstance(body, dict):
            return _error(400, f"POST /orders: want a JSON object, got {body!r}", self.replica)
        sku, quantity = body.get("sku"), body.get("quantity", 1)
        if not isinstance(sku, str) or not sku:
            return _error(400, "POST /orders: sku (a string) is required", self.replica)
        if not isinstance(quantity, int) or isinstance(quantity, bool) or \
                not 1 <= quantity <= MAX_QUANTITY:
            return _error(400, f"POST /orders: quantity {quantity!r}: want an integer within "
                               f"1..{MAX_QUANTITY}", self.replica)
        order_id = uuid.uuid4().hex  # chosen here, so every retry below carries the same id
        try:
            order = await self._place(PlaceOrderRequest(order_id=order_id, sku=sku,
                                                        quantity=quantity),
                                      timeout=remaining(_timeout(request)))
        except GrpcError as error:
            return _error(HTTP_STATUS.get(error.code, 502), f"orders: {error.message}",
                          self.replica)
        return web.json_response({**_json(order), "frontend_replica": self.replica},
                                 status=201)

    def app(self) -> web.Application:
        app = web.Application()
        app.add_routes([web.get("/products", self.products),
                        web.post("/orders", self.place_order)])
        return app

    async def close(self) -> None:
        await self.orders.close()
        await self.inventory.close()


async def main_async(options: ServiceOptions) -> int:
    faults = new_faults(options)
    frontend = Frontend(options, faults)
    return await run_http(options, frontend.app(), faults, [frontend.close])


def main(argv: list[str] | None = None) -> int:
    return run(main_async(options_from_command_line("frontend", calls_others=True,
                                                    argv=argv)))


if __name__ == "__main__":
    sys.exit(main())

"""The inventory service (gRPC): the catalogue, and reservations of stock for orders.

    python -m demo_services.inventory --listen 127.0.10.31:8080 --admin 127.0.10.31:8081 \\
        --replica inventory-1

Each replica keeps its own stock (plenty of it: the demo is about traffic, not running out).
``Reserve`` is idempotent per order id on a replica — a retry of the same order that lands on
the same replica gets the same reservation back — because the mesh retries gRPC calls and a
service must be ready for that. (A real shop would keep reservations in a shared store so any
replica would recognise the retry.)
"""

from __future__ import annotations

import sys
from collections import OrderedDict

from demo_services.faults import Faults
from demo_services.proto.shop_pb2 import (
    ListProductsRequest,
    Product,
    ProductList,
    Reservation,
    ReserveRequest,
)
from demo_services.service import (
    ServiceOptions,
    carry_out,
    new_faults,
    options_from_command_line,
    run_grpc,
)
from mesh.grpc import Cardinality, Context, GrpcError, GrpcServer, StatusCode
from mesh.loop import run

SERVICE = "/shop.Inventory/"
CATALOGUE = (  # sku, name, price in cents
    ("tea", "a tin of green tea", 650),
    ("mug", "a blue mug", 1200),
    ("kettle", "an electric kettle", 3900),
    ("teapot", "a cast-iron teapot", 4500),
    ("cookies", "a box of shortbread", 480),
)
STOCK = 1_000_000  # per product and replica
REMEMBERED = 10_000  # reservations kept for idempotency (oldest forgotten first)


class Inventory:
    """One replica's stock and reservations."""

    def __init__(self, replica: str, faults: Faults) -> None:
        self.replica = replica
        self.faults = faults
        self.prices = {sku: price for sku, _, price in CATALOGUE}
        self.stock = {sku: STOCK for sku, _, _ in CATALOGUE}
        self.reservations: OrderedDict[str, Reservation] = OrderedDict()

    async def list_products(self, _: ListProductsRequest, context: Context) -> ProductList:
        await carry_out(self.faults.decide(), self.replica)
        return ProductList(replica=self.replica, products=[
            Product(sku=sku, name=name, price_cents=price, stock=self.stock[sku])
            for sku, name, price in CATALOGUE])

    async def reserve(self, request: ReserveRequest, context: Context) -> Reservation:
        await carry_out(self.faults.decide(), self.replica)
        if request.sku not in self.prices:
            raise GrpcError(StatusCode.NOT_FOUND, f"no product {request.sku!r} (have "
                                                  f"{', '.join(self.prices)})")
        if request.quantity <= 0:
            raise GrpcError(StatusCode.INVALID_ARGUMENT,
                            f"quantity {request.quantity}: must be positive")
        if not request.order_id:
            raise GrpcError(StatusCode.INVALID_ARGUMENT, "order_id is required")
        known = self.reservations.get(request.order_id)
        if known is not None:
            return known  # a retry of an order this replica already reserved
        if self.stock[request.sku] < request.quantity:
            raise GrpcError(StatusCode.FAILED_PRECONDITION,
                            f"out of stock: {request.sku} has {self.stock[request.sku]}")
        self.stock[request.sku] -= request.quantity
        reservation = Reservation(reservation_id=f"res-{self.replica}-{len(self.reservations)}",
                                  unit_price_cents=self.prices[request.sku],
                                  replica=self.replica)
        self.reservations[request.order_id] = reservation
        if len(self.reservations) > REMEMBERED:
            self.reservations.popitem(last=False)
        return reservation

    def server(self) -> GrpcServer:
        server = GrpcServer()
        server.add(SERVICE + "ListProducts", Cardinality.UNARY_UNARY,
                   ListProductsRequest.FromString, self.list_products)
        server.add(SERVICE + "Reserve", Cardinality.UNARY_UNARY, ReserveRequest.FromString,
                   self.reserve)
        return server


async def main_async(options: ServiceOptions) -> int:
    faults = new_faults(options)
    return await run_grpc(options, Inventory(options.replica, faults).server(), faults)


def main(argv: list[str] | None = None) -> int:
    return run(main_async(options_from_command_line("inventory", calls_others=False,
                                                    argv=argv)))


if __name__ == "__main__":
    sys.exit(main())

"""The orders service (gRPC): places an order by reserving stock, then charging for it.

    python -m demo_services.orders --listen 127.0.10.20:8080 --admin 127.0.10.20:8081 \\
        --sidecar 127.0.10.20:15001 --replica orders-1

Both calls leave through the local sidecar (``:authority`` ``inventory`` and ``payments``), which
picks a replica, retries what the policy allows and holds the deadline. The deadline this call
arrived with is passed on (less a little for the way back), so the callee never works on a call
its caller has already given up on. A failed call below fails the order with the same status:
which layer retries is the policy's choice, not the code's.
"""

from __future__ import annotations

import sys

from demo_services.faults import Faults
from demo_services.proto.shop_pb2 import (
    ChargeRequest,
    Order,
    Payment,
    PlaceOrderRequest,
    Reservation,
    ReserveRequest,
)
from demo_services.service import (
    ServiceOptions,
    carry_out,
    channel_to,
    new_faults,
    options_from_command_line,
    remaining,
    run_grpc,
)
from mesh.grpc import Cardinality, Context, GrpcError, GrpcServer, StatusCode
from mesh.loop import run

SERVICE = "/shop.Orders/"


class Orders:
    """Places orders; holds the channels to its sidecar for inventory and payments."""

    def __init__(self, options: ServiceOptions, faults: Faults) -> None:
        self.replica = options.replica
        self.faults = faults
        self.inventory = channel_to(options, "inventory")
        self.payments = channel_to(options, "payments")
        self._reserve = self.inventory.unary_unary("/shop.Inventory/Reserve",
                                                   Reservation.FromString)
        self._charge = self.payments.unary_unary("/shop.Payments/Charge", Payment.FromString)

    async def place_order(self, request: PlaceOrderRequest, context: Context) -> Order:
        await carry_out(self.faults.decide(), self.replica)
        if not request.order_id:
            raise GrpcError(StatusCode.INVALID_ARGUMENT, "order_id is required")
        try:
            reservation: Reservation = await self._reserve(
                ReserveRequest(order_id=request.order_id, sku=request.sku,
                               quantity=request.quantity),
                timeout=remaining(context.time_remaining()))
        except GrpcError as error:
            raise GrpcError(error.code, f"inventory: {error.message}") from None
        total = reservation.unit_price_cents * request.quantity
        try:
            payment: Payment = await self._charge(
                ChargeRequest(order_id=request.order_id, amount_cents=total),
                timeout=remaining(context.time_remaining()))
        except GrpcError as error:
            raise GrpcError(error.code, f"payments: {error.message}") from None
        return Order(order_id=request.order_id, sku=request.sku, quantity=request.quantity,
                     total_cents=total, reservation_id=reservation.reservation_id,
                     payment_id=payment.payment_id, replica=self.replica,
                     inventory_replica=reservation.replica, payments_replica=payment.replica)

    def server(self) -> GrpcServer:
        server = GrpcServer()
        server.add(SERVICE + "PlaceOrder", Cardinality.UNARY_UNARY,
                   PlaceOrderRequest.FromString, self.place_order)
        return server

    async def close(self) -> None:
        await self.inventory.close()
        await self.payments.close()


async def main_async(options: ServiceOptions) -> int:
    faults = new_faults(options)
    orders = Orders(options, faults)
    return await run_grpc(options, orders.server(), faults, [orders.close])


def main(argv: list[str] | None = None) -> int:
    return run(main_async(options_from_command_line("orders", calls_others=True,
                                                    argv=argv)))


if __name__ == "__main__":
    sys.exit(main())

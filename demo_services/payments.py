"""The payments service (gRPC): charges an order, once.

    python -m demo_services.payments --listen 127.0.10.41:8080 --admin 127.0.10.41:8081 \\
        --replica payments-1

The order id is the idempotency key (as payment providers ask for one): a retried ``Charge``
for an order this replica already charged returns the same payment instead of charging again.
The mesh retries gRPC calls on failures that may have reached the service, so without the key
a retry after a lost reply would take the money twice.
"""

from __future__ import annotations

import sys
from collections import OrderedDict

from demo_services.faults import Faults
from demo_services.proto.shop_pb2 import ChargeRequest, Payment
from demo_services.service import (
    ServiceOptions,
    carry_out,
    new_faults,
    options_from_command_line,
    run_grpc,
)
from mesh.grpc import Cardinality, Context, GrpcError, GrpcServer, StatusCode
from mesh.loop import run

SERVICE = "/shop.Payments/"
REMEMBERED = 10_000  # payments kept for idempotency (oldest forgotten first)


class Payments:
    """One replica's ledger of payments."""

    def __init__(self, replica: str, faults: Faults) -> None:
        self.replica = replica
        self.faults = faults
        self.payments: OrderedDict[str, Payment] = OrderedDict()
        self.charged = 0  # distinct charges taken

    async def charge(self, request: ChargeRequest, context: Context) -> Payment:
        await carry_out(self.faults.decide(), self.replica)
        if not request.order_id:
            raise GrpcError(StatusCode.INVALID_ARGUMENT, "order_id is required")
        if request.amount_cents <= 0:
            raise GrpcError(StatusCode.INVALID_ARGUMENT,
                            f"amount_cents {request.amount_cents}: must be positive")
        known = self.payments.get(request.order_id)
        if known is not None:
            return known  # the same order again: a retry, not a second charge
        self.charged += 1
        payment = Payment(payment_id=f"pay-{self.replica}-{self.charged}",
                          amount_cents=request.amount_cents, replica=self.replica)
        self.payments[request.order_id] = payment
        if len(self.payments) > REMEMBERED:
            self.payments.popitem(last=False)
        return payment

    def server(self) -> GrpcServer:
        server = GrpcServer()
        server.add(SERVICE + "Charge", Cardinality.UNARY_UNARY, ChargeRequest.FromString,
                   self.charge)
        return server


async def main_async(options: ServiceOptions) -> int:
    faults = new_faults(options)
    return await run_grpc(options, Payments(options.replica, faults).server(), faults)


def main(argv: list[str] | None = None) -> int:
    return run(main_async(options_from_command_line("payments", calls_others=False,
                                                    argv=argv)))


if __name__ == "__main__":
    sys.exit(main())

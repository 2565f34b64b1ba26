"""The auditor: a proxyless gRPC client, the one workload of the shop with no sidecar.

Every other service reaches the mesh through its sidecar. The auditor is a plain grpcio
program: its channel's target is ``xds:///inventory``, and grpcio's own xDS client asks the
control plane, over one ADS stream (mTLS, the same port our sidecars use), for the Listener
``inventory``, the RouteConfiguration it names, the Cluster ``inventory`` and its endpoints —
the same clusters and endpoints our sidecars get, translated to Envoy's xDS v3. Nothing of the
mesh runs in this process; it needs only what ``meshctl proxyless auditor`` wrote:

    meshctl proxyless auditor --namespace shop --renew &    # certificate, key, bootstrap.json
    GRPC_XDS_BOOTSTRAP=.mesh/proxyless/shop/auditor/bootstrap.json \\
        python -m demo_services.auditor

What gRPC then does itself, from what the control plane sent:

- **discovery and balancing**: round robin over the inventory replicas (the policy's peak
  EWMA exists in no gRPC; ``meshctl status`` lists what a proxyless client cannot apply);
- **mTLS**: it presents the auditor's certificate (``spiffe://cluster.local/ns/shop/sa/
  auditor``, from the bootstrap's file watcher, which ``--renew`` keeps fresh) and accepts
  only a replica whose certificate proves ``.../sa/inventory``;
- **the cluster's retries** (gRFC A44: on UNAVAILABLE, up to ``num_retries``) and a route's
  fault injection (A33); not its timeout (``meshctl status`` says why), so each call carries
  its own deadline.

What stays with the callee: inventory's sidecars still decide who may call what (the shop's
policy lets the auditor list products, not reserve them): take the auditor out of inventory's
rules and its next call is PERMISSION_DENIED.

Every ``--interval`` seconds it calls ``/shop.Inventory/ListProducts`` and logs one line: the
replica that answered and the stock it holds, or the status of a failed call.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import time

import grpc
import grpc.experimental

from demo_services.proto.shop_pb2 import ListProductsRequest, ProductList

log = logging.getLogger("demo_services.auditor")

LIST_PRODUCTS = "/shop.Inventory/ListProducts"
CALL_TIMEOUT = 1.0  # seconds: inventory's timeout in the shop's policy


async def audit(target: str, interval: float) -> None:
    """Call ListProducts on ``target`` every ``interval`` seconds, logging each answer."""
    credentials = grpc.xds_channel_credentials(grpc.experimental.insecure_channel_credentials())
    async with grpc.aio.secure_channel(target, credentials) as channel:
        list_products = channel.unary_unary(
            LIST_PRODUCTS, request_serializer=ListProductsRequest.SerializeToString,
            response_deserializer=ProductList.FromString)
        while True:
            started = time.monotonic()
            try:
                products = await list_products(ListProductsRequest(), timeout=CALL_TIMEOUT)
            except grpc.aio.AioRpcError as error:
                log.warning("%s: %s: %s", target, error.code().name, error.details())
            else:
                stock = sum(p.stock for p in products.products)
                log.info("%s: %s answered in %.1f ms: %d products, %d in stock", target,
                         products.replica, (time.monotonic() - started) * 1000,
                         len(products.products), stock)
            await asyncio.sleep(interval)


async def main_async(target: str, interval: float) -> int:
    task = asyncio.current_task()
    assert task is not None
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, task.cancel)
    try:
        await audit(target, interval)
    except asyncio.CancelledError:
        log.info("stopped")
    return 0


def main(argv: list[str] | None = None) -> int:
    env = os.environ.get
    p = argparse.ArgumentParser(prog="python -m demo_services.auditor", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", default=env("DEMO_AUDIT_TARGET", "xds:///inventory"),
                   help="the channel's target (default xds:///inventory) [DEMO_AUDIT_TARGET]")
    p.add_argument("--interval", type=float, default=float(env("DEMO_AUDIT_INTERVAL", "1")),
                   help="seconds between calls (default 1) [DEMO_AUDIT_INTERVAL]")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not env("GRPC_XDS_BOOTSTRAP"):
        print("auditor: GRPC_XDS_BOOTSTRAP is not set: run `meshctl proxyless auditor "
              "--namespace shop` and export what it prints", file=sys.stderr)
        return 2
    return asyncio.run(main_async(args.target, args.interval))


if __name__ == "__main__":
    sys.exit(main())

"""N proxyless grpcio channels in one process, each its own xDS client (grpcio only, no mesh code).

grpcio (1.85) keeps one xDS client, and so one ADS stream, per channel *target*: channels to
``xds:///churn-0`` … ``xds:///churn-<N-1>`` are N subscribers, as N proxyless workloads would
be. Each is asked to connect, which starts its resolver: Listener → RouteConfiguration →
Cluster → ClusterLoadAssignment. The process prints ``ready`` and runs until stdin closes.

    GRPC_XDS_BOOTSTRAP=bootstrap.json python -m bench.grpc_xds_clients --count 50 --prefix churn
"""

from __future__ import annotations

import argparse
import sys

import grpc
import grpc.experimental


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--prefix", default="churn")
    args = parser.parse_args()
    credentials = grpc.xds_channel_credentials(grpc.experimental.insecure_channel_credentials())
    channels = [grpc.secure_channel(f"xds:///{args.prefix}-{i}", credentials)
                for i in range(args.count)]
    for channel in channels:
        channel.subscribe(lambda _state: None, try_to_connect=True)
    print("ready", flush=True)  # subscribing: the driver watches the control plane's status
    sys.stdin.read()
    for channel in channels:
        channel.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

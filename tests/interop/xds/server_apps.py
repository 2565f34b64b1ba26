"""A proxyless gRPC server: grpcio and the generated hello stubs, nothing else of the mesh.

    GRPC_XDS_BOOTSTRAP=DIR/bootstrap.json \\
        python tests/interop/xds/server_apps.py --service greeter --listen 127.0.0.1:50051

It serves ``hello.Greeter/SayHello`` with ``grpc.server(..., xds=True)`` (``grpc.aio`` has no
xDS server) and ``grpc.xds_server_credentials``: everything about security comes from the
control plane, in the Listener ``mesh/inbound/<address>`` grpcio asks for: the certificate it
presents and the client certificate it requires (the bootstrap's ``mesh`` file-watcher
provider), and the RBAC filter that decides who may call. The fallback credentials
(plaintext) would apply only to a Listener without a TLS context; the mesh never sends one.

Every reply says who answered (``message``: the service and address) and who called
(``peer``: the SPIFFE ID gRPC read from the caller's certificate). Once started it prints
``serving on HOST:PORT`` and serves until SIGTERM. The port must be given: an xDS server asks
for its Listener by the address it was given, before it binds (``:0`` would ask for port 0).
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import grpc

from demo_services.proto import hello_pb2_grpc
from demo_services.proto.hello_pb2 import HelloReply, HelloRequest


class Greeter(hello_pb2_grpc.GreeterServicer):
    """SayHello that names the server and the caller it saw."""

    def __init__(self, service: str) -> None:
        self.service = service
        self.address = ""  # set once bound

    def SayHello(self, request: HelloRequest,
                 context: grpc.ServicerContext) -> HelloReply:
        caller = context.auth_context().get("peer_spiffe_id", [b""])[0].decode()
        return HelloReply(message=f"hello {request.name} from {self.service} at {self.address}",
                          peer=caller)


def serve(service: str, listen: str) -> None:
    """Serve until SIGTERM or SIGINT."""
    server = grpc.server(ThreadPoolExecutor(max_workers=4), xds=True)
    greeter = Greeter(service)
    hello_pb2_grpc.add_GreeterServicer_to_server(greeter, server)
    server.add_secure_port(listen,
                           grpc.xds_server_credentials(grpc.insecure_server_credentials()))
    greeter.address = listen
    stopped = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopped.set())
    server.start()
    print(f"serving on {greeter.address}", flush=True)
    stopped.wait()
    server.stop(grace=1.0).wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--service", required=True, help="named in every reply")
    parser.add_argument("--listen", required=True, help="HOST:PORT")
    args = parser.parse_args()
    serve(args.service, args.listen)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A proxyless gRPC client: grpcio's own xDS client, and nothing of the mesh in its process.

    GRPC_XDS_BOOTSTRAP=DIR/bootstrap.json python tests/interop/xds/grpcio_client.py

It reads one command per line on stdin (JSON) and answers each with one line on stdout (JSON),
so a test keeps one process and its warm channels (each with its xDS stream: grpcio keeps one
per target) across its commands::

    {"target": "echo", "calls": 30, "concurrency": 10, "order": {"fail": ["b3"]},
     "header": "x-user", "values": ["u1", "u2"], "timeout": 5}
    → {"results": [["u1", "b1", "OK", 3.2, ""], ["u2", "", "UNAVAILABLE", 1.9, "..."], ...]}

Each call is the unary method ``/test.Echo/Who`` on a channel to ``xds:///<target>`` (one per
target, made on first use) with ``grpc.xds_channel_credentials``: the control plane says where
to go and how to do mTLS. Requests and replies are raw bytes (no generated code): the request
is ``order`` as JSON, which the backends read (who fails, who is slow); the reply is the name
of the backend that answered. A result is ``[header value, backend or "", status code name,
milliseconds, the status's details]``, in call order; call ``i`` carries
``header: values[i % len(values)]`` when a header is named. ``{"quit": true}`` (or the end of
stdin) closes the channels and exits.

``{"csds": "HOST:PORT"}`` starts gRPC's CSDS service (gRFC A40, the ``grpcio-csds`` package)
in this process on that address → ``{"csds_port": N}``: what its xDS clients hold, per
resource, as gRPC itself reports it.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from concurrent import futures
from typing import Any

import grpc
import grpc.experimental
import grpc_csds

METHOD = "/test.Echo/Who"


class Client:
    """One channel per target, made on first use and kept."""

    def __init__(self) -> None:
        self.channels: dict[str, grpc.aio.Channel] = {}
        self.servers: list[grpc.Server] = []

    def serve_csds(self, address: str) -> int:
        """CSDS on ``address``; the port it listens on."""
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        grpc_csds.add_csds_servicer(server)
        port: int = server.add_insecure_port(address)
        server.start()
        self.servers.append(server)
        return port

    def method(self, target: str) -> Any:
        channel = self.channels.get(target)
        if channel is None:
            credentials = grpc.xds_channel_credentials(
                grpc.experimental.insecure_channel_credentials())
            channel = self.channels[target] = grpc.aio.secure_channel(f"xds:///{target}",
                                                                      credentials)
        return channel.unary_unary(METHOD, request_serializer=None,
                                   response_deserializer=None)

    async def run(self, command: dict[str, Any]) -> dict[str, Any]:
        call = self.method(command["target"])
        request = json.dumps(command.get("order", {})).encode()
        header, values = command.get("header"), command.get("values") or [""]
        timeout = float(command.get("timeout", 5.0))
        total = int(command.get("calls", 1))
        results: list[list[Any]] = [[] for _ in range(total)]
        indexes = iter(range(total))

        async def worker() -> None:
            for i in indexes:
                value = values[i % len(values)]
                metadata = ((header, value),) if header else None
                started = time.monotonic()
                try:
                    reply = await call(request, metadata=metadata, timeout=timeout)
                    backend, code, details = reply.decode(), "OK", ""
                except grpc.aio.AioRpcError as error:
                    backend, code, details = "", error.code().name, error.details() or ""
                results[i] = [value, backend, code,
                              round((time.monotonic() - started) * 1000, 3), details]

        await asyncio.gather(*(worker() for _ in range(int(command.get("concurrency", 1)))))
        return {"results": results}

    async def close(self) -> None:
        for channel in self.channels.values():
            await channel.close()
        for server in self.servers:
            server.stop(None)


async def main() -> int:
    client = Client()
    loop = asyncio.get_running_loop()
    try:
        while line := await loop.run_in_executor(None, sys.stdin.readline):
            command = json.loads(line)
            if command.get("quit"):
                break
            if "csds" in command:
                print(json.dumps({"csds_port": client.serve_csds(command["csds"])}), flush=True)
                continue
            print(json.dumps(await client.run(command)), flush=True)
    finally:
        await client.close()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))

"""The ceiling for pure-Python HTTP/2: an ``asyncio.Protocol`` that feeds ``h2`` and answers.

Nothing else happens here — no streams, no handler, no flow-control bookkeeping beyond what
``h2`` does itself — so the benchmark can say what the ``mesh/http2`` abstraction costs.

    python -m bench.bare_server --port 8443 [--tls-server-only CERT KEY]
"""

from __future__ import annotations

import argparse
import asyncio
import ssl
from typing import cast

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import RequestReceived, StreamEnded

from bench.common import server_only_tls
from mesh.loop import run

BODY = b"x" * 100
HEADERS = [(":status", "200"), ("content-length", str(len(BODY))), ("server", "bare")]


class BareProtocol(asyncio.Protocol):
    def __init__(self) -> None:
        # The same h2 configuration as mesh/http2, so the gap measures only the abstraction.
        self.conn = H2Connection(H2Configuration(client_side=False, header_encoding="utf-8",
                                                 validate_inbound_headers=True))

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.conn.initiate_connection()
        self.transport.write(self.conn.data_to_send())

    def data_received(self, data: bytes) -> None:
        for event in self.conn.receive_data(data):
            if isinstance(event, StreamEnded):
                self.conn.send_headers(event.stream_id, HEADERS)
                self.conn.send_data(event.stream_id, BODY, end_stream=True)
            elif isinstance(event, RequestReceived) and event.stream_ended is not None:
                pass
        self.transport.write(self.conn.data_to_send())


async def serve(host: str, port: int, tls: ssl.SSLContext | None) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(BareProtocol, host, port, ssl=tls)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8443)
    parser.add_argument("--tls-server-only", nargs=2, metavar=("CERT", "KEY"))
    args = parser.parse_args()
    tls = server_only_tls(*args.tls_server_only) if args.tls_server_only else None
    run(serve(args.host, args.port, tls))


if __name__ == "__main__":
    main()

"""The ``mesh/http2`` server of ``bench/floods.py``: it reports what each connection took in.

It answers every request with a 100-byte body, like ``bench/mesh_server.py``, with the
default :class:`~mesh.http2.Limits` (a sidecar's), over h2c or over mTLS (a client
certificate required, as on the sidecar's inbound listener). When a connection ends it prints
one JSON line: the client's port, the frames the connection took in from it
(:attr:`~mesh.http2.Http2Connection.frames_received`) and why it closed.

    python -m bench.flood_server --port 8443 [--mtls CERT KEY CA]
"""

from __future__ import annotations

import argparse
import asyncio
import json

from mesh.http2 import Http2Connection, Stream
from mesh.loop import run
from mesh.tls import server_context

BODY = b"x" * 100
HEADERS = [(":status", "200"), ("content-length", str(len(BODY))), ("server", "mesh")]


async def answer(stream: Stream) -> None:
    stream.send_headers(HEADERS)
    await stream.send_data(BODY, end_stream=True)


def report(connection: Http2Connection) -> None:
    reason = connection.close_reason
    print(json.dumps({"peer_port": connection.peer[1] if connection.peer else None,
                      "frames": connection.frames_received,
                      "code": None if reason is None else int(reason.code),
                      "reason": None if reason is None else reason.reason}), flush=True)


async def main_async(host: str, port: int, mtls: list[str] | None) -> None:
    context = server_context(*mtls) if mtls else None
    loop = asyncio.get_running_loop()
    await loop.create_server(
        lambda: Http2Connection(client_side=False, handler=answer, on_close=report),
        host, port, ssl=context, reuse_address=True)
    await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--mtls", nargs=3, metavar=("CERT", "KEY", "CA"))
    args = parser.parse_args()
    run(main_async(args.host, args.port, args.mtls))


if __name__ == "__main__":
    main()

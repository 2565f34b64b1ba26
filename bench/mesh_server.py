"""The ``mesh/http2`` server answering what the bare loop answers (100-byte body), for benchmarks.

    python -m bench.mesh_server --port 8443 [--tls-server-only CERT KEY]
"""

from __future__ import annotations

import argparse
import asyncio

from bench.common import server_only_tls
from mesh.http2 import Limits, Stream, serve
from mesh.loop import run

BODY = b"x" * 100
HEADERS = [(":status", "200"), ("content-length", str(len(BODY))), ("server", "mesh")]


async def answer(stream: Stream) -> None:
    stream.send_headers(HEADERS)
    await stream.send_data(BODY, end_stream=True)


async def main_async(host: str, port: int, tls: list[str] | None) -> None:
    context = server_only_tls(*tls) if tls else None
    await serve(answer, host, port, ssl=context, limits=Limits(max_concurrent_streams=1000))
    await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8443)
    parser.add_argument("--tls-server-only", nargs=2, metavar=("CERT", "KEY"))
    args = parser.parse_args()
    run(main_async(args.host, args.port, args.tls_server_only))


if __name__ == "__main__":
    main()

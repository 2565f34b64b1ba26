"""The ceiling for pure-Python HTTP/2 proxying: one hop of a forwarding pair, ``asyncio.Protocol``
and ``h2`` only.

Run twice, it mirrors the sidecar pair's layout::

    h2load ──h2c──▶ outbound hop ══HTTP/2 + mTLS══▶ inbound hop ──h2c──▶ backend

Each accepted connection gets its own upstream connection, and every stream is relayed as it
comes: headers, data and trailers are copied frame by frame with the stream IDs mapped, and one
``transport.write`` per side follows each received chunk. Nothing else happens — no routing,
no pool, no metrics, no timeouts, no header rewriting — and received data is acknowledged at
once (no backpressure), so this is what ``bench/sidecar_pair.py`` compares the sidecar to, not
a proxy to deploy.

    python -m bench.bare_pair --listen 127.0.0.1:PORT --upstream 127.0.0.1:PORT \\
        [--upstream-tls] [--listen-tls] --cert CERT --key KEY --ca CA
"""

from __future__ import annotations

import argparse
import asyncio
import ssl
from typing import cast

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    RequestReceived,
    ResponseReceived,
    StreamReset,
    TrailersReceived,
    WindowUpdated,
)

from mesh.address import host_port
from mesh.loop import run
from mesh.tls import client_context, server_context

Headers = list[tuple[str, str]]


class Leg(asyncio.Protocol):
    """One HTTP/2 connection of a hop; ``peer`` is the other leg, ``streams`` maps our stream
    IDs to the peer's."""

    def __init__(self, *, client_side: bool) -> None:
        # The same h2 configuration as mesh/http2, so the gap measures only the abstraction.
        self.conn = H2Connection(H2Configuration(client_side=client_side, header_encoding="utf-8",
                                                 validate_inbound_headers=True))
        self.conn.initiate_connection()
        self.transport: asyncio.Transport | None = None
        self.peer: Leg | None = None
        self.streams: dict[int, int] = {}
        self.blocked: dict[int, list[tuple[bytes, bool]]] = {}  # data waiting for a window
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        if self.peer is not None and self.peer.closed:  # the caller left while we dialled
            transport.close()
            return
        self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()

    def flush(self) -> None:
        """Write what h2 has queued; before the connection is made, h2 keeps it."""
        if self.transport is not None and (data := self.conn.data_to_send()):
            self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        peer = self.peer
        assert peer is not None
        theirs: int | None
        for event in self.conn.receive_data(data):
            if isinstance(event, RequestReceived):
                theirs = peer.conn.get_next_available_stream_id()
                self.streams[event.stream_id], peer.streams[theirs] = theirs, event.stream_id
                peer.conn.send_headers(theirs, cast(Headers, event.headers),
                                       end_stream=event.stream_ended is not None)
            elif isinstance(event, ResponseReceived):
                if (theirs := self.streams.get(event.stream_id)) is not None:
                    peer.conn.send_headers(theirs, cast(Headers, event.headers),
                                           end_stream=event.stream_ended is not None)
                if event.stream_ended is not None:
                    self.forget(event.stream_id)
            elif isinstance(event, DataReceived):
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                if (theirs := self.streams.get(event.stream_id)) is not None:
                    peer.send_data(theirs, event.data, event.stream_ended is not None)
                if event.stream_ended is not None and self.conn.config.client_side:
                    self.forget(event.stream_id)
            elif isinstance(event, TrailersReceived):
                if (theirs := self.streams.get(event.stream_id)) is not None:
                    peer.conn.send_headers(theirs, cast(Headers, event.headers), end_stream=True)
                if self.conn.config.client_side:
                    self.forget(event.stream_id)
            elif isinstance(event, StreamReset):
                if (theirs := self.streams.get(event.stream_id)) is not None:
                    peer.conn.reset_stream(theirs, event.error_code)
                self.forget(event.stream_id)
            elif isinstance(event, WindowUpdated):
                self.unblock()
            elif isinstance(event, ConnectionTerminated) and self.transport is not None:
                self.transport.close()
        self.flush()
        peer.flush()

    def send_data(self, stream_id: int, data: bytes, end_stream: bool) -> None:
        """Send on our connection now if the windows allow, else when they open."""
        if stream_id in self.blocked or self.conn.local_flow_control_window(stream_id) < len(data):
            self.blocked.setdefault(stream_id, []).append((data, end_stream))
        else:
            self.conn.send_data(stream_id, data, end_stream=end_stream)

    def unblock(self) -> None:
        for stream_id in list(self.blocked):
            queue = self.blocked[stream_id]
            while queue and self.conn.local_flow_control_window(stream_id) >= len(queue[0][0]):
                data, end_stream = queue.pop(0)
                self.conn.send_data(stream_id, data, end_stream=end_stream)
            if not queue:
                del self.blocked[stream_id]

    def forget(self, stream_id: int) -> None:
        """The response has ended (or a side reset): drop the mapping both ways."""
        theirs = self.streams.pop(stream_id, None)
        if theirs is not None and self.peer is not None:
            self.peer.streams.pop(theirs, None)
            self.peer.blocked.pop(theirs, None)
        self.blocked.pop(stream_id, None)


def downstream_factory(upstream: tuple[str, int],
                       upstream_tls: ssl.SSLContext | None) -> Leg:
    """An accepted connection, paired with a new connection to ``upstream``."""
    down, up = Leg(client_side=False), Leg(client_side=True)
    down.peer, up.peer = up, down
    loop = asyncio.get_running_loop()

    async def dial() -> None:
        try:
            await loop.create_connection(lambda: up, *upstream, ssl=upstream_tls)
        except OSError:
            if down.transport is not None:
                down.transport.close()

    task = loop.create_task(dial())
    _dials.add(task)
    task.add_done_callback(_dials.discard)
    return down


_dials: set[asyncio.Task[None]] = set()  # keeps the connect tasks referenced until they end



async def serve(listen: tuple[str, int], upstream: tuple[str, int],
                listen_tls: ssl.SSLContext | None, upstream_tls: ssl.SSLContext | None) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: downstream_factory(upstream, upstream_tls),
                                      *listen, ssl=listen_tls, reuse_address=True)
    print(f"bare hop: {listen[0]}:{listen[1]} -> {upstream[0]}:{upstream[1]}", flush=True)
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--listen", type=host_port, required=True)
    parser.add_argument("--upstream", type=host_port, required=True)
    parser.add_argument("--listen-tls", action="store_true", help="accept mTLS (inbound hop)")
    parser.add_argument("--upstream-tls", action="store_true", help="dial mTLS (outbound hop)")
    parser.add_argument("--cert", help="this hop's certificate (PEM), for mTLS")
    parser.add_argument("--key", help="its private key (PEM)")
    parser.add_argument("--ca", help="the mesh CA certificate (PEM)")
    args = parser.parse_args(argv)
    if (args.listen_tls or args.upstream_tls) and not (args.cert and args.key and args.ca):
        parser.error("--listen-tls and --upstream-tls need --cert, --key and --ca")
    listen_tls = server_context(args.cert, args.key, args.ca) if args.listen_tls else None
    upstream_tls = client_context(args.cert, args.key, args.ca) if args.upstream_tls else None
    run(serve(args.listen, args.upstream, listen_tls, upstream_tls))


if __name__ == "__main__":
    main()

"""Floods over mTLS are cut off as early as over h2c, and other connections only wait turns.

The server is the sidecar's inbound listener as the sidecar builds it: a ``mesh.http2.Server``
with ``mesh.tls.server_context`` (TLS 1.3, a client certificate required) and a sidecar's
limits, on loopback; the same server over h2c is the comparison. Each flood comes from a
raw-frame peer (``tests/unit/mesh/http2/wire.py``) over TLS, written all at once, so that the
server's transport hands it over in the largest reads it makes (a TLS transport passes on
everything it could decrypt). Meanwhile a well-behaved client on its own connection makes
one request after another and counts, for each, the flood frames the server took in while
it waited: on a quiet machine its latency is that count times a few microseconds
(``bench/floods.py`` has the figures), and a count, unlike a time, does not depend on the
machine's load.

For each flood (RFC 9113 floods that ``mesh/http2/limits.py`` answers), checked:

- the server takes in what the limit lets in, plus at most one turn's worth of frames;
- the other caller never waits for more than a few turns' worth of flood frames;
- the server keeps serving: the other caller's connection, and a new one.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import pytest
from hyperframe.frame import Frame, GoAwayFrame

from mesh.clock import FakeClock
from mesh.http2 import ErrorCode, Http2Connection, Limits, Server, connect, request
from mesh.http2.connection import _FRAMES_PER_TURN
from mesh.tls import client_context, server_context
from tests.pki_fixtures import MeshPki
from tests.pki_fixtures import mesh_pki as mesh_pki  # a pytest fixture, used by name
from tests.unit.mesh.http2.app import App
from tests.unit.mesh.http2.wire import Frames, RawPeer, request_headers

pytestmark = pytest.mark.timeout(60)

LIMITS = Limits()  # a sidecar's
GET_HOLD = request_headers("GET", "/hold")
# The other caller's request spends a few loop turns in the server (read, handler, write) and
# a few in the client (they share the loop here); in each, the flood gets one turn's frames.
TURNS_PER_REQUEST = 8


@dataclass(frozen=True, slots=True, kw_only=True)
class Flood:
    """What the flooder sends, and how the server is to end it (None: it is not ended)."""

    frames: Callable[[Frames], list[Frame]]
    cut_off_after: int | None  # flood frames the limit lets in, the one that trips it included


FLOODS = {
    # CVE-2023-44487: open a stream, cancel it, repeat. The clock never moves here, so the
    # bucket never refills: the (burst + 1)-th reset trips it.
    "rapid-reset": Flood(
        frames=lambda f: [frame for sid in range(1, 6 * LIMITS.reset_burst, 2) for frame in (
            f.headers(sid, GET_HOLD), f.rst_stream(sid, ErrorCode.CANCEL))],
        cut_off_after=2 * (LIMITS.reset_burst + 1)),
    # CVE-2025-8671: DATA on a stream the peer ended makes the server reset it.
    "made-you-reset": Flood(
        frames=lambda f: [frame for sid in range(1, 6 * LIMITS.reset_burst, 2) for frame in (
            f.headers(sid, GET_HOLD, end_stream=True), f.data(sid, b"after the end"))],
        cut_off_after=2 * (LIMITS.reset_burst + 1)),
    # VU#421644: a header block that never ends; h2's 64 frames are the bound for empty ones.
    "continuation": Flood(
        frames=lambda f: [f.headers(1, GET_HOLD, end_headers=False),
                          *[f.continuation(1, b"") for _ in range(10_000)]],
        cut_off_after=65),
    # Answered but not limited (the flooder could read the answers): only fairness matters.
    "settings": Flood(frames=lambda f: [f.settings()] * 20_000, cut_off_after=None),
    "ping": Flood(frames=lambda f: [f.ping(b"floodfld")] * 20_000, cut_off_after=None),
}


@dataclass(frozen=True, slots=True, kw_only=True)
class Listener:
    """A server on loopback, and how to reach it (``tls`` None: h2c)."""

    server: Server
    tls: ssl.SSLContext | None

    async def connect(self) -> Http2Connection:
        return await connect("127.0.0.1", self.server.port, ssl=self.tls)


@pytest.fixture(params=["h2c", "mTLS"])
async def listener(request: pytest.FixtureRequest, mesh_pki: MeshPki) -> AsyncIterator[Listener]:
    app = App()
    server = Server(app, limits=LIMITS, clock=FakeClock())
    tls: ssl.SSLContext | None = None
    if request.param == "mTLS":
        await server.start("127.0.0.1", 0, ssl=server_context(
            mesh_pki.server.cert, mesh_pki.server.key, mesh_pki.ca_cert))
        tls = client_context(mesh_pki.client.cert, mesh_pki.client.key, mesh_pki.ca_cert)
    else:
        await server.start("127.0.0.1", 0)
    yield Listener(server=server, tls=tls)
    app.release.set()  # let held handlers finish so shutdown does not wait out its grace
    await server.shutdown(grace=1.0)


@pytest.mark.parametrize("name", list(FLOODS))
async def test_a_flood_costs_its_connection_and_only_turns_of_the_others(
    name: str, listener: Listener,
) -> None:
    flood = FLOODS[name]
    caller = await listener.connect()
    peer = await RawPeer.connect(listener.server.port, tls=listener.tls)
    try:
        await peer.handshake()
        await peer.round_trip()  # the handshake is taken in: what comes next is the flood
        (offender,) = [c for c in listener.server.connections
                       if c.peer == peer.writer.get_extra_info("sockname")]
        frames = flood.frames(peer.frames)
        before = offender.frames_received
        peer.writer.write(b"".join(frame.serialize() for frame in frames))  # at once, unread

        def flooding() -> bool:
            return offender.close_reason is None and \
                offender.frames_received - before < len(frames)

        waits = []  # flood frames the server took in while each request waited
        while flooding():
            taken_in = offender.frames_received
            response = await request(caller, "POST", "/echo", authority="test", body=b"hi")
            assert response.body == b"hi"
            waits.append(offender.frames_received - taken_in)
        flood_taken_in = offender.frames_received - before

        if flood.cut_off_after is None:
            assert offender.close_reason is None
            assert flood_taken_in == len(frames)
            assert len(waits) > 10  # served all along, not after the flood
        else:
            assert offender.close_reason is not None
            assert offender.close_reason.code == ErrorCode.ENHANCE_YOUR_CALM
            # Over h2c, closing a socket with the flood unread resets it, and the reset may
            # overtake the GOAWAY; over TLS the close waits for the flooder's close_notify.
            goaways = [f for f in await peer.closed() if isinstance(f, GoAwayFrame)]
            assert [f.error_code for f in goaways] in ([], [ErrorCode.ENHANCE_YOUR_CALM])
            if listener.tls is not None:
                assert goaways
            assert flood.cut_off_after <= flood_taken_in < \
                flood.cut_off_after + _FRAMES_PER_TURN
        assert max(waits, default=0) <= TURNS_PER_REQUEST * _FRAMES_PER_TURN, waits

        # The server goes on: on the other caller's connection, and on a new one.
        assert (await request(caller, "GET", "/echo", authority="test")).status == 200
        assert caller.close_reason is None and not caller.draining
        fresh = await listener.connect()
        assert (await request(fresh, "GET", "/echo", authority="test")).status == 200
        await fresh.shutdown(grace=1.0)
    finally:
        await peer.close()
        await caller.shutdown(grace=1.0)

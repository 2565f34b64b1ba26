"""Header blocks: every rule of RFC 9113 §8.2–8.3 that ``mesh.http2.fields`` checks, one case
each, and what a connection does with a malformed block — reset that stream, serve the others.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import RequestReceived
from hpack.struct import NeverIndexedHeaderTuple
from hyperframe.frame import RstStreamFrame

from mesh.http2 import ErrorCode, Limits, Server, StreamReset, connect, fields
from mesh.http2.fields import Block, MalformedHeaders, for_sending, received
from tests.unit.mesh.http2.wire import RawPeer, request_headers

pytestmark = pytest.mark.timeout(10)

RawPeerFactory = Callable[..., Awaitable[RawPeer]]

REQUEST = [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"orders:8080"),
           (b":path", b"/orders/7"), (b"accept", b"*/*"), (b"user-agent", b"curl/7.88.1")]
RESPONSE = [(b":status", b"200"), (b"content-type", b"text/plain")]


def test_a_valid_request_comes_back_as_text_in_order() -> None:
    assert received(REQUEST, Block.REQUEST) == [
        (":method", "GET"), (":scheme", "https"), (":authority", "orders:8080"),
        (":path", "/orders/7"), ("accept", "*/*"), ("user-agent", "curl/7.88.1")]


def test_valid_responses_trailers_and_the_allowed_special_fields_pass() -> None:
    assert received(RESPONSE, Block.RESPONSE) == [(":status", "200"),
                                                  ("content-type", "text/plain")]
    assert received([(b"grpc-status", b"0")], Block.TRAILERS) == [("grpc-status", "0")]
    assert received([], Block.TRAILERS) == []
    grpc = [*REQUEST, (b"te", b"trailers"), (b"host", b"orders:8080"), (b"x", b"")]
    assert received(grpc, Block.REQUEST)[-3:] == [("te", "trailers"), ("host", "orders:8080"),
                                                  ("x", "")]
    tunnel = [(b":method", b"CONNECT"), (b":authority", b"db:5432")]
    assert received(tunnel, Block.REQUEST) == [(":method", "CONNECT"), (":authority", "db:5432")]
    websocket = [(b":method", b"CONNECT"), (b":protocol", b"websocket"), (b":scheme", b"https"),
                 (b":path", b"/chat"), (b":authority", b"chat")]
    assert len(received(websocket, Block.REQUEST)) == 5
    utf8 = [*REQUEST, (b"x-name", "Zoë".encode())]
    assert received(utf8, Block.REQUEST)[-1] == ("x-name", "Zoë")


def test_cookie_crumbs_are_joined_into_one_field() -> None:
    crumbs = [*REQUEST, (b"cookie", b"a=1"), (b"x", b"y"), (b"cookie", b"b=2")]
    assert received(crumbs, Block.REQUEST)[-2:] == [("x", "y"), ("cookie", "a=1; b=2")]
    one = [*REQUEST, (b"cookie", b"a=1")]
    assert received(one, Block.REQUEST)[-1] == ("cookie", "a=1")


def without(name: bytes) -> list[tuple[bytes, bytes]]:
    return [field for field in REQUEST if field[0] != name]


@pytest.mark.parametrize(("block", "kind", "message"), [
    pytest.param([*REQUEST, (b"", b"x")], Block.REQUEST, "invalid field name ''", id="empty-name"),
    pytest.param([*REQUEST, (b"Accept", b"x")], Block.REQUEST, "invalid field name 'Accept'",
                 id="uppercase"),
    pytest.param([*REQUEST, (b"x y", b"1")], Block.REQUEST, "invalid field name", id="space"),
    pytest.param([*REQUEST, (b"x:y", b"1")], Block.REQUEST, "invalid field name", id="colon"),
    pytest.param([*REQUEST, (b"x\xff", b"1")], Block.REQUEST, "invalid field name", id="8bit"),
    pytest.param([*REQUEST, (b"x", b"a\r\nb: c")], Block.REQUEST,
                 "field 'x' has an invalid value 'a\\\\r\\\\nb: c'", id="crlf-value"),
    pytest.param([*REQUEST, (b"x", b"a\0")], Block.REQUEST, "invalid value", id="nul-value"),
    pytest.param([*REQUEST, (b"x", b" a")], Block.REQUEST, "invalid value", id="leading-space"),
    pytest.param([*REQUEST, (b"x", b"a\t")], Block.REQUEST, "invalid value", id="trailing-tab"),
    pytest.param([*REQUEST, (b"x", b"\xff")], Block.REQUEST,
                 "field 'x' is not UTF-8: '\\\\xff'", id="not-utf8"),
    pytest.param([*REQUEST, (b"connection", b"close")], Block.REQUEST,
                 "connection-specific field connection", id="connection"),
    pytest.param([*REQUEST, (b"transfer-encoding", b"chunked")], Block.REQUEST,
                 "connection-specific field transfer-encoding", id="transfer-encoding"),
    pytest.param([*REQUEST, (b"te", b"gzip")], Block.REQUEST, "te: 'gzip'", id="te"),
    pytest.param([(b":path", b"/again"), *REQUEST], Block.REQUEST,
                 "pseudo-header field :path twice", id="duplicate-pseudo"),
    pytest.param([(b":method", b"GET"), (b"accept", b"*/*"), *REQUEST[1:4]], Block.REQUEST,
                 "pseudo-header field :scheme after a regular field", id="pseudo-after-regular"),
    pytest.param([*REQUEST, (b":custom", b"1")], Block.REQUEST,
                 "pseudo-header field :custom after a regular field", id="late-custom"),
    pytest.param([(b":custom", b"1"), *REQUEST], Block.REQUEST, "request with :custom",
                 id="custom-pseudo"),
    pytest.param([(b":status", b"200"), *REQUEST], Block.REQUEST, "request with :status",
                 id="status-in-request"),
    pytest.param(without(b":method"), Block.REQUEST, "request without :method", id="no-method"),
    pytest.param(without(b":path"), Block.REQUEST, "request without :path", id="no-path"),
    pytest.param(without(b":scheme"), Block.REQUEST, "request without :scheme", id="no-scheme"),
    pytest.param([(b":method", b"GET"), (b":authority", b"a")], Block.REQUEST,
                 "request without :scheme and :path", id="no-scheme-no-path"),
    pytest.param([(b":method", b"CONNECT"), (b"host", b"db:5432")], Block.REQUEST,
                 "CONNECT without :authority", id="connect-without-authority"),
    pytest.param([(b":path", b""), *without(b":path")], Block.REQUEST, "empty :path",
                 id="empty-path"),
    pytest.param(without(b":authority"), Block.REQUEST, "without :authority or host",
                 id="no-authority"),
    pytest.param([*REQUEST, (b"host", b"elsewhere")], Block.REQUEST,
                 ":authority 'orders:8080' and host 'elsewhere' differ", id="host-mismatch"),
    pytest.param([*without(b":authority"), (b"host", b"a"), (b"host", b"a")], Block.REQUEST,
                 "more than one host field", id="two-hosts"),
    pytest.param([(b":method", b"CONNECT"), (b":authority", b"db"), (b":path", b"/")],
                 Block.REQUEST, "CONNECT with :scheme or :path", id="connect-with-path"),
    pytest.param([(b":protocol", b"websocket"), *REQUEST], Block.REQUEST,
                 "GET with :protocol", id="protocol-without-connect"),
    pytest.param([(b"content-type", b"text/plain")], Block.RESPONSE, "response without :status",
                 id="no-status"),
    pytest.param([*RESPONSE[:1], (b":path", b"/"), *RESPONSE[1:]], Block.RESPONSE,
                 "response with :path", id="request-pseudo-in-response"),
    pytest.param([(b":status", b"200")], Block.TRAILERS, "pseudo-header field :status in trailers",
                 id="pseudo-in-trailers"),
])
def test_a_malformed_block_is_refused_saying_what_is_wrong(
    block: list[tuple[bytes, bytes]], kind: Block, message: str,
) -> None:
    with pytest.raises(MalformedHeaders, match=message.replace("(", r"\(").replace(")", r"\)")):
        received(block, kind)


def test_an_error_shows_a_long_value_cut_short_and_a_credential_not_at_all() -> None:
    with pytest.raises(MalformedHeaders) as refused:
        received([*REQUEST, (b"x-note", b"\x1b[31m" + b"s" * 5000 + b" ")], Block.REQUEST)
    shown = "'\\x1b[31m" + "s" * 35 + "…'"  # the first 40 bytes, escaped
    assert str(refused.value) == (f"field 'x-note' has an invalid value {shown} "
                                  "(NUL, CR, LF, or a space or tab at either end)")
    with pytest.raises(MalformedHeaders) as refused:
        received([*REQUEST, (b"authorization", b"Bearer secret ")], Block.REQUEST)
    assert "secret" not in str(refused.value) and "(hidden)" in str(refused.value)


def test_only_small_fields_without_credentials_are_remembered() -> None:
    fields._checked.clear()
    big = (b"x-big", b"v" * 300)
    received([*REQUEST, big, (b"authorization", b"Bearer abc"), (b"cookie", b"a=1")],
             Block.REQUEST)
    assert set(fields._checked) == set(REQUEST)
    for i in range(fields._CHECKED_MAX + 10):  # a peer that sends nothing but new values
        received([*REQUEST, (b"x-id", str(i).encode())], Block.REQUEST)
    assert len(fields._checked) <= fields._CHECKED_MAX


def test_fields_for_sending_are_lowercase_without_connection_fields_and_credentials_hidden(
) -> None:
    prepared = for_sending([(":status", "200"), ("X-Trace", " 1\t"), ("connection", "close"),
                            ("authorization", "Bearer abc"), ("cookie", "id=1"),
                            ("cookie", "session=" + "x" * 40)])
    # Never indexed: authorization and the short cookie; a long one is not guessable.
    assert prepared == [(b":status", b"200", False), (b"x-trace", b"1", False),
                        (b"authorization", b"Bearer abc", True), (b"cookie", b"id=1", True),
                        (b"cookie", b"session=" + b"x" * 40, False)]


Respond = Callable[[H2Connection, RequestReceived], None]


@asynccontextmanager
async def h2_server(respond: Respond) -> AsyncIterator[int]:
    """A server on bare ``h2`` (no mesh code): ``respond`` answers each request; yields the
    port."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = H2Connection(H2Configuration(client_side=False, header_encoding=None,
                                            validate_outbound_headers=False))
        conn.initiate_connection()
        writer.write(conn.data_to_send())
        while data := await reader.read(65536):
            for event in conn.receive_data(data):
                if isinstance(event, RequestReceived):
                    respond(conn, event)
            writer.write(conn.data_to_send())
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


async def test_credentials_go_out_never_indexed_on_the_wire() -> None:
    """The peer's HPACK decoder sees the never-indexed representation (RFC 7541 §6.2.3)."""
    requests: list[RequestReceived] = []

    def respond(conn: H2Connection, event: RequestReceived) -> None:
        requests.append(event)
        conn.send_headers(event.stream_id, [(":status", "204")], end_stream=True)

    async with h2_server(respond) as port:
        conn = await connect("127.0.0.1", port)
        try:
            stream = conn.open_stream([*request_headers("GET", "/"),
                                       ("authorization", "Bearer secret"), ("x-trace", "1")],
                                      end_stream=True)
            assert dict(await stream.receive_headers())[":status"] == "204"
        finally:
            await conn.shutdown(grace=1.0)
    fields = {field[0]: field for field in requests[0].headers}
    assert isinstance(fields[b"authorization"], NeverIndexedHeaderTuple)
    assert not isinstance(fields[b"x-trace"], NeverIndexedHeaderTuple)


async def test_a_malformed_request_resets_only_its_stream(
    server: Server, raw_peer: RawPeerFactory,
) -> None:
    peer = await raw_peer(server.port)
    await peer.handshake()
    f = peer.frames
    await peer.send(f.headers(1, [*request_headers("GET", "/echo"), ("Upper", "x")],
                              end_stream=True),
                    f.headers(3, request_headers("GET", "/echo"), end_stream=True))
    assert (await peer.response(1)).reset_code == ErrorCode.PROTOCOL_ERROR
    assert (await peer.response(3)).status == "200"
    # Not UTF-8: also a stream error, and the connection still serves.
    await peer.send(f.headers(5, [*request_headers("GET", "/echo"), ("x", b"\xff")],  # type: ignore[list-item]
                              end_stream=True))
    reset = await peer.until(RstStreamFrame, stream_id=5)
    assert reset.error_code == ErrorCode.PROTOCOL_ERROR
    await peer.send(f.headers(7, request_headers("GET", "/echo"), end_stream=True))
    assert (await peer.response(7)).status == "200"


async def test_a_malformed_request_reset_by_the_peer_in_the_same_read_is_no_crash(
    server: Server, raw_peer: RawPeerFactory,
) -> None:
    """HEADERS that are malformed and the peer's own RST_STREAM for them, in one read: h2 has
    closed the stream by the time the mesh resets it."""
    peer = await raw_peer(server.port)
    await peer.handshake()
    f = peer.frames
    await peer.send(f.headers(1, [*request_headers("GET", "/echo"), ("te", "gzip")]),
                    f.rst_stream(1, ErrorCode.CANCEL))
    await peer.send(f.headers(3, request_headers("GET", "/echo"), end_stream=True))
    assert (await peer.response(3)).status == "200"


async def test_malformed_request_trailers_reset_that_stream_only(
    server: Server, raw_peer: RawPeerFactory,
) -> None:
    peer = await raw_peer(server.port)
    await peer.handshake()
    f = peer.frames
    await peer.send(f.headers(1, request_headers("POST", "/echo")), f.data(1, b"body"),
                    f.headers(1, [(":path", "/late")], end_stream=True))
    assert (await peer.response(1)).reset_code == ErrorCode.PROTOCOL_ERROR
    await peer.send(f.headers(3, request_headers("POST", "/echo")),
                    f.data(3, b"fine", end_stream=True))
    assert (await peer.response(3)).body == b"fine"


async def test_a_flood_of_malformed_requests_closes_the_connection(
    start_server: Callable[..., Awaitable[Server]], raw_peer: RawPeerFactory,
) -> None:
    """Each malformed request costs the server a reset it did not choose (MadeYouReset):
    counted like the peer's own premature resets."""
    server = await start_server(limits=Limits(reset_burst=5, reset_rate=0.001))
    peer = await raw_peer(server.port)
    await peer.handshake()
    bad = [*request_headers("GET", "/echo"), ("te", "gzip")]
    await peer.send(*(peer.frames.headers(2 * i + 1, bad, end_stream=True) for i in range(10)))
    goaway = await peer.goaway()
    assert goaway.error_code == ErrorCode.ENHANCE_YOUR_CALM


async def test_a_malformed_response_fails_its_stream_with_the_reason() -> None:
    def respond(conn: H2Connection, event: RequestReceived) -> None:  # no :status
        conn.send_headers(event.stream_id, [("content-type", "text/plain")], end_stream=True)

    async with h2_server(respond) as port:
        conn = await connect("127.0.0.1", port)
        try:
            stream = conn.open_stream(request_headers("GET", "/"), end_stream=True)
            with pytest.raises(StreamReset,
                               match="malformed response: response without :status"):
                await stream.receive_headers()
            assert conn.close_reason is None  # the connection carries on
        finally:
            await conn.shutdown(grace=1.0)

"""``MeshH2Connection``: its ``_receive_frame`` is the engine's own less one line (kept so as
h2 changes), each call parses no more frames than its budget, and a block sent with
``send_block`` leaves what h2's ``send_headers`` would."""

from __future__ import annotations

import ast
import inspect
import textwrap

import pytest
from hpack import Encoder
from hyperframe.frame import ContinuationFrame, HeadersFrame, PingFrame, SettingsFrame

from mesh.http2 import engine
from mesh.http2.engine import (
    H2Configuration,
    PingReceived,
    RemoteSettingsChanged,
    RequestReceived,
    SettingCodes,
    StreamEnded,
    TooManyStreamsError,
)
from mesh.http2.fields import for_sending
from mesh.http2.h2_state import PURGE_SLACK, MeshH2Connection
from tests.unit.mesh.http2.wire import PREFACE


def body(function: object) -> list[ast.stmt]:
    """The function's statements, without its docstring."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(function)))  # type: ignore[arg-type]
    definition = tree.body[0]
    assert isinstance(definition, ast.FunctionDef)
    statements = definition.body
    if isinstance(statements[0], ast.Expr) and isinstance(statements[0].value, ast.Constant):
        statements = statements[1:]
    return statements


def is_trace_log(statement: ast.stmt) -> bool:
    return isinstance(statement, ast.Expr) and "logger.trace" in ast.unparse(statement)


def same(statements: list[ast.stmt]) -> list[str]:
    """What the statements do, without what only types or tracebacks see: declarations with
    no value (``events: list[Event]``) and ``from e`` on a raise (jh2 has neither; h2 both)."""
    kept = [s for s in statements if not (isinstance(s, ast.AnnAssign) and s.value is None)]
    for node in kept:
        for inner in ast.walk(node):
            if isinstance(inner, ast.Raise):
                inner.cause = None
    return [ast.dump(statement) for statement in kept]


def test_receive_frame_is_the_engines_without_the_trace_log() -> None:
    theirs = body(engine.H2Connection._receive_frame)
    if engine.NAME == "h2":  # jh2 has commented the line out already
        assert any(is_trace_log(statement) for statement in theirs), \
            "h2 no longer logs each frame: MeshH2Connection._receive_frame can go"
    expected = same([statement for statement in theirs if not is_trace_log(statement)])
    assert same(body(MeshH2Connection._receive_frame)) == expected, \
        f"{engine.NAME} changed H2Connection._receive_frame: bring MeshH2Connection's copy in line"


def test_a_call_parses_only_its_budget_of_frames_and_keeps_the_rest() -> None:
    # Adjustment 4: whatever it is handed, h2 parses ``budget`` frames per receive_data; the
    # rest waits in the buffer, even a header block cut in the middle, for the next call.
    server = MeshH2Connection(H2Configuration(client_side=False), max_header_block_size=1024)
    server.initiate_connection()
    block = Encoder().encode([(":method", "GET"), (":scheme", "http"),
                              (":authority", "test"), (":path", "/")])
    headers = HeadersFrame(1, block[:4])
    headers.flags.add("END_STREAM")
    last = ContinuationFrame(1, block[8:])
    last.flags.add("END_HEADERS")
    received = [SettingsFrame(0), *[PingFrame(0, b"%08d" % n) for n in range(3)],
                headers, ContinuationFrame(1, block[4:8]), last]

    def call(budget: int, data: bytes = b"") -> list[type]:
        server.incoming_buffer.budget = budget
        events = server.receive_data(data)
        return [type(event) for event in events]

    assert call(3, PREFACE + b"".join(frame.serialize() for frame in received)) == \
        [RemoteSettingsChanged, PingReceived, PingReceived]
    assert server.incoming_buffer.budget == 0
    assert call(2) == [PingReceived]  # and HEADERS, whose block is not complete yet
    assert call(2) == [RequestReceived, StreamEnded]  # both CONTINUATION frames
    assert call(5) == []
    assert server.incoming_buffer.budget == 5  # nothing was left


REQUEST = [(":method", "GET"), (":scheme", "http"), (":authority", "test"), (":path", "/")]


def client(max_concurrent_streams: int) -> MeshH2Connection:
    """A client connection whose peer allows ``max_concurrent_streams`` streams at once."""
    conn = MeshH2Connection(H2Configuration(client_side=True), max_header_block_size=1024)
    conn.initiate_connection()
    conn.remote_settings[SettingCodes.MAX_CONCURRENT_STREAMS] = max_concurrent_streams
    conn.remote_settings.acknowledge()
    return conn


def counting_walks(conn: MeshH2Connection) -> list[int]:
    """From now on, count h2's walks over every stream of ``conn`` in the list returned."""
    walks = [0]
    walk = conn._open_streams

    def counted(remainder: int) -> int:
        walks[0] += 1
        return walk(remainder)

    conn._open_streams = counted  # type: ignore[method-assign]
    return walks


def test_opening_a_stream_walks_the_streams_only_now_and_then_and_purges_the_closed() -> None:
    # Adjustment 5: a thousand streams opened and ended one after another, three always open.
    conn = client(max_concurrent_streams=100)
    walks = counting_walks(conn)
    held = []
    for n in range(1000):
        stream_id = conn.get_next_available_stream_id()
        conn.send_headers(stream_id, REQUEST, end_stream=True)
        if n >= 3:  # the oldest of the three open ones is answered: closed
            conn.reset_stream(stream_id - 6)
        held.append(len(conn.streams))
    assert walks[0] < 100  # h2 walks on every one of the 1,000
    assert max(held) <= 2 * 4 + PURGE_SLACK + 1  # the closed ones do not pile up


def test_the_limit_on_open_streams_holds_exactly() -> None:
    conn = client(max_concurrent_streams=3)
    ids = []
    for _ in range(3):
        stream_id = conn.get_next_available_stream_id()
        conn.send_headers(stream_id, REQUEST, end_stream=True)
        ids.append(stream_id)
    with pytest.raises(TooManyStreamsError, match="Max outbound streams is 3, 3 open"):
        conn.send_headers(conn.get_next_available_stream_id(), REQUEST, end_stream=True)
    conn.reset_stream(ids[0])  # one ends: one more may open
    conn.send_headers(conn.get_next_available_stream_id(), REQUEST, end_stream=True)


# -- adjustment 6: header blocks sent without frame objects ---------------------------------

def mesh_config(*, client_side: bool) -> H2Configuration:
    """The configuration mesh.http2.connection gives h2."""
    return H2Configuration(client_side=client_side, header_encoding=None,
                           validate_inbound_headers=False, normalize_inbound_headers=False,
                           validate_outbound_headers=False, normalize_outbound_headers=False)


class Twins:
    """The same side of a connection twice: ``mesh`` sends blocks with ``send_block``, ``h2``
    is the engine's own connection sending them with ``send_headers``; every step must leave
    the same bytes to send, stream states and errors on both."""

    def __init__(self, *, client_side: bool) -> None:
        self.mesh = MeshH2Connection(mesh_config(client_side=client_side),
                                     max_header_block_size=1 << 20)
        self.h2 = engine.H2Connection(mesh_config(client_side=client_side))
        for conn in (self.mesh, self.h2):
            conn.initiate_connection()
        self.preface = self.mesh.data_to_send()
        assert self.preface == self.h2.data_to_send()

    def receive(self, data: bytes) -> None:
        self.mesh.incoming_buffer.budget = 1000
        assert [type(event) for event in self.mesh.receive_data(data)] == \
            [type(event) for event in self.h2.receive_data(data)]
        assert self.mesh.data_to_send() == self.h2.data_to_send()

    def send(self, stream_id: int, headers: list[tuple[str, str]], *,
             end_stream: bool = False) -> bytes:
        outcomes = []
        block = for_sending(headers)
        pairs = [engine.NeverIndexedHeaderTuple(name, value) if hidden else (name, value)
                 for name, value, hidden in block]
        for send in (lambda: self.mesh.send_block(stream_id, block, end_stream),
                     lambda: self.h2.send_headers(stream_id, pairs, end_stream=end_stream)):
            try:
                send()
            except Exception as error:  # compared below, whatever it is
                outcomes.append(f"{type(error).__name__}: {error}")
        assert len(outcomes) in (0, 2), outcomes
        assert outcomes[:1] == outcomes[1:], outcomes
        sent = self.mesh.data_to_send()
        assert sent == self.h2.data_to_send()
        for conn in (self.mesh, self.h2):
            assert conn.state_machine.state == self.h2.state_machine.state
        if stream_id in self.h2.streams:
            ours, theirs = self.mesh.streams[stream_id], self.h2.streams[stream_id]
            assert ours.state_machine.state == theirs.state_machine.state
            assert ours.request_method == theirs.request_method
            assert ours._authority == theirs._authority
        return sent


def test_a_block_sent_without_frame_objects_is_what_h2_sends() -> None:
    client, server = Twins(client_side=True), Twins(client_side=False)
    server.receive(client.preface)
    client.receive(server.preface)
    big = ("x-big", "b" * 40_000)  # past the 16 KiB frame size: HEADERS + 2 CONTINUATION
    requests = [
        (1, [*REQUEST, ("authorization", "Bearer abc"), ("X-Trace", " 1 ")], True),
        (3, [*REQUEST, big], False),
        (5, [(":method", "HEAD"), (":scheme", "http"), ("host", "test"), (":path", "/")], True),
    ]
    for stream_id, headers, end_stream in requests:
        server.receive(client.send(stream_id, headers, end_stream=end_stream))
    server.receive(client.send(3, [("grpc-status", "0")], end_stream=True))  # trailers
    answers = [(1, [(":status", "103"), ("link", "</a>")], False),
               (1, [(":status", "200"), big], False),
               (1, [("grpc-status", "0")], True),
               (5, [(":status", "200"), ("set-cookie", "id=1")], True),
               (3, [(":status", "204")], False)]
    for stream_id, headers, end_stream in answers:
        client.receive(server.send(stream_id, headers, end_stream=end_stream))
    # And the errors, each closing its stream (the HPACK contexts part too: nothing is
    # received after them).
    client.send(3, [("x-more", "1")], end_stream=True)  # nothing after trailers
    client.send(1, [("x-more", "1")])  # nor after the request ended
    client.send(2, REQUEST)  # a client opens odd streams
    server.send(7, [(":status", "200")], end_stream=True)  # a stream the client never opened
    server.send(3, [("x-late", "1")])  # trailers without END_STREAM
    server.receive(client.send(9, REQUEST))
    server.send(9, [(":status", "100")], end_stream=True)  # END_STREAM on an informational


def test_a_block_opens_no_stream_past_the_limit() -> None:
    conn = client(max_concurrent_streams=1)
    conn.send_block(1, for_sending(REQUEST), end_stream=True)
    with pytest.raises(TooManyStreamsError, match="Max outbound streams is 1, 1 open"):
        conn.send_block(3, for_sending(REQUEST), end_stream=True)


def test_a_stream_forgotten_once_closed_spares_the_walks_near_the_limit() -> None:
    # 250 streams always open under a limit of 256 (the sidecar pair with 1,000 in flight):
    # without forget, the closed ones push the number held past the limit, and every stream
    # opened walks them all.
    conn = client(max_concurrent_streams=256)
    walks = counting_walks(conn)
    opened = []
    for n in range(1000):
        stream_id = conn.get_next_available_stream_id()
        conn.send_block(stream_id, for_sending(REQUEST), end_stream=True)
        opened.append(stream_id)
        if n >= 250:  # the oldest one is answered: closed, and forgotten
            oldest = opened.pop(0)
            conn.reset_stream(oldest)
            conn.forget(oldest)
    assert walks[0] < 10
    assert len(conn.streams) == 250
    conn.forget(opened[0])  # still open: kept
    assert opened[0] in conn.streams
    assert conn._stream_is_closed_by_reset(1)  # what h2 answers frames on it by, as after a walk

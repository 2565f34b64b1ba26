"""The HTTP/2 state machine ``mesh/http2`` stands on: ``h2``, or its fork ``jh2``.

``h2`` (python-hyper) is the sans-IO HTTP/2 state machine the docs teach from: pure Python,
with ``hpack`` and ``hyperframe`` beside it. ``jh2`` (jawah/h2, MIT, maintained) is a fork of
it with the same API and internals — the same classes, events and frame buffer, so
:mod:`mesh.http2.h2_state` subclasses either — whose HPACK and frame parsing are native code.
Which one runs is chosen once per process, before ``mesh.http2`` is imported, by the
environment::

    MESH_HTTP2_ENGINE=jh2    # the fork (the default)
    MESH_HTTP2_ENGINE=h2     # the reference

``jh2`` is the default because it is faster where a mesh spends its time (one run of the
benchmarks on a 2-core VM: the ``mesh/http2`` server 1.37× the requests per second, a sidecar
pair 1.31× with 1.36× less CPU per request) and passes every test, the interop tests (curl,
h2load, nghttp, grpcio, openssl) and the attack tests on it; ``h2`` stays the one to read, and
``tests/unit/mesh/http2/test_engines.py`` runs the HTTP/2 tests on it too.

Every module of ``mesh/http2`` imports the state machine's names from here and nowhere else,
so one process never mixes the two (an event class of one is not the other's). Type checking
always reads ``h2``'s, which ``jh2`` mirrors.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

ENGINES = ("h2", "jh2")
DEFAULT = "jh2"  # see the module docstring
NAME = os.environ.get("MESH_HTTP2_ENGINE", DEFAULT)
if NAME not in ENGINES:
    raise ImportError(f"MESH_HTTP2_ENGINE={NAME!r}: want one of {', '.join(ENGINES)}")

if TYPE_CHECKING or NAME == "h2":
    from h2.config import H2Configuration
    from h2.connection import ConnectionState, H2Connection
    from h2.errors import ErrorCodes
    from h2.events import (
        ConnectionTerminated,
        DataReceived,
        Event,
        PingAckReceived,
        PingReceived,
        RemoteSettingsChanged,
        RequestReceived,
        ResponseReceived,
        StreamEnded,
        StreamReset,
        TrailersReceived,
        WindowUpdated,
    )
    from h2.exceptions import (
        DenialOfServiceError,
        NoAvailableStreamIDError,
        ProtocolError,
        StreamClosedError,
        StreamIDTooLowError,
        TooManyStreamsError,
    )
    from h2.frame_buffer import CONTINUATION_BACKLOG, FrameBuffer
    from h2.settings import SettingCodes, Settings
    from hpack.struct import HeaderTuple, NeverIndexedHeaderTuple
    from hyperframe.frame import (
        ContinuationFrame,
        Frame,
        GoAwayFrame,
        HeadersFrame,
        PushPromiseFrame,
        RstStreamFrame,
    )
else:
    from jh2.config import H2Configuration
    from jh2.connection import ConnectionState, H2Connection
    from jh2.errors import ErrorCodes
    from jh2.events import (
        ConnectionTerminated,
        DataReceived,
        Event,
        PingAckReceived,
        PingReceived,
        RemoteSettingsChanged,
        RequestReceived,
        ResponseReceived,
        StreamEnded,
        StreamReset,
        TrailersReceived,
        WindowUpdated,
    )
    from jh2.exceptions import (
        DenialOfServiceError,
        NoAvailableStreamIDError,
        ProtocolError,
        StreamClosedError,
        StreamIDTooLowError,
        TooManyStreamsError,
    )
    from jh2.frame_buffer import CONTINUATION_BACKLOG, FrameBuffer
    from jh2.hpack.struct import HeaderTuple, NeverIndexedHeaderTuple
    from jh2.hyperframe.frame import (
        ContinuationFrame,
        Frame,
        GoAwayFrame,
        HeadersFrame,
        PushPromiseFrame,
        RstStreamFrame,
    )
    from jh2.settings import SettingCodes, Settings

__all__ = [
    "CONTINUATION_BACKLOG",
    "NAME",
    "ConnectionState",
    "ConnectionTerminated",
    "ContinuationFrame",
    "DataReceived",
    "DenialOfServiceError",
    "ErrorCodes",
    "Event",
    "Frame",
    "FrameBuffer",
    "GoAwayFrame",
    "H2Configuration",
    "H2Connection",
    "HeaderTuple",
    "HeadersFrame",
    "NeverIndexedHeaderTuple",
    "NoAvailableStreamIDError",
    "PingAckReceived",
    "PingReceived",
    "ProtocolError",
    "PushPromiseFrame",
    "RemoteSettingsChanged",
    "RequestReceived",
    "ResponseReceived",
    "RstStreamFrame",
    "SettingCodes",
    "Settings",
    "StreamClosedError",
    "StreamEnded",
    "StreamIDTooLowError",
    "StreamReset",
    "TooManyStreamsError",
    "TrailersReceived",
    "WindowUpdated",
]

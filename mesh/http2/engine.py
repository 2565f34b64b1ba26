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
    from h2 import config, connection, errors, events, exceptions, frame_buffer, settings, stream
    from hpack import struct
    from hyperframe import frame
else:  # the same modules, under jh2 (HPACK and hyperframe inside it)
    from jh2 import config, connection, errors, events, exceptions, frame_buffer, settings, stream
    from jh2.hpack import struct
    from jh2.hyperframe import frame

ENCODES_TRIPLES: bool = getattr(stream, "ALTERNATIVE_HPACK", False)
"""True when the HPACK encoder is jh2's native one, which takes ``(name, value, never
indexed)`` triples of bytes; h2's (and jh2's pure-Python fallback) take pairs and
``NeverIndexedHeaderTuple``."""

# One name a line: a plain assignment is what type checkers read as an alias of the class.
H2Configuration = config.H2Configuration
AllowedStreamIDs = connection.AllowedStreamIDs
ConnectionInputs = connection.ConnectionInputs
ConnectionState = connection.ConnectionState
H2Connection = connection.H2Connection
ErrorCodes = errors.ErrorCodes
ConnectionTerminated = events.ConnectionTerminated
DataReceived = events.DataReceived
Event = events.Event
PingAckReceived = events.PingAckReceived
PingReceived = events.PingReceived
RemoteSettingsChanged = events.RemoteSettingsChanged
RequestReceived = events.RequestReceived
ResponseReceived = events.ResponseReceived
StreamEnded = events.StreamEnded
StreamReset = events.StreamReset
TrailersReceived = events.TrailersReceived
WindowUpdated = events.WindowUpdated
DenialOfServiceError = exceptions.DenialOfServiceError
NoAvailableStreamIDError = exceptions.NoAvailableStreamIDError
ProtocolError = exceptions.ProtocolError
StreamClosedError = exceptions.StreamClosedError
StreamIDTooLowError = exceptions.StreamIDTooLowError
TooManyStreamsError = exceptions.TooManyStreamsError
CONTINUATION_BACKLOG = frame_buffer.CONTINUATION_BACKLOG
FrameBuffer = frame_buffer.FrameBuffer
SettingCodes = settings.SettingCodes
Settings = settings.Settings
StreamInputs = stream.StreamInputs
HeaderTuple = struct.HeaderTuple
NeverIndexedHeaderTuple = struct.NeverIndexedHeaderTuple
ContinuationFrame = frame.ContinuationFrame
Frame = frame.Frame
GoAwayFrame = frame.GoAwayFrame
HeadersFrame = frame.HeadersFrame
PushPromiseFrame = frame.PushPromiseFrame
RstStreamFrame = frame.RstStreamFrame

__all__ = [
    "CONTINUATION_BACKLOG",
    "ENCODES_TRIPLES",
    "NAME",
    "AllowedStreamIDs",
    "ConnectionInputs",
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
    "StreamInputs",
    "StreamReset",
    "TooManyStreamsError",
    "TrailersReceived",
    "WindowUpdated",
]

"""gRPC on ``mesh.http2``: HTTP/2 + length-prefixed protobuf messages + a status in trailers.

Glossary:
    method      ``/package.Service/Method``, the HTTP/2 ``:path`` of a call.
    cardinality unary, server streaming, client streaming or bidirectional (:mod:`.server`).
    framing     each message on the wire is a 5-byte prefix plus its bytes (:mod:`.framing`).
    status      the call's outcome, ``grpc-status`` / ``grpc-message`` in trailers
                (:mod:`.status`); *trailers-only* when there was no response message.
    deadline    when the call must be done; travels as ``grpc-timeout`` (:mod:`.deadline`).
    channel     the client's connection to one server (:mod:`.client`).
"""

from mesh.grpc.client import Call, Channel
from mesh.grpc.deadline import Deadline, format_timeout, parse_timeout
from mesh.grpc.framing import MessageDecoder, encode_message
from mesh.grpc.server import Cardinality, Context, GrpcServer
from mesh.grpc.status import GrpcError, StatusCode

__all__ = [
    "Call", "Cardinality", "Channel", "Context", "Deadline", "GrpcError", "GrpcServer",
    "MessageDecoder", "StatusCode", "encode_message", "format_timeout", "parse_timeout",
]

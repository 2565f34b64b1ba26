"""Outcomes: how one call to an endpoint ended, and the HTTP status it counts as.

Every part of the sidecar that judges a call judges the same value: the retry policy (retry
it?), outlier detection (eject the endpoint?), the balancer (a success for its latency
estimate?) and the metrics of both directions (which status to count). An ``Outcome`` is
either a response — its HTTP status, and for gRPC its ``grpc-status`` — or a ``Failure``: no
response at all, and why.

``http_status_of`` maps an outcome to the status Envoy's router reports for it: a gRPC status
as its HTTP equivalent (UNAVAILABLE 503, DEADLINE_EXCEEDED 504, INTERNAL, UNKNOWN and
DATA_LOSS 500), a call without a response as 503, or 504 for a timeout. Unlike Envoy we do not
map UNIMPLEMENTED to 501: calling a method a service lacks is the caller's mistake, not a sign
of a sick endpoint.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from mesh.grpc.status import StatusCode


class Failure(Enum):
    """Why an attempt got no response at all."""

    CONNECT_FAILURE = "connect-failure"  # no connection: refused, TLS failed, connect timeout
    REFUSED_STREAM = "refused-stream"  # REFUSED_STREAM or beyond GOAWAY: never processed
    RESET = "reset"  # the stream or connection ended before a response
    TIMEOUT = "timeout"  # the per-try timeout passed before a response


@dataclass(frozen=True, slots=True, kw_only=True)
class Outcome:
    """How one attempt ended: a response (HTTP status, maybe a gRPC status) or a failure."""

    status: int | None = None  # the response's :status
    grpc_status: StatusCode | None = None  # its grpc-status, for a gRPC response
    failure: Failure | None = None  # why no response arrived

    def __post_init__(self) -> None:
        if (self.status is None) == (self.failure is None):
            raise ValueError(f"outcome {self}: needs a status or a failure, not both")
        if self.status is not None and not 100 <= self.status <= 599:
            raise ValueError(f"outcome status {self.status}: must be within 100..599")
        if self.grpc_status is not None and self.status is None:
            raise ValueError(f"outcome {self}: a gRPC status comes only with a response")


_GRPC_AS_HTTP = {  # the gRPC codes that mean a server-side failure, as Envoy maps them
    StatusCode.UNKNOWN: 500,
    StatusCode.INTERNAL: 500,
    StatusCode.DATA_LOSS: 500,
    StatusCode.UNAVAILABLE: 503,
    StatusCode.DEADLINE_EXCEEDED: 504,
}


def http_status_of(outcome: Outcome) -> int:
    """The HTTP status ``outcome`` counts as, for outlier detection and the metrics."""
    if outcome.failure is not None:
        return 504 if outcome.failure is Failure.TIMEOUT else 503
    assert outcome.status is not None  # an Outcome has a status or a failure
    if outcome.grpc_status is not None:
        return _GRPC_AS_HTTP.get(outcome.grpc_status, outcome.status)
    return outcome.status


def succeeded(outcome: Outcome) -> bool:
    """A success for the balancer's latency estimate: below 500, and gRPC OK if gRPC."""
    return outcome.status is not None and outcome.status < 500 and \
        outcome.grpc_status in (None, StatusCode.OK)

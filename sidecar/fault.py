"""Fault injection: a delay or an error the caller's sidecar adds to a route's requests.

How does the frontend cope when payments takes two seconds, or fails one call in ten? Fault
injection answers it without touching payments: the *caller's* sidecar, matching a route,
waits before sending the request on (a delay) or answers it itself (an abort), each for a
percentage of the requests, optionally only those that carry a header (a tester's requests,
say). Envoy's HTTP fault filter and Istio's ``HTTPRoute.fault`` do the same; the delay comes
first, then the abort, as in Envoy.

Two things a user of it should know (Istio's docs say the first): an aborted request never
reaches the upstream, so the route's retry policy does not retry it, and the demo's app-level
knobs (``meshctl fault``) are the way to make a *service* slow or failing for every caller,
while this makes one route look so to the callers it is configured for.

Pure: :func:`decide` takes the caller's ``random.Random``.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from mesh.grpc import StatusCode
from mesh.grpc.status import code_for_http_status
from mesh.proto.config_pb2 import FaultInjection, HeaderMatcher
from sidecar.outcome import Outcome, http_status_of

FAULT_HEADER = "x-mesh-fault"  # on an answer the fault made: "abort", or "delay" (a timeout)


@dataclass(frozen=True, slots=True, kw_only=True)
class Abort:
    """The answer an aborted request gets: an HTTP status, or a gRPC status (HTTP 200)."""

    http_status: int | None = None
    grpc_status: StatusCode | None = None

    def reply(self) -> tuple[int, StatusCode]:
        """The HTTP status and gRPC status to answer with (a gRPC caller sees the latter, as
        its library would map an HTTP status; an HTTP caller the former)."""
        if self.http_status is not None:
            return self.http_status, code_for_http_status(self.http_status)
        assert self.grpc_status is not None, "an abort has a status"
        as_http = http_status_of(Outcome(status=200, grpc_status=self.grpc_status))
        return (as_http if as_http != 200 else 500), self.grpc_status


@dataclass(frozen=True, slots=True, kw_only=True)
class FaultPolicy:
    """A route's faults, as applied (from :class:`FaultInjection`)."""

    delay: float = 0.0  # seconds
    delay_percent: float = 0.0
    abort: Abort | None = None
    abort_percent: float = 0.0
    headers: tuple[HeaderMatcher, ...] = ()

    def __post_init__(self) -> None:
        for name in ("delay_percent", "abort_percent"):
            if not 0.0 <= getattr(self, name) <= 100.0:
                raise ValueError(f"fault {name} {getattr(self, name)} is outside 0..100")
        if self.delay < 0:
            raise ValueError(f"fault delay {self.delay} is negative")


@dataclass(frozen=True, slots=True)
class FaultDecision:
    """What to do to one request: wait ``delay`` seconds, then answer with ``abort`` if set."""

    delay: float
    abort: Abort | None


NO_FAULT = FaultDecision(0.0, None)


def decide(policy: FaultPolicy, headers: Mapping[str, str], rng: random.Random,
           matches: Callable[[HeaderMatcher, Mapping[str, str]], bool]) -> FaultDecision:
    """The faults ``policy`` injects into a request with ``headers``.

    Args:
        matches: the router's header matcher (one meaning of a header condition everywhere).
    """
    if not all(matches(m, headers) for m in policy.headers):
        return NO_FAULT
    # Each draw is separate, as in Envoy: a request may be delayed, aborted, both or neither.
    delay = policy.delay if policy.delay and _chance(policy.delay_percent, rng) else 0.0
    abort = policy.abort if policy.abort and _chance(policy.abort_percent, rng) else None
    return FaultDecision(delay, abort) if delay or abort else NO_FAULT


def fault_policy_from(message: FaultInjection) -> FaultPolicy:
    """The policy a route's ``fault`` says (validated by the control plane already).

    Raises:
        ValueError: a percentage outside 0..100, a negative delay, an unknown gRPC status.
    """
    abort = None
    if message.HasField("abort"):
        kind = message.abort.WhichOneof("error_type")
        if kind == "http_status":
            abort = Abort(http_status=message.abort.http_status)
        elif kind == "grpc_status":
            abort = Abort(grpc_status=StatusCode(message.abort.grpc_status))
    delay = message.delay.fixed_delay.ToTimedelta().total_seconds() \
        if message.HasField("delay") else 0.0
    return FaultPolicy(delay=delay, delay_percent=message.delay.percentage, abort=abort,
                       abort_percent=message.abort.percentage, headers=tuple(message.headers))


def _chance(percent: float, rng: random.Random) -> bool:
    return percent >= 100.0 or rng.random() * 100.0 < percent

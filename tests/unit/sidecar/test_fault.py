"""Fault injection decides per request, with the caller's seeded randomness."""

from __future__ import annotations

import random

import pytest
from google.protobuf.json_format import ParseDict

from mesh.grpc import StatusCode
from mesh.proto.config_pb2 import FaultInjection, HeaderMatcher
from sidecar.fault import NO_FAULT, Abort, FaultDecision, FaultPolicy, decide, fault_policy_from
from sidecar.router import header_matches


def share(policy: FaultPolicy, headers: dict[str, str] | None = None,
          n: int = 10_000) -> tuple[float, float]:
    """The share of ``n`` requests delayed and aborted."""
    rng = random.Random(7)
    decisions = [decide(policy, headers or {}, rng, header_matches) for _ in range(n)]
    return (sum(1 for d in decisions if d.delay) / n,
            sum(1 for d in decisions if d.abort) / n)


def test_each_fault_hits_its_percentage_independently() -> None:
    policy = FaultPolicy(delay=0.2, delay_percent=30, abort=Abort(http_status=503),
                         abort_percent=10)
    delayed, aborted = share(policy)
    assert delayed == pytest.approx(0.30, abs=0.015)
    assert aborted == pytest.approx(0.10, abs=0.01)


def test_none_and_all() -> None:
    assert share(FaultPolicy(delay=0.2, delay_percent=0)) == (0.0, 0.0)
    everything = FaultPolicy(delay=0.2, delay_percent=100, abort=Abort(http_status=503),
                             abort_percent=100)
    assert decide(everything, {}, random.Random(1), header_matches) == \
        FaultDecision(0.2, Abort(http_status=503))


def test_only_requests_with_the_header() -> None:
    policy = FaultPolicy(abort=Abort(grpc_status=StatusCode.UNAVAILABLE), abort_percent=100,
                         headers=(HeaderMatcher(name="x-chaos", exact="yes"),))
    rng = random.Random(1)
    assert decide(policy, {}, rng, header_matches) is NO_FAULT
    assert decide(policy, {"x-chaos": "no"}, rng, header_matches) is NO_FAULT
    assert decide(policy, {"x-chaos": "yes"}, rng, header_matches).abort == \
        Abort(grpc_status=StatusCode.UNAVAILABLE)


def test_from_the_policy_message() -> None:
    message = ParseDict({"delay": {"fixed_delay": "0.5s", "percentage": 25},
                         "abort": {"grpc_status": 14, "percentage": 5},
                         "headers": [{"name": "x-chaos", "present": True}]}, FaultInjection())
    assert fault_policy_from(message) == FaultPolicy(
        delay=0.5, delay_percent=25, abort=Abort(grpc_status=StatusCode.UNAVAILABLE),
        abort_percent=5, headers=(HeaderMatcher(name="x-chaos", present=True),))
    assert fault_policy_from(FaultInjection()) == FaultPolicy()


@pytest.mark.parametrize("fields", [{"delay_percent": 101}, {"abort_percent": -1},
                                    {"delay": -0.1}])
def test_nonsense_is_refused(fields: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="fault"):
        FaultPolicy(**fields)  # type: ignore[arg-type]

"""Outcome and http_status_of: one value for how a call ended, one status it counts as."""

from __future__ import annotations

import pytest

from mesh.grpc.status import StatusCode
from sidecar.outcome import Failure, Outcome, http_status_of


@pytest.mark.parametrize(("kwargs", "message"), [
    ({}, "needs a status or a failure"),
    ({"status": 200, "failure": Failure.RESET}, "not both"),
    ({"status": 99}, "100..599"),
    ({"failure": Failure.RESET, "grpc_status": StatusCode.OK}, "only with a response"),
])
def test_outcome_rejects_nonsense(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Outcome(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(("outcome", "status"), [
    (Outcome(failure=Failure.CONNECT_FAILURE), 503),
    (Outcome(failure=Failure.RESET), 503),
    (Outcome(failure=Failure.TIMEOUT), 504),
    (Outcome(status=200, grpc_status=StatusCode.UNAVAILABLE), 503),
    (Outcome(status=200, grpc_status=StatusCode.DEADLINE_EXCEEDED), 504),
    (Outcome(status=200, grpc_status=StatusCode.INTERNAL), 500),
    (Outcome(status=200, grpc_status=StatusCode.UNIMPLEMENTED), 200),  # the caller's mistake
    (Outcome(status=200, grpc_status=StatusCode.NOT_FOUND), 200),
    (Outcome(status=502), 502),
])
def test_outcomes_count_as_envoy_reports_them(outcome: Outcome, status: int) -> None:
    assert http_status_of(outcome) == status

"""What the inbound side counts a relayed answer as (``sidecar.inbound.final_status``)."""

from __future__ import annotations

import pytest

from mesh.http2 import Headers
from sidecar.inbound import final_status

GRPC_OK = [(":status", "200"), ("content-type", "application/grpc")]


@pytest.mark.parametrize(("response", "trailers", "grpc", "counted"), [
    pytest.param([(":status", "201")], None, False, 201, id="http"),
    pytest.param([(":status", "503")], None, False, 503, id="http-error"),
    pytest.param(GRPC_OK, [("grpc-status", "0")], True, 200, id="grpc-ok"),
    pytest.param(GRPC_OK, [("grpc-status", "14")], True, 503, id="grpc-unavailable-trailers"),
    pytest.param(GRPC_OK, [("grpc-status", "4")], True, 504, id="grpc-deadline"),
    pytest.param(GRPC_OK, [("grpc-status", "5")], True, 200, id="grpc-not-found-is-no-failure"),
    pytest.param([*GRPC_OK, ("grpc-status", "13")], None, True, 500, id="trailers-only"),
    pytest.param(GRPC_OK, None, True, 500, id="grpc-without-status"),
    pytest.param([(":status", "502")], None, True, 502, id="grpc-http-error"),
])
def test_a_grpc_answer_counts_as_its_grpc_status_maps(
    response: Headers, trailers: Headers | None, grpc: bool, counted: int,
) -> None:
    assert final_status(response, trailers, grpc=grpc) == counted

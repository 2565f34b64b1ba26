"""A local rate limit admits its burst, then its refill rate, on a fake clock."""

from __future__ import annotations

import random

import pytest
from google.protobuf.json_format import ParseDict

from mesh.clock import FakeClock
from mesh.proto.config_pb2 import LocalRateLimit, RouteConfiguration
from sidecar.rate_limit import RateLimiter, RateLimitSettings, rate_limit_settings_from
from sidecar.router import Router


def test_a_burst_then_the_refill_rate() -> None:
    clock = FakeClock()
    limiter = RateLimiter(RateLimitSettings(max_tokens=5, tokens_per_fill=2, fill_interval=1.0),
                          clock, name="route shop/0")
    assert [limiter.admit() for _ in range(7)] == [True] * 5 + [False] * 2
    clock.advance(1.0)  # two tokens back
    assert [limiter.admit() for _ in range(3)] == [True, True, False]
    assert limiter.limited == 3
    clock.advance(100.0)  # never more than the burst
    assert sum(limiter.admit() for _ in range(10)) == 5


def test_from_the_policy_message() -> None:
    message = ParseDict({"max_tokens": 10, "fill_interval": "0.5s"}, LocalRateLimit())
    settings = rate_limit_settings_from(message)
    assert settings == RateLimitSettings(max_tokens=10, tokens_per_fill=1, fill_interval=0.5)
    assert settings.rate == 2.0


@pytest.mark.parametrize(("tokens", "per_fill", "interval"), [(0, 1, 1.0), (1, 0, 1.0),
                                                               (1, 1, 0.0)])
def test_a_bucket_that_admits_nothing_is_refused(tokens: int, per_fill: int,
                                                 interval: float) -> None:
    with pytest.raises(ValueError, match="a local rate limit needs"):
        RateLimitSettings(max_tokens=tokens, tokens_per_fill=per_fill, fill_interval=interval)


def routes(limit: dict[str, object]) -> list[RouteConfiguration]:
    return [ParseDict({"name": "shop", "virtual_hosts": [{"name": "shop", "domains": ["*"],
                       "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "orders"},
                                   "rate_limit": limit}]}]}, RouteConfiguration())]


def test_a_routes_bucket_outlives_a_new_router_that_keeps_the_route() -> None:
    """Clusters and routes arrive apart and each rebuilds the router: a drained bucket must
    not be refilled by an unrelated update, but a changed limit starts afresh."""
    clock = FakeClock()
    limit = {"max_tokens": 2, "fill_interval": "60s"}
    first = Router(routes(limit), ["orders"], clock=clock)
    target = first.route("orders", "/", {}, random.Random(1))
    assert target is not None and target.rate_limit is not None
    assert [target.rate_limit.admit() for _ in range(3)] == [True, True, False]
    again = Router(routes(limit), ["orders", "payments"], clock=clock, previous=first)
    assert again.limiters["shop/0"] is target.rate_limit
    changed = Router(routes({**limit, "max_tokens": 3}), ["orders"], clock=clock,
                     previous=again)
    assert changed.limiters["shop/0"] is not target.rate_limit
    assert changed.limiters["shop/0"].admit()

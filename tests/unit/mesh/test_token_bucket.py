"""TokenBucket: a burst, then a steady refill rate, on a fake clock."""

from __future__ import annotations

import pytest

from mesh.clock import FakeClock
from mesh.token_bucket import TokenBucket


def test_burst_then_refuse() -> None:
    bucket = TokenBucket(burst=3, rate=1.0, clock=FakeClock())
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]


def test_refills_at_rate_up_to_burst() -> None:
    clock = FakeClock()
    bucket = TokenBucket(burst=2, rate=10.0, clock=clock)
    assert bucket.take() and bucket.take() and not bucket.take()
    clock.advance(0.1)  # one token back
    assert bucket.take() and not bucket.take()
    clock.advance(60.0)  # never more than the burst
    assert bucket.take() and bucket.take() and not bucket.take()


@pytest.mark.parametrize(("burst", "rate"), [(0, 1.0), (1, 0.0), (1, -1.0)])
def test_rejects_nonsense(burst: int, rate: float) -> None:
    with pytest.raises(ValueError, match="burst >= 1 and rate > 0"):
        TokenBucket(burst=burst, rate=rate, clock=FakeClock())


def test_fake_clock_never_goes_back() -> None:
    clock = FakeClock(5.0)
    clock.advance(1.5)
    assert clock.now() == 6.5
    with pytest.raises(ValueError, match="cannot go back"):
        clock.advance(-1)

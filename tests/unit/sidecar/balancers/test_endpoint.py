"""EndpointState: the in-flight count and the peak-EWMA latency estimate every balancer reads."""

from __future__ import annotations

import math

import pytest

from mesh.clock import FakeClock
from sidecar.balancers.endpoint import DEFAULT_DECAY, DEFAULT_RTT, EndpointSpec, EndpointState


def make(clock: FakeClock, *, decay: float = DEFAULT_DECAY,
         default_rtt: float = DEFAULT_RTT) -> EndpointState:
    return EndpointState("10.0.0.1:15006", clock=clock, decay=decay, default_rtt=default_rtt)


def test_start_and_finish_count_calls_in_flight() -> None:
    endpoint = make(FakeClock())
    endpoint.start()
    endpoint.start()
    assert endpoint.active == 2
    endpoint.finish(0.01, ok=True)
    assert endpoint.active == 1


def test_finish_without_start_is_a_bug() -> None:
    endpoint = make(FakeClock())
    with pytest.raises(RuntimeError, match="without a matching start"):
        endpoint.finish(0.01, ok=True)


def test_a_new_endpoint_starts_from_default_rtt_not_zero() -> None:
    clock = FakeClock(100.0)
    endpoint = make(clock)
    assert endpoint.latency_estimate() == DEFAULT_RTT == 0.030
    assert endpoint.added_at == 100.0


def test_a_slower_response_replaces_the_estimate_at_once() -> None:
    clock = FakeClock()
    endpoint = make(clock)
    endpoint.start()
    endpoint.finish(0.500, ok=True)
    assert endpoint.latency_estimate() == 0.500


def test_a_faster_response_pulls_the_estimate_down_by_elapsed_time() -> None:
    clock = FakeClock()
    endpoint = make(clock, decay=10.0, default_rtt=0.100)
    clock.advance(10.0)  # one decay period since the estimate was set: w = e^-1
    endpoint.start()
    endpoint.finish(0.010, ok=True)
    w = math.exp(-1)
    # Decayed to now first (100 ms * w), then blended with the response.
    assert endpoint.latency_estimate() == pytest.approx(0.100 * w * w + 0.010 * (1 - w))


def test_responses_in_quick_succession_barely_move_the_estimate() -> None:
    clock = FakeClock()
    endpoint = make(clock, default_rtt=0.100)
    endpoint.start()
    endpoint.finish(0.010, ok=True)  # no time elapsed: w = 1
    assert endpoint.latency_estimate() == 0.100


def test_the_estimate_decays_toward_zero_while_idle_and_reading_changes_nothing() -> None:
    clock = FakeClock()
    endpoint = make(clock, decay=10.0, default_rtt=0.100)
    clock.advance(20.0)
    first = endpoint.latency_estimate()
    assert first == pytest.approx(0.100 * math.exp(-2))
    assert endpoint.latency_estimate() == first  # reading is not an observation
    endpoint.start()
    endpoint.finish(0.010, ok=True)  # blends with the decayed 13.5 ms, weighted by 20 s
    w = math.exp(-2)
    assert endpoint.latency_estimate() == pytest.approx(first * w + 0.010 * (1 - w))


def test_a_fast_answer_after_a_quiet_spell_lowers_what_the_estimate_reads() -> None:
    # The reviewer's numbers: 100 ms, then 10 s idle reads 36.8 ms; a 30 ms success must not
    # raise it (blending with the stored 100 ms gave 55.8 ms).
    clock = FakeClock()
    endpoint = make(clock, decay=10.0, default_rtt=0.100)
    clock.advance(10.0)
    before = endpoint.latency_estimate()
    assert before == pytest.approx(0.0368, abs=1e-4)
    endpoint.start()
    endpoint.finish(0.030, ok=True)
    after = endpoint.latency_estimate()
    assert 0.030 < after < before
    assert after == pytest.approx(0.0325, abs=1e-4)


def test_a_response_slower_than_the_decayed_estimate_is_a_new_peak() -> None:
    clock = FakeClock()
    endpoint = make(clock, decay=10.0, default_rtt=0.100)
    clock.advance(10.0)  # reads 36.8 ms: 50 ms is slower than that, though faster than 100 ms
    endpoint.start()
    endpoint.finish(0.050, ok=True)
    assert endpoint.latency_estimate() == 0.050


def test_a_fast_failure_never_makes_an_endpoint_look_faster() -> None:
    clock = FakeClock()
    endpoint = make(clock, default_rtt=0.100)
    clock.advance(30.0)
    endpoint.start()
    endpoint.finish(0.001, ok=False)
    assert endpoint.latency_estimate() == 0.100  # not lowered, and the idle decay restarted
    endpoint.start()
    endpoint.finish(0.300, ok=False)
    assert endpoint.latency_estimate() == 0.300  # a slow failure is still slow


def test_available_means_healthy_and_not_ejected() -> None:
    endpoint = make(FakeClock())
    assert endpoint.available
    endpoint.ejected = True
    assert not endpoint.available
    endpoint.ejected, endpoint.healthy = False, False
    assert not endpoint.available
    assert "unhealthy" in repr(endpoint)


@pytest.mark.parametrize(("address", "weight", "message"), [
    ("", 1, "must not be empty"),
    ("a:1", 0, "must be at least 1"),
])
def test_spec_rejects_nonsense(address: str, weight: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        EndpointSpec(address=address, weight=weight)


def test_estimate_settings_must_be_positive() -> None:
    with pytest.raises(ValueError, match="must be positive"):
        make(FakeClock(), default_rtt=0.0)

"""OutlierDetector: failures in a row, a poor success rate or a high failure percentage eject,
each with its enforcing probability; time (growing) returns."""

from __future__ import annotations

import random

import pytest

from mesh.clock import FakeClock
from sidecar.outcome import Failure, Outcome
from sidecar.outlier import (
    Ejected,
    EjectionReason,
    OutlierDetectionConfig,
    OutlierDetector,
    Returned,
)

OK = Outcome(status=200)
E500 = Outcome(status=500)
E503 = Outcome(status=503)
HOSTS = [f"h{i}" for i in range(10)]


def detector(config: OutlierDetectionConfig | None = None,
             hosts: list[str] = HOSTS, seed: int = 1) -> tuple[OutlierDetector, FakeClock]:
    clock = FakeClock()
    made = OutlierDetector(config, clock=clock, rng=random.Random(seed))
    made.set_addresses(hosts)
    return made, clock


def fail(d: OutlierDetector, address: str, times: int, outcome: Outcome = E500) -> Ejected | None:
    results = [d.record(address, outcome) for _ in range(times)]
    assert all(r is None for r in results[:-1])
    return results[-1]


def eject_and_return(d: OutlierDetector, clock: FakeClock, address: str) -> float:
    """Eject ``address`` with five 5xx, sweep until it returns; the ejection's length."""
    ejected = fail(d, address, 5)
    assert ejected is not None
    length = ejected.until - clock.now()
    while Returned(address=address) not in d.sweep():
        clock.advance(10.0)
    return length


def test_five_consecutive_5xx_eject_for_30_seconds() -> None:
    d, clock = detector()
    clock.advance(7.0)
    assert fail(d, "h1", 5) == Ejected(address="h1", reason=EjectionReason.CONSECUTIVE_5XX,
                                       until=37.0)
    assert d.ejected == {"h1"}


def test_a_success_resets_the_count() -> None:
    d, _ = detector()
    assert fail(d, "h1", 4) is None
    assert d.record("h1", OK) is None
    assert fail(d, "h1", 4) is None
    assert d.record("h1", Outcome(status=404)) is None  # a 4xx is the caller's problem
    assert fail(d, "h1", 5) is not None


def test_the_gateway_rule_counts_only_502_503_504_and_no_response() -> None:
    config = OutlierDetectionConfig(enforcing_consecutive_5xx=0, consecutive_gateway_failure=3,
                                    enforcing_consecutive_gateway_failure=100)
    d, _ = detector(config)
    assert fail(d, "h1", 2, E503) is None
    assert d.record("h1", E500) is None  # a 500 breaks the run of gateway errors
    assert fail(d, "h1", 2, E503) is None
    ejected = d.record("h1", Outcome(failure=Failure.TIMEOUT))
    assert ejected is not None and ejected.reason is EjectionReason.CONSECUTIVE_GATEWAY_FAILURE


def test_an_ejected_endpoint_returns_at_the_first_sweep_after_its_time() -> None:
    d, clock = detector()
    fail(d, "h1", 5)
    clock.advance(29.0)
    assert d.sweep() == []
    clock.advance(1.0)
    assert d.sweep() == [Returned(address="h1")]
    assert d.ejected == frozenset()


def test_returning_clears_the_counts() -> None:
    d, clock = detector()
    fail(d, "h1", 5)
    fail(d, "h1", 3)  # failures while ejected (calls already in flight)
    clock.advance(30.0)
    d.sweep()
    assert fail(d, "h1", 4) is None  # needs five fresh failures


def test_ejection_time_grows_with_each_ejection_up_to_the_maximum() -> None:
    d, clock = detector()
    lengths = [eject_and_return(d, clock, "h1") for _ in range(12)]
    assert lengths == [30.0, 60.0, 90.0, 120.0, 150.0, 180.0, 210.0, 240.0, 270.0, 300.0,
                       300.0, 300.0]


def test_the_multiplier_steps_down_once_per_healthy_interval() -> None:
    d, clock = detector()
    for _ in range(3):
        eject_and_return(d, clock, "h1")  # the multiplier is 3
    for _ in range(2):  # two whole intervals in service
        clock.advance(10.0)
        d.sweep()
    assert eject_and_return(d, clock, "h1") == 60.0  # 3 - 2 + 1


def test_never_more_than_max_ejection_percent() -> None:
    d, _ = detector(OutlierDetectionConfig(max_ejection_percent=20))
    assert fail(d, "h1", 5) is not None
    assert fail(d, "h2", 5) is not None  # 2 of 10: 20 %
    assert fail(d, "h3", 5) is None  # 3 of 10 would be 30 %
    assert d.ejected == {"h1", "h2"}
    assert fail(d, "h3", 4) is None  # a refused ejection starts the count over
    d.set_addresses([*HOSTS, *(f"x{i}" for i in range(5))])  # 15 hosts: 3 may go
    assert fail(d, "h3", 1) is not None


def test_at_least_one_endpoint_may_always_be_ejected() -> None:
    d, _ = detector(hosts=["a", "b", "c"])  # 10 % of 3 is less than one
    assert fail(d, "a", 5) is not None
    assert fail(d, "b", 5) is None


def test_success_rate_ejects_the_outlier_at_the_sweep() -> None:
    config = OutlierDetectionConfig(enforcing_consecutive_5xx=0, max_ejection_percent=50)
    d, _ = detector(config, hosts=["a", "b", "c", "d", "e", "f"])
    for address in "abcde":
        for i in range(100):
            d.record(address, E500 if i < 2 else OK)  # 98 %
    for i in range(100):
        d.record("f", E500 if i % 2 else OK)  # 50 %
    changes = d.sweep()
    assert [(c.address, c.reason) for c in changes if isinstance(c, Ejected)] == \
        [("f", EjectionReason.SUCCESS_RATE)]
    assert d.sweep() == []  # counts start over each interval


def test_success_rate_needs_enough_hosts_and_calls() -> None:
    config = OutlierDetectionConfig(enforcing_consecutive_5xx=0)
    d, _ = detector(config, hosts=["a", "b", "c", "d", "e", "f"])
    for address in "abcd":
        for _ in range(100):
            d.record(address, OK)
    for i in range(99):  # one call short of the volume: not judged
        d.record("e", OK)
        d.record("f", E500 if i % 2 else OK)
    assert d.sweep() == []  # four hosts with enough calls, five needed


def test_endpoints_join_and_leave() -> None:
    d, _ = detector(hosts=["a", "b"])
    fail(d, "a", 5)
    d.set_addresses(["a", "c"])
    assert d.ejected == {"a"}  # a stays, and stays ejected
    assert d.record("b", E500) is None  # b left: ignored


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"consecutive_5xx": 0}, "consecutive_5xx 0: must be at least 1 .to turn the rule off, set "
                             "enforcing_consecutive_5xx to 0"),
    ({"interval": 0.0}, "interval"),
    ({"max_ejection_time": 10.0}, "max_ejection_time"),
    ({"max_ejection_percent": 101}, "max_ejection_percent 101: must be within 0..100"),
    ({"enforcing_success_rate": 101}, "enforcing_success_rate 101: must be within 0..100"),
    ({"failure_percentage_threshold": 120}, "failure_percentage_threshold 120"),
    ({"success_rate_request_volume": -1}, "success_rate_request_volume -1: must not be negative"),
])
def test_rejects_nonsense(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        OutlierDetectionConfig(**kwargs)  # type: ignore[arg-type]


# -- enforcement: a rule detects, its percentage decides -------------------------------------


def test_the_gateway_rule_detects_but_by_default_does_not_eject() -> None:
    d, _ = detector()  # Envoy: consecutive_gateway_failure 5, enforced 0 %
    ejected = fail(d, "h1", 5, E503)  # five gateway errors are also five 5xx
    assert ejected is not None and ejected.reason is EjectionReason.CONSECUTIVE_5XX


def test_a_rule_enforced_at_zero_never_ejects_and_starts_its_count_over() -> None:
    d, _ = detector(OutlierDetectionConfig(enforcing_consecutive_5xx=0))
    assert fail(d, "h1", 50) is None
    assert d.ejected == frozenset()


def test_an_enforcing_percentage_ejects_that_share_of_detections() -> None:
    d, clock = detector(OutlierDetectionConfig(enforcing_consecutive_5xx=30,
                                               base_ejection_time=1.0, interval=1.0),
                        hosts=["h"], seed=7)
    ejected = 0
    for _ in range(1000):  # 1000 detections of five failures each
        if fail(d, "h", 5) is not None:
            ejected += 1
            clock.advance(1000.0)  # back at the next sweep, the multiplier long decayed
            d.sweep()
    assert ejected == pytest.approx(300, abs=45)


# -- failure percentage ----------------------------------------------------------------------


def judge(d: OutlierDetector, hosts: str, failing: dict[str, int],
          calls: int = 100) -> list[Ejected]:
    """Each of ``hosts`` serves ``calls`` calls, ``failing[host]`` of them 500s spread out; then
    the sweep's ejections."""
    for address in hosts:
        bad = failing.get(address, 0)
        for i in range(calls):
            d.record(address, E500 if i * bad // calls != (i + 1) * bad // calls else OK)
    return [c for c in d.sweep() if isinstance(c, Ejected)]


def test_failure_percentage_ejects_at_or_over_the_threshold_when_enforced() -> None:
    config = OutlierDetectionConfig(enforcing_consecutive_5xx=0, enforcing_success_rate=0,
                                    enforcing_failure_percentage=100, max_ejection_percent=50)
    d, _ = detector(config, hosts=list("abcdef"))
    ejected = judge(d, "abcdef", {"e": 84, "f": 85})  # Envoy's threshold: 85 % failed, or more
    assert [(e.address, e.reason) for e in ejected] == [("f", EjectionReason.FAILURE_PERCENTAGE)]


def test_failure_percentage_is_off_by_default() -> None:
    d, _ = detector(OutlierDetectionConfig(enforcing_consecutive_5xx=0, enforcing_success_rate=0),
                    hosts=list("abcdef"))
    assert judge(d, "abcdef", {"f": 100}) == []


def test_failure_percentage_needs_enough_hosts_and_calls() -> None:
    config = OutlierDetectionConfig(enforcing_consecutive_5xx=0, enforcing_success_rate=0,
                                    enforcing_failure_percentage=100)
    d, _ = detector(config, hosts=list("abcde"))
    assert judge(d, "abcde", {"e": 100}, calls=49) == []  # Envoy's volume: 50 calls
    d, _ = detector(config, hosts=list("abcd"))
    assert judge(d, "abcd", {"d": 100}) == []  # Envoy's minimum: 5 hosts judged


def test_failure_percentage_judges_every_endpoint_alike_where_success_rate_cannot() -> None:
    # All five endpoints fail 90 %: none is worse than its peers, all are bad.
    config = OutlierDetectionConfig(enforcing_consecutive_5xx=0,
                                    enforcing_failure_percentage=100, max_ejection_percent=40)
    d, _ = detector(config, hosts=list("abcde"))
    ejected = judge(d, "abcde", dict.fromkeys("abcde", 90))
    assert {e.reason for e in ejected} == {EjectionReason.FAILURE_PERCENTAGE}
    assert len(ejected) == 2  # the cap: 40 % of five


def test_an_endpoint_the_success_rate_ejects_is_not_judged_twice() -> None:
    config = OutlierDetectionConfig(enforcing_consecutive_5xx=0,
                                    enforcing_failure_percentage=100, max_ejection_percent=50)
    d, _ = detector(config, hosts=list("abcdef"))
    ejected = judge(d, "abcdef", {"f": 95})
    assert [(e.address, e.reason) for e in ejected] == [("f", EjectionReason.SUCCESS_RATE)]

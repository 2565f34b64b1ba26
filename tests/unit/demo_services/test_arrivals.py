"""The open-loop schedule: request n is due at start + n / rate, whatever happens meanwhile."""

from __future__ import annotations

import pytest

from demo_services.arrivals import Schedule


def test_due_times_are_evenly_spaced_from_the_start() -> None:
    s = Schedule(rate=4, start=10.0, duration=1.0)
    assert s.total == 4
    assert [s.due(n) for n in range(4)] == [10.0, 10.25, 10.5, 10.75]
    assert s.end == 10.75


def test_due_by_counts_what_should_have_been_sent_including_a_backlog() -> None:
    s = Schedule(rate=100, start=0.0, duration=2.0)
    assert s.due_by(-0.1) == 0
    assert s.due_by(0.0) == 1  # the first is due at the start itself
    assert s.due_by(0.0099) == 1
    assert s.due_by(0.01) == 2
    # The generator was stalled for half a second: fifty more are due at once, not skipped.
    assert s.due_by(0.5) == 51
    assert s.due_by(60.0) == 200  # never more than the schedule holds


def test_count_and_duration_whichever_ends_first() -> None:
    assert Schedule(rate=10, start=0, count=7).total == 7
    assert Schedule(rate=10, start=0, duration=3, count=7).total == 7
    assert Schedule(rate=10, start=0, duration=0.5, count=7).total == 5
    assert Schedule(rate=3, start=0, duration=1).total == 3  # no float rounding to 4


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"rate": 0, "duration": 1}, "rate 0/s: must be positive"),
    ({"rate": 5}, "needs a duration or a count"),
    ({"rate": 5, "duration": -1}, "duration -1s"),
    ({"rate": 5, "count": 0}, "count 0"),
])
def test_bad_schedules_say_what_is_wrong(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Schedule(start=0.0, **kwargs)  # type: ignore[arg-type]

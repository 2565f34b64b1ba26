"""Tests for mesh.grpc.deadline: the ``grpc-timeout`` header both ways, and Deadline on a FakeClock.

The header is ``TimeoutValue TimeoutUnit``: 1 to 8 ASCII digits, then H, M, S, m, u or n. A
sender rounds *up* in the finest unit that fits, so a callee never believes it has more time
than its caller gave and loses as little precision as 8 digits allow.
"""

from __future__ import annotations

import pytest

from mesh.clock import FakeClock
from mesh.grpc.deadline import Deadline, format_timeout, parse_timeout

# -- parse_timeout ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("2H", 7200.0),
        ("3M", 180.0),
        ("1S", 1.0),
        ("250m", 0.25),
        ("1500u", 0.0015),
        ("7n", 7e-9),
        ("100m", 0.1),
        ("1100000u", 1.1),
        ("99999999S", 99_999_999.0),  # the 8-digit maximum
        ("00000001S", 1.0),  # leading zeros still count as digits
    ],
)
def test_parse_timeout_reads_every_unit(header: str, seconds: float) -> None:
    assert parse_timeout(header) == seconds


@pytest.mark.parametrize(
    "header",
    [
        "",  # nothing at all
        "S",  # a unit without a value
        "100",  # a value without a unit
        "123456789S",  # 9 digits: one more than the header allows
        "1s",  # units are case-sensitive: "s" is not seconds
        "1h",
        "1 S",  # no spaces
        " 1S",
        "-1S",  # no sign
        "+1S",
        "1.5S",  # no fractions
        "1e3m",
        "1Sm",  # one unit only
        "١S",  # ARABIC-INDIC DIGIT ONE: a digit to str.isdigit, but not ASCII
        "²S",  # SUPERSCRIPT TWO, likewise
    ],
)
def test_parse_timeout_rejects_malformed_values(header: str) -> None:
    with pytest.raises(ValueError, match="invalid grpc-timeout") as caught:
        parse_timeout(header)
    # The message names the offending value and what a valid one looks like.
    assert repr(header) in str(caught.value)
    assert "1-8 digits" in str(caught.value)
    assert "H, M, S, m, u, n" in str(caught.value)


# -- format_timeout --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "header"),
    [
        (7e-9, "7n"),
        (0.05, "50000000n"),  # 8 digits of nanoseconds: still fits
        (0.099999999, "99999999n"),  # the largest timeout nanoseconds can carry
        (0.1, "100000u"),  # 9 digits of ns: microseconds is the finest unit that fits
        (0.25, "250000u"),
        (1.1, "1100000u"),
        (12.3, "12300000u"),
        (99.999999, "99999999u"),
        (100.0, "100000m"),
        (99_999.999, "99999999m"),
        (100_000.0, "100000S"),
        (99_999_999.0, "99999999S"),
        (100_000_000.0, "1666667M"),  # 1666666.67 minutes, rounded up
        (6_000_000_000.0, "1666667H"),
        (99_999_999 * 3600.0, "99999999H"),
    ],
)
def test_format_timeout_picks_the_finest_unit_that_fits(seconds: float, header: str) -> None:
    assert format_timeout(seconds) == header


@pytest.mark.parametrize(
    ("seconds", "header"),
    [
        (1.5e-9, "2n"),  # 1.5 ns: never round down to less time than the caller has
        (1e-10, "1n"),  # a tenth of a nanosecond is still a nanosecond
        (0.1000000001, "100001u"),  # a nanosecond too many for "100000u" and for ns digits
        (100.0000001, "100001m"),
        (100_000_000.5, "1666667M"),
    ],
)
def test_format_timeout_rounds_up(seconds: float, header: str) -> None:
    assert format_timeout(seconds) == header
    assert parse_timeout(header) >= seconds


@pytest.mark.parametrize("seconds", [0.0, -0.5, -3600.0])
def test_format_timeout_of_no_time_left_is_the_smallest_valid_header(seconds: float) -> None:
    assert format_timeout(seconds) == "1n"


def test_format_timeout_beyond_the_largest_header_is_clamped() -> None:
    assert format_timeout(10**9 * 3600.0) == "99999999H"


@pytest.mark.parametrize(
    "header", ["1n", "99999999n", "100000u", "1100000u", "250m", "59S", "100000S", "7M", "2H"]
)
def test_format_of_parse_is_the_same_duration(header: str) -> None:
    # The unit may change (59S is sent as 59000000u) but not the time.
    assert parse_timeout(format_timeout(parse_timeout(header))) == parse_timeout(header)


# -- Deadline --------------------------------------------------------------------------------


def test_deadline_after_counts_down_on_the_clock() -> None:
    clock = FakeClock(start=1000.0)
    deadline = Deadline.after(2.0, clock)

    assert deadline.at == 1002.0
    assert deadline.remaining() == 2.0
    assert not deadline.expired

    clock.advance(1.5)
    assert deadline.remaining() == 0.5
    assert not deadline.expired


def test_deadline_is_expired_at_and_after_its_time() -> None:
    clock = FakeClock(start=10.0)
    deadline = Deadline.after(1.0, clock)

    clock.advance(1.0)
    assert deadline.remaining() == 0.0
    assert deadline.expired

    clock.advance(0.25)
    assert deadline.remaining() == -0.25
    assert deadline.expired


def test_deadline_header_sends_the_time_that_remains() -> None:
    clock = FakeClock(start=0.0)
    deadline = Deadline.after(3.0, clock)
    assert deadline.header() == "3000000u"

    clock.advance(2.75)
    assert deadline.header() == "250000u"

    clock.advance(0.25)
    assert deadline.header() == "1n"  # expired: still a valid header, and already over


def test_earliest_keeps_a_deadline_that_comes_first() -> None:
    clock = FakeClock(start=100.0)
    deadline = Deadline.after(1.0, clock)

    assert deadline.earliest(5.0) is deadline
    assert deadline.earliest(1.0) is deadline  # a tie keeps the existing deadline
    assert deadline.earliest(None) is deadline


def test_earliest_takes_a_timeout_that_ends_sooner() -> None:
    clock = FakeClock(start=100.0)
    deadline = Deadline.after(10.0, clock)
    clock.advance(4.0)  # the timeout counts from now, not from when the deadline was made

    sooner = deadline.earliest(2.5)

    assert sooner.at == 106.5
    assert sooner.clock is clock
    assert sooner.remaining() == 2.5
    assert deadline.at == 110.0  # a Deadline is a value: the original is unchanged

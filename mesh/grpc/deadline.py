"""Deadlines: when a call must be finished, and the ``grpc-timeout`` header that carries it.

A *timeout* is relative ("500 ms from now"); a *deadline* is absolute ("at 12.345 on this
clock"). A caller turns its timeout into a deadline once; every hop then sends the time that
*remains* as ``grpc-timeout``, so the whole chain shares one deadline and no callee works for
a caller that has already given up.

``grpc-timeout`` is ``TimeoutValue TimeoutUnit``: at most 8 ASCII digits, then one of
``H`` (hours), ``M`` (minutes), ``S`` (seconds), ``m`` (ms), ``u`` (µs), ``n`` (ns).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import Decimal

from mesh.clock import Clock

# Nanoseconds per unit: integers, so converting never picks up float error (0.1 s / 1e-6 is
# 100000.00000000001, which rounded up would send 100001u).
_NANOS = {"H": 3600 * 10**9, "M": 60 * 10**9, "S": 10**9, "m": 10**6, "u": 10**3, "n": 1}
# Finest first: the encoder picks the finest unit whose value fits in 8 digits.
_FINEST_FIRST = ("n", "u", "m", "S", "M", "H")
_MAX_VALUE = 99_999_999
_NANOS_PER_SECOND = 10**9


def parse_timeout(value: str) -> float:
    """Seconds in a ``grpc-timeout`` header value.

    Raises:
        ValueError: the value is not 1-8 digits followed by one of H, M, S, m, u, n.
    """
    digits, unit = value[:-1], value[-1:]
    if unit not in _NANOS or not (1 <= len(digits) <= 8) or not digits.isascii() \
            or not digits.isdigit():
        raise ValueError(f"invalid grpc-timeout {value!r}: want 1-8 digits and a unit "
                         f"(H, M, S, m, u, n)")
    return int(digits) * _NANOS[unit] / _NANOS_PER_SECOND


def format_timeout(seconds: float) -> str:
    """A ``grpc-timeout`` value for ``seconds``, in the finest unit that fits 8 digits.

    The value is rounded up, so the callee never believes it has more time than the caller.
    A timeout of zero or less becomes ``1n``: already expired, but still a valid header.
    """
    if seconds <= 0:
        return "1n"
    # The decimal that ``seconds`` prints as (0.1, not the binary float just above it), in
    # whole nanoseconds rounded up; then each unit is an exact integer division rounded up.
    nanos = math.ceil(Decimal(repr(seconds)) * _NANOS_PER_SECOND)
    for unit in _FINEST_FIRST:
        value = -(-nanos // _NANOS[unit])
        if value <= _MAX_VALUE:
            return f"{value}{unit}"
    return f"{_MAX_VALUE}H"


@dataclass(frozen=True, slots=True)
class Deadline:
    """An absolute time on ``clock`` by which a call must finish."""

    at: float
    clock: Clock

    @classmethod
    def after(cls, timeout: float, clock: Clock) -> Deadline:
        """The deadline ``timeout`` seconds from now."""
        return cls(clock.now() + timeout, clock)

    def remaining(self) -> float:
        """Seconds left (negative once passed)."""
        return self.at - self.clock.now()

    @property
    def expired(self) -> bool:
        return self.remaining() <= 0

    def header(self) -> str:
        """The ``grpc-timeout`` value to send downstream: the time that remains."""
        return format_timeout(self.remaining())

    def earliest(self, timeout: float | None) -> Deadline:
        """This deadline, or ``timeout`` from now if that comes first."""
        if timeout is None:
            return self
        other = self.clock.now() + timeout
        return self if self.at <= other else Deadline(other, self.clock)

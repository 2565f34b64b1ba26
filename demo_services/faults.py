"""Fault knobs: the misbehaviour a demo service adds to every call, on purpose.

A mesh earns its keep when services misbehave, so every demo service can be told to:

- **add latency**: a fixed delay, or a heavy-tailed one — ``lognormal`` (the delay's median is
  ``latency``, ``sigma`` its spread: sigma 1 puts p99 near 10× the median) or ``pareto`` (the
  delay is at least ``latency``; shape ``alpha`` 1.5 gives a mean of 3× that and a tail with no
  p99 to speak of). Real services' latencies look like these, not like a bell curve;
- **fail** a share of calls (``error_rate``): gRPC ``UNAVAILABLE`` / HTTP 503, what an overloaded
  instance answers and what retry policies retry;
- **brown out**: slow *and* failing for a number of seconds, then well again — the half-dead
  replica that health checks miss and outlier detection, timeouts and budgets must handle;
- **crash**: exit the process (the admin endpoint does that; see :mod:`demo_services.admin`).

This module decides and never sleeps: :meth:`Faults.decide` returns a :class:`Verdict` (how long
to wait, whether to fail) from the injected clock and seeded ``random.Random``, so a test (or an
experiment) replays the same sequence of delays; the service's handler carries it out.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any

from mesh.clock import Clock

MAX_DELAY = 30.0  # seconds: a heavy tail is capped so one call cannot hang a demo forever


class Distribution(Enum):
    """How the added latency is drawn."""

    FIXED = "fixed"  # exactly ``latency`` every time
    LOGNORMAL = "lognormal"  # median ``latency``, spread ``sigma``
    PARETO = "pareto"  # at least ``latency``, tail shape ``alpha`` (smaller: heavier)


@dataclass(frozen=True, slots=True, kw_only=True)
class FaultSettings:
    """The steady knobs of one service (a brownout is separate: it ends by itself)."""

    latency: float = 0.0  # seconds (the median for lognormal, the minimum for pareto)
    distribution: Distribution = Distribution.FIXED
    sigma: float = 1.0  # lognormal: standard deviation of the log of the delay
    alpha: float = 1.5  # pareto: the tail index
    error_rate: float = 0.0  # share of calls that fail, 0..1

    def __post_init__(self) -> None:
        if not 0 <= self.latency <= MAX_DELAY:
            raise ValueError(f"fault latency {self.latency}s: must be within 0..{MAX_DELAY}s")
        if self.sigma <= 0:
            raise ValueError(f"fault sigma {self.sigma}: must be positive")
        if self.alpha <= 0:
            raise ValueError(f"fault alpha {self.alpha}: must be positive")
        if not 0 <= self.error_rate <= 1:
            raise ValueError(f"fault error_rate {self.error_rate}: must be within 0..1")

    @classmethod
    def from_json(cls, data: dict[str, Any], base: FaultSettings | None = None) -> FaultSettings:
        """``base`` (default: no faults) with the fields in ``data`` changed.

        ``data`` uses the admin endpoint's names: ``latency_ms``, ``distribution``, ``sigma``,
        ``alpha``, ``error_rate``.

        Raises:
            ValueError: an unknown field or a bad value, named.
        """
        unknown = set(data) - {"latency_ms", "distribution", "sigma", "alpha", "error_rate"}
        if unknown:
            raise ValueError(f"unknown fault field(s) {sorted(unknown)}: want latency_ms, "
                             f"distribution, sigma, alpha, error_rate")
        settings = base or cls()
        changes: dict[str, Any] = {}
        try:
            if "latency_ms" in data:
                changes["latency"] = float(data["latency_ms"]) / 1000
            if "distribution" in data:
                changes["distribution"] = Distribution(data["distribution"])
            for name in ("sigma", "alpha", "error_rate"):
                if name in data:
                    changes[name] = float(data[name])
        except (TypeError, ValueError) as error:
            raise ValueError(f"fault settings {data}: {error}") from None
        return replace(settings, **changes)

    def to_json(self) -> dict[str, Any]:
        return {"latency_ms": round(self.latency * 1000, 3),
                "distribution": self.distribution.value, "sigma": self.sigma,
                "alpha": self.alpha, "error_rate": self.error_rate}


@dataclass(frozen=True, slots=True, kw_only=True)
class Brownout:
    """Slow and failing until ``until`` (an absolute time on the faults' clock)."""

    until: float
    latency: float = 0.2  # seconds added to every call while it lasts
    error_rate: float = 0.5  # share of calls failed while it lasts

    def __post_init__(self) -> None:
        if not 0 <= self.latency <= MAX_DELAY:
            raise ValueError(f"brownout latency {self.latency}s: must be within "
                             f"0..{MAX_DELAY}s")
        if not 0 <= self.error_rate <= 1:
            raise ValueError(f"brownout error_rate {self.error_rate}: must be within 0..1")


@dataclass(frozen=True, slots=True, kw_only=True)
class Verdict:
    """What to do to one call: wait ``delay`` seconds, then fail it or not."""

    delay: float = 0.0
    fail: bool = False
    reason: str = ""  # why it fails: "error_rate" or "brownout"


@dataclass(slots=True)
class FaultCounters:
    """What the knobs did so far (the admin endpoint shows them)."""

    calls: int = 0
    failed: int = 0
    delayed: int = 0
    delay_total: float = 0.0
    by_reason: dict[str, int] = field(default_factory=dict)


class Faults:
    """One service's knobs and the decisions they make, call by call."""

    def __init__(self, *, clock: Clock, rng: random.Random) -> None:
        self.clock = clock
        self.rng = rng
        self.settings = FaultSettings()
        self.brownout: Brownout | None = None
        self.counters = FaultCounters()

    def set(self, settings: FaultSettings) -> None:
        self.settings = settings

    def start_brownout(self, seconds: float, *, latency: float = 0.2,
                       error_rate: float = 0.5) -> Brownout:
        """Slow (``latency`` more) and failing (``error_rate``) for the next ``seconds``.

        Raises:
            ValueError: ``seconds`` not positive, or a bad latency or rate.
        """
        if seconds <= 0:
            raise ValueError(f"brownout seconds {seconds}: must be positive")
        self.brownout = Brownout(until=self.clock.now() + seconds, latency=latency,
                                 error_rate=error_rate)
        return self.brownout

    def clear(self) -> None:
        """Back to a well-behaved service."""
        self.settings = FaultSettings()
        self.brownout = None

    def active_brownout(self) -> Brownout | None:
        """The brownout in force now, if any (an expired one is forgotten)."""
        if self.brownout is not None and self.clock.now() >= self.brownout.until:
            self.brownout = None
        return self.brownout

    def decide(self) -> Verdict:
        """The fate of the next call."""
        s, counters = self.settings, self.counters
        counters.calls += 1
        delay = self._draw_latency(s)
        fail, reason = self.rng.random() < s.error_rate, "error_rate"
        brownout = self.active_brownout()
        if brownout is not None:
            delay += brownout.latency
            if not fail and self.rng.random() < brownout.error_rate:
                fail, reason = True, "brownout"
        delay = min(delay, MAX_DELAY)
        if delay > 0:
            counters.delayed += 1
            counters.delay_total += delay
        if fail:
            counters.failed += 1
            counters.by_reason[reason] = counters.by_reason.get(reason, 0) + 1
            return Verdict(delay=delay, fail=True, reason=reason)
        return Verdict(delay=delay)

    def _draw_latency(self, s: FaultSettings) -> float:
        if s.latency == 0:
            return 0.0
        if s.distribution is Distribution.LOGNORMAL:
            return s.latency * self.rng.lognormvariate(0.0, s.sigma)
        if s.distribution is Distribution.PARETO:
            return s.latency * self.rng.paretovariate(s.alpha)  # paretovariate() is >= 1
        return s.latency

    def to_json(self) -> dict[str, Any]:
        """The knobs and counters, as the admin endpoint shows them."""
        brownout = self.active_brownout()
        c = self.counters
        return {
            "settings": self.settings.to_json(),
            "brownout": None if brownout is None else {
                "remaining_s": round(brownout.until - self.clock.now(), 3),
                "latency_ms": round(brownout.latency * 1000, 3),
                "error_rate": brownout.error_rate},
            "counters": {"calls": c.calls, "failed": c.failed, "delayed": c.delayed,
                         "mean_added_delay_ms": round(c.delay_total / c.delayed * 1000, 3)
                         if c.delayed else 0.0, "failed_by_reason": dict(c.by_reason)},
        }

"""Where calls come from: open-loop and closed-loop clients, each behind its own sidecar.

- :class:`OpenLoopClient` sends at a rate, whatever the answers: call ``i`` is due at
  ``start + i / rate`` (``arrivals: constant``) or after exponential gaps (``poisson``). A
  server that slows down does not slow it down — it builds a queue, as real traffic does.
- :class:`ClosedLoopClient` is ``users`` users, each sending one call, waiting for its
  answer, thinking ``think_time`` seconds, and sending the next: its rate falls when answers
  slow down (what hides a queue from a naive load test, "coordinated omission").

Every answer goes to a :class:`~simulator.record.Record`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from simulator.engine import Simulation
from simulator.record import Record
from simulator.sidecar import Answer, Sidecar


@dataclass(frozen=True, slots=True, kw_only=True)
class Load:
    """What a client sends, when, with which timeout."""

    service: str  # the service it calls
    start: float = 0.0  # virtual seconds
    stop: float  # no call is sent at or after this time
    timeout: float | None = None  # the caller's own deadline, seconds; None: the route's
    method: str = "GET"


class OpenLoopClient:
    """Calls at ``rate`` per second from ``load.start`` to ``load.stop``."""

    def __init__(self, sim: Simulation, sidecar: Sidecar, load: Load, record: Record, *,
                 rate: float, poisson: bool = False) -> None:
        if rate <= 0:
            raise ValueError(f"rate {rate}: must be positive")
        self.sim = sim
        self.sidecar = sidecar
        self.load = load
        self.record = record
        self.rate = rate
        self.poisson = poisson
        self.sent = 0

    def start(self) -> None:
        self.sim.at(self.load.start, self._send)

    def _send(self) -> None:
        sim, load = self.sim, self.load
        self.sidecar.call(load.service, self.record.add, timeout=load.timeout,
                          method=load.method)
        self.sent += 1
        gap = -math.log(1.0 - sim.rng.random()) / self.rate if self.poisson else None
        due = sim.now() + gap if gap is not None else load.start + self.sent / self.rate
        if due < load.stop:
            sim.at(due, self._send)


class ClosedLoopClient:
    """``users`` users calling one after another, each thinking ``think_time`` between."""

    def __init__(self, sim: Simulation, sidecar: Sidecar, load: Load, record: Record, *,
                 users: int, think_time: float = 0.0) -> None:
        if users < 1 or think_time < 0:
            raise ValueError(f"{users} users thinking {think_time} s: want at least one user "
                             f"and a think time of 0 or more")
        self.sim = sim
        self.sidecar = sidecar
        self.load = load
        self.record = record
        self.users = users
        self.think_time = think_time

    def start(self) -> None:
        for _ in range(self.users):
            self.sim.at(self.load.start, self._send)

    def _send(self) -> None:
        if self.sim.now() >= self.load.stop:
            return
        self.sidecar.call(self.load.service, self._answered, timeout=self.load.timeout,
                          method=self.load.method)

    def _answered(self, answer: Answer) -> None:
        self.record.add(answer)
        self.sim.after(self.think_time, self._send)

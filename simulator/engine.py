"""The event loop at virtual time: a heap of timed events, a clock, and seeded randomness.

``Simulation`` is the clock every policy object is given (it has ``now()``, like
:class:`mesh.clock.Clock`), the scheduler every model uses (``at``, ``after``), and the one
source of randomness (``rng``), so that a seed decides everything: the same seed gives the
same events in the same order, and the same numbers, byte for byte.

Events at the same time run in the order they were scheduled (each carries a sequence
number), never by comparing their actions. A cancelled event stays in the heap and is skipped
when its time comes: cancelling is O(1), and most cancelled events (a timeout that did not
fire) would have been popped soon anyway.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable
from heapq import heappop, heappush
from typing import Any


class Event:
    """One scheduled action; ``cancel()`` it to skip it."""

    __slots__ = ("action", "args", "cancelled", "time")

    def __init__(self, time: float, action: Callable[..., None], args: tuple[Any, ...]) -> None:
        self.time = time
        self.action = action
        self.args = args
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True
        # Let go of what it would have called: a call and its timers refer to each other,
        # and a cycle left behind waits for the garbage collector (see scenario.py).
        self.action = _nothing
        self.args = ()


def _nothing() -> None:
    pass


class Simulation:
    """A virtual clock, the events due on it, and the randomness of one run."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self._now = 0.0
        self._heap: list[tuple[float, int, Event]] = []
        self._sequence = itertools.count()
        self.events = 0  # run so far (cancelled ones not counted)

    def now(self) -> float:
        """Seconds of virtual time since the simulation began."""
        return self._now

    def at(self, time: float, action: Callable[..., None], *args: Any) -> Event:
        """Run ``action(*args)`` at virtual ``time`` (now, if that has passed)."""
        if time < self._now:
            time = self._now
        event = Event(time, action, args)
        heappush(self._heap, (time, next(self._sequence), event))
        return event

    def after(self, delay: float, action: Callable[..., None], *args: Any) -> Event:
        """Run ``action(*args)`` ``delay`` seconds from now."""
        # ``at``'s body again: every call and answer schedules through here, and the extra
        # call cost about 10 % of beyond-round-robin (min CPU time of 6 runs).
        time = self._now + delay if delay > 0 else self._now
        event = Event(time, action, args)
        heappush(self._heap, (time, next(self._sequence), event))
        return event

    def every(self, interval: float, action: Callable[[], None], *, until: float) -> None:
        """Run ``action()`` every ``interval`` seconds from now until ``until``."""
        if interval <= 0:
            raise ValueError(f"interval {interval}: must be positive")

        def tick() -> None:
            action()
            if self._now + interval <= until:
                self.after(interval, tick)

        self.after(interval, tick)

    def run(self, until: float) -> None:
        """Run every event due up to virtual time ``until``, in order; the clock ends there."""
        heap = self._heap
        events = 0
        while heap and heap[0][0] <= until:
            time, _, event = heappop(heap)
            if event.cancelled:
                continue
            self._now = time
            events += 1
            event.action(*event.args)
        self.events += events
        self._now = max(self._now, until)

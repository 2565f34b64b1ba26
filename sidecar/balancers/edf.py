"""Earliest deadline first: a weighted schedule that interleaves smoothly (Envoy's EdfScheduler).

Naive weighted round robin sends an endpoint of weight 3 three calls in a row, then one to the
next: bursts. EDF gives every endpoint a virtual deadline ``1 / weight`` after the current
virtual time. A pick takes the earliest deadline, moves virtual time there and schedules that
endpoint again ``1 / weight`` later. Each endpoint gets calls in proportion to its weight, spread
out: weights 3 and 1 give ``A A B A A A B A A A B …``. Ties go to the entry scheduled first, so
equal weights give plain rotation.

An endpoint's weight is asked for each time it is scheduled again, which is how least request
(``weight / (active + 1) ** bias``) and slow start change weights over time; as in Envoy, the
others keep the deadline they had until their own turn comes. While its weight stays the same
an endpoint's n-th deadline is computed as ``start + n / weight`` rather than by adding
``1 / weight`` n times: summed rounding errors would break ties that are exact (weights 5, 1, 1
would now and then give the heavy endpoint six calls in a row).

The schedule spans the cluster's available endpoints and is rebuilt when that set changes.
A pick that must avoid some endpoints (a retry) passes over their entries without moving them,
so they keep their turn for the next call. A rebuilt schedule starts at a random point of its
cycle, as Envoy's does, so sidecars that learn the same endpoints at the same moment do not all
send their first calls to the same one.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable, Sequence

from sidecar.balancers.endpoint import EndpointState

WeightOf = Callable[[EndpointState], float]
"""An endpoint's current weight; must be positive."""

_Entry = tuple[float, int, EndpointState]  # (deadline, insertion order, endpoint)


class EdfSchedule:
    """A min-heap of ``(deadline, order, endpoint)``: one entry per available endpoint."""

    __slots__ = ("_members", "_now", "_order", "_pace", "_queue", "_rng")

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self._members: list[EndpointState] = []  # the endpoints the heap was built for, in order
        self._queue: list[_Entry] = []
        self._now = 0.0  # virtual time: the deadline of the last pick
        self._order = 0  # insertion counter: breaks ties first-come first-served
        # per endpoint: (virtual time its weight took effect, that weight, turns scheduled since)
        self._pace: dict[EndpointState, tuple[float, float, int]] = {}

    def invalidate(self) -> None:
        """Rebuild before the next pick (weights or membership changed)."""
        self._members = []

    def pick(self, candidates: Sequence[EndpointState], available: Sequence[EndpointState],
             weight_of: WeightOf) -> EndpointState:
        """The candidate with the earliest deadline; it is scheduled again by ``weight_of``."""
        if list(available) != self._members:
            self._rebuild(available, weight_of)
        wanted = None if len(candidates) == len(available) else set(candidates)
        return self._take(wanted, weight_of)

    def _take(self, wanted: set[EndpointState] | None, weight_of: WeightOf) -> EndpointState:
        passed_over: list[_Entry] = []
        entry = heapq.heappop(self._queue)
        while wanted is not None and entry[2] not in wanted:
            passed_over.append(entry)
            entry = heapq.heappop(self._queue)
        for other in passed_over:  # they keep their deadline, and so their turn
            heapq.heappush(self._queue, other)
        self._now, _, endpoint = entry
        self._schedule(endpoint, weight_of(endpoint))
        return endpoint

    def _schedule(self, endpoint: EndpointState, weight: float) -> None:
        start, last_weight, turns = self._pace.get(endpoint, (self._now, weight, 0))
        if weight != last_weight:
            start, turns = self._now, 0
        turns += 1
        self._pace[endpoint] = (start, weight, turns)
        heapq.heappush(self._queue, (start + turns / weight, self._order, endpoint))
        self._order += 1

    def _rebuild(self, available: Sequence[EndpointState], weight_of: WeightOf) -> None:
        self._members = list(available)
        self._queue = []
        self._pace = {}
        self._now = 0.0
        for endpoint in available:
            self._schedule(endpoint, weight_of(endpoint))
        for _ in range(self._rng.randrange(len(available))):
            self._take(None, weight_of)

"""The interface every balancer shares: pick an endpoint, learn that endpoints came and went.

A cluster's balancer answers one question per call: which endpoint? ``pick`` considers only
*available* endpoints (healthy and not ejected), prefers those not in ``avoid`` (the endpoints a
retry already tried, so the retry lands elsewhere, like Envoy's ``previous_hosts`` predicate)
and falls back to them rather than fail when nothing else is left. It returns ``None`` only when
no endpoint is available at all; the sidecar then answers 503 / UNAVAILABLE itself.

``set_endpoints`` applies what discovery sent. An endpoint that stays keeps its ``EndpointState``
object, so its in-flight count, latency estimate, ejection and age survive the update; weight
and health are taken from the new description. Subclasses implement ``_choose`` (given the
endpoints it may return, which one) and, if they prebuild state, extend ``set_endpoints``.

Picking costs O(endpoints): the available ones are listed on every call. Clusters here have
tens of endpoints, and the list is what makes joining, leaving, ejection and ``avoid`` trivially
consistent; Envoy keeps prebuilt host sets because it serves thousands.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

from mesh.clock import Clock
from sidecar.balancers.endpoint import EndpointSpec, EndpointState


@dataclass(frozen=True, slots=True, kw_only=True)
class Costs:
    """What a balancer compares its endpoints by when it picks (the lower wins), for the admin
    page: it shows why a pick went where it went."""

    unit: str  # what a cost counts: "ms", "requests", "load/weight" (see each balancer's)
    by_address: Mapping[str, float]  # every endpoint's, available or not


class Balancer(ABC):
    """Chooses an endpoint per call; one instance per cluster.

    Args:
        clock: the clock every endpoint's age and latency estimate is read from.
        rng: the randomness; seed it for reproducible picks.
    """

    def __init__(self, *, clock: Clock, rng: random.Random) -> None:
        self._clock = clock
        self._rng = rng
        self._endpoints: dict[str, EndpointState] = {}

    @property
    def endpoints(self) -> Mapping[str, EndpointState]:
        """Every endpoint by address, available or not, in discovery's order (read-only)."""
        return MappingProxyType(self._endpoints)

    def set_endpoints(self, specs: Iterable[EndpointSpec]) -> None:
        """Make the cluster's endpoints exactly ``specs``, keeping the state of those that stay.

        Raises:
            ValueError: an address appears twice.
        """
        updated: dict[str, EndpointState] = {}
        for spec in specs:
            if spec.address in updated:
                raise ValueError(f"endpoint {spec.address}: listed twice")
            endpoint = self._endpoints.get(spec.address) or self._new_endpoint(spec)
            endpoint.weight = spec.weight
            endpoint.healthy = spec.healthy
            updated[spec.address] = endpoint
        self._endpoints = updated

    def pick(self, key: int | None = None,
             avoid: frozenset[str] = frozenset()) -> EndpointState | None:
        """The endpoint for the next call, or None when no endpoint is available.

        Args:
            key: the request's hash, for balancers that hash (ring hash); others ignore it.
            avoid: addresses to use only if nothing else is available (those already tried).
        """
        available = [e for e in self._endpoints.values() if e.available]
        if not available:
            return None
        preferred = [e for e in available if e.address not in avoid] if avoid else available
        return self._choose(preferred or available, available, key)

    def costs(self) -> Costs | None:
        """Every endpoint's cost as a pick compares it, in one pass over the endpoints; None
        for balancers that compare none (round robin, random, ring hash)."""
        return None

    @abstractmethod
    def _choose(self, candidates: Sequence[EndpointState], available: Sequence[EndpointState],
                key: int | None) -> EndpointState:
        """One of ``candidates`` (never empty; a subset of ``available``, in discovery order).

        ``available`` is every endpoint that may take calls, for balancers whose state spans
        the whole set (a schedule, a ring) and must not be rebuilt because one pick avoids some.
        """

    def _new_endpoint(self, spec: EndpointSpec) -> EndpointState:
        """The state for an endpoint that just joined (peak EWMA passes its own settings)."""
        return EndpointState(spec.address, clock=self._clock, weight=spec.weight,
                             healthy=spec.healthy)

"""Ring hash: calls with the same key go to the same endpoint, and stay put as endpoints change.

Some services work best when the same user, session or object always reaches the same replica
(its cache is warm there). Hashing the key modulo the number of endpoints does that until one
endpoint joins or leaves, and then nearly every key moves. Consistent hashing (Karger et al.;
ketama; Envoy's ``RING_HASH``) places every endpoint at many points on a ring of 64-bit hashes;
a call's key hashes to a point, and the call goes to the endpoint at the next point clockwise.
When an endpoint leaves, only the keys on its arcs move (to the next endpoints clockwise); when
one joins, it takes over only the arcs in front of its own points: about 1/N of the keys.

The caller passes the key as a 64-bit hash: ``hash_key`` of the value of the request header the
cluster names (``hash_header``: a user, a session, an object id). A call without one goes to a
random point, as in Envoy when no hash policy yields a hash. Unavailable endpoints are passed
over on the way round, which is the same as leaving them off the ring, and so is an endpoint
the call should avoid (Envoy, for a retry: "behave as if this host was not in the ring").

Where we differ from Envoy on purpose: Envoy spreads a ring of ``minimum_ring_size`` (1024) or
more entries over the endpoints by normalised weight, so one endpoint joining changes every
endpoint's number of points and moves more keys than its own share. Here each endpoint gets
``points_per_weight`` (1024) points per unit of weight, hashed from its address alone: the ring
is never smaller than Envoy's minimum, no endpoint's points depend on the others, and a change
moves exactly the keys it must. The cost is a ring that grows with the cluster, capped at
``MAX_RING_SIZE`` entries (past which points per weight shrink to fit, and that guarantee is
lost). Points are BLAKE2b hashes of ``"<address>_<i>"``, the same on every sidecar and run
(Envoy uses xxHash; Python's own ``hash`` is salted per process).
"""

from __future__ import annotations

import bisect
import hashlib
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from mesh.clock import Clock
from mesh.proto.bounds import MAX_RING_SIZE
from sidecar.balancers.base import Balancer
from sidecar.balancers.endpoint import EndpointSpec, EndpointState

DEFAULT_POINTS_PER_WEIGHT = 1024
"""Ring points per unit of weight: Envoy's minimum ring size, for every endpoint alone."""


def hash_key(value: str | bytes) -> int:
    """A stable 64-bit hash of ``value``: the key for a call, or a point on the ring."""
    data = value.encode() if isinstance(value, str) else value
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


@dataclass(frozen=True, slots=True, kw_only=True)
class RingHashConfig:
    """How many points each endpoint gets on the ring."""

    points_per_weight: int = DEFAULT_POINTS_PER_WEIGHT  # within 1..MAX_RING_SIZE

    def __post_init__(self) -> None:
        if not 1 <= self.points_per_weight <= MAX_RING_SIZE:
            raise ValueError(f"ring hash points_per_weight {self.points_per_weight}: must be "
                             f"within 1..{MAX_RING_SIZE}")


class RingHashBalancer(Balancer):
    """Consistent hashing on a ring of ``points_per_weight * weight`` points per endpoint."""

    def __init__(self, config: RingHashConfig | None = None, *, clock: Clock,
                 rng: random.Random) -> None:
        super().__init__(clock=clock, rng=rng)
        self._config = config or RingHashConfig()
        self._built_for: dict[str, int] = {}  # address -> weight the ring was built with
        self._points: list[int] = []  # sorted hashes
        self._owners: list[EndpointState] = []  # the endpoint at each point

    @property
    def ring_size(self) -> int:
        """How many points the ring has."""
        return len(self._points)

    def _choose(self, candidates: Sequence[EndpointState], available: Sequence[EndpointState],
                key: int | None) -> EndpointState:
        point = self._rng.getrandbits(64) if key is None else key
        wanted = set(candidates)
        start = bisect.bisect_left(self._points, point)  # the first point at or after the key
        size = len(self._points)
        for step in range(size):
            owner = self._owners[(start + step) % size]
            if owner in wanted:
                return owner
        raise AssertionError("ring hash: a candidate endpoint has no point on the ring")

    def set_endpoints(self, specs: Iterable[EndpointSpec]) -> None:
        super().set_endpoints(specs)
        layout = {address: e.weight for address, e in self._endpoints.items()}
        if layout == self._built_for:
            return  # only health changed: the ring stays as it is
        total_weight = sum(layout.values())
        per_weight = min(self._config.points_per_weight, MAX_RING_SIZE // max(total_weight, 1))
        ring = sorted(
            ((hash_key(f"{e.address}_{i}"), e)
             for e in self._endpoints.values()
             for i in range(max(per_weight * e.weight, 1))),
            key=lambda point: point[0],
        )
        self._points = [h for h, _ in ring]
        self._owners = [e for _, e in ring]
        self._built_for = layout

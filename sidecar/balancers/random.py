"""Random: each call goes to an endpoint drawn at random, in proportion to its weight.

The simplest balancer with no shared state, and the baseline that power of two choices improves
on: a random pick ignores load, so by chance some endpoints queue more calls than others, while
comparing just two random endpoints and taking the less loaded one makes the worst queue
exponentially shorter (Mitzenmacher). Envoy's random balancer ignores weights; ours honours
them, like every balancer here, so changing the policy never silently drops a weighting.
"""

from __future__ import annotations

from collections.abc import Sequence

from sidecar.balancers.base import Balancer
from sidecar.balancers.endpoint import EndpointState


class RandomBalancer(Balancer):
    """A weighted random choice among the available endpoints."""

    def _choose(self, candidates: Sequence[EndpointState], available: Sequence[EndpointState],
                key: int | None) -> EndpointState:
        weights = [e.weight for e in candidates]
        return self._rng.choices(candidates, weights=weights)[0]

"""The network between a caller's sidecar and a server: a one-way delay, with some jitter.

Each message (a call out, its answer back) takes ``latency`` seconds plus a uniform draw in
``[0, jitter)``. Loss and reordering are not modelled: on a mesh they show up as timeouts and
resets, which the server's behaviours produce directly.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_LATENCY = 0.0005  # seconds one way: a hop inside one data centre


@dataclass(frozen=True, slots=True)
class Network:
    latency: float = DEFAULT_LATENCY
    jitter: float = 0.0

    def __post_init__(self) -> None:
        if self.latency < 0 or self.jitter < 0:
            raise ValueError(f"network latency {self.latency} and jitter {self.jitter}: must "
                             f"not be negative")

    def delay(self, random: float) -> float:
        """One message's delay, given a uniform draw in [0, 1)."""
        return self.latency + self.jitter * random

"""A fleet: a large topology drawn, seeded, from a few numbers, not a thousand listed services.

``fleet: {services: 1000, replicas: 10, zones: 3, layers: 4, calls: 2, edge_rate: 600}`` in a
scenario stands for this topology:

- the services split into ``layers`` layers of (nearly) equal size, named ``l<layer>-<n>``
  (``l0-0007``); layer 0 is the *edge*, where the clients' calls come in;
- each service has ``replicas`` replicas spread over ``zones`` zones named ``a``, ``b``, ...
  (replica ``i`` in zone ``i mod zones``), so that a fault can hit one zone of every service;
- each service of a layer calls ``calls`` distinct services of the next layer (the last layer
  calls nobody). The callees are drawn by walking a seeded permutation of the next layer, so
  every service of it is called by someone whenever ``callers × calls`` reaches its size;
- every edge service gets its own open-loop client (Poisson arrivals) at
  ``edge_rate / edge services`` calls per second, with the clients' own ``timeout``.

Every replica has the same concurrency, queue and service time. The same seed draws the same
topology; the scenario's seed is the default, so ``--seed`` changes the traffic and, unless the
fleet names its own ``seed``, the call graph.
"""

from __future__ import annotations

import random
import string
from dataclasses import dataclass

from simulator.server import ServiceTime


@dataclass(frozen=True, slots=True, kw_only=True)
class FleetSpec:
    """The numbers a topology is drawn from (the ``fleet:`` section of a scenario)."""

    services: int
    replicas: int
    zones: int
    layers: int
    calls: int  # services of the next layer each one calls
    edge_rate: float  # calls per second into the edge layer, all edge services together
    timeout: float | None  # the edge clients' own deadline, seconds; None: the route's
    concurrency: int
    queue: int
    service_time: ServiceTime
    seed: int

    def __post_init__(self) -> None:
        if self.layers < 1 or self.services < self.layers:
            raise ValueError(f"{self.services} services in {self.layers} layers: want at least "
                             f"one layer and one service per layer")
        if not 1 <= self.zones <= len(string.ascii_lowercase):
            raise ValueError(f"zones {self.zones}: want 1 to {len(string.ascii_lowercase)}")
        smallest = self.services // self.layers
        if self.layers > 1 and not 0 <= self.calls <= smallest:
            raise ValueError(f"calls {self.calls}: want 0 to {smallest} (the smallest layer)")
        if self.replicas < 1 or self.edge_rate <= 0:
            raise ValueError(f"replicas {self.replicas}, edge_rate {self.edge_rate}: want at "
                             f"least one replica and a positive rate")


@dataclass(frozen=True, slots=True)
class FleetService:
    """One service of a drawn fleet."""

    name: str
    layer: int
    zones: tuple[str, ...]  # replica i is in zones[i % len(zones)]
    calls: tuple[str, ...]  # services of the next layer


@dataclass(frozen=True, slots=True)
class Fleet:
    services: tuple[FleetService, ...]  # layer by layer

    @property
    def edge(self) -> tuple[FleetService, ...]:
        """The services the clients call: layer 0."""
        return tuple(s for s in self.services if s.layer == 0)


def zone_names(count: int) -> tuple[str, ...]:
    """The zones of a fleet with ``count`` of them: ``a``, ``b``, ..."""
    return tuple(string.ascii_lowercase[:count])


def generate(spec: FleetSpec) -> Fleet:
    """The topology ``spec`` describes, drawn from ``spec.seed``."""
    rng = random.Random(spec.seed)
    zones = zone_names(spec.zones)
    size, extra = divmod(spec.services, spec.layers)
    layers = [[f"l{layer}-{n:04d}" for n in range(size + (layer < extra))]
              for layer in range(spec.layers)]
    services = []
    for layer, names in enumerate(layers):
        callees = layers[layer + 1] if layer + 1 < len(layers) else []
        order = rng.sample(callees, len(callees))
        for index, name in enumerate(names):
            calls = tuple(order[(index * spec.calls + k) % len(order)]
                          for k in range(spec.calls)) if order else ()
            services.append(FleetService(name, layer, zones, calls))
    return Fleet(tuple(services))

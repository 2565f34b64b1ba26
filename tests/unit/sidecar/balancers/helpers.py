"""Helpers for balancer tests: endpoint lists, and a tiny discrete-event run on a FakeClock."""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Mapping

from mesh.clock import FakeClock
from sidecar.balancers import Balancer, EndpointSpec, EndpointState


def specs(*addresses: str, **weights: int) -> list[EndpointSpec]:
    """Endpoints ``addresses`` with weight 1, or the weight given by keyword (``a=3``)."""
    return [EndpointSpec(address=a, weight=weights.get(a, 1)) for a in addresses]


def pick_addresses(balancer: Balancer, picks: int, key: int | None = None) -> list[str]:
    """The addresses of ``picks`` successive picks (no calls are started)."""
    addresses = []
    for _ in range(picks):
        endpoint = balancer.pick(key)
        assert endpoint is not None
        addresses.append(endpoint.address)
    return addresses


def count_picks(balancer: Balancer, picks: int) -> Counter[str]:
    """How often each address is picked in ``picks`` picks (no calls are started)."""
    return Counter(pick_addresses(balancer, picks))


def serve(balancer: Balancer, clock: FakeClock, latency: Mapping[str, float],
          calls: int, gap: float) -> Counter[str]:
    """Send ``calls`` calls ``gap`` seconds apart; each takes its endpoint's ``latency``.

    Calls overlap when latency exceeds the gap, so in-flight counts build up as they would in
    a real sidecar. Returns how many calls each address got.
    """
    in_flight: list[tuple[float, int, EndpointState, float]] = []  # (done at, order, endpoint, rtt)
    counts: Counter[str] = Counter()
    for order in range(calls):
        arrival = clock.now() + gap if order else clock.now()
        while in_flight and in_flight[0][0] <= arrival:
            done_at, _, endpoint, rtt = heapq.heappop(in_flight)
            clock.advance(done_at - clock.now())
            endpoint.finish(rtt, ok=True)
        clock.advance(arrival - clock.now())
        picked = balancer.pick()
        assert picked is not None
        picked.start()
        counts[picked.address] += 1
        rtt = latency[picked.address]
        heapq.heappush(in_flight, (clock.now() + rtt, order, picked, rtt))
    while in_flight:
        done_at, _, endpoint, rtt = heapq.heappop(in_flight)
        clock.advance(max(0.0, done_at - clock.now()))
        endpoint.finish(rtt, ok=True)
    return counts

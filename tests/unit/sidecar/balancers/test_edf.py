"""EdfSchedule: earliest deadline first, the smooth weighted schedule (Envoy's EdfScheduler)."""

from __future__ import annotations

import random

from mesh.clock import FakeClock
from sidecar.balancers.edf import EdfSchedule
from sidecar.balancers.endpoint import EndpointState


class NoShuffle(random.Random):
    """Randomness whose ``randrange`` is always 0: the schedule starts at its beginning."""

    def randrange(self, *args: object, **kwargs: object) -> int:
        return 0


def endpoints(**weights: int) -> list[EndpointState]:
    clock = FakeClock()
    return [EndpointState(address, clock=clock, weight=w) for address, w in weights.items()]


def by_weight(endpoint: EndpointState) -> float:
    return float(endpoint.weight)


def run(schedule: EdfSchedule, members: list[EndpointState], picks: int) -> str:
    return "".join(schedule.pick(members, members, by_weight).address for _ in range(picks))


def test_weights_interleave_instead_of_bursting() -> None:
    members = endpoints(A=3, B=1)
    assert run(EdfSchedule(NoShuffle()), members, 11) == "AABAAABAAAB"


def test_equal_weights_rotate_in_order() -> None:
    members = endpoints(A=1, B=1, C=1)
    assert run(EdfSchedule(NoShuffle()), members, 7) == "ABCABCA"


def test_a_heavy_endpoint_never_runs_longer_than_its_weight() -> None:
    members = endpoints(A=5, B=1, C=1)
    sequence = run(EdfSchedule(NoShuffle()), members, 700)
    assert "A" * 6 not in sequence  # naive weighted round robin: AAAAABC, bursts of five
    assert (sequence.count("A"), sequence.count("B"), sequence.count("C")) == (500, 100, 100)


def test_passed_over_entries_keep_their_turn() -> None:
    _, b, c = members = endpoints(A=1, B=1, C=1)
    schedule = EdfSchedule(NoShuffle())
    assert schedule.pick([b, c], members, by_weight) is b  # A is passed over, not used up
    assert run(schedule, members, 3) == "ACB"  # A kept its deadline: it goes first


def test_membership_changes_rebuild_the_schedule() -> None:
    a, b, c = endpoints(A=1, B=1, C=1)
    schedule = EdfSchedule(NoShuffle())
    assert run(schedule, [a, b], 3) == "ABA"
    assert run(schedule, [a, b, c], 3) == "ABC"  # rebuilt: starts over with C in it


def test_the_weight_is_asked_for_again_at_each_turn() -> None:
    members = endpoints(A=1, B=1)
    weights = {"A": 1.0, "B": 1.0}
    schedule = EdfSchedule(NoShuffle())
    schedule.pick(members, members, lambda e: weights[e.address])  # A's next turn: weight 1
    weights["A"] = 0.1  # from its next turn on, A comes up once per ten of B's
    sequence = "".join(schedule.pick(members, members, lambda e: weights[e.address]).address
                       for _ in range(12))
    assert sequence.count("A") == 1


def test_rebuilt_schedules_start_at_a_random_point() -> None:
    members = endpoints(A=1, B=1, C=1, D=1)
    firsts = {run(EdfSchedule(random.Random(seed)), members, 1) for seed in range(40)}
    assert firsts == {"A", "B", "C", "D"}

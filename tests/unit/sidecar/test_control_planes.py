"""Moving between control-plane replicas: one channel at a time, the next on a failure."""

from __future__ import annotations

import random

import pytest

from mesh.grpc import Channel
from sidecar.control_planes import ControlPlanes

REPLICAS = [("127.0.0.1", 15012), ("127.0.0.2", 15012), ("127.0.0.3", 15012)]


def planes(seed: int = 1) -> tuple[ControlPlanes, list[tuple[str, int]]]:
    made: list[tuple[str, int]] = []

    def connect(address: tuple[str, int]) -> Channel:
        made.append(address)
        return Channel(*address)

    return ControlPlanes(REPLICAS, connect, rng=random.Random(seed)), made


async def test_a_failure_moves_to_the_next_replica_once_and_wraps_around() -> None:
    cp, made = planes()
    first = cp.address
    lost = cp.channel
    cp.failed(lost)
    cp.failed(lost)  # discovery and registration both saw it: one move, not two
    assert cp.failovers == 1
    start = REPLICAS.index(first)
    assert cp.address == REPLICAS[(start + 1) % 3]
    cp.failed(cp.channel)
    cp.failed(cp.channel)
    assert cp.address == first and made == [first, *REPLICAS[start + 1:], *REPLICAS[:start + 1]]
    await cp.close()


def test_sidecars_spread_over_the_replicas_they_are_given() -> None:
    firsts = {planes(seed)[0].address for seed in range(30)}
    assert firsts == set(REPLICAS)


async def test_one_channel_given_never_moves() -> None:
    channel = Channel("127.0.0.1", 15012)
    cp = ControlPlanes.of(channel)
    cp.failed(channel)
    assert cp.channel is channel and cp.failovers == 0


def test_no_address_is_an_error() -> None:
    with pytest.raises(ValueError, match="no control-plane address"):
        ControlPlanes([], lambda address: Channel(*address), rng=random.Random(1))

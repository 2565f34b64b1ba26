"""Which control-plane replica a sidecar talks to, and moving to another when it is lost.

A sidecar may be given several control-plane addresses (``--control-plane a:15012,b:15012``):
replicas that serve the same mesh. It talks to one at a time — discovery, registration and
certificate renewal all go to the same one, over one connection — and starts with a replica
chosen at random (seeded), so that a fleet of sidecars spreads over the replicas rather than
all piling on the first.

When the stream or a call to that replica fails (the replica is gone, its connection reset,
it answers UNAVAILABLE), the caller reports the channel it used with :meth:`failed`, and the
next call goes to the next replica in the list. Two users reporting the same failed channel
move the sidecar once, not twice. The callers keep their own backoff and jitter between tries
(sidecar/discovery.py, registration.py), so a sidecar whose replicas are all down does not
spin; one whose replica died is on another after the first backoff delay. What it holds
(configuration versions, its instance id) goes with it: discovery resubscribes with the
versions it runs, registration renews the same instance where the store is shared, and
registers again where the new replica answers NOT_FOUND.

With one address this is just that address's channel.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable, Sequence

from mesh.address import Address
from mesh.grpc import Channel

log = logging.getLogger("sidecar.control_planes")


class ControlPlanes:
    """One channel at a time to one of several control-plane replicas."""

    def __init__(self, addresses: Sequence[Address], connect: Callable[[Address], Channel], *,
                 rng: random.Random) -> None:
        """Args:
            connect: makes the channel to one address (TLS, the control plane's identity).
        """
        if not addresses:
            raise ValueError("no control-plane address")
        self.addresses = list(addresses)
        self._connect = connect
        self._index = rng.randrange(len(self.addresses))
        self.channel = connect(self.address)
        self.failovers = 0
        self._closing: set[asyncio.Task[None]] = set()
        self._on_move: list[Callable[[], None]] = []

    @classmethod
    def of(cls, channel: Channel) -> ControlPlanes:
        """One channel, made elsewhere (tests, benchmarks): never moves."""
        return cls([(channel.host, channel.port)], lambda _address: channel,
                   rng=random.Random(0))

    def on_move(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` after every move to another replica (registration renews at
        once there, rather than at its next heartbeat)."""
        self._on_move.append(callback)

    @property
    def address(self) -> Address:
        """The replica talked to now."""
        return self.addresses[self._index]

    def failed(self, channel: Channel) -> None:
        """``channel`` failed: move to the next replica, unless already moved away from it."""
        if channel is not self.channel or len(self.addresses) == 1:
            return
        lost = self.address
        self._index = (self._index + 1) % len(self.addresses)
        self.channel = self._connect(self.address)
        self.failovers += 1
        log.warning("control plane %s:%d lost: moving to %s:%d", *lost, *self.address)
        for callback in self._on_move:
            callback()
        task = asyncio.ensure_future(self._close(channel))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        await self.channel.close()

    @staticmethod
    async def _close(channel: Channel) -> None:
        with contextlib.suppress(Exception):  # it is already broken; closing is tidying up
            await channel.close()

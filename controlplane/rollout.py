"""A discovery stream's rollout: the policy version it runs, and the NACK that holds it back.

Every snapshot is built from one policy version. A stream is *at* V (runs V) once every type
it subscribed to has ACKed what V's snapshot gives it, and none waits for an answer: at once
when it is checked against V's snapshot and nothing is due, else when the last response sent
for V is ACKed. Until then it stays at the version it was at. This is what an operator asks
during a rollout: which streams run the new policy, and which refused it and why.

A NACK of a response built from V means the stream does not hold V in full, whatever else it
ACKed. It matters where a client learns from one type which resources of another to ask for:
a gRPC xDS client ACKs V's routes before it asks for the clusters they name, so for a moment
everything it asked for is ACKed and the stream is at V. If it then refuses those clusters,
it is moved back to the version it was at before V, and the NACK is kept until it is in sync
again. One step back is enough: a stream cannot move on while a response waits for its
answer, so a response it refuses was sent after the stream last moved.

    event                                  policy_version               nack
    checked against V, nothing waits       V                            cleared
    checked against V, a type waits        unchanged                    unchanged
    an ACK leaves nothing waiting          V (the last checked)         cleared
    a NACK of a response built from V      the one before, if it is V   the NACK

(A type *waits* when a response sent for it is not ACKed, or a request of it is not answered.)
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Nack:
    """The refusal that holds a stream back from the policy version it was sent."""

    type_url: str
    message: str  # the client's error_detail (cut to 4 x MAX_LOGGED characters)
    policy_version: int  # of the configuration it refused


class Rollout:
    """The policy version one stream runs, and the NACK that holds it back (the table above).

    The discovery server says when the stream is checked against a snapshot, when it is in
    sync (every type it subscribed to ACKed, none waiting for an answer) and when it NACKs.
    """

    def __init__(self) -> None:
        self.policy_version: int | None = None  # the newest held in full; None: none yet
        self.nack: Nack | None = None  # the last NACK since the stream was last in sync
        self._checked: int | None = None  # the policy version of the last snapshot checked
        self._before: int | None = None  # policy_version before it last moved

    def checked(self, policy_version: int) -> None:
        """The stream was checked against the snapshot of ``policy_version``, and sent what
        was due; call :meth:`in_sync` next if nothing waits for an answer."""
        self._checked = policy_version

    def in_sync(self) -> None:
        """Every type the stream subscribed to is ACKed and none waits for an answer: it runs
        the version of the last snapshot it was checked against."""
        if self._checked is None:
            return
        if self._checked != self.policy_version:
            self._before, self.policy_version = self.policy_version, self._checked
        self.nack = None

    def refused(self, nack: Nack) -> None:
        """The stream NACKed a response built from ``nack.policy_version``."""
        self.nack = nack
        if self.policy_version is not None and self.policy_version >= nack.policy_version:
            self.policy_version, self._before = self._before, None

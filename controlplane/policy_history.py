"""Policy history: the policy versions this replica has had in force, oldest first.

The store keeps one policy, the one in force (:mod:`controlplane.store`); its older versions
are gone from it. But every replica's copy follows the store's watch, which brings every
change in order (:mod:`controlplane.state`), so each replica can remember what it followed:
the version in force when it started (or listed the store again), then each one after. That
is the whole of the history: it starts when the replica does, and two replicas started at
different times remember different beginnings — the honest price of not keeping a log in the
store. A version the replica missed while it could not reach the store is not in it; the
listing that found it again is.

Each version says what this replica knows of it:

    source       where it came from: the file or ``?source=`` of a change this replica wrote;
                 ``state store`` for one another replica wrote, or that was in force before
    applied_at   when this replica took it (Unix seconds): for its own write when written, for
                 another's when the watch brought it (milliseconds later); None for one found
                 in a listing (at start), since the store does not say when it was written
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, replace

from mesh.proto.config_pb2 import MeshPolicy

HISTORY = 50  # versions kept: enough to see a rollout's steps and undo one, a few MB at most
STORE = "state store"  # the source of a version this replica did not write


@dataclass(frozen=True, slots=True, kw_only=True)
class PolicyVersion:
    """One policy version as this replica had it."""

    version: int
    source: str
    applied_at: float | None  # Unix seconds; None: in force before this replica listed it
    policy: MeshPolicy  # shared with the policy store: read it, never modify it


class PolicyHistory:
    """The last ``HISTORY`` versions this replica had in force; iterate, oldest first."""

    def __init__(self) -> None:
        self._versions: deque[PolicyVersion] = deque(maxlen=HISTORY)

    def __iter__(self) -> Iterator[PolicyVersion]:
        return iter(self._versions)

    def took(self, version: PolicyVersion) -> None:
        """``version`` is now in force here."""
        self._versions.append(version)

    def written_here(self, version: int, source: str) -> None:
        """``version`` came back through the watch before the write that made it returned: it
        is this replica's own, from ``source``."""
        if self._versions and self._versions[-1].version == version:
            self._versions[-1] = replace(self._versions[-1], source=source)

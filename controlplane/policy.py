"""The policy store: the one mesh policy in force, its version, and how it changes.

Operators write the policy as YAML — one file, or a folder of ``*.yaml`` / ``*.yml`` files
merged in name order (``10-clusters.yaml`` before ``20-routes.yaml``; lists are concatenated,
names starting with ``.`` are skipped) — and change it three ways: by editing the files (the
store polls them, :meth:`PolicyStore.watch`), through the operator API (``POST /policy``), or
with ``meshctl apply -f FILE``. Every way goes through one gate, :meth:`PolicyStore._apply`:

1. parse each document (:mod:`controlplane.policy_file`: YAML and the protobuf schema);
2. merge them and check the rules beyond the schema (:mod:`controlplane.validation`);
3. if anything is wrong, raise :class:`PolicyError` listing *every* problem, each naming its
   file, field path and reason; the last good policy stays in force, untouched;
4. else the new policy is written to the state store (:mod:`controlplane.store`) with a
   compare-and-swap on the version it was based on, and takes effect with the next version.

Versions start at 0 (the empty policy, before anything is loaded) and grow by one with each
accepted change. A change that changes nothing — the same content applied again, a file saved
without edits — keeps its version and tells no one, so sidecars see no spurious push.

The store holds the policy for every replica. Each replica's copy follows the store's watch
(:mod:`controlplane.state`, :meth:`PolicyStore.adopt`), so a policy applied at one replica is in
force at all of them a watch event later. A change is *based on* a version: by default the one
in force at the replica applying it, or the one an operator read (``If-Match`` in the API). If
the policy moved on in between — two operators applying at two replicas at once — the second
write is refused with :class:`~controlplane.store.Conflict`, naming both versions; nothing is
overwritten unseen.

The files and the API write the same policy: the last accepted change wins. The watcher writes
only when the files' contents change (and when a replica starts), so a policy applied through
the API stays in force until someone edits the files or restarts a replica that reads them.
Replicas may share one policy folder: the first to write a change wins, the others find it
unchanged.

Each replica remembers the versions its copy had in force since it started
(:attr:`PolicyStore.history`, :mod:`controlplane.policy_history`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import yaml
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import DecodeError

from controlplane.policy_file import parse
from controlplane.policy_history import STORE, PolicyHistory, PolicyVersion
from controlplane.state import StoreState
from controlplane.store import POLICY, Change, ChangeKind, Entry, StoreError
from controlplane.validation import Origins, Problem, check
from mesh.proto.config_pb2 import MeshPolicy

log = logging.getLogger("controlplane.policy")

WATCH_INTERVAL = 0.3  # seconds between polls of the policy files: a change lands within it
SUFFIXES = (".yaml", ".yml")

Document = tuple[str, str]  # (file name, its text)


class PolicyError(Exception):
    """A policy change was refused; ``problems`` says every reason, each with file and field."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class PolicyStore:
    """The mesh policy in force, versioned, kept in the state store; changes are validated
    before they are written."""

    def __init__(self, state: StoreState, *,
                 on_reject: Callable[[PolicyError], None] | None = None,
                 wall_clock: Callable[[], float] = time.time) -> None:
        """Args:
            on_reject: called with every refused change (for metrics), after it is logged.
            wall_clock: Unix seconds, for when each version took effect (:attr:`history`).
        """
        self.last_error: PolicyError | None = None  # the latest refusal; None once one passes
        self.history = PolicyHistory()  # the versions in force here since this replica started
        self._wall_clock = wall_clock
        self._state = state
        self._version = 0
        self._policy = MeshPolicy()
        self._listeners: list[Callable[[int, MeshPolicy], None]] = []
        self._on_reject = on_reject

    @property
    def current(self) -> tuple[int, MeshPolicy]:
        """(version, policy) in force. The message is shared: read it, never modify it."""
        return self._version, self._policy

    def subscribe(self, listener: Callable[[int, MeshPolicy], None]) -> None:
        """Call ``listener(version, policy)`` after every change that takes effect."""
        self._listeners.append(listener)

    async def apply_text(self, text: str, source: str, *, based_on: int | None = None) -> int:
        """Apply one YAML document; ``source`` names it in errors. Returns the version.

        Args:
            based_on: the version the document was written against; default: the one in
                force here.

        Raises:
            PolicyError: the document is refused; the policy in force is unchanged.
            Conflict: the policy is no longer at version ``based_on``.
            StoreUnavailable: the state store cannot be reached.
        """
        return await self._apply([(source, text)], source, based_on)

    async def load_path(self, path: Path) -> int:
        """Apply the policy file, or the folder of them, at ``path``. Returns the version.

        Raises:
            PolicyError: unreadable or refused; the policy in force is unchanged.
            StoreError: the store refused the write or cannot be reached.
        """
        return await self._apply(list(self.check_path(path)), str(path), None)

    def check_path(self, path: Path) -> tuple[Document, ...]:
        """The documents at ``path``, checked (not applied): what a replica starts with.

        Raises:
            PolicyError: unreadable or refused.
        """
        try:
            documents = read_documents(path)
            _policy, problems = merge(list(documents))
            if problems:
                raise PolicyError(problems)
        except PolicyError as error:
            self._reject(error, str(path))
            raise
        return documents

    async def watch(self, path: Path, interval: float = WATCH_INTERVAL, *,
                    applied: tuple[Document, ...] | None = None) -> None:
        """Apply ``path`` whenever its contents change, until cancelled.

        Polls every ``interval`` seconds and compares contents (not just mtimes, which can
        miss two writes within one tick). A refused change is logged and kept in
        :attr:`last_error`; the policy in force stays. Each distinct state of the files is
        acted on once, so a broken file is reported once, not at every poll — except a
        change the store could not take (unreachable, or another write won the race), which
        is tried again at the next poll.

        Args:
            applied: the documents already applied (they are not applied again).
        """
        seen: tuple[Document, ...] | str | None = applied
        while True:
            try:
                documents = read_documents(path)
                state: tuple[Document, ...] | str = documents
            except PolicyError as error:
                state = str(error)
                if state != seen:
                    self._reject(error, str(path))
            else:
                if state != seen:
                    try:
                        await self._apply(list(documents), str(path), None)
                    except PolicyError:
                        pass  # logged and kept in last_error by _apply; keep watching
                    except StoreError as error:
                        log.warning("policy from %s not written, trying again: %s", path, error)
                        state = "not written"
            seen = state
            await asyncio.sleep(interval)

    # -- the copy, fed by the store's watch (controlplane.state) ------------------------------

    keys = POLICY  # what it keeps a copy of (controlplane.state.Copy)

    def load(self, entries: Mapping[str, Entry]) -> None:
        """Take the policy a listing of the store holds (none: the empty one, version 0)."""
        entry = entries.get(POLICY)
        self.adopt(entry.value if entry else b"", entry.version if entry else 0, listing=True)

    def apply(self, change: Change) -> None:
        """Take the policy a change of the store brings (a delete: the empty one)."""
        self.adopt(change.value, change.version, listing=change.kind is ChangeKind.DELETE)

    def adopt(self, document: bytes, version: int, *, listing: bool = False) -> None:
        """Take the policy the store holds at ``version`` (``document``: a serialized
        :class:`MeshPolicy`), unless this copy already has it or a later one. ``listing``: it
        comes from a new listing, which replaces whatever this copy had."""
        if version <= self._version and not listing:
            return  # this replica's own write, taken when it was made
        try:
            policy = MeshPolicy.FromString(document)
        except DecodeError as error:
            log.error("the policy in the state store (version %d) cannot be read, version %d "
                      "stays in force: %s", version, self._version, error)
            return
        if version == self._version and policy == self._policy:
            return
        # From a listing, it may have been in force for long: when it was written is unknown.
        self._take(version, policy, STORE, None if listing else self._wall_clock())

    def _take(self, version: int, policy: MeshPolicy, source: str,
              applied_at: float | None) -> None:
        self._version = version
        self._policy = policy
        self.history.took(PolicyVersion(version=version, source=source, applied_at=applied_at,
                                        policy=policy))
        log.info("policy version %d from %s: %d clusters, %d route configurations, "
                 "%d authorization policies, %d registration grants", version, source,
                 len(policy.clusters), len(policy.routes), len(policy.authorization),
                 len(policy.registration))
        for listener in self._listeners:
            listener(version, policy)

    async def _apply(self, documents: list[Document], source: str,
                     based_on: int | None) -> int:
        policy, problems = merge(documents)
        if problems:
            error = PolicyError(problems)
            self._reject(error, source)
            raise error
        self.last_error = None
        based_on = self._version if based_on is None else based_on
        if policy == self._policy and based_on == self._version:
            log.info("policy from %s unchanged (version %d)", source, self._version)
            return self._version
        record = policy.SerializeToString(deterministic=True)
        version = await self._state.write(
            lambda: self._state.store.write_policy(record, based_on=based_on))
        if version > self._version:
            self._take(version, policy, source, self._wall_clock())
        else:  # the watch brought it first
            self.history.written_here(version, source)
        return version

    def _reject(self, error: PolicyError, source: str) -> None:
        self.last_error = error
        log.warning("policy from %s rejected, version %d stays in force: %s", source,
                    self._version, "; ".join(str(p) for p in error.problems))
        if self._on_reject is not None:
            self._on_reject(error)


def validate(text: str, source: str) -> MeshPolicy:
    """The policy one YAML document says, checked as :meth:`PolicyStore.apply_text` checks it.

    Raises:
        PolicyError: every problem, each with ``source``, field path and reason.
    """
    policy, problems = merge([(source, text)])
    if problems:
        raise PolicyError(problems)
    return policy


def read_documents(path: Path) -> tuple[Document, ...]:
    """The policy documents at ``path``: the file, or the folder's YAML files in name order.

    Raises:
        PolicyError: ``path`` is missing, or a file cannot be read as UTF-8 text.
    """
    if path.is_dir():
        files = sorted(p for p in path.iterdir()
                       if p.suffix in SUFFIXES and not p.name.startswith(".") and p.is_file())
    elif path.exists():
        files = [path]
    else:
        raise PolicyError([Problem(str(path), "", "no such file or folder")])
    documents = []
    for file in files:
        try:
            documents.append((str(file), file.read_text(encoding="utf-8")))
        except (OSError, UnicodeDecodeError) as error:
            raise PolicyError([Problem(str(file), "", f"cannot be read: {error}")]) from None
    return tuple(documents)


def merge(documents: list[Document]) -> tuple[MeshPolicy, list[Problem]]:
    """The merged policy of ``documents`` and every problem found in them.

    Rules are checked only once every document parses: a cluster in a file that failed to
    parse would otherwise show up as "unknown cluster" in the routes of the others.
    """
    merged, origins, problems = MeshPolicy(), Origins(), []
    for file, text in documents:
        policy, found = parse(text, file)
        problems += found
        origins.add(file, policy)
        merged.MergeFrom(policy)
    return merged, problems or check(merged, origins)


def to_yaml(policy: MeshPolicy) -> str:
    """``policy`` as the YAML an operator would write (field names as in the .proto)."""
    data = MessageToDict(policy, preserving_proto_field_name=True)
    return yaml.safe_dump(data, sort_keys=False) if data else "{}\n"

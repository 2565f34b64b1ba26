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
4. else the new policy takes effect with the next version and subscribers are told.

Versions start at 0 (the empty policy, before anything is loaded) and grow by one with each
accepted change. A change that changes nothing — the same content applied again, a file saved
without edits — keeps its version and tells no one, so sidecars see no spurious push.

The files and the API write the same policy: the last accepted change wins. The watcher reloads
only when the files' contents change, so a policy applied through the API stays in force until
someone edits the files.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from pathlib import Path

import yaml
from google.protobuf.json_format import MessageToDict

from controlplane.policy_file import parse
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
    """The mesh policy in force, versioned; changes are validated before they take effect."""

    def __init__(self, *, on_reject: Callable[[PolicyError], None] | None = None) -> None:
        """Args:
            on_reject: called with every refused change (for metrics), after it is logged.
        """
        self.last_error: PolicyError | None = None  # the latest refusal; None once one passes
        self._version = 0
        self._policy = MeshPolicy()
        self._listeners: list[Callable[[int, MeshPolicy], None]] = []
        self._on_reject = on_reject
        self._loaded: dict[Path, tuple[Document, ...]] = {}  # what load_path last read

    @property
    def current(self) -> tuple[int, MeshPolicy]:
        """(version, policy) in force. The message is shared: read it, never modify it."""
        return self._version, self._policy

    def subscribe(self, listener: Callable[[int, MeshPolicy], None]) -> None:
        """Call ``listener(version, policy)`` after every accepted change."""
        self._listeners.append(listener)

    def apply_text(self, text: str, source: str) -> int:
        """Apply one YAML document; ``source`` names it in errors. Returns the version.

        Raises:
            PolicyError: the document is refused; the policy in force is unchanged.
        """
        return self._apply([(source, text)], source)

    def load_path(self, path: Path) -> int:
        """Apply the policy file, or the folder of them, at ``path``. Returns the version.

        Raises:
            PolicyError: unreadable or refused; the policy in force is unchanged.
        """
        try:
            documents = read_documents(path)
        except PolicyError as error:
            self._reject(error, str(path))
            raise
        self._loaded[path] = documents
        return self._apply(list(documents), str(path))

    async def watch(self, path: Path, interval: float = WATCH_INTERVAL) -> None:
        """Reload ``path`` whenever its contents change, until cancelled.

        Polls every ``interval`` seconds and compares contents (not just mtimes, which can
        miss two writes within one tick). A refused change is logged and kept in
        :attr:`last_error`; the policy in force stays. Each distinct state of the files is
        acted on once, so a broken file is reported once, not at every poll.
        """
        seen: tuple[Document, ...] | str | None = self._loaded.get(path)
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
                    self._loaded[path] = documents
                    # A refusal is logged and kept in last_error by _apply; keep watching.
                    with contextlib.suppress(PolicyError):
                        self._apply(list(documents), str(path))
            seen = state
            await asyncio.sleep(interval)

    def _apply(self, documents: list[Document], source: str) -> int:
        policy, problems = merge(documents)
        if problems:
            error = PolicyError(problems)
            self._reject(error, source)
            raise error
        self.last_error = None
        if policy == self._policy:
            log.info("policy from %s unchanged (version %d)", source, self._version)
            return self._version
        self._version += 1
        self._policy = policy
        log.info("policy version %d from %s: %d clusters, %d route configurations, "
                 "%d authorization policies, %d registration grants", self._version, source,
                 len(policy.clusters), len(policy.routes), len(policy.authorization),
                 len(policy.registration))
        for listener in self._listeners:
            listener(self._version, policy)
        return self._version

    def _reject(self, error: PolicyError, source: str) -> None:
        self.last_error = error
        log.warning("policy from %s rejected, version %d stays in force: %s", source,
                    self._version, "; ".join(str(p) for p in error.problems))
        if self._on_reject is not None:
            self._on_reject(error)


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

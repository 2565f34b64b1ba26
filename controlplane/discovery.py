"""The discovery server: one aggregated, state-of-the-world stream per sidecar (like xDS ADS).

Per sidecar and per resource type the server remembers what it last *sent* (version, nonce)
and what the sidecar last *accepted* (ACK) or refused (NACK, with the reason). The rules,
from Envoy's xDS protocol:

- a request with an empty ``response_nonce`` is a new subscription (or a reconnect carrying
  the sidecar's cached version): answer it with the current resources, even if unchanged;
- a request whose nonce is not the last one sent is stale: ignore it;
- a request with the last nonce is an ACK (``version_info`` = the new version) or, with
  ``error_detail``, a NACK: record it, log it, count it — and do *not* push in reply, unless
  it also changed its ``resource_names`` (a subscription grown or shrunk): then answer with
  the new set;
- push only when the sidecar's view of a type changed, in make-before-break order.

Identity: a stream is served only to a caller that proved a mesh identity with its client
certificate (the server checks that before calling :meth:`DiscoveryServer.serve`). The node a
request names must be that identity: a ``node.service`` or ``node.namespace`` that differs
from the certificate's ends the stream with PERMISSION_DENIED, saying both; empty fields are
filled in from the certificate. What a stream receives is computed from the proven identity.

Dialects: the same server speaks our ``mesh.v1`` protocol to our sidecars and Envoy's xDS v3
(ADS) to proxyless gRPC workloads (:mod:`controlplane.xds`). The rules above are xDS's own, so
the two differ only in their messages: a :class:`Dialect` names the resource types in push
order, the response message, and how a request's node reads as ours (id, service, namespace).

A burst of changes (ten registrations in one event-loop turn) wakes each stream once, and each
stream sends whatever is current when it runs: bursts coalesce by construction.

Warm-up: the registry is soft state. A control plane that has just (re)started knows only the
instances that registered since, and every live one does so within a lease TTL. A sidecar that
reconnects holding a configuration (its subscription carries a version) would otherwise be
told that services still re-registering have no endpoints; it is answered once ``warmup``
seconds have passed since the start, and keeps its last good configuration until then. A new
sidecar, which has nothing to keep, is answered at once.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from google.protobuf.message import Message

from controlplane.errors import DiscoveryError
from controlplane.snapshot import Resources
from mesh.clock import Clock
from mesh.grpc import StatusCode
from mesh.identity import SpiffeId
from mesh.proto.discovery_pb2 import DiscoveryResponse, Node
from mesh.proto.resources import ORDER, short_name

log = logging.getLogger("controlplane.discovery")


class View(Protocol):
    """A snapshot, as each identity may see it."""

    def view(self, type_url: str, identity: SpiffeId, names: Sequence[str]) -> Resources: ...


@dataclass(frozen=True, slots=True)
class Dialect:
    """What differs between the protocols one :class:`DiscoveryServer` can speak."""

    name: str  # "mesh.v1", "xds.v3": in logs and status
    order: tuple[str, ...]  # the type URLs served, in make-before-break push order
    response: Callable[..., Message]  # the DiscoveryResponse class
    node: Callable[[Any], Node]  # a request's node, read as ours (id, claimed service/namespace)


def _mesh_node(node: Node) -> Node:
    return node


MESH_V1 = Dialect("mesh.v1", ORDER, DiscoveryResponse, _mesh_node)


@dataclass(slots=True)
class TypeState:
    """One resource type on one stream."""

    resource_names: list[str] = field(default_factory=list)
    sent_version: str = ""
    sent_nonce: str = ""
    sent_at: float = 0.0
    acked_version: str = ""
    nacks: int = 0
    last_nack: str = ""

    @property
    def pending(self) -> bool:
        """Sent but not (yet) ACKed."""
        return self.sent_version != self.acked_version


@dataclass(slots=True)
class Subscription:
    """One sidecar's stream."""

    id: int
    node: Node
    peer: str
    identity: SpiffeId  # proved by the client certificate
    connected_at: float
    types: dict[str, TypeState] = field(default_factory=dict)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    holds_config: bool = False  # it subscribed with versions it already runs


class DiscoveryObserver:
    """Hooks for metrics; the default does nothing."""

    def pushed(self, type_url: str) -> None: ...
    def acked(self, type_url: str, latency: float) -> None: ...
    def nacked(self, type_url: str, node: Node, reason: str) -> None: ...
    def converged(self, seconds: float) -> None: ...
    def refused(self, call: str, reason: str) -> None: ...


class DiscoveryServer:
    """Serves ``StreamResources`` from the latest snapshot."""

    def __init__(self, snapshot: Callable[[], View], clock: Clock,
                 observer: DiscoveryObserver | None = None, *, warmup: float = 0.0,
                 dialect: Dialect = MESH_V1) -> None:
        self.subscriptions: dict[int, Subscription] = {}
        self.dialect = dialect
        self._snapshot = snapshot
        self._clock = clock
        self._warm_at = clock.now() + warmup  # see "Warm-up" above
        self._observer = observer or DiscoveryObserver()
        self._ids = itertools.count(1)
        self._nonces = itertools.count(1)
        # Convergence: how long from a change until every stream ACKed what it was sent.
        self.unacked = 0  # (stream, type) pairs sent a version they have not ACKed
        self.changed_at: float | None = None
        self.last_convergence: float | None = None
        self.convergences = 0

    def changed(self) -> None:
        """The policy or the registry changed: every stream re-checks its view."""
        if self.changed_at is None:
            self.changed_at = self._clock.now()
        for subscription in self.subscriptions.values():
            subscription.wake.set()

    def _settled(self) -> None:
        if self.unacked == 0 and self.changed_at is not None:
            self.last_convergence = self._clock.now() - self.changed_at
            self.convergences += 1
            self.changed_at = None
            self._observer.converged(self.last_convergence)

    async def serve(self, requests: AsyncIterator[Any], identity: SpiffeId,
                    peer: str) -> AsyncIterator[Message]:
        """One ``StreamResources`` call from ``peer``, which proved ``identity``.

        Raises:
            DiscoveryError: a request claimed a node that is not ``identity``.
        """
        node = Node(service=identity.service, namespace=identity.namespace)
        subscription = Subscription(next(self._ids), node, peer, identity, self._clock.now())
        self.subscriptions[subscription.id] = subscription
        reader = asyncio.create_task(self._read(requests, subscription))
        try:
            while True:
                await subscription.wake.wait()
                subscription.wake.clear()
                if reader.done():
                    reader.result()  # re-raise what ended the request stream, if anything
                    return
                warming = self._warm_at - self._clock.now()
                if subscription.holds_config and warming > 0:
                    await asyncio.sleep(warming)
                for response in self._due(subscription):
                    yield response
        finally:
            reader.cancel()
            del self.subscriptions[subscription.id]
            self.unacked -= sum(1 for state in subscription.types.values() if state.pending)
            self._settled()
            log.info("stream %d from %r (%s) closed", subscription.id, subscription.node.id,
                     subscription.peer)

    async def _read(self, requests: AsyncIterator[Any],
                    subscription: Subscription) -> None:
        try:
            async for request in requests:
                self._on_request(subscription, request)
        finally:
            subscription.wake.set()  # let the writer see that the stream ended

    def _on_request(self, subscription: Subscription, request: Any) -> None:
        """One DiscoveryRequest (of this server's dialect)."""
        if request.HasField("node"):
            subscription.node = self._proven(self.dialect.node(request.node), subscription)
        if request.type_url not in self.dialect.order:
            log.warning("stream %d asked for unknown type %r", subscription.id,
                        request.type_url)
            return
        state = subscription.types.get(request.type_url)
        if state is None or not request.response_nonce:
            if state is not None and state.pending:  # a re-subscription drops what was in flight
                self.unacked -= 1
            state = subscription.types[request.type_url] = TypeState()
            state.resource_names = list(request.resource_names)
            subscription.holds_config = subscription.holds_config or bool(request.version_info)
            subscription.wake.set()  # a new subscription is always answered
            return
        if request.response_nonce != state.sent_nonce:
            return  # stale: an answer to a response that has since been superseded
        if set(request.resource_names) != set(state.resource_names):
            # An ACK or NACK may also change what it subscribes to (gRPC asks for a Cluster
            # this way when a route starts naming it): answer with the new set, even when its
            # version is unchanged, since a name that does not exist must be said so.
            state.resource_names = list(request.resource_names)
            state.sent_nonce = ""  # forces a response (see _due)
            subscription.wake.set()
        if request.HasField("error_detail"):
            state.nacks += 1
            state.last_nack = request.error_detail.message
            log.warning("NACK from %r for %s version %s: %r", subscription.node.id,
                        short_name(request.type_url), state.sent_version, state.last_nack)
            self._observer.nacked(request.type_url, subscription.node, state.last_nack)
            return
        was_pending = state.pending
        state.acked_version = request.version_info
        self._observer.acked(request.type_url, self._clock.now() - state.sent_at)
        if was_pending and not state.pending:
            self.unacked -= 1
            self._settled()

    def _proven(self, claimed: Node, subscription: Subscription) -> Node:
        """``claimed``, checked against the certificate and completed from it.

        Raises:
            DiscoveryError: PERMISSION_DENIED when the claim is not the proven identity.
        """
        identity = subscription.identity
        for name, proven in (("service", identity.service), ("namespace", identity.namespace)):
            value = getattr(claimed, name)
            if value and value != proven:
                self._observer.refused("StreamResources", "node_mismatch")
                message = (f"node {claimed.id!r} claims {name} {value!r}, but its certificate "
                           f"proves {identity} ({name} {proven!r})")
                log.warning("stream %d from %s refused: %s", subscription.id, subscription.peer,
                            message)
                raise DiscoveryError(StatusCode.PERMISSION_DENIED, message, "node_mismatch")
        node = Node()
        node.CopyFrom(claimed)
        node.service, node.namespace = identity.service, identity.namespace
        return node

    def _due(self, subscription: Subscription) -> list[Message]:
        snapshot = self._snapshot()
        responses = []
        for type_url in self.dialect.order:
            state = subscription.types.get(type_url)
            if state is None:
                continue
            resources = snapshot.view(type_url, subscription.identity, state.resource_names)
            if resources.version == state.sent_version and state.sent_nonce:
                continue
            was_pending = state.pending
            state.sent_version = resources.version
            if state.pending and not was_pending:
                self.unacked += 1
            state.sent_nonce = str(next(self._nonces))
            state.sent_at = self._clock.now()
            responses.append(self.dialect.response(version_info=resources.version,
                                                   resources=resources.packed,
                                                   type_url=type_url, nonce=state.sent_nonce))
            self._observer.pushed(type_url)
        return responses


"""The discovery server: one aggregated, state-of-the-world stream per sidecar (like xDS ADS).

Per sidecar and per resource type the server remembers what it last *sent* (version, nonce)
and what the sidecar last *accepted* (ACK) or refused (NACK, with the reason). The rules,
from Envoy's xDS protocol:

- a request with an empty ``response_nonce`` is a new subscription: answer it with the
  current resources. A reconnect carries the version the sidecar holds; where the dialect
  *resumes* (``mesh.v1``), that version counts as sent and ACKed, and the type is answered
  only if the sidecar's view differs from it — so a sidecar that moves to another replica,
  which builds the same versions from the same state, is re-sent nothing. xDS clients are
  answered at once, even if unchanged (as Envoy's servers do; a grpcio client names one
  control plane, so it never moves between replicas);
- a request whose nonce is not the last one sent is stale: ignore it (names it changes are
  taken from the next request that answers the last nonce, which repeats them);
- a request with the last nonce is an ACK (``version_info`` = the new version) or, with
  ``error_detail``, a NACK: record it, log it, count it — and do *not* push in reply, unless
  it also changed its ``resource_names`` (a subscription grown or shrunk): then answer with
  the new set;
- push only when the sidecar's view of a type changed, in make-before-break order.

Names: a request lists the resources it wants. An empty list means *every* resource of the
type only where the dialect says so: always in ``mesh.v1`` (our sidecars hold everything), and
in xDS only on the first request for Listeners or Clusters (Envoy's wildcard; ``"*"`` says it
explicitly). Elsewhere an empty list means *none*: gRPC unsubscribes from a type that way.
At most ``MAX_RESOURCE_NAMES`` names per request: a stream that asks for more is refused with
RESOURCE_EXHAUSTED (each name costs the server a lookup and memory).

One type on one stream, as :class:`TypeState` tracks it::

    state          sent_version vs acked_version   must_answer   what happens next
    new            "" = ""                         yes           answered at once
    resumed        v = v (the request's version)   no            pushed only on change
    in sync        v = v                           no            pushed only on change
    pending        v2 ≠ v1 (sent, not ACKed)       no            ACK: in sync; NACK: kept,
                                                                 reason recorded
    names changed  any                             yes           answered with the new set

Identity: a stream is served only to a caller that proved a mesh identity with its client
certificate (the server checks that before calling :meth:`DiscoveryServer.serve`). The node a
request names must be that identity: a ``node.service`` or ``node.namespace`` that differs
from the certificate's ends the stream with PERMISSION_DENIED, saying both; empty fields are
filled in from the certificate. What a stream receives is computed from the proven identity.

Rollout: each stream says which policy version it runs — the newest whose configuration it
holds in full, every type it subscribed to ACKed and none waiting for an answer — and which
NACK holds it back (:mod:`controlplane.rollout`).

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
sidecar, which has nothing to keep, is answered at once. A replica whose state is in a store
that outlives it needs no warm-up, but it holds such sidecars back until it has listed the
store once (``known``): a replica that cannot reach its store from the start would otherwise
send them an empty configuration.
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
from controlplane.rollout import Nack, Rollout
from controlplane.snapshot import Resources
from mesh.clock import Clock
from mesh.grpc import StatusCode
from mesh.identity import SpiffeId
from mesh.proto.discovery_pb2 import DiscoveryResponse, Node
from mesh.proto.resources import ORDER, short_name

log = logging.getLogger("controlplane.discovery")


class View(Protocol):
    """A snapshot, as each identity may see it."""

    @property
    def policy_version(self) -> int:
        """The version of the policy it was built from."""

    def view(self, type_url: str, identity: SpiffeId,
             names: Sequence[str] | None) -> Resources:
        """The resources ``names`` names that exist (None: every one)."""


MAX_RESOURCE_NAMES = 1000  # per request; a real client names a few dozen at most
MAX_LOGGED = 300  # characters of a client's text (a NACK's reason) in one log line
WILDCARD = "*"  # xDS: "every resource of this type", said explicitly


@dataclass(frozen=True, slots=True)
class Dialect:
    """What differs between the protocols one :class:`DiscoveryServer` can speak."""

    name: str  # "mesh.v1", "xds.v3": in logs and status
    call: str  # the gRPC method's name, in refusal logs and metrics
    order: tuple[str, ...]  # the type URLs served, in make-before-break push order
    response: Callable[..., Message]  # the DiscoveryResponse class
    node: Callable[[Any], Node]  # a request's node, read as ours (id, claimed service/namespace)
    # Types whose first request may name nothing to mean "everything" (see "Names" above).
    wildcard_types: frozenset[str]
    always_wildcard: bool = False  # an empty list means everything on every request
    resumes: bool = False  # a reconnect's version counts as sent and ACKed (see the rules)


def _mesh_node(node: Node) -> Node:
    return node


MESH_V1 = Dialect("mesh.v1", "StreamResources", ORDER, DiscoveryResponse, _mesh_node,
                  frozenset(ORDER), always_wildcard=True, resumes=True)


@dataclass(slots=True)
class TypeState:
    """One resource type on one stream."""

    resource_names: list[str] = field(default_factory=list)
    wildcard: bool = False  # every resource of the type, whatever resource_names says
    must_answer: bool = True  # answer even if the version is what was last sent
    sent_version: str = ""
    sent_nonce: str = ""
    sent_at: float = 0.0
    acked_version: str = ""
    nacks: int = 0
    last_nack: str = ""
    sent_policy_version: int = 0  # of the snapshot the last response was built from

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
    unknown_types: set[str] = field(default_factory=set)  # asked for, logged once
    rollout: Rollout = field(default_factory=Rollout)  # the policy version it runs

    @property
    def in_sync(self) -> bool:
        """Every type it subscribed to is ACKed and none waits for an answer."""
        return not any(state.pending or state.must_answer for state in self.types.values())


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
                 dialect: Dialect = MESH_V1, known: Callable[[], bool] = lambda: True,
                 ) -> None:
        """Args:
            warmup: seconds after the start during which a sidecar holding a configuration is
                not answered (see "Warm-up").
            known: whether the state the snapshot is built from is known yet (a replica's
                first listing of its store); until it is, a sidecar holding a configuration
                is not answered either — an empty snapshot would tell it to drop everything.
                Call :meth:`changed` once it is.
        """
        self.subscriptions: dict[int, Subscription] = {}
        self.dialect = dialect
        self._snapshot = snapshot
        self._clock = clock
        self._warm_at = clock.now() + warmup  # see "Warm-up" above
        self._known = known
        self._observer = observer or DiscoveryObserver()
        self._ids = itertools.count(1)
        self._nonces = itertools.count(1)
        # Convergence: how long from a change until every stream ACKed what it was sent.
        self.unacked = 0  # (stream, type) pairs sent a version they have not ACKed
        self.changed_at: float | None = None
        self.last_convergence: float | None = None
        self.last_acked_at: float | None = None  # the clock's time of the last convergence
        self.convergences = 0

    def changed(self) -> None:
        """The policy or the registry changed: every stream re-checks its view."""
        if self.changed_at is None:
            self.changed_at = self._clock.now()
        for subscription in self.subscriptions.values():
            subscription.wake.set()

    def _settled(self) -> None:
        if self.unacked == 0 and self.changed_at is not None:
            self.last_acked_at = self._clock.now()
            self.last_convergence = self.last_acked_at - self.changed_at
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
                if subscription.holds_config and not self._known():
                    continue  # it keeps what it holds; changed() wakes it once it is known
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
        """One DiscoveryRequest (of this server's dialect).

        Raises:
            DiscoveryError: its node is not the proven identity, or it names too many
                resources.
        """
        if request.HasField("node"):
            subscription.node = self._proven(self.dialect.node(request.node), subscription)
        if request.type_url not in self.dialect.order:
            if request.type_url not in subscription.unknown_types:
                subscription.unknown_types.add(request.type_url)
                log.warning("stream %d asked for unknown type %r", subscription.id,
                            request.type_url[:MAX_LOGGED])
            return
        names = list(request.resource_names)
        if len(names) > MAX_RESOURCE_NAMES:
            self._refuse(subscription, StatusCode.RESOURCE_EXHAUSTED, "too_many_names",
                         f"a request for {short_name(request.type_url)} names {len(names)} "
                         f"resources; at most {MAX_RESOURCE_NAMES} are served")
        state = subscription.types.get(request.type_url)
        if state is None or not request.response_nonce:
            self._subscribe(subscription, request, names)
        elif request.response_nonce != state.sent_nonce:
            return  # stale: an answer to a response that has since been superseded
        else:
            self._answered(subscription, request, state, names)

    def _subscribe(self, subscription: Subscription, request: Any, names: list[str]) -> None:
        """A new subscription, or a re-subscription after a reconnect (resumed where the
        dialect says so)."""
        previous = subscription.types.get(request.type_url)
        if previous is not None and previous.pending:  # what was in flight will not be ACKed
            self.unacked -= 1
        state = subscription.types[request.type_url] = TypeState(resource_names=names)
        state.wildcard = WILDCARD in names or (not names and (
            request.type_url in self.dialect.wildcard_types))
        if request.version_info and self.dialect.resumes:
            state.sent_version = state.acked_version = request.version_info
            state.must_answer = False
        subscription.holds_config = subscription.holds_config or bool(request.version_info)
        subscription.wake.set()

    def _answered(self, subscription: Subscription, request: Any, state: TypeState,
                  names: list[str]) -> None:
        """An ACK or a NACK of the last response; it may also change the names asked for."""
        if set(names) != set(state.resource_names):
            # gRPC asks for a Cluster a route starts naming this way: answer with the new set
            # even when its version is unchanged, since a name that does not exist must be
            # said so.
            state.resource_names = names
            state.wildcard = WILDCARD in names or (not names and (
                self.dialect.always_wildcard or state.wildcard))
            state.must_answer = True
            subscription.wake.set()
        if request.HasField("error_detail"):
            state.nacks += 1
            state.last_nack = request.error_detail.message[:4 * MAX_LOGGED]
            log.warning("NACK from %r for %s version %s: %r", subscription.node.id[:MAX_LOGGED],
                        short_name(request.type_url), state.sent_version,
                        state.last_nack[:MAX_LOGGED])
            self._observer.nacked(request.type_url, subscription.node, state.last_nack)
            subscription.rollout.refused(Nack(request.type_url, state.last_nack,
                                              state.sent_policy_version))
            return
        was_pending = state.pending
        state.acked_version = request.version_info
        self._observer.acked(request.type_url, self._clock.now() - state.sent_at)
        if was_pending and not state.pending:
            self.unacked -= 1
            self._settled()
        self._rolled_out(subscription)

    @staticmethod
    def _rolled_out(subscription: Subscription) -> None:
        """If the stream holds the snapshot it was last checked against in full, it runs that
        snapshot's policy version (see "Rollout")."""
        if subscription.types and subscription.in_sync:
            subscription.rollout.in_sync()

    def _refuse(self, subscription: Subscription, code: StatusCode, reason: str,
                message: str) -> None:
        """Log and count a refusal, and end the stream with it.

        Raises:
            DiscoveryError: always.
        """
        self._observer.refused(self.dialect.call, reason)
        log.warning("stream %d from %s refused: %s", subscription.id, subscription.peer,
                    message)
        raise DiscoveryError(code, message, reason)

    def _proven(self, claimed: Node, subscription: Subscription) -> Node:
        """``claimed``, checked against the certificate and completed from it.

        Raises:
            DiscoveryError: PERMISSION_DENIED when the claim is not the proven identity.
        """
        identity = subscription.identity
        for name, proven in (("service", identity.service), ("namespace", identity.namespace)):
            value = getattr(claimed, name)
            if value and value != proven:
                self._refuse(subscription, StatusCode.PERMISSION_DENIED, "node_mismatch",
                             f"node {claimed.id[:MAX_LOGGED]!r} claims {name} "
                             f"{value[:MAX_LOGGED]!r}, but its certificate proves {identity} "
                             f"({name} {proven!r})")
        node = Node()
        node.CopyFrom(claimed)
        node.service, node.namespace = identity.service, identity.namespace
        return node

    def _due(self, subscription: Subscription) -> list[Any]:  # the dialect's responses
        snapshot = self._snapshot()
        responses = []
        for type_url in self.dialect.order:
            state = subscription.types.get(type_url)
            if state is None:
                continue
            names = None if state.wildcard else state.resource_names
            resources = snapshot.view(type_url, subscription.identity, names)
            if resources.version == state.sent_version and not state.must_answer:
                continue
            state.must_answer = False
            was_pending = state.pending
            state.sent_version = resources.version
            if state.pending and not was_pending:
                self.unacked += 1
            elif was_pending and not state.pending:  # a NACKed type is sent what it holds
                self.unacked -= 1
                self._settled()
            state.sent_nonce = str(next(self._nonces))
            state.sent_at = self._clock.now()
            state.sent_policy_version = snapshot.policy_version
            responses.append(self.dialect.response(version_info=resources.version,
                                                   resources=resources.packed,
                                                   type_url=type_url, nonce=state.sent_nonce))
            self._observer.pushed(type_url)
        subscription.rollout.checked(snapshot.policy_version)
        self._rolled_out(subscription)
        return responses


"""The registry: which instances of which service are alive, where, and whether they are ready.

Registration is authenticated, because a registry anyone can write to lets a compromised pod
register fake endpoints and intercept traffic. Services are namespaced: an instance registers
``<service>`` in ``<namespace>``. Three checks, in order:

1. the caller proved a SPIFFE ID with its client certificate (mTLS), else UNAUTHENTICATED;
2. that ID may register the service (names without '.', as Kubernetes' DNS labels): by default only
   ``spiffe://<td>/ns/<namespace>/sa/<service>`` registers ``<service>`` in ``<namespace>``
   (the same account name in another namespace is another workload); a policy's
   ``registration`` grants can widen it, naming full SPIFFE IDs or ``…/ns/<ns>/sa/*``; else
   PERMISSION_DENIED;
3. the address registered is the caller's own source address, so a workload cannot point
   others' traffic at a third party; else PERMISSION_DENIED.

The registry's state is in the store (:mod:`controlplane.store`), shared by every replica:
each instance is a key holding its endpoint, on a *lease* of ``lease_ttl`` seconds. Heartbeats
renew the lease — at any replica, since the lease is the store's — and carry the app's
readiness, which marks the endpoint healthy or not. When the lease lapses the store deletes the
key, for every replica at once. The queries read this replica's copy, which follows the store
(:mod:`controlplane.state`); a command writes to the store and returns once the copy holds the
change, so the next answer includes it.

A command that cannot reach the store is refused with UNAVAILABLE and the store's reason (a
sidecar then moves to another replica); nothing is half-written.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from google.protobuf.message import DecodeError

from controlplane.errors import RegistrationError
from controlplane.state import StoreState
from controlplane.store import INSTANCES, Change, ChangeKind, Entry, LeaseExpired, StoreUnavailable
from mesh.grpc import StatusCode
from mesh.identity import DEFAULT_NAMESPACE, SpiffeId, matches, parse
from mesh.proto.config_pb2 import Endpoint, RegistrationGrant
from mesh.proto.resources import instance_name

T = TypeVar("T")

log = logging.getLogger("controlplane.registry")

DEFAULT_LEASE_TTL = 10.0  # seconds; heartbeats every third of it keep an instance alive


@dataclass(frozen=True, slots=True)
class Instance:
    """One registered instance and the lease that keeps it."""

    id: str  # <namespace>/<service>@<address>:<port>, its key in the store
    namespace: str
    service: str
    endpoint: Endpoint  # as stored: ``identity`` is its owner's SPIFFE ID
    owner: SpiffeId
    lease: int


class Registry:
    """Instances by service, with authenticated registration and leases, kept in the store."""

    def __init__(self, state: StoreState, *, trust_domain: str,
                 lease_ttl: float = DEFAULT_LEASE_TTL,
                 grants: Callable[[], Iterable[RegistrationGrant]] = list) -> None:
        self.lease_ttl = lease_ttl
        self.version = 0  # bumped on every change that alters what subscribers see
        self._state = state
        self._store = state.store
        self._trust_domain = trust_domain
        self._grants = grants
        self._instances: dict[str, Instance] = {}  # by id: the copy of the store's
        self._listeners: list[Callable[[], None]] = []

    # -- queries -----------------------------------------------------------------------------

    def endpoints(self, namespace: str, service: str) -> list[Endpoint]:
        """The endpoints of ``service`` in ``namespace``, in a stable order."""
        found = [i.endpoint for i in self._instances.values()
                 if i.service == service and i.namespace == namespace]
        return sorted(found, key=lambda e: (e.address, e.port, e.instance))

    def services(self) -> list[tuple[str, str]]:
        """Every (namespace, service) with at least one instance."""
        return sorted({(i.namespace, i.service) for i in self._instances.values()})

    def instances(self) -> list[Instance]:
        return sorted(self._instances.values(), key=lambda i: (i.service, i.id))

    def subscribe(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` after every change."""
        self._listeners.append(listener)

    # -- commands ----------------------------------------------------------------------------

    async def register(self, service: str, endpoint: Endpoint, caller: SpiffeId | None,
                       caller_address: str, namespace: str = "") -> Instance:
        """Add an instance of ``service`` in ``namespace`` at ``endpoint`` for ``caller``.

        Args:
            namespace: the service's namespace; empty: the caller's own.

        Raises:
            RegistrationError: the caller is unauthenticated, not allowed to register
                ``service`` in ``namespace``, or registers an address other than its own;
                UNAVAILABLE: the store cannot be reached.
        """
        who = self._authenticated(caller, f"register {service!r}")
        namespace = namespace or who.namespace
        if "." in service or "." in namespace:
            # Kubernetes' rule for service and namespace names too (DNS labels). It keeps the
            # default cluster name <service>.<namespace> unambiguous: a service "orders.shop"
            # of namespace default would otherwise take the name of shop's orders.
            raise self._refuse(StatusCode.INVALID_ARGUMENT,
                               f"service {service!r} of namespace {namespace!r}: a registered "
                               f"service's name and namespace may not hold '.'", "bad_name")
        if not self._may_register(who, namespace, service):
            raise self._refuse(StatusCode.PERMISSION_DENIED,
                               f"{who} may not register service {service!r} in namespace "
                               f"{namespace!r} (only spiffe://{self._trust_domain}/ns/"
                               f"{namespace}/sa/{service} or a registration grant in the "
                               f"policy may)", "not_allowed")
        if endpoint.address != caller_address:
            raise self._refuse(StatusCode.PERMISSION_DENIED,
                               f"{who} may register its own address {caller_address} only, "
                               f"not {endpoint.address!r}", "not_own_address")
        if not 0 < endpoint.port < 65536:
            raise self._refuse(StatusCode.INVALID_ARGUMENT, f"port {endpoint.port} is invalid",
                               "bad_port")
        if not endpoint.admin_port < 65536:  # 0: not published
            raise self._refuse(StatusCode.INVALID_ARGUMENT,
                               f"admin_port {endpoint.admin_port} is invalid", "bad_port")
        # The id names the endpoint, so registering it again (a sidecar restarting, or
        # re-registering after a control-plane restart) replaces the old record in place.
        instance_id = instance_name(namespace, service, endpoint.address, endpoint.port)
        previous = self._instances.get(instance_id)
        if previous is not None and previous.owner != who:
            # Checked on this replica's copy, which trails the store by milliseconds: two
            # owners racing for one address at two replicas is the one case it cannot settle,
            # and each may only register its own address anyway.
            raise self._refuse(StatusCode.PERMISSION_DENIED,
                               f"{endpoint.address}:{endpoint.port} is registered by "
                               f"{previous.owner}, not {who}", "not_owner")
        registered = Endpoint()
        registered.CopyFrom(endpoint)
        registered.instance = instance_id
        registered.identity = str(who)  # what callers check this endpoint's certificate for
        if not registered.weight:
            registered.weight = 1
        lease = await self._lease(previous)
        if previous is not None and previous.lease == lease and previous.endpoint == registered:
            return previous  # a renewal in all but name: nothing subscribers see changed
        await self._put(instance_id, registered, lease)
        log.info("registered %s at %s:%d for %s", instance_id, endpoint.address, endpoint.port,
                 who)
        # What was written (the copy holds the same, unless its watch lags: then the replica
        # says it is not ready, and the instance is in the store all the same).
        return Instance(instance_id, namespace, service, registered, who, lease)

    async def heartbeat(self, instance_id: str, health: int | None,
                        caller: SpiffeId | None) -> None:
        """Renew the lease and record readiness (``Endpoint.Health``; None keeps it).

        Raises:
            RegistrationError: not the caller's instance; NOT_FOUND when its lease lapsed
                (register again); UNAVAILABLE: the store cannot be reached.
        """
        instance = self._owned(instance_id, caller, "renew")
        try:
            await self._write(lambda: self._store.keep_alive(instance.lease))
        except LeaseExpired:
            raise self._lapsed(instance_id) from None
        if health is not None and instance.endpoint.health != health:
            endpoint = Endpoint()
            endpoint.CopyFrom(instance.endpoint)
            endpoint.health = health  # type: ignore[assignment]
            await self._put(instance_id, endpoint, instance.lease)
            log.info("%s is now %s", instance_id, Endpoint.Health.Name(health))

    async def deregister(self, instance_id: str, caller: SpiffeId | None) -> None:
        """Remove the caller's instance now, and end its lease (so that a replica whose copy
        has not seen the removal yet cannot take a registration of the same address for a
        renewal of the lease).

        Raises:
            RegistrationError: not the caller's instance; UNAVAILABLE: the store cannot be
                reached.
        """
        instance = self._owned(instance_id, caller, "deregister")
        revision = await self._write(lambda: self._store.delete_instance(instance_id))
        await self._write(lambda: self._store.revoke_lease(instance.lease))
        await self._state.reached(revision)
        log.info("deregistered %s", instance_id)

    async def renew(self, held: Collection[tuple[str, SpiffeId]]) -> None:
        """Renew the leases of the instances ``held`` names by (id, owner): those whose
        sidecar (or proxyless server) holds a discovery stream open to this replica. A lease
        already gone is left gone: its sidecar's next heartbeat is told to register again.

        Raises:
            StoreUnavailable: the store cannot be reached.
        """
        leases = {i.lease for i in self._instances.values() if (i.id, i.owner) in held}
        results = await asyncio.gather(*(self._store.keep_alive(lease) for lease in leases),
                                       return_exceptions=True)
        for result in results:
            if isinstance(result, StoreUnavailable):
                raise result
            if isinstance(result, BaseException) and not isinstance(result, LeaseExpired):
                raise result

    # -- the copy, fed by the store's watch (controlplane.state) ------------------------------

    keys = INSTANCES  # what it keeps a copy of (controlplane.state.Copy)

    def load(self, entries: Mapping[str, Entry]) -> None:
        """Replace every instance with the store's listing (keys relative to its prefix)."""
        instances = {}
        for key, entry in entries.items():
            instance = self._read(key, entry.value, entry.lease)
            if instance is not None:
                instances[instance.id] = instance
        if instances != self._instances:
            self._instances = instances
            self._changed()

    def apply(self, change: Change) -> None:
        """Apply one change of the store's watch (an instance's key, relative to its prefix)."""
        instance_id = change.key.removeprefix(INSTANCES)
        previous = self._instances.get(instance_id)
        if change.kind is ChangeKind.DELETE:
            if previous is not None:
                del self._instances[instance_id]
                log.info("%s removed (deregistered, or its lease lapsed)", instance_id)
                self._changed()
            return
        instance = self._read(change.key, change.value, change.lease)
        if instance is not None and instance != previous:
            self._instances[instance_id] = instance
            if previous is None or previous.endpoint != instance.endpoint:
                self._changed()

    # -- internals ---------------------------------------------------------------------------

    def _authenticated(self, caller: SpiffeId | None, action: str) -> SpiffeId:
        if caller is None:
            raise self._refuse(StatusCode.UNAUTHENTICATED,
                               f"cannot {action}: no client certificate (mTLS required)",
                               "no_certificate")
        if caller.trust_domain != self._trust_domain:
            raise self._refuse(StatusCode.PERMISSION_DENIED,
                               f"cannot {action}: {caller} is outside trust domain "
                               f"{self._trust_domain!r}", "foreign_trust_domain")
        return caller

    def _may_register(self, who: SpiffeId, namespace: str, service: str) -> bool:
        if who.service == service and who.namespace == namespace:
            return True
        return any(grant.service == service
                   and (grant.namespace or DEFAULT_NAMESPACE) == namespace
                   and any(matches(pattern, who) for pattern in grant.identities)
                   for grant in self._grants())

    def _owned(self, instance_id: str, caller: SpiffeId | None, action: str) -> Instance:
        who = self._authenticated(caller, f"{action} {instance_id!r}")
        instance = self._instances.get(instance_id)
        if instance is None:
            raise self._lapsed(instance_id)
        if instance.owner != who:
            raise self._refuse(StatusCode.PERMISSION_DENIED,
                               f"{who} may not {action} {instance_id!r}, registered by "
                               f"{instance.owner}", "not_owner")
        return instance

    def _lapsed(self, instance_id: str) -> RegistrationError:
        return self._refuse(StatusCode.NOT_FOUND, f"no instance {instance_id!r} (its lease may "
                                                  f"have lapsed: register again)",
                            "unknown_instance")

    async def _lease(self, previous: Instance | None) -> int:
        """The lease for a registration: the previous one's, renewed, if it still lives."""
        if previous is not None:
            try:
                await self._write(lambda: self._store.keep_alive(previous.lease))
            except LeaseExpired:
                pass
            else:
                return previous.lease
        return await self._write(lambda: self._store.grant_lease(self.lease_ttl))

    async def _put(self, instance_id: str, endpoint: Endpoint, lease: int) -> None:
        """Store the instance's record and wait until this replica's copy holds it.

        Raises:
            RegistrationError: UNAVAILABLE, or NOT_FOUND if the lease lapsed meanwhile.
        """
        record = endpoint.SerializeToString(deterministic=True)
        try:
            revision = await self._write(
                lambda: self._store.put_instance(instance_id, record, lease=lease))
        except LeaseExpired:
            raise self._lapsed(instance_id) from None
        await self._state.reached(revision)

    async def _write(self, request: Callable[[], Awaitable[T]]) -> T:
        """A request to the store; its unavailability as this registry's UNAVAILABLE."""
        try:
            return await self._state.write(request)
        except StoreUnavailable as error:
            raise self._refuse(StatusCode.UNAVAILABLE, str(error),
                               "store_unavailable") from None

    def _read(self, key: str, record: bytes, lease: int) -> Instance | None:
        """The instance a store key holds; None (logged) if it is not one."""
        namespace, _, rest = key.removeprefix(INSTANCES).partition("/")
        service = rest.partition("@")[0]
        try:
            endpoint = Endpoint.FromString(record)
            owner = parse(endpoint.identity)
        except (DecodeError, ValueError) as error:
            log.warning("state store key %r does not hold an instance, ignored: %s", key, error)
            return None
        return Instance(key.removeprefix(INSTANCES), namespace, service, endpoint, owner, lease)

    def _refuse(self, code: StatusCode, message: str, reason: str) -> RegistrationError:
        # Not logged here: the server logs every refusal once, with the caller's address.
        return RegistrationError(code, message, reason)

    def _changed(self) -> None:
        self.version += 1
        for listener in self._listeners:
            listener()


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

Every instance holds a *lease*: heartbeats renew it, and when it lapses (:meth:`expire`, run
periodically) the endpoint is removed and subscribers are told. Heartbeats also carry the
app's readiness, which marks the endpoint healthy or not.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from controlplane.errors import RegistrationError
from mesh.clock import Clock
from mesh.grpc import StatusCode
from mesh.identity import DEFAULT_NAMESPACE, SpiffeId, matches
from mesh.proto.config_pb2 import Endpoint, RegistrationGrant
from mesh.proto.resources import instance_name

log = logging.getLogger("controlplane.registry")

DEFAULT_LEASE_TTL = 10.0  # seconds; heartbeats every third of it keep an instance alive


@dataclass(slots=True)
class Instance:
    """One registered instance and its lease."""

    id: str
    namespace: str
    service: str
    endpoint: Endpoint
    owner: SpiffeId
    expires_at: float


class Registry:
    """Instances by service, with authenticated registration and leases."""

    def __init__(self, clock: Clock, *, trust_domain: str, lease_ttl: float = DEFAULT_LEASE_TTL,
                 grants: Callable[[], Iterable[RegistrationGrant]] = list) -> None:
        self.lease_ttl = lease_ttl
        self.version = 0  # bumped on every change that alters what subscribers see
        self._clock = clock
        self._trust_domain = trust_domain
        self._grants = grants
        self._instances: dict[str, Instance] = {}
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

    def register(self, service: str, endpoint: Endpoint, caller: SpiffeId | None,
                 caller_address: str, namespace: str = "") -> Instance:
        """Add an instance of ``service`` in ``namespace`` at ``endpoint`` for ``caller``.

        Args:
            namespace: the service's namespace; empty: the caller's own.

        Raises:
            RegistrationError: the caller is unauthenticated, not allowed to register
                ``service`` in ``namespace``, or registers an address other than its own.
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
        # The id names the endpoint, so registering it again (a sidecar restarting, or
        # re-registering after a control-plane restart) replaces the old lease in place.
        instance_id = instance_name(namespace, service, endpoint.address, endpoint.port)
        previous = self._instances.get(instance_id)
        if previous is not None and previous.owner != who:
            raise self._refuse(StatusCode.PERMISSION_DENIED,
                               f"{endpoint.address}:{endpoint.port} is registered by "
                               f"{previous.owner}, not {who}", "not_owner")
        registered = Endpoint()
        registered.CopyFrom(endpoint)
        registered.instance = instance_id
        registered.identity = str(who)  # what callers check this endpoint's certificate for
        if not registered.weight:
            registered.weight = 1
        instance = Instance(instance_id, namespace, service, registered, who,
                            self._clock.now() + self.lease_ttl)
        self._instances[instance_id] = instance
        if previous is not None and previous.endpoint == registered:
            return instance  # a renewal in all but name: nothing subscribers see changed
        log.info("registered %s at %s:%d for %s", instance_id, endpoint.address, endpoint.port,
                 who)
        self._changed()
        return instance

    def heartbeat(self, instance_id: str, health: int | None, caller: SpiffeId | None) -> None:
        """Renew the lease and record readiness (``Endpoint.Health``; None keeps it)."""
        instance = self._owned(instance_id, caller, "renew")
        instance.expires_at = self._clock.now() + self.lease_ttl
        if health is not None and instance.endpoint.health != health:
            instance.endpoint.health = health  # type: ignore[assignment]
            log.info("%s is now %s", instance_id, Endpoint.Health.Name(health))
            self._changed()

    def deregister(self, instance_id: str, caller: SpiffeId | None) -> None:
        self._owned(instance_id, caller, "deregister")
        del self._instances[instance_id]
        log.info("deregistered %s", instance_id)
        self._changed()

    def expire(self) -> list[Instance]:
        """Remove every instance whose lease lapsed; return them."""
        now = self._clock.now()
        lapsed = [i for i in self._instances.values() if i.expires_at <= now]
        for instance in lapsed:
            del self._instances[instance.id]
            log.warning("lease of %s (%s:%d) lapsed: endpoint removed", instance.id,
                        instance.endpoint.address, instance.endpoint.port)
        if lapsed:
            self._changed()
        return lapsed

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
            raise self._refuse(StatusCode.NOT_FOUND,
                               f"no instance {instance_id!r} (its lease may have lapsed: "
                               f"register again)", "unknown_instance")
        if instance.owner != who:
            raise self._refuse(StatusCode.PERMISSION_DENIED,
                               f"{who} may not {action} {instance_id!r}, registered by "
                               f"{instance.owner}", "not_owner")
        return instance

    def _refuse(self, code: StatusCode, message: str, reason: str) -> RegistrationError:
        # Not logged here: the server logs every refusal once, with the caller's address.
        return RegistrationError(code, message, reason)

    def _changed(self) -> None:
        self.version += 1
        for listener in self._listeners:
            listener()


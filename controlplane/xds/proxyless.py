"""A proxyless gRPC server is registered while its ADS stream asks for its inbound listener.

Our sidecars register themselves (``Register``, then a lease kept alive by their discovery
stream). A grpcio server built with ``xds=True`` makes no call of ours: it opens an ADS stream
and asks for the Listener ``mesh/inbound/<host>:<port>`` (its bootstrap's
``server_listener_resource_name_template`` with the address it serves on), which tells it how
to do mTLS and whom to let in. That request says everything a registration would:

- *who*: the identity its certificate proved on the stream (service and namespace);
- *where*: the address in the listener's name; a server listening on every address
  (``0.0.0.0``, ``[::]``) is registered at the address its stream comes from;
- *zone*: the node's ``locality.zone`` from its bootstrap.

So the control plane registers it from that request, with the same checks as ``Register``
(:meth:`controlplane.registry.Registry.register`): the identity must be allowed to register its
service (by default only its own), and the address must be its own. A refused registration
ends the stream with the registry's status and reason, as a refused ``Register`` call would.

A listener name that does not parse as ``host:port`` is refused (INVALID_ARGUMENT), and so is a
stream asking for more than ``MAX_INBOUND`` of them (RESOURCE_EXHAUSTED): each is an endpoint
pushed to every caller of the service.

The instance lives as a sidecar's does: its lease is renewed while the stream stays open and
keeps asking for that listener, and runs out (within 1.25 × the lease TTL) once the stream
ends or drops the listener — a server that goes away is no longer called.

Registered as HEALTHY from the first request: a grpcio xDS server starts serving once it holds
a listener it accepts, milliseconds later; a caller that is faster gets a refused connection,
which callers retry (connect-failure) on another endpoint.
"""

from __future__ import annotations

import ipaddress
import itertools
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from controlplane.discovery import MAX_LOGGED
from controlplane.errors import ControlPlaneError, RegistrationError
from controlplane.registry import Registry
from controlplane.xds.resources import LISTENER, inbound_address
from mesh.grpc import StatusCode
from mesh.identity import SpiffeId
from mesh.proto.config_pb2 import Endpoint
from mesh.proto.resources import instance_name

log = logging.getLogger("controlplane.xds")

MAX_INBOUND = 8  # inbound listeners (so registrations) one proxyless server's stream may hold


class InboundRegistrations:
    """The instances that open proxyless-server streams hold, by stream."""

    def __init__(self, registry: Registry) -> None:
        self._registry = registry
        self._held: dict[int, dict[str, SpiffeId]] = {}  # stream → instance id → owner
        self._streams = itertools.count(1)

    def held(self) -> set[tuple[str, SpiffeId]]:
        """(instance id, owner) of every instance an open stream holds: leases to renew."""
        return {(instance, owner) for instances in self._held.values()
                for instance, owner in instances.items()}

    async def watch(self, requests: AsyncIterator[Any], identity: SpiffeId, caller_address: str,
                    refused: Callable[[ControlPlaneError], ControlPlaneError],
                    ) -> AsyncIterator[Any]:
        """Pass ``requests`` on, registering the inbound listeners they ask for; ``refused``
        logs and counts a refused registration and returns the error to raise.

        Raises:
            ControlPlaneError: the registry refused a registration (ends the stream).
        """
        stream = next(self._streams)
        held = self._held[stream] = {}
        zone = ""
        try:
            async for request in requests:
                if request.HasField("node"):
                    zone = request.node.locality.zone
                # The discovery server reads the request first (its node must be the proven
                # identity, its names few enough); this generator resumes, and registers,
                # only once that passed — when the server asks for the next request.
                yield request
                if request.type_url == LISTENER:
                    try:
                        await self._update(held, list(request.resource_names), identity,
                                     caller_address, zone)
                    except ControlPlaneError as error:
                        raise refused(error) from None
        finally:
            del self._held[stream]

    async def _update(self, held: dict[str, SpiffeId], names: list[str], identity: SpiffeId,
                caller_address: str, zone: str) -> None:
        """Register what ``names`` newly asks for; forget what it no longer does.

        Raises:
            RegistrationError: the registry refused; an inbound listener name that does not
                parse (INVALID_ARGUMENT); more than ``MAX_INBOUND`` of them
                (RESOURCE_EXHAUSTED).
        """
        wanted: dict[str, tuple[str, Endpoint]] = {}  # instance id → (listener, endpoint)
        for name in names:
            try:
                address = inbound_address(name)
            except ValueError as error:
                raise RegistrationError(StatusCode.INVALID_ARGUMENT, str(error)[:MAX_LOGGED],
                                        "bad_inbound_listener") from None
            if address is None:
                continue  # a client's listener
            host, port = address
            endpoint = Endpoint(address=self._own(host, caller_address), port=port, zone=zone)
            instance = instance_name(identity.namespace, identity.service, endpoint.address,
                                     port)
            wanted[instance] = (name, endpoint)
        if len(wanted) > MAX_INBOUND:
            # Each is an endpoint pushed to every caller: one workload may not flood the mesh.
            raise RegistrationError(StatusCode.RESOURCE_EXHAUSTED,
                                    f"{identity} asks for {len(wanted)} inbound listeners; a "
                                    f"proxyless server may serve on {MAX_INBOUND} addresses at "
                                    f"most", "too_many_inbound_listeners")
        for instance in set(held) - set(wanted):
            del held[instance]  # no longer asked for: its lease runs out
        for instance, (name, endpoint) in wanted.items():
            if instance in held:
                continue
            await self._registry.register(identity.service, endpoint, identity, caller_address,
                                    identity.namespace)
            held[instance] = identity
            log.info("proxyless server %s registered as %s (it asked for listener %r)",
                     identity, instance, name)

    @staticmethod
    def _own(host: str, caller_address: str) -> str:
        """The address to register: the stream's own for a wildcard listening address."""
        try:
            wildcard = ipaddress.ip_address(host).is_unspecified
        except ValueError:
            wildcard = False  # a host name: registered as given, and refused unless its own
        return caller_address if wildcard else host

"""SPIFFE IDs: the names workloads prove with their certificates.

A workload's identity is a URI in its certificate's URI SAN. SPIFFE allows any path under a
trust domain; like Istio we use one shape, ``spiffe://<trust-domain>/ns/<namespace>/sa/<service>``,
and reject every other, so a policy can always ask "which namespace, which service?".
Authorization policies write the same name without the scheme, as a *principal*
(``cluster.local/ns/default/sa/checkout``).

Characters follow the SPIFFE ID spec: a trust domain is lowercase letters, digits, ``.``, ``-``
and ``_`` (so no port, user info or upper case); a path segment is letters, digits, ``.``, ``-``
and ``_``, and is neither ``.`` nor ``..``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

SCHEME = "spiffe://"
DEFAULT_NAMESPACE = "default"  # a service, policy or grant that names no namespace is in it
CONTROL_PLANE_NAMESPACE = "mesh-system"  # the control plane is .../ns/mesh-system/sa/controlplane
SHAPE = "spiffe://<trust-domain>/ns/<namespace>/sa/<service>"
MAX_LENGTH = 2048  # bytes; the SPIFFE ID spec's limit for the whole URI

_TRUST_DOMAIN = re.compile(r"[a-z0-9._-]+")
_SEGMENT = re.compile(r"[A-Za-z0-9._-]+")


@dataclass(frozen=True, slots=True, kw_only=True)
class SpiffeId:
    """A mesh workload identity: which service, in which namespace, of which trust domain."""

    trust_domain: str
    namespace: str
    service: str

    def __post_init__(self) -> None:
        for field, value in (
            ("trust_domain", self.trust_domain),
            ("namespace", self.namespace),
            ("service", self.service),
        ):
            problem = _problem(field, value)
            if problem:
                raise ValueError(f"SpiffeId {field}={value!r}: {problem}")

    def __str__(self) -> str:
        return f"{SCHEME}{self.trust_domain}/ns/{self.namespace}/sa/{self.service}"

    @property
    def principal(self) -> str:
        """The name authorization policies use: ``<trust-domain>/ns/<namespace>/sa/<service>``."""
        return f"{self.trust_domain}/ns/{self.namespace}/sa/{self.service}"


def parse(uri: str) -> SpiffeId:
    """Parse a mesh SPIFFE ID, strictly.

    Args:
        uri: ``spiffe://<trust-domain>/ns/<namespace>/sa/<service>``.

    Raises:
        ValueError: the message names ``uri`` and what is wrong with it.
    """

    def invalid(reason: str) -> ValueError:
        return ValueError(f"invalid SPIFFE ID {uri!r}: {reason}; expected {SHAPE}")

    if len(uri.encode()) > MAX_LENGTH:
        raise invalid(f"longer than {MAX_LENGTH} bytes")
    if not uri.startswith(SCHEME):
        raise invalid("the scheme must be 'spiffe://'")
    trust_domain, slash, path = uri[len(SCHEME) :].partition("/")
    problem = _problem("trust_domain", trust_domain)
    if problem:
        raise invalid(f"trust domain {trust_domain!r} {problem}")
    if not slash:
        raise invalid("there is no path")
    segments = path.split("/")
    if len(segments) != 4 or segments[0] != "ns" or segments[2] != "sa":
        raise invalid(f"path {'/' + path!r} is not /ns/<namespace>/sa/<service>")
    namespace, service = segments[1], segments[3]
    for field, value in (("namespace", namespace), ("service", service)):
        problem = _problem(field, value)
        if problem:
            raise invalid(f"{field} {value!r} {problem}")
    return SpiffeId(trust_domain=trust_domain, namespace=namespace, service=service)


def control_plane_id(trust_domain: str) -> SpiffeId:
    """The identity the control plane of ``trust_domain`` proves: what a sidecar insists on
    before it sends a join token, registers, subscribes or renews."""
    return SpiffeId(trust_domain=trust_domain, namespace=CONTROL_PLANE_NAMESPACE,
                    service="controlplane")


def matches(pattern: str, identity: SpiffeId) -> bool:
    """Whether ``identity`` is ``pattern``: a SPIFFE ID, or ``spiffe://<td>/ns/<ns>/sa/*`` for
    every service account of one namespace."""
    if pattern.endswith("/sa/*"):
        return str(identity).startswith(pattern[:-1])
    return str(identity) == pattern


def check_trust_domain(trust_domain: str) -> str:
    """Return ``trust_domain`` if it is a valid SPIFFE trust domain.

    Raises:
        ValueError: the message names the trust domain and what is wrong with it.
    """
    problem = _problem("trust_domain", trust_domain)
    if problem:
        raise ValueError(f"invalid trust domain {trust_domain!r}: {problem}")
    return trust_domain


def _problem(field: str, value: str) -> str | None:
    """Say what is wrong with one part of a SPIFFE ID, or None if nothing is."""
    if not value:
        return "is empty"
    if field == "trust_domain":
        if not _TRUST_DOMAIN.fullmatch(value):
            return "may hold only lowercase letters, digits, '.', '-' and '_'"
        return None
    if not _SEGMENT.fullmatch(value):
        return "may hold only letters, digits, '.', '-' and '_'"
    if value in (".", ".."):
        return "may not be '.' or '..'"
    return None

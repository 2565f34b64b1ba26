"""What the control plane refuses, as errors that carry the gRPC status the caller gets.

    ControlPlaneError        (code: a mesh.grpc StatusCode; reason: a short label for metrics)
    ├── AuthenticationError  a call other than SignCertificate-with-a-join-token came without
    │                        a mesh certificate (UNAUTHENTICATED)
    ├── IdentityError        a join token or CSR was refused (PERMISSION_DENIED,
    │                        UNAUTHENTICATED, INVALID_ARGUMENT)
    ├── RegistrationError    a Register / Heartbeat / Deregister was refused
    │                        (UNAUTHENTICATED, PERMISSION_DENIED, NOT_FOUND, INVALID_ARGUMENT)
    └── DiscoveryError       a discovery stream claimed a node its certificate does not prove
                             (PERMISSION_DENIED)

Policy files have their own error, :class:`controlplane.policy.PolicyError`: it lists every
problem with file, field and reason.
"""

from __future__ import annotations

from mesh.grpc import GrpcError, StatusCode


class ControlPlaneError(GrpcError):
    """A refusal, with the status code the caller receives and a message naming the reason.

    ``reason`` is a short label (``no_certificate``, ``token_used``...) that the refusal
    counter ``mesh_controlplane_refused`` is broken down by.
    """

    def __init__(self, code: StatusCode, message: str, reason: str = "") -> None:
        super().__init__(code, message)
        self.reason = reason or code.name.lower()


class AuthenticationError(ControlPlaneError):
    """A call that needs a mesh certificate came without one."""


class IdentityError(ControlPlaneError):
    """A certificate request was refused."""


class RegistrationError(ControlPlaneError):
    """A registration call was refused."""


class DiscoveryError(ControlPlaneError):
    """A discovery stream was refused."""

"""What the control plane refuses, as errors that carry the gRPC status the caller gets.

    ControlPlaneError        (code: a mesh.grpc StatusCode)
    ├── IdentityError        a join token or CSR was refused (PERMISSION_DENIED,
    │                        UNAUTHENTICATED, INVALID_ARGUMENT)
    └── RegistrationError    a Register / Heartbeat / Deregister was refused
                             (UNAUTHENTICATED, PERMISSION_DENIED, NOT_FOUND, INVALID_ARGUMENT)

Policy files have their own error, :class:`controlplane.policy.PolicyError`: it lists every
problem with file, field and reason.
"""

from __future__ import annotations

from mesh.grpc import GrpcError, StatusCode


class ControlPlaneError(GrpcError):
    """A refusal, with the status code the caller receives and a message naming the reason."""

    def __init__(self, code: StatusCode, message: str) -> None:
        super().__init__(code, message)


class IdentityError(ControlPlaneError):
    """A certificate request was refused."""


class RegistrationError(ControlPlaneError):
    """A registration call was refused."""

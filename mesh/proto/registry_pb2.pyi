from mesh.proto import config_pb2 as _config_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SignCertificateRequest(_message.Message):
    __slots__ = ("csr_pem", "join_token")
    CSR_PEM_FIELD_NUMBER: _ClassVar[int]
    JOIN_TOKEN_FIELD_NUMBER: _ClassVar[int]
    csr_pem: bytes
    join_token: str
    def __init__(self, csr_pem: _Optional[bytes] = ..., join_token: _Optional[str] = ...) -> None: ...

class SignCertificateResponse(_message.Message):
    __slots__ = ("certificate_pem", "ca_pem", "not_after_unix")
    CERTIFICATE_PEM_FIELD_NUMBER: _ClassVar[int]
    CA_PEM_FIELD_NUMBER: _ClassVar[int]
    NOT_AFTER_UNIX_FIELD_NUMBER: _ClassVar[int]
    certificate_pem: bytes
    ca_pem: bytes
    not_after_unix: int
    def __init__(self, certificate_pem: _Optional[bytes] = ..., ca_pem: _Optional[bytes] = ..., not_after_unix: _Optional[int] = ...) -> None: ...

class RegisterRequest(_message.Message):
    __slots__ = ("service", "endpoint", "namespace")
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    service: str
    endpoint: _config_pb2.Endpoint
    namespace: str
    def __init__(self, service: _Optional[str] = ..., endpoint: _Optional[_Union[_config_pb2.Endpoint, _Mapping]] = ..., namespace: _Optional[str] = ...) -> None: ...

class RegisterResponse(_message.Message):
    __slots__ = ("instance", "lease_ttl_ms")
    INSTANCE_FIELD_NUMBER: _ClassVar[int]
    LEASE_TTL_MS_FIELD_NUMBER: _ClassVar[int]
    instance: str
    lease_ttl_ms: int
    def __init__(self, instance: _Optional[str] = ..., lease_ttl_ms: _Optional[int] = ...) -> None: ...

class DeregisterRequest(_message.Message):
    __slots__ = ("instance",)
    INSTANCE_FIELD_NUMBER: _ClassVar[int]
    instance: str
    def __init__(self, instance: _Optional[str] = ...) -> None: ...

class DeregisterResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("instance", "health")
    INSTANCE_FIELD_NUMBER: _ClassVar[int]
    HEALTH_FIELD_NUMBER: _ClassVar[int]
    instance: str
    health: _config_pb2.Endpoint.Health
    def __init__(self, instance: _Optional[str] = ..., health: _Optional[_Union[_config_pb2.Endpoint.Health, str]] = ...) -> None: ...

class HeartbeatResponse(_message.Message):
    __slots__ = ("lease_ttl_ms",)
    LEASE_TTL_MS_FIELD_NUMBER: _ClassVar[int]
    lease_ttl_ms: int
    def __init__(self, lease_ttl_ms: _Optional[int] = ...) -> None: ...

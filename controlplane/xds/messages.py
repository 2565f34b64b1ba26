"""The Envoy pieces every translated resource is built from: typed configs, ADS, mesh mTLS.

Three things recur across Clusters, Listeners and RouteConfigurations:

- a ``typed_config`` is a ``google.protobuf.Any`` with the ``type.googleapis.com/`` prefix;
- "ask for it on this same stream": a ``ConfigSource`` with ``ads {}`` and
  ``resource_api_version: V3``, which is how a Cluster names its endpoints (EDS) and a
  Listener its routes (RDS) when everything comes over one ADS stream;
- the mesh's mTLS (gRFC A29). gRPC takes no certificate files from xDS: a TLS context names a
  *certificate provider instance* of the workload's bootstrap (``mesh``, a file watcher over
  its certificate, key and CA files) and a certificate name within it — ``default`` for the
  workload's own certificate and key, ``ROOTCA`` for the mesh CA it verifies peers with.
  Both ends present a certificate and verify the other's, as our sidecars do.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from envoy.config.core.v3.base_pb2 import TransportSocket
from envoy.config.core.v3.config_source_pb2 import (
    AggregatedConfigSource,
    ApiVersion,
    ConfigSource,
)
from envoy.extensions.transport_sockets.tls.v3.common_pb2 import (
    CertificateProviderPluginInstance,
    CertificateValidationContext,
)
from envoy.extensions.transport_sockets.tls.v3.tls_pb2 import (
    CommonTlsContext,
    DownstreamTlsContext,
    UpstreamTlsContext,
)
from envoy.type.matcher.v3.string_pb2 import StringMatcher
from google.protobuf.any_pb2 import Any as AnyProto
from google.protobuf.message import Message
from google.protobuf.wrappers_pb2 import BoolValue

from controlplane.xds.resources import CERTIFICATE_PROVIDER

TLS_TRANSPORT_SOCKET = "envoy.transport_sockets.tls"
OWN_CERTIFICATE = "default"  # the provider's certificate and key: the workload's own
ROOT_CERTIFICATE = "ROOTCA"  # the provider's CA certificate: the mesh CA


def typed(message: Message) -> AnyProto:
    """``message`` as a ``typed_config`` (an Any with the ``type.googleapis.com/`` prefix)."""
    packed = AnyProto()
    packed.Pack(message, type_url_prefix="type.googleapis.com/", deterministic=True)
    return packed


def ads() -> Any:
    """A ConfigSource meaning "on this ADS stream, in xDS v3"."""
    return ConfigSource(ads=AggregatedConfigSource(), resource_api_version=ApiVersion.V3)


def upstream_tls(subject_alt_names: Sequence[str]) -> Any:
    """The transport socket of a client's mTLS to a cluster: present the workload's own
    certificate, accept a peer the mesh CA signed whose SAN is one of ``subject_alt_names``
    (any, when empty)."""
    validation = _validation()
    validation.match_subject_alt_names.extend(StringMatcher(exact=san)
                                              for san in subject_alt_names)
    context = UpstreamTlsContext(common_tls_context=_common(validation))
    return TransportSocket(name=TLS_TRANSPORT_SOCKET, typed_config=typed(context))


def downstream_tls() -> Any:
    """The transport socket of a proxyless server: present the workload's own certificate
    and require a client certificate the mesh CA signed (who may call what is RBAC's)."""
    context = DownstreamTlsContext(require_client_certificate=BoolValue(value=True),
                                   common_tls_context=_common(_validation()))
    return TransportSocket(name=TLS_TRANSPORT_SOCKET, typed_config=typed(context))


def _common(validation: Any) -> Any:
    return CommonTlsContext(
        tls_certificate_provider_instance=CertificateProviderPluginInstance(
            instance_name=CERTIFICATE_PROVIDER, certificate_name=OWN_CERTIFICATE),
        validation_context=validation)


def _validation() -> Any:
    return CertificateValidationContext(
        ca_certificate_provider_instance=CertificateProviderPluginInstance(
            instance_name=CERTIFICATE_PROVIDER, certificate_name=ROOT_CERTIFICATE))

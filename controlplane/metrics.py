"""The control plane's Prometheus metrics, one registry per control plane (tests run many)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from controlplane.discovery import DiscoveryObserver
from mesh.proto.discovery_pb2 import Node
from mesh.proto.resources import PREFIX, short_name


def _labels(type_url: str) -> tuple[str, str]:
    """(protocol, type): ``("mesh.v1", "Cluster")``, ``("xds.v3", "Cluster")``."""
    return ("mesh.v1" if type_url.startswith(PREFIX) else "xds.v3"), short_name(type_url)


class ControlPlaneMetrics(DiscoveryObserver):
    """Registrations, pushes, ACKs and NACKs, and the time from push to ACK."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.registrations = Counter("mesh_controlplane_registrations",
                                     "Register calls by result", ["result"], registry=r)
        self.certificates = Counter("mesh_controlplane_certificates",
                                    "Certificate requests by result", ["result"], registry=r)
        self.handshakes_failed = Counter("mesh_controlplane_tls_handshakes_failed",
                                         "TLS handshakes that failed (a certificate from "
                                         "another CA or expired, not TLS, cut off)", registry=r)
        self.refused_calls = Counter("mesh_controlplane_refused",
                               "gRPC calls refused (no or bad certificate, a node claim the "
                               "certificate does not prove, a spent join token...), by call "
                               "and reason", ["call", "reason"], registry=r)
        by_type = ["protocol", "type"]  # mesh.v1 (our sidecars) or xds.v3 (proxyless gRPC)
        self.pushes = Counter("mesh_controlplane_pushes", "DiscoveryResponses sent", by_type,
                              registry=r)
        self.acks = Counter("mesh_controlplane_acks", "ACKs received", by_type, registry=r)
        self.nacks = Counter("mesh_controlplane_nacks", "NACKs received", by_type, registry=r)
        self.push_ack_seconds = Histogram(
            "mesh_controlplane_push_ack_seconds", "Time from a push to its ACK", by_type,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
            registry=r)
        self.convergence_seconds = Histogram(
            "mesh_controlplane_convergence_seconds",
            "Time from a change until every discovery stream ACKed it",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=r)
        self.subscribers = Gauge("mesh_controlplane_subscribers", "Open discovery streams",
                                 registry=r)
        self.instances = Gauge("mesh_controlplane_instances", "Registered instances",
                               registry=r)
        self.policy_version = Gauge("mesh_controlplane_policy_version",
                                    "Version of the policy in force", registry=r)
        self.policy_rejections = Counter("mesh_controlplane_policy_rejections",
                                         "Policy changes rejected", registry=r)

    def pushed(self, type_url: str) -> None:
        self.pushes.labels(*_labels(type_url)).inc()

    def acked(self, type_url: str, latency: float) -> None:
        self.acks.labels(*_labels(type_url)).inc()
        self.push_ack_seconds.labels(*_labels(type_url)).observe(latency)

    def nacked(self, type_url: str, node: Node, reason: str) -> None:
        self.nacks.labels(*_labels(type_url)).inc()

    def converged(self, seconds: float) -> None:
        self.convergence_seconds.observe(seconds)

    def refused(self, call: str, reason: str) -> None:
        self.refused_calls.labels(call, reason).inc()

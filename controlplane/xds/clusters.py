"""Our clusters as Envoy Clusters (CDS), as grpcio's xDS client applies them.

Every cluster is ``type: EDS`` with its endpoints asked for on the same ADS stream. What a
cluster says, and what gRPC (C-core, so Python) makes of it:

    lb_policy           ROUND_ROBIN and RING_HASH as such (RING_HASH with gRPC's ring sizes:
                        its ring has 1024 to 4096 points whatever the weights, so our
                        points_per_weight has no faithful mapping and is not sent; the hash
                        function is XX_HASH, the only one gRPC takes, gRFC A42). LEAST_REQUEST
                        (gRFC A48 is gRPC Java's only), PEAK_EWMA (no gRPC has it) and RANDOM
                        are sent as ROUND_ROBIN with a warning: an lb_policy gRPC does not know
                        makes it NACK the *whole* CDS response, every cluster with it.
    slow start          not sent (gRPC has none): a warning
    circuit_breakers    max_requests as thresholds[0] (priority DEFAULT); gRPC applies that
                        one only (gRFC A32), so max_pending_requests and max_retries are sent
                        but warned about
    outlier_detection   Envoy's message, field by field (ours has its names and defaults; only
                        the fields written are sent, so the defaults are Envoy's, which are
                        ours). gRPC ejects on success rate and failure percentage only
                        (gRFC A50): a warning when consecutive 5xx or gateway failures would
                        eject
    connect_timeout     copied
    timeout             sent on its routes, not applied by grpcio: a warning (routes.py)
    retry_budget        gRPC has no retry budget over xDS: a warning when a budget is written
                        for a cluster that is retried
    inbound_rate_limit  a proxyless server has no local rate limit: a warning
    pool, app_protocol  not sent, no warning: how a client pools its connections and what its
                        sidecar speaks to the app are no caller's concern

The cluster's timeout and retry policy travel on its routes (:mod:`controlplane.xds.routes`).

mTLS (gRFC A29): the cluster's transport socket presents the workload's certificate and checks
the server's against the mesh CA and the SPIFFE IDs that registered the cluster's endpoints,
as Istio checks an upstream's service accounts. When some endpoint registered without an
identity (which means "any mesh certificate"), or there are no endpoints, no SAN list is sent.

Warnings are returned as ``"<field path>: <what gRPC does instead>"``, the path as our YAML
writes it; :mod:`controlplane.xds.translate` names the resource.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from envoy.config.cluster.v3.circuit_breaker_pb2 import CircuitBreakers as EnvoyBreakers
from envoy.config.cluster.v3.cluster_pb2 import Cluster as EnvoyCluster
from envoy.config.cluster.v3.outlier_detection_pb2 import (
    OutlierDetection as EnvoyOutlierDetection,
)
from envoy.config.core.v3.base_pb2 import RoutingPriority

from controlplane.xds.messages import ads, upstream_tls
from controlplane.xds.routes import TIMEOUT_NOT_APPLIED
from mesh.proto.config_pb2 import Cluster, Endpoint, OutlierDetection

_DOWNGRADED = {
    Cluster.LEAST_REQUEST: "least request is gRPC Java's only (gRFC A48), not grpcio's C-core",
    Cluster.PEAK_EWMA: "gRPC's C-core/Python client has no peak EWMA (and least request, "
                       "gRFC A48, is Java-only)",
    Cluster.RANDOM: "gRPC has no random balancer",
}
_BREAKER_LIMITS = ("max_requests", "max_pending_requests", "max_retries")


def cluster(ours: Cluster, endpoints: Sequence[Endpoint], *, retried: bool,
            ) -> tuple[Any, list[str]]:
    """The Envoy Cluster of one of ours, and what gRPC will not apply of it.

    Args:
        endpoints: the cluster's endpoints, for the identities its servers must prove.
        retried: whether calls to the cluster are retried (by its policy or a route's).
    """
    translated = EnvoyCluster(name=ours.name, type=EnvoyCluster.EDS)
    translated.eds_cluster_config.eds_config.CopyFrom(ads())
    notes = _balancer(ours, translated)
    if ours.HasField("connect_timeout"):
        translated.connect_timeout.CopyFrom(ours.connect_timeout)
    if ours.HasField("timeout"):  # it travels on the cluster's routes (routes.py)
        notes.append(f"timeout {TIMEOUT_NOT_APPLIED}")
    if ours.HasField("circuit_breakers"):
        notes += _circuit_breakers(ours, translated)
    if ours.HasField("outlier_detection"):
        translated.outlier_detection.CopyFrom(_outlier_detection(ours.outlier_detection))
        notes += _ejection_notes(ours.outlier_detection)
    if ours.HasField("retry_budget") and not ours.retry_budget.disabled and retried:
        notes.append("retry_budget not applied: gRPC has no retry budget over xDS; retries "
                     "are limited by num_retries only")
    if ours.HasField("inbound_rate_limit"):
        notes.append("inbound_rate_limit not applied by proxyless servers: gRPC has no local "
                     "rate limit")
    identities = [e.identity for e in endpoints]
    sans = sorted(set(identities)) if identities and all(identities) else []
    translated.transport_socket.CopyFrom(upstream_tls(sans))
    return translated, notes


def _balancer(ours: Cluster, translated: Any) -> list[str]:
    name = Cluster.LbPolicy.Name(ours.lb_policy)
    if ours.lb_policy == Cluster.RING_HASH:
        translated.lb_policy = EnvoyCluster.RING_HASH
        translated.ring_hash_lb_config.hash_function = EnvoyCluster.RingHashLbConfig.XX_HASH
        if ours.ring_hash.HasField("points_per_weight"):
            return ["ring_hash.points_per_weight not applied: gRPC's ring has 1024 to 4096 "
                    "points whatever the weights"]
        return []
    translated.lb_policy = EnvoyCluster.ROUND_ROBIN
    if ours.lb_policy == Cluster.ROUND_ROBIN:
        if ours.round_robin.HasField("slow_start_config"):
            return ["round_robin.slow_start_config not applied: gRPC has no slow start; a new "
                    "endpoint gets its full weight at once"]
        return []
    notes = [f"lb_policy {name} sent as ROUND_ROBIN: {_DOWNGRADED[ours.lb_policy]}"]
    if ours.lb_policy == Cluster.LEAST_REQUEST and ours.least_request.HasField(
            "slow_start_config"):
        notes.append("least_request.slow_start_config not applied: gRPC has no slow start; a "
                     "new endpoint gets its full weight at once")
    return notes


def _circuit_breakers(ours: Cluster, translated: Any) -> list[str]:
    written = [f for f in _BREAKER_LIMITS if ours.circuit_breakers.HasField(f)]
    if not written:
        return []
    thresholds = EnvoyBreakers.Thresholds(priority=RoutingPriority.DEFAULT)
    for field in written:
        getattr(thresholds, field).value = getattr(ours.circuit_breakers, field)
    translated.circuit_breakers.thresholds.append(thresholds)
    return [f"circuit_breakers.{field} not applied: gRPC applies max_requests only (A32)"
            for field in written if field != "max_requests"]


def _outlier_detection(ours: OutlierDetection) -> Any:
    """Envoy's OutlierDetection with the fields ours writes (same names; durations copied,
    numbers wrapped in UInt32Value)."""
    translated = EnvoyOutlierDetection()
    for field, value in ours.ListFields():
        if field.message_type is not None:  # a Duration
            getattr(translated, field.name).CopyFrom(value)
        else:
            getattr(translated, field.name).value = value
    return translated


def _ejection_notes(ours: OutlierDetection) -> list[str]:
    """The consecutive-failure rules ours would enforce (gRPC enforces neither)."""
    why = "gRPC ejects on success rate and failure percentage only (gRFC A50)"
    notes = []
    # Enforced unless turned off: enforcing_consecutive_5xx defaults to 100.
    if not ours.HasField("enforcing_consecutive_5xx") or ours.enforcing_consecutive_5xx:
        notes.append(f"outlier_detection.consecutive_5xx not applied: {why}")
    # Detected but not enforced by default: enforcing_consecutive_gateway_failure is 0.
    if ours.enforcing_consecutive_gateway_failure:
        notes.append(f"outlier_detection.consecutive_gateway_failure not applied: {why}")
    return notes

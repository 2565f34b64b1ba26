"""Cluster settings: the control plane's ``Cluster`` message read, every default filled in.

A ``Cluster`` says only what its author chose; :func:`settings_from` turns it into
:class:`ClusterSettings`, the values the sidecar runs with. Defaults are not written here: each
is a ``DEFAULT_*`` constant beside its algorithm (``sidecar/balancers/least_request.py``
``DEFAULT_ACTIVE_REQUEST_BIAS``, ``sidecar/outlier.py``, ``circuit_breaker.py``,
``retry_budget.py``, ``pool.py``), and the settings classes there name their fields as the
messages do, so the reader fills a class from its message field by field and takes each default
from the class. What was left unset is kept by field path (``ClusterSettings.defaulted``), for
the admin's ``/config_dump``.

Presence decides, never the value: every tunable number is ``optional`` in the proto, so a
written ``active_request_bias: 0`` or ``max_ejection_percent: 0`` means zero, and only an unset
field takes its default. Only the chosen balancer's settings are read (Envoy ignores another
policy's too). Range checks run where the values are used (each class's ``__post_init__``);
a bad value raises ``ValueError`` naming the cluster and the field, and the sidecar NACKs it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import Message

from mesh.proto.config_pb2 import (
    Cluster,
    LeastRequest,
    OutlierDetection,
    RetryBudget,
    RetryPolicy,
    RoundRobin,
)
from sidecar.backoff import Backoff, Jitter
from sidecar.balancers import (
    LeastRequestConfig,
    PeakEwmaConfig,
    RingHashConfig,
    RoundRobinConfig,
    SlowStart,
)
from sidecar.circuit_breaker import CircuitBreakerConfig
from sidecar.outlier import (
    DEFAULT_BASE_EJECTION_TIME,
    DEFAULT_MAX_EJECTION_TIME,
    OutlierDetectionConfig,
)
from sidecar.pool import DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_STREAMS
from sidecar.rate_limit import RateLimitSettings, rate_limit_settings_from
from sidecar.retry import DEFAULT_NUM_RETRIES, RetryOn, RetrySettings
from sidecar.retry_budget import DEFAULT_RETRY_RATIO, ConcurrencyBudgetConfig, RateBudgetConfig

DEFAULT_CONNECT_TIMEOUT = 1.0
"""Seconds for TCP and TLS to an endpoint's sidecar."""

DEFAULT_TIMEOUT = 15.0
"""Seconds for a whole call, retries included: Envoy's route timeout."""


def seconds(duration: Duration) -> float:
    return duration.ToTimedelta().total_seconds()


@dataclass(frozen=True, slots=True, kw_only=True)
class PoolSettings:
    """How the cluster's connection pools share connections (the ``ConnectionPool`` message)."""

    max_streams_per_connection: int = DEFAULT_MAX_STREAMS
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT

    def __post_init__(self) -> None:
        if self.max_streams_per_connection < 1:
            raise ValueError(f"pool max_streams_per_connection "
                             f"{self.max_streams_per_connection}: must be at least 1")


@dataclass(frozen=True, slots=True)
class ClusterSettings:
    """A cluster's configuration, defaults applied, under the ``Cluster`` message's field names."""

    name: str
    lb_policy: int  # Cluster.LbPolicy
    round_robin: RoundRobinConfig | None  # the chosen policy's settings; the others are None
    least_request: LeastRequestConfig | None
    peak_ewma: PeakEwmaConfig | None
    ring_hash: RingHashConfig | None
    hash_header: str  # RING_HASH: the request header whose value is hashed; "" for none
    connect_timeout: float
    timeout: float
    retry_policy: RetrySettings
    retry_budget: RateBudgetConfig | ConcurrencyBudgetConfig | None
    outlier_detection: OutlierDetectionConfig | None
    circuit_breakers: CircuitBreakerConfig
    pool: PoolSettings
    app_protocol: int  # Cluster.Protocol
    inbound_rate_limit: RateLimitSettings | None  # what this service's own sidecar accepts
    # The field paths the message left unset, so that their default applies ("pool.idle_timeout").
    defaulted: tuple[str, ...] = ()


def retry_settings_from(proto: RetryPolicy) -> RetrySettings:
    """The retry settings a ``RetryPolicy`` message asks for.

    Envoy's ``hedge_on_per_try_timeout`` is read as gRPC's ``hedging_delay``: the per-try
    timeout becomes the delay after which a hedge joins a try, and no longer cuts the try.

    Raises:
        ValueError: an unknown ``retry_on`` condition or a bad value.
    """
    retry_on = frozenset(RetryOn.parse(name) for name in proto.retry_on)
    per_try_timeout = (seconds(proto.per_try_timeout)
                       if proto.HasField("per_try_timeout") else None)
    hedging_delay = seconds(proto.hedging_delay) if proto.HasField("hedging_delay") else None
    if proto.hedge_on_per_try_timeout:
        if per_try_timeout is None or hedging_delay is not None:
            raise ValueError("retry hedge_on_per_try_timeout: needs per_try_timeout, and "
                             "no hedging_delay (it is the per-try timeout)")
        hedging_delay, per_try_timeout = per_try_timeout, None
    backoff = Backoff()
    if proto.HasField("backoff"):
        b = proto.backoff
        written: dict[str, Any] = {  # what is left out takes Backoff's own defaults
            "jitter": Jitter.FULL if b.jitter == b.FULL else Jitter.DECORRELATED}
        for field in ("base_interval", "max_interval"):
            if b.HasField(field):
                written[field] = seconds(getattr(b, field))
        backoff = Backoff(**written)
    return RetrySettings(
        retry_on=retry_on,
        num_retries=(proto.num_retries if proto.num_retries or not (retry_on or hedging_delay)
                     else DEFAULT_NUM_RETRIES),
        per_try_timeout=per_try_timeout,
        retriable_status_codes=frozenset(proto.retriable_status_codes),
        retry_non_idempotent=proto.retry_non_idempotent,
        backoff=backoff,
        hedging_delay=hedging_delay)


_Config = TypeVar("_Config")


class _Reader:
    """Reads a ``Cluster`` message into settings, each value written or else its default.

    Every tunable number is ``optional`` in the proto and every duration a message, so
    ``HasField`` tells "unset" from a written 0. The settings classes (``LeastRequestConfig``,
    ``OutlierDetectionConfig``, ...) name their fields as the messages do, and their defaults
    are the ``DEFAULT_*`` constants beside each algorithm: :meth:`config` fills a class from
    its message field by field, so a default is read from the one place it is written. Each
    field left unset is noted by its path as the operator writes it
    (``outlier_detection.max_ejection_percent``).
    """

    def __init__(self) -> None:
        self.defaulted: list[str] = []

    def config(self, message: Message, at: str, kind: Callable[..., _Config],
               **given: Any) -> _Config:
        """``kind`` (a settings dataclass) from ``message``, the fields in ``given`` as given."""
        values = dict(given)
        for field in dataclasses.fields(kind):  # type: ignore[arg-type]
            if field.name in values:
                continue
            path, default = f"{at}.{field.name}", cast(Any, field.default)
            if default is dataclasses.MISSING and not message.HasField(field.name):
                raise ValueError(f"{path}: required")
            if message.DESCRIPTOR.fields_by_name[field.name].message_type is None:
                values[field.name] = self.number(message, path, default)
            else:  # a Duration
                values[field.name] = self.seconds(message, path, default)
        return kind(**values)

    def number(self, message: Message, path: str, default: Any) -> Any:
        """The number at ``path`` (its last part names the field of ``message``), or ``default``."""
        field = path.rpartition(".")[2]
        if message.HasField(field):
            return getattr(message, field)
        self.defaulted.append(path)
        return default

    def seconds(self, message: Message, path: str, default: float) -> float:
        """The duration at ``path`` in seconds, or ``default``.

        Raises:
            ValueError: the duration is not positive.
        """
        field = path.rpartition(".")[2]
        if not message.HasField(field):
            self.defaulted.append(path)
            return default
        value = seconds(getattr(message, field))
        if value <= 0:
            raise ValueError(f"{path} must be positive, got {value}s")
        return value

    def present(self, message: Message, path: str) -> bool:
        """Whether the message at ``path`` is set; if not, that it is left out is the default."""
        if message.HasField(path.rpartition(".")[2]):
            return True
        self.defaulted.append(path)
        return False


def settings_from(cluster: Cluster) -> ClusterSettings:
    """Settings for a ``Cluster`` message, every default filled in and the defaulted named.

    Raises:
        ValueError: a value out of range, naming the cluster and the field (the sidecar NACKs).
    """
    read = _Reader()
    policy = cluster.lb_policy
    try:
        if policy not in Cluster.LbPolicy.values():
            raise ValueError(f"lb_policy {policy}: unknown")
        settings = ClusterSettings(
            name=cluster.name,
            lb_policy=policy,
            round_robin=(read.config(cluster.round_robin, "round_robin", RoundRobinConfig,
                                     slow_start_config=_slow_start(cluster.round_robin,
                                                                   "round_robin", read))
                         if policy == Cluster.ROUND_ROBIN else None),
            least_request=(read.config(cluster.least_request, "least_request",
                                       LeastRequestConfig,
                                       slow_start_config=_slow_start(cluster.least_request,
                                                                     "least_request", read))
                           if policy == Cluster.LEAST_REQUEST else None),
            peak_ewma=(read.config(cluster.peak_ewma, "peak_ewma", PeakEwmaConfig)
                       if policy == Cluster.PEAK_EWMA else None),
            ring_hash=(read.config(cluster.ring_hash, "ring_hash", RingHashConfig)
                       if policy == Cluster.RING_HASH else None),
            hash_header=cluster.ring_hash.hash_header.lower(),  # HTTP/2 names are lowercase
            connect_timeout=read.seconds(cluster, "connect_timeout", DEFAULT_CONNECT_TIMEOUT),
            timeout=read.seconds(cluster, "timeout", DEFAULT_TIMEOUT),
            retry_policy=(retry_settings_from(cluster.retry_policy)
                          if read.present(cluster, "retry_policy") else RetrySettings()),
            retry_budget=_retry_budget(cluster.retry_budget, read),
            outlier_detection=(_outlier_detection(cluster.outlier_detection, read)
                               if read.present(cluster, "outlier_detection") else None),
            circuit_breakers=read.config(cluster.circuit_breakers, "circuit_breakers",
                                         CircuitBreakerConfig),
            pool=read.config(cluster.pool, "pool", PoolSettings),
            app_protocol=cluster.app_protocol,
            inbound_rate_limit=(rate_limit_settings_from(cluster.inbound_rate_limit)
                                if cluster.HasField("inbound_rate_limit") else None),
            defaulted=tuple(sorted(read.defaulted)))  # last: every field has been read
    except ValueError as error:
        raise ValueError(f"cluster {cluster.name}: {error}") from None
    return settings


def _slow_start(parent: RoundRobin | LeastRequest, at: str, read: _Reader) -> SlowStart | None:
    at = f"{at}.slow_start_config"
    if not read.present(parent, at):
        return None
    return read.config(parent.slow_start_config, at, SlowStart)


def _retry_budget(budget: RetryBudget,
                  read: _Reader) -> RateBudgetConfig | ConcurrencyBudgetConfig | None:
    if budget.disabled:
        return None
    if budget.kind == RetryBudget.CONCURRENCY:  # Envoy's budget counts in percent
        ratio = read.number(budget, "retry_budget.retry_ratio", DEFAULT_RETRY_RATIO)
        return read.config(budget, "retry_budget", ConcurrencyBudgetConfig,
                           budget_percent=100 * ratio)
    return read.config(budget, "retry_budget", RateBudgetConfig)


def _outlier_detection(detection: OutlierDetection, read: _Reader) -> OutlierDetectionConfig:
    base = read.seconds(detection, "outlier_detection.base_ejection_time",
                        DEFAULT_BASE_EJECTION_TIME)
    # Left out, the longest ejection is never shorter than the first (Envoy: "whichever is
    # larger" of its default and base_ejection_time).
    longest = read.seconds(detection, "outlier_detection.max_ejection_time",
                           max(DEFAULT_MAX_EJECTION_TIME, base))
    return read.config(detection, "outlier_detection", OutlierDetectionConfig,
                       base_ejection_time=base, max_ejection_time=longest)

import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Cluster(_message.Message):
    __slots__ = ("name", "namespace", "lb_policy", "round_robin", "least_request", "peak_ewma", "ring_hash", "connect_timeout", "timeout", "retry_policy", "retry_budget", "outlier_detection", "circuit_breakers", "pool", "app_protocol", "inbound_rate_limit")
    class LbPolicy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        LEAST_REQUEST: _ClassVar[Cluster.LbPolicy]
        ROUND_ROBIN: _ClassVar[Cluster.LbPolicy]
        RANDOM: _ClassVar[Cluster.LbPolicy]
        PEAK_EWMA: _ClassVar[Cluster.LbPolicy]
        RING_HASH: _ClassVar[Cluster.LbPolicy]
    LEAST_REQUEST: Cluster.LbPolicy
    ROUND_ROBIN: Cluster.LbPolicy
    RANDOM: Cluster.LbPolicy
    PEAK_EWMA: Cluster.LbPolicy
    RING_HASH: Cluster.LbPolicy
    class Protocol(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        GRPC: _ClassVar[Cluster.Protocol]
        HTTP1: _ClassVar[Cluster.Protocol]
    GRPC: Cluster.Protocol
    HTTP1: Cluster.Protocol
    NAME_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    LB_POLICY_FIELD_NUMBER: _ClassVar[int]
    ROUND_ROBIN_FIELD_NUMBER: _ClassVar[int]
    LEAST_REQUEST_FIELD_NUMBER: _ClassVar[int]
    PEAK_EWMA_FIELD_NUMBER: _ClassVar[int]
    RING_HASH_FIELD_NUMBER: _ClassVar[int]
    CONNECT_TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    RETRY_POLICY_FIELD_NUMBER: _ClassVar[int]
    RETRY_BUDGET_FIELD_NUMBER: _ClassVar[int]
    OUTLIER_DETECTION_FIELD_NUMBER: _ClassVar[int]
    CIRCUIT_BREAKERS_FIELD_NUMBER: _ClassVar[int]
    POOL_FIELD_NUMBER: _ClassVar[int]
    APP_PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    INBOUND_RATE_LIMIT_FIELD_NUMBER: _ClassVar[int]
    name: str
    namespace: str
    lb_policy: Cluster.LbPolicy
    round_robin: RoundRobin
    least_request: LeastRequest
    peak_ewma: PeakEwma
    ring_hash: RingHash
    connect_timeout: _duration_pb2.Duration
    timeout: _duration_pb2.Duration
    retry_policy: RetryPolicy
    retry_budget: RetryBudget
    outlier_detection: OutlierDetection
    circuit_breakers: CircuitBreakers
    pool: ConnectionPool
    app_protocol: Cluster.Protocol
    inbound_rate_limit: LocalRateLimit
    def __init__(self, name: _Optional[str] = ..., namespace: _Optional[str] = ..., lb_policy: _Optional[_Union[Cluster.LbPolicy, str]] = ..., round_robin: _Optional[_Union[RoundRobin, _Mapping]] = ..., least_request: _Optional[_Union[LeastRequest, _Mapping]] = ..., peak_ewma: _Optional[_Union[PeakEwma, _Mapping]] = ..., ring_hash: _Optional[_Union[RingHash, _Mapping]] = ..., connect_timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., retry_policy: _Optional[_Union[RetryPolicy, _Mapping]] = ..., retry_budget: _Optional[_Union[RetryBudget, _Mapping]] = ..., outlier_detection: _Optional[_Union[OutlierDetection, _Mapping]] = ..., circuit_breakers: _Optional[_Union[CircuitBreakers, _Mapping]] = ..., pool: _Optional[_Union[ConnectionPool, _Mapping]] = ..., app_protocol: _Optional[_Union[Cluster.Protocol, str]] = ..., inbound_rate_limit: _Optional[_Union[LocalRateLimit, _Mapping]] = ...) -> None: ...

class RoundRobin(_message.Message):
    __slots__ = ("slow_start_config",)
    SLOW_START_CONFIG_FIELD_NUMBER: _ClassVar[int]
    slow_start_config: SlowStartConfig
    def __init__(self, slow_start_config: _Optional[_Union[SlowStartConfig, _Mapping]] = ...) -> None: ...

class LeastRequest(_message.Message):
    __slots__ = ("choice_count", "active_request_bias", "slow_start_config")
    CHOICE_COUNT_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_REQUEST_BIAS_FIELD_NUMBER: _ClassVar[int]
    SLOW_START_CONFIG_FIELD_NUMBER: _ClassVar[int]
    choice_count: int
    active_request_bias: float
    slow_start_config: SlowStartConfig
    def __init__(self, choice_count: _Optional[int] = ..., active_request_bias: _Optional[float] = ..., slow_start_config: _Optional[_Union[SlowStartConfig, _Mapping]] = ...) -> None: ...

class SlowStartConfig(_message.Message):
    __slots__ = ("slow_start_window", "aggression", "min_weight_percent")
    SLOW_START_WINDOW_FIELD_NUMBER: _ClassVar[int]
    AGGRESSION_FIELD_NUMBER: _ClassVar[int]
    MIN_WEIGHT_PERCENT_FIELD_NUMBER: _ClassVar[int]
    slow_start_window: _duration_pb2.Duration
    aggression: float
    min_weight_percent: float
    def __init__(self, slow_start_window: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., aggression: _Optional[float] = ..., min_weight_percent: _Optional[float] = ...) -> None: ...

class PeakEwma(_message.Message):
    __slots__ = ("decay", "default_rtt")
    DECAY_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_RTT_FIELD_NUMBER: _ClassVar[int]
    decay: _duration_pb2.Duration
    default_rtt: _duration_pb2.Duration
    def __init__(self, decay: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., default_rtt: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class RingHash(_message.Message):
    __slots__ = ("hash_header", "points_per_weight")
    HASH_HEADER_FIELD_NUMBER: _ClassVar[int]
    POINTS_PER_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    hash_header: str
    points_per_weight: int
    def __init__(self, hash_header: _Optional[str] = ..., points_per_weight: _Optional[int] = ...) -> None: ...

class RetryPolicy(_message.Message):
    __slots__ = ("retry_on", "num_retries", "per_try_timeout", "retriable_status_codes", "retry_non_idempotent", "backoff", "hedging_delay", "hedge_on_per_try_timeout")
    RETRY_ON_FIELD_NUMBER: _ClassVar[int]
    NUM_RETRIES_FIELD_NUMBER: _ClassVar[int]
    PER_TRY_TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    RETRIABLE_STATUS_CODES_FIELD_NUMBER: _ClassVar[int]
    RETRY_NON_IDEMPOTENT_FIELD_NUMBER: _ClassVar[int]
    BACKOFF_FIELD_NUMBER: _ClassVar[int]
    HEDGING_DELAY_FIELD_NUMBER: _ClassVar[int]
    HEDGE_ON_PER_TRY_TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    retry_on: _containers.RepeatedScalarFieldContainer[str]
    num_retries: int
    per_try_timeout: _duration_pb2.Duration
    retriable_status_codes: _containers.RepeatedScalarFieldContainer[int]
    retry_non_idempotent: bool
    backoff: Backoff
    hedging_delay: _duration_pb2.Duration
    hedge_on_per_try_timeout: bool
    def __init__(self, retry_on: _Optional[_Iterable[str]] = ..., num_retries: _Optional[int] = ..., per_try_timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., retriable_status_codes: _Optional[_Iterable[int]] = ..., retry_non_idempotent: _Optional[bool] = ..., backoff: _Optional[_Union[Backoff, _Mapping]] = ..., hedging_delay: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., hedge_on_per_try_timeout: _Optional[bool] = ...) -> None: ...

class Backoff(_message.Message):
    __slots__ = ("base_interval", "max_interval", "jitter")
    class Jitter(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        DECORRELATED: _ClassVar[Backoff.Jitter]
        FULL: _ClassVar[Backoff.Jitter]
    DECORRELATED: Backoff.Jitter
    FULL: Backoff.Jitter
    BASE_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    MAX_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    JITTER_FIELD_NUMBER: _ClassVar[int]
    base_interval: _duration_pb2.Duration
    max_interval: _duration_pb2.Duration
    jitter: Backoff.Jitter
    def __init__(self, base_interval: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., max_interval: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., jitter: _Optional[_Union[Backoff.Jitter, str]] = ...) -> None: ...

class RetryBudget(_message.Message):
    __slots__ = ("kind", "retry_ratio", "min_retries_per_second", "ttl", "min_retry_concurrency", "disabled")
    class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        RATE: _ClassVar[RetryBudget.Kind]
        CONCURRENCY: _ClassVar[RetryBudget.Kind]
    RATE: RetryBudget.Kind
    CONCURRENCY: RetryBudget.Kind
    KIND_FIELD_NUMBER: _ClassVar[int]
    RETRY_RATIO_FIELD_NUMBER: _ClassVar[int]
    MIN_RETRIES_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    TTL_FIELD_NUMBER: _ClassVar[int]
    MIN_RETRY_CONCURRENCY_FIELD_NUMBER: _ClassVar[int]
    DISABLED_FIELD_NUMBER: _ClassVar[int]
    kind: RetryBudget.Kind
    retry_ratio: float
    min_retries_per_second: int
    ttl: _duration_pb2.Duration
    min_retry_concurrency: int
    disabled: bool
    def __init__(self, kind: _Optional[_Union[RetryBudget.Kind, str]] = ..., retry_ratio: _Optional[float] = ..., min_retries_per_second: _Optional[int] = ..., ttl: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., min_retry_concurrency: _Optional[int] = ..., disabled: _Optional[bool] = ...) -> None: ...

class OutlierDetection(_message.Message):
    __slots__ = ("consecutive_5xx", "enforcing_consecutive_5xx", "consecutive_gateway_failure", "enforcing_consecutive_gateway_failure", "interval", "base_ejection_time", "max_ejection_time", "max_ejection_percent", "success_rate_minimum_hosts", "success_rate_request_volume", "success_rate_stdev_factor", "enforcing_success_rate", "failure_percentage_threshold", "failure_percentage_minimum_hosts", "failure_percentage_request_volume", "enforcing_failure_percentage")
    CONSECUTIVE_5XX_FIELD_NUMBER: _ClassVar[int]
    ENFORCING_CONSECUTIVE_5XX_FIELD_NUMBER: _ClassVar[int]
    CONSECUTIVE_GATEWAY_FAILURE_FIELD_NUMBER: _ClassVar[int]
    ENFORCING_CONSECUTIVE_GATEWAY_FAILURE_FIELD_NUMBER: _ClassVar[int]
    INTERVAL_FIELD_NUMBER: _ClassVar[int]
    BASE_EJECTION_TIME_FIELD_NUMBER: _ClassVar[int]
    MAX_EJECTION_TIME_FIELD_NUMBER: _ClassVar[int]
    MAX_EJECTION_PERCENT_FIELD_NUMBER: _ClassVar[int]
    SUCCESS_RATE_MINIMUM_HOSTS_FIELD_NUMBER: _ClassVar[int]
    SUCCESS_RATE_REQUEST_VOLUME_FIELD_NUMBER: _ClassVar[int]
    SUCCESS_RATE_STDEV_FACTOR_FIELD_NUMBER: _ClassVar[int]
    ENFORCING_SUCCESS_RATE_FIELD_NUMBER: _ClassVar[int]
    FAILURE_PERCENTAGE_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    FAILURE_PERCENTAGE_MINIMUM_HOSTS_FIELD_NUMBER: _ClassVar[int]
    FAILURE_PERCENTAGE_REQUEST_VOLUME_FIELD_NUMBER: _ClassVar[int]
    ENFORCING_FAILURE_PERCENTAGE_FIELD_NUMBER: _ClassVar[int]
    consecutive_5xx: int
    enforcing_consecutive_5xx: int
    consecutive_gateway_failure: int
    enforcing_consecutive_gateway_failure: int
    interval: _duration_pb2.Duration
    base_ejection_time: _duration_pb2.Duration
    max_ejection_time: _duration_pb2.Duration
    max_ejection_percent: int
    success_rate_minimum_hosts: int
    success_rate_request_volume: int
    success_rate_stdev_factor: int
    enforcing_success_rate: int
    failure_percentage_threshold: int
    failure_percentage_minimum_hosts: int
    failure_percentage_request_volume: int
    enforcing_failure_percentage: int
    def __init__(self, consecutive_5xx: _Optional[int] = ..., enforcing_consecutive_5xx: _Optional[int] = ..., consecutive_gateway_failure: _Optional[int] = ..., enforcing_consecutive_gateway_failure: _Optional[int] = ..., interval: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., base_ejection_time: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., max_ejection_time: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., max_ejection_percent: _Optional[int] = ..., success_rate_minimum_hosts: _Optional[int] = ..., success_rate_request_volume: _Optional[int] = ..., success_rate_stdev_factor: _Optional[int] = ..., enforcing_success_rate: _Optional[int] = ..., failure_percentage_threshold: _Optional[int] = ..., failure_percentage_minimum_hosts: _Optional[int] = ..., failure_percentage_request_volume: _Optional[int] = ..., enforcing_failure_percentage: _Optional[int] = ...) -> None: ...

class CircuitBreakers(_message.Message):
    __slots__ = ("max_pending_requests", "max_requests", "max_retries")
    MAX_PENDING_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    MAX_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    MAX_RETRIES_FIELD_NUMBER: _ClassVar[int]
    max_pending_requests: int
    max_requests: int
    max_retries: int
    def __init__(self, max_pending_requests: _Optional[int] = ..., max_requests: _Optional[int] = ..., max_retries: _Optional[int] = ...) -> None: ...

class ConnectionPool(_message.Message):
    __slots__ = ("max_streams_per_connection", "idle_timeout")
    MAX_STREAMS_PER_CONNECTION_FIELD_NUMBER: _ClassVar[int]
    IDLE_TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    max_streams_per_connection: int
    idle_timeout: _duration_pb2.Duration
    def __init__(self, max_streams_per_connection: _Optional[int] = ..., idle_timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class Endpoint(_message.Message):
    __slots__ = ("address", "port", "weight", "zone", "health", "instance", "identity", "admin_port")
    class Health(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        HEALTHY: _ClassVar[Endpoint.Health]
        UNHEALTHY: _ClassVar[Endpoint.Health]
        DRAINING: _ClassVar[Endpoint.Health]
    HEALTHY: Endpoint.Health
    UNHEALTHY: Endpoint.Health
    DRAINING: Endpoint.Health
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    ZONE_FIELD_NUMBER: _ClassVar[int]
    HEALTH_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    ADMIN_PORT_FIELD_NUMBER: _ClassVar[int]
    address: str
    port: int
    weight: int
    zone: str
    health: Endpoint.Health
    instance: str
    identity: str
    admin_port: int
    def __init__(self, address: _Optional[str] = ..., port: _Optional[int] = ..., weight: _Optional[int] = ..., zone: _Optional[str] = ..., health: _Optional[_Union[Endpoint.Health, str]] = ..., instance: _Optional[str] = ..., identity: _Optional[str] = ..., admin_port: _Optional[int] = ...) -> None: ...

class ClusterLoadAssignment(_message.Message):
    __slots__ = ("cluster_name", "endpoints")
    CLUSTER_NAME_FIELD_NUMBER: _ClassVar[int]
    ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    cluster_name: str
    endpoints: _containers.RepeatedCompositeFieldContainer[Endpoint]
    def __init__(self, cluster_name: _Optional[str] = ..., endpoints: _Optional[_Iterable[_Union[Endpoint, _Mapping]]] = ...) -> None: ...

class RouteConfiguration(_message.Message):
    __slots__ = ("name", "virtual_hosts")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VIRTUAL_HOSTS_FIELD_NUMBER: _ClassVar[int]
    name: str
    virtual_hosts: _containers.RepeatedCompositeFieldContainer[VirtualHost]
    def __init__(self, name: _Optional[str] = ..., virtual_hosts: _Optional[_Iterable[_Union[VirtualHost, _Mapping]]] = ...) -> None: ...

class VirtualHost(_message.Message):
    __slots__ = ("name", "domains", "routes")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DOMAINS_FIELD_NUMBER: _ClassVar[int]
    ROUTES_FIELD_NUMBER: _ClassVar[int]
    name: str
    domains: _containers.RepeatedScalarFieldContainer[str]
    routes: _containers.RepeatedCompositeFieldContainer[Route]
    def __init__(self, name: _Optional[str] = ..., domains: _Optional[_Iterable[str]] = ..., routes: _Optional[_Iterable[_Union[Route, _Mapping]]] = ...) -> None: ...

class Route(_message.Message):
    __slots__ = ("match", "route", "fault", "rate_limit")
    MATCH_FIELD_NUMBER: _ClassVar[int]
    ROUTE_FIELD_NUMBER: _ClassVar[int]
    FAULT_FIELD_NUMBER: _ClassVar[int]
    RATE_LIMIT_FIELD_NUMBER: _ClassVar[int]
    match: RouteMatch
    route: RouteAction
    fault: FaultInjection
    rate_limit: LocalRateLimit
    def __init__(self, match: _Optional[_Union[RouteMatch, _Mapping]] = ..., route: _Optional[_Union[RouteAction, _Mapping]] = ..., fault: _Optional[_Union[FaultInjection, _Mapping]] = ..., rate_limit: _Optional[_Union[LocalRateLimit, _Mapping]] = ...) -> None: ...

class FaultInjection(_message.Message):
    __slots__ = ("delay", "abort", "headers")
    class Delay(_message.Message):
        __slots__ = ("fixed_delay", "percentage")
        FIXED_DELAY_FIELD_NUMBER: _ClassVar[int]
        PERCENTAGE_FIELD_NUMBER: _ClassVar[int]
        fixed_delay: _duration_pb2.Duration
        percentage: float
        def __init__(self, fixed_delay: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., percentage: _Optional[float] = ...) -> None: ...
    class Abort(_message.Message):
        __slots__ = ("http_status", "grpc_status", "percentage")
        HTTP_STATUS_FIELD_NUMBER: _ClassVar[int]
        GRPC_STATUS_FIELD_NUMBER: _ClassVar[int]
        PERCENTAGE_FIELD_NUMBER: _ClassVar[int]
        http_status: int
        grpc_status: int
        percentage: float
        def __init__(self, http_status: _Optional[int] = ..., grpc_status: _Optional[int] = ..., percentage: _Optional[float] = ...) -> None: ...
    DELAY_FIELD_NUMBER: _ClassVar[int]
    ABORT_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    delay: FaultInjection.Delay
    abort: FaultInjection.Abort
    headers: _containers.RepeatedCompositeFieldContainer[HeaderMatcher]
    def __init__(self, delay: _Optional[_Union[FaultInjection.Delay, _Mapping]] = ..., abort: _Optional[_Union[FaultInjection.Abort, _Mapping]] = ..., headers: _Optional[_Iterable[_Union[HeaderMatcher, _Mapping]]] = ...) -> None: ...

class LocalRateLimit(_message.Message):
    __slots__ = ("max_tokens", "tokens_per_fill", "fill_interval")
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TOKENS_PER_FILL_FIELD_NUMBER: _ClassVar[int]
    FILL_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    max_tokens: int
    tokens_per_fill: int
    fill_interval: _duration_pb2.Duration
    def __init__(self, max_tokens: _Optional[int] = ..., tokens_per_fill: _Optional[int] = ..., fill_interval: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class RouteMatch(_message.Message):
    __slots__ = ("prefix", "path", "safe_regex", "headers")
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    SAFE_REGEX_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    prefix: str
    path: str
    safe_regex: str
    headers: _containers.RepeatedCompositeFieldContainer[HeaderMatcher]
    def __init__(self, prefix: _Optional[str] = ..., path: _Optional[str] = ..., safe_regex: _Optional[str] = ..., headers: _Optional[_Iterable[_Union[HeaderMatcher, _Mapping]]] = ...) -> None: ...

class HeaderMatcher(_message.Message):
    __slots__ = ("name", "exact", "prefix", "present", "invert")
    NAME_FIELD_NUMBER: _ClassVar[int]
    EXACT_FIELD_NUMBER: _ClassVar[int]
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    PRESENT_FIELD_NUMBER: _ClassVar[int]
    INVERT_FIELD_NUMBER: _ClassVar[int]
    name: str
    exact: str
    prefix: str
    present: bool
    invert: bool
    def __init__(self, name: _Optional[str] = ..., exact: _Optional[str] = ..., prefix: _Optional[str] = ..., present: _Optional[bool] = ..., invert: _Optional[bool] = ...) -> None: ...

class RouteAction(_message.Message):
    __slots__ = ("cluster", "weighted_clusters", "timeout", "retry_policy")
    CLUSTER_FIELD_NUMBER: _ClassVar[int]
    WEIGHTED_CLUSTERS_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    RETRY_POLICY_FIELD_NUMBER: _ClassVar[int]
    cluster: str
    weighted_clusters: WeightedClusters
    timeout: _duration_pb2.Duration
    retry_policy: RetryPolicy
    def __init__(self, cluster: _Optional[str] = ..., weighted_clusters: _Optional[_Union[WeightedClusters, _Mapping]] = ..., timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., retry_policy: _Optional[_Union[RetryPolicy, _Mapping]] = ...) -> None: ...

class WeightedClusters(_message.Message):
    __slots__ = ("clusters",)
    class ClusterWeight(_message.Message):
        __slots__ = ("name", "weight")
        NAME_FIELD_NUMBER: _ClassVar[int]
        WEIGHT_FIELD_NUMBER: _ClassVar[int]
        name: str
        weight: int
        def __init__(self, name: _Optional[str] = ..., weight: _Optional[int] = ...) -> None: ...
    CLUSTERS_FIELD_NUMBER: _ClassVar[int]
    clusters: _containers.RepeatedCompositeFieldContainer[WeightedClusters.ClusterWeight]
    def __init__(self, clusters: _Optional[_Iterable[_Union[WeightedClusters.ClusterWeight, _Mapping]]] = ...) -> None: ...

class AuthorizationPolicy(_message.Message):
    __slots__ = ("service", "namespace", "action", "rules")
    class Action(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        ALLOW: _ClassVar[AuthorizationPolicy.Action]
        DENY: _ClassVar[AuthorizationPolicy.Action]
    ALLOW: AuthorizationPolicy.Action
    DENY: AuthorizationPolicy.Action
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    RULES_FIELD_NUMBER: _ClassVar[int]
    service: str
    namespace: str
    action: AuthorizationPolicy.Action
    rules: _containers.RepeatedCompositeFieldContainer[AuthorizationRule]
    def __init__(self, service: _Optional[str] = ..., namespace: _Optional[str] = ..., action: _Optional[_Union[AuthorizationPolicy.Action, str]] = ..., rules: _Optional[_Iterable[_Union[AuthorizationRule, _Mapping]]] = ...) -> None: ...

class AuthorizationRule(_message.Message):
    __slots__ = ("principals", "paths")
    PRINCIPALS_FIELD_NUMBER: _ClassVar[int]
    PATHS_FIELD_NUMBER: _ClassVar[int]
    principals: _containers.RepeatedScalarFieldContainer[str]
    paths: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, principals: _Optional[_Iterable[str]] = ..., paths: _Optional[_Iterable[str]] = ...) -> None: ...

class RegistrationGrant(_message.Message):
    __slots__ = ("service", "namespace", "identities")
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    IDENTITIES_FIELD_NUMBER: _ClassVar[int]
    service: str
    namespace: str
    identities: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, service: _Optional[str] = ..., namespace: _Optional[str] = ..., identities: _Optional[_Iterable[str]] = ...) -> None: ...

class MeshPolicy(_message.Message):
    __slots__ = ("clusters", "routes", "authorization", "registration")
    CLUSTERS_FIELD_NUMBER: _ClassVar[int]
    ROUTES_FIELD_NUMBER: _ClassVar[int]
    AUTHORIZATION_FIELD_NUMBER: _ClassVar[int]
    REGISTRATION_FIELD_NUMBER: _ClassVar[int]
    clusters: _containers.RepeatedCompositeFieldContainer[Cluster]
    routes: _containers.RepeatedCompositeFieldContainer[RouteConfiguration]
    authorization: _containers.RepeatedCompositeFieldContainer[AuthorizationPolicy]
    registration: _containers.RepeatedCompositeFieldContainer[RegistrationGrant]
    def __init__(self, clusters: _Optional[_Iterable[_Union[Cluster, _Mapping]]] = ..., routes: _Optional[_Iterable[_Union[RouteConfiguration, _Mapping]]] = ..., authorization: _Optional[_Iterable[_Union[AuthorizationPolicy, _Mapping]]] = ..., registration: _Optional[_Iterable[_Union[RegistrationGrant, _Mapping]]] = ...) -> None: ...

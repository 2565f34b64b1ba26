"""Load balancers: which endpoint of a cluster gets the next call.

Glossary:
    endpoint       one instance of a service as a balancer sees it: address, weight, health,
                   ejection, calls in flight (``active``) and a latency estimate (``endpoint``).
    available      healthy and not ejected: the only endpoints a pick may return.
    avoid          endpoints a retry already tried; a pick prefers others, but falls back to them.
    cost           what a pick compares an endpoint by, the lower wins (``Costs``, for the admin
                   page): peak EWMA's load in ms; least request's calls in flight, or with
                   weights its load/weight. Round robin, random and ring hash compare none.
    base           the interface every balancer shares: ``pick``, ``set_endpoints``.
    edf            earliest deadline first: the schedule behind smooth weighted round robin.
    round_robin    each endpoint in turn, in proportion to its weight (Envoy).
    random         a weighted random choice: the baseline.
    least_request  power of two choices on calls in flight; weighted EDF if weights differ (Envoy).
    peak_ewma      power of two choices on latency x (calls in flight + 1) (Finagle, Linkerd).
    ring_hash      consistent hashing: the same key reaches the same endpoint (Envoy, ketama).
    slow_start     a new endpoint's weight ramps up over a window (Envoy).
    P2C            power of two choices: sample two endpoints, take the less loaded (Mitzenmacher).
    EWMA           exponentially weighted moving average; "peak" means it jumps up at once.
"""

from sidecar.balancers.base import Balancer
from sidecar.balancers.endpoint import EndpointSpec, EndpointState
from sidecar.balancers.least_request import LeastRequestBalancer, LeastRequestConfig
from sidecar.balancers.peak_ewma import PeakEwmaBalancer, PeakEwmaConfig
from sidecar.balancers.random import RandomBalancer
from sidecar.balancers.ring_hash import RingHashBalancer, RingHashConfig, hash_key
from sidecar.balancers.round_robin import RoundRobinBalancer, RoundRobinConfig
from sidecar.balancers.slow_start import SlowStart

__all__ = [
    "Balancer",
    "EndpointSpec",
    "EndpointState",
    "LeastRequestBalancer",
    "LeastRequestConfig",
    "PeakEwmaBalancer",
    "PeakEwmaConfig",
    "RandomBalancer",
    "RingHashBalancer",
    "RingHashConfig",
    "RoundRobinBalancer",
    "RoundRobinConfig",
    "SlowStart",
    "hash_key",
]

"""Outlier detection: stop sending calls to an endpoint that keeps failing, for a while (Envoy).

Discovery says which instances exist, not which of them work. Outlier detection is passive
health checking: the sidecar reports every call's outcome, and the detector's rules find the
endpoints that fail far more than they should. Each rule *detects* an outlier; it is then
*ejected* (balancers pass it over until it is returned) with the probability the rule's
``enforcing_*`` percentage gives, as in Envoy, so a rule can be watched before it acts (0) or
ramped up. The rules, with Envoy's names and defaults:

    rule                         detects                                           enforcing
    consecutive_5xx              5 failures in a row (5xx or no response)          100 %
    consecutive_gateway_failure  5 in a row of 502, 503, 504 or no response        0 %
    success rate                 at a sweep, a success rate below                  100 %
                                 mean - (success_rate_stdev_factor / 1000) x stdev
                                 of the endpoints with success_rate_request_volume
                                 (100) calls in the interval, if there are
                                 success_rate_minimum_hosts (5) of them
    failure percentage           at a sweep, failure_percentage_threshold (85) %   0 %
                                 of calls or more failed, among endpoints with
                                 failure_percentage_request_volume (50) calls, if
                                 there are failure_percentage_minimum_hosts (5)

Success rate finds the endpoint that is worse than its peers; failure percentage the one that
is bad in absolute terms, which matters when every endpoint is similar or few are judged.

Ejection lasts ``base_ejection_time × times ejected``, capped at ``max_ejection_time``, so an
endpoint that fails again right after returning stays out longer each time; the multiplier
steps down by one for each interval the endpoint spends healthy. Never more than
``max_ejection_percent`` of the endpoints are out at once, but one may always go, as Envoy long
documented (Envoy now needs ``always_eject_one_host`` for that; without it, at the default
10 %, it ejects nobody from a cluster of fewer than ten endpoints): with 0, one at a time.
Consecutive failures eject inline, on the call that reaches the threshold; returns and the
rate rules act in ``sweep()``, which the sidecar calls every ``interval`` (so an ejection
lasts until the first sweep after it expires, as in Envoy).

Outcomes are judged as Envoy's router reports them (``sidecar.outcome.http_status_of``): a
response's HTTP status; a gRPC status as its HTTP equivalent (UNAVAILABLE 503,
DEADLINE_EXCEEDED 504, INTERNAL, UNKNOWN and DATA_LOSS 500); a call that got no response as
503, or 504 for a timeout. Unlike Envoy we do not count UNIMPLEMENTED (Envoy's 501): calling a
method a service lacks is the caller's mistake, not a sign of a sick endpoint.

Decisions are values (``Ejected``, ``Returned``); whoever owns the balancer applies them to
``EndpointState.ejected`` and logs them.
"""

from __future__ import annotations

import random
import statistics
from collections.abc import Iterable
from dataclasses import dataclass, fields
from enum import Enum

from mesh.clock import Clock
from sidecar.outcome import Outcome, http_status_of

# Envoy's defaults, each in one place (sidecar/cluster.py and config.proto's comments read them).
DEFAULT_CONSECUTIVE_5XX = 5
DEFAULT_ENFORCING_CONSECUTIVE_5XX = 100
DEFAULT_CONSECUTIVE_GATEWAY_FAILURE = 5
DEFAULT_ENFORCING_CONSECUTIVE_GATEWAY_FAILURE = 0  # detected, not enforced
DEFAULT_INTERVAL = 10.0  # seconds between sweeps
DEFAULT_BASE_EJECTION_TIME = 30.0  # seconds
DEFAULT_MAX_EJECTION_TIME = 300.0  # seconds (or base_ejection_time, if that is longer)
DEFAULT_MAX_EJECTION_PERCENT = 10
DEFAULT_SUCCESS_RATE_MINIMUM_HOSTS = 5
DEFAULT_SUCCESS_RATE_REQUEST_VOLUME = 100
DEFAULT_SUCCESS_RATE_STDEV_FACTOR = 1900  # thousandths: 1.9 standard deviations
DEFAULT_ENFORCING_SUCCESS_RATE = 100
DEFAULT_FAILURE_PERCENTAGE_THRESHOLD = 85
DEFAULT_FAILURE_PERCENTAGE_MINIMUM_HOSTS = 5
DEFAULT_FAILURE_PERCENTAGE_REQUEST_VOLUME = 50
DEFAULT_ENFORCING_FAILURE_PERCENTAGE = 0  # off unless asked for

_PERCENTAGES = ("max_ejection_percent", "failure_percentage_threshold")  # and every enforcing_*


@dataclass(frozen=True, slots=True, kw_only=True)
class OutlierDetectionConfig:
    """Envoy's ``OutlierDetection``: its field names, its defaults (percentages are 0..100)."""

    consecutive_5xx: int = DEFAULT_CONSECUTIVE_5XX
    enforcing_consecutive_5xx: int = DEFAULT_ENFORCING_CONSECUTIVE_5XX
    consecutive_gateway_failure: int = DEFAULT_CONSECUTIVE_GATEWAY_FAILURE
    enforcing_consecutive_gateway_failure: int = DEFAULT_ENFORCING_CONSECUTIVE_GATEWAY_FAILURE
    interval: float = DEFAULT_INTERVAL
    base_ejection_time: float = DEFAULT_BASE_EJECTION_TIME
    max_ejection_time: float = DEFAULT_MAX_EJECTION_TIME
    max_ejection_percent: int = DEFAULT_MAX_EJECTION_PERCENT
    success_rate_minimum_hosts: int = DEFAULT_SUCCESS_RATE_MINIMUM_HOSTS
    success_rate_request_volume: int = DEFAULT_SUCCESS_RATE_REQUEST_VOLUME
    success_rate_stdev_factor: int = DEFAULT_SUCCESS_RATE_STDEV_FACTOR
    enforcing_success_rate: int = DEFAULT_ENFORCING_SUCCESS_RATE
    failure_percentage_threshold: int = DEFAULT_FAILURE_PERCENTAGE_THRESHOLD
    failure_percentage_minimum_hosts: int = DEFAULT_FAILURE_PERCENTAGE_MINIMUM_HOSTS
    failure_percentage_request_volume: int = DEFAULT_FAILURE_PERCENTAGE_REQUEST_VOLUME
    enforcing_failure_percentage: int = DEFAULT_ENFORCING_FAILURE_PERCENTAGE

    def __post_init__(self) -> None:
        for field in fields(self):
            value = getattr(self, field.name)
            if value < 0:
                raise ValueError(f"outlier detection {field.name} {value}: must not be negative")
            if (field.name.startswith("enforcing_") or field.name in _PERCENTAGES) \
                    and value > 100:
                raise ValueError(f"outlier detection {field.name} {value}: must be within "
                                 f"0..100 (a percentage)")
        for rule in ("consecutive_5xx", "consecutive_gateway_failure"):
            if getattr(self, rule) < 1:
                raise ValueError(f"outlier detection {rule} 0: must be at least 1 (to turn the "
                                 f"rule off, set enforcing_{rule} to 0)")
        if self.interval <= 0 or self.base_ejection_time <= 0:
            raise ValueError(f"outlier detection interval {self.interval} and "
                             f"base_ejection_time {self.base_ejection_time}: must be positive")
        if self.max_ejection_time < self.base_ejection_time:
            raise ValueError(f"outlier detection max_ejection_time {self.max_ejection_time}: "
                             f"must be at least base_ejection_time ({self.base_ejection_time})")


class EjectionReason(Enum):
    """Which rule ejected an endpoint."""

    CONSECUTIVE_5XX = "consecutive-5xx"  # consecutive_5xx failures in a row
    CONSECUTIVE_GATEWAY_FAILURE = "consecutive-gateway-failure"  # 502/503/504 or no response
    SUCCESS_RATE = "success-rate"  # far below the other endpoints' success rate
    FAILURE_PERCENTAGE = "failure-percentage"  # failed failure_percentage_threshold % or more


@dataclass(frozen=True, slots=True, kw_only=True)
class Ejected:
    """Take ``address`` out of balancing until ``until`` (a deadline on the clock)."""

    address: str
    reason: EjectionReason
    until: float


@dataclass(frozen=True, slots=True, kw_only=True)
class Ejection:
    """Why and for how long an endpoint is out of balancing (times on the clock).

    ``times`` counts its ejections, less one per healthy interval between them: the multiplier
    of ``base_ejection_time`` (Envoy's ``num_ejections``).
    """

    reason: EjectionReason
    ejected_at: float
    until: float  # returned at the first sweep from then on
    times: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Returned:
    """Put ``address`` back into balancing."""

    address: str


class _Host:
    """What the detector remembers about one endpoint."""

    __slots__ = ("calls", "consecutive_5xx", "consecutive_gateway", "ejection",
                 "healthy_interval", "multiplier", "successes")

    def __init__(self) -> None:
        self.consecutive_5xx = 0
        self.consecutive_gateway = 0
        self.multiplier = 0  # ejection time = base x multiplier, capped
        self.ejection: Ejection | None = None  # None: in service
        self.healthy_interval = False  # in service for the whole interval since the last sweep
        self.calls = 0  # calls in the current interval (for the rate rules)
        self.successes = 0


class OutlierDetector:
    """Ejects failing endpoints of one cluster and returns them after their time.

    Args:
        clock: ejections last until a time on it.
        rng: rolls the dice of an ``enforcing_*`` percentage between 0 and 100.
    """

    def __init__(self, config: OutlierDetectionConfig | None = None, *, clock: Clock,
                 rng: random.Random) -> None:
        self._config = config or OutlierDetectionConfig()
        self._clock = clock
        self._rng = rng
        self._hosts: dict[str, _Host] = {}

    @property
    def ejected(self) -> frozenset[str]:
        """The addresses out of balancing now."""
        return frozenset(a for a, h in self._hosts.items() if h.ejection is not None)

    def ejection(self, address: str) -> Ejection | None:
        """Why and until when ``address`` is out of balancing; None while it is in service."""
        host = self._hosts.get(address)
        return None if host is None else host.ejection

    def set_addresses(self, addresses: Iterable[str]) -> None:
        """Track exactly these endpoints, keeping what is known about those that stay."""
        self._hosts = {a: self._hosts.get(a) or _Host() for a in addresses}

    def record(self, address: str, outcome: Outcome) -> Ejected | None:
        """A call to ``address`` ended with ``outcome``: an ejection if it was one failure too many.

        Calls to endpoints the detector does not track (they left meanwhile) are ignored.
        """
        host = self._hosts.get(address)
        if host is None:
            return None
        status = http_status_of(outcome)
        host.calls += 1
        if status < 500:
            host.successes += 1
            host.consecutive_5xx = host.consecutive_gateway = 0
            return None
        host.consecutive_gateway = host.consecutive_gateway + 1 if 502 <= status <= 504 else 0
        host.consecutive_5xx += 1
        if host.ejection is not None:
            return None
        config = self._config
        # A detection starts its count over, ejected or not: the next takes as many failures.
        if host.consecutive_gateway >= config.consecutive_gateway_failure:
            host.consecutive_gateway = 0
            ejected = self._eject(address, host, EjectionReason.CONSECUTIVE_GATEWAY_FAILURE,
                                  config.enforcing_consecutive_gateway_failure)
            if ejected is not None:
                return ejected
        if host.consecutive_5xx >= config.consecutive_5xx:
            host.consecutive_5xx = 0
            return self._eject(address, host, EjectionReason.CONSECUTIVE_5XX,
                               config.enforcing_consecutive_5xx)
        return None

    def sweep(self) -> list[Ejected | Returned]:
        """The interval's work: return endpoints whose time is up, then apply the rate rules."""
        now = self._clock.now()
        changes: list[Ejected | Returned] = []
        for address, host in self._hosts.items():
            if host.ejection is not None and now >= host.ejection.until:
                host.ejection = None
                host.consecutive_5xx = host.consecutive_gateway = 0
                changes.append(Returned(address=address))
            elif host.ejection is None and host.healthy_interval and host.multiplier > 0:
                host.multiplier -= 1
        changes.extend(self._eject_by_success_rate())
        changes.extend(self._eject_by_failure_percentage())
        for host in self._hosts.values():
            host.healthy_interval = host.ejection is None
            host.calls = host.successes = 0
        return changes

    def _success_rates(self, request_volume: int) -> dict[str, float]:
        """The success rate in percent of each endpoint in service with enough calls."""
        return {a: 100 * h.successes / h.calls for a, h in self._hosts.items()
                if h.ejection is None and h.calls > 0 and h.calls >= request_volume}

    def _eject_by_success_rate(self) -> list[Ejected]:
        config = self._config
        rates = self._success_rates(config.success_rate_request_volume)
        if not rates or len(rates) < config.success_rate_minimum_hosts:
            return []
        factor = config.success_rate_stdev_factor / 1000
        threshold = (statistics.fmean(rates.values())
                     - factor * statistics.pstdev(rates.values()))
        ejections = (self._eject(a, self._hosts[a], EjectionReason.SUCCESS_RATE,
                                 config.enforcing_success_rate)
                     for a, rate in rates.items() if rate < threshold)
        return [e for e in ejections if e is not None]

    def _eject_by_failure_percentage(self) -> list[Ejected]:
        config = self._config
        # Endpoints the success-rate rule just ejected are out of service, so not judged again.
        rates = self._success_rates(config.failure_percentage_request_volume)
        if not rates or len(rates) < config.failure_percentage_minimum_hosts:
            return []
        ejections = (self._eject(a, self._hosts[a], EjectionReason.FAILURE_PERCENTAGE,
                                 config.enforcing_failure_percentage)
                     for a, rate in rates.items()
                     if 100 - rate >= config.failure_percentage_threshold)
        return [e for e in ejections if e is not None]

    def _eject(self, address: str, host: _Host, reason: EjectionReason,
               enforcing: int) -> Ejected | None:
        """Eject a detected outlier, if the cap allows and the rule's enforcing dice say so."""
        out = sum(h.ejection is not None for h in self._hosts.values())
        if out > 0 and 100 * (out + 1) / len(self._hosts) > self._config.max_ejection_percent:
            return None  # too many out already
        if enforcing < 100 and (enforcing <= 0 or self._rng.random() * 100 >= enforcing):
            return None  # detected, not enforced
        base, cap = self._config.base_ejection_time, self._config.max_ejection_time
        if base * host.multiplier < cap:
            host.multiplier += 1
        now = self._clock.now()
        host.ejection = Ejection(reason=reason, ejected_at=now,
                                 until=now + min(base * host.multiplier, cap),
                                 times=host.multiplier)
        host.healthy_interval = False
        return Ejected(address=address, reason=reason, until=host.ejection.until)

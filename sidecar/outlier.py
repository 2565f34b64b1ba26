"""Outlier detection: stop sending calls to an endpoint that keeps failing, for a while (Envoy).

Discovery says which instances exist, not which of them work. Outlier detection is passive
health checking: the sidecar reports every call's outcome, and an endpoint that fails
``consecutive_5xx`` times in a row (or ``consecutive_gateway_failure`` times with 502, 503, 504
or no response) is *ejected*: balancers pass it over until it is returned. Ejection lasts
``base_ejection_time × times ejected``, capped at ``max_ejection_time``, so an endpoint that
fails again right after returning stays out longer each time; the multiplier steps down by one
for each interval the endpoint spends healthy. Never more than ``max_ejection_percent`` of the
endpoints are out at once, but one may always go, as Envoy long documented (Envoy now needs
``always_eject_one_host`` for that; without it, at the default 10 %, it ejects nobody from a
cluster of fewer than ten endpoints).

Optionally, every ``interval`` the detector compares success rates: among endpoints that served
at least ``request_volume`` calls in the interval (and only if there are ``minimum_hosts`` of
them), those below ``mean - stdev_factor × stdev`` are ejected. Consecutive failures eject
inline, on the call that reaches the threshold; returns and success-rate ejections happen in
``sweep()``, which the sidecar calls every ``interval`` (so an ejection lasts until the first
sweep after it expires, as in Envoy).

Outcomes are judged as Envoy's router reports them (``sidecar.outcome.http_status_of``): a
response's HTTP status; a gRPC status as its HTTP equivalent (UNAVAILABLE 503,
DEADLINE_EXCEEDED 504, INTERNAL, UNKNOWN and DATA_LOSS 500); a call that got no response as
503, or 504 for a timeout. Unlike Envoy we do not count UNIMPLEMENTED (Envoy's 501): calling a
method a service lacks is the caller's mistake, not a sign of a sick endpoint.

Decisions are values (``Ejected``, ``Returned``); whoever owns the balancer applies them to
``EndpointState.ejected`` and logs them. Envoy's consecutive-gateway rule counts but is not enforced
by default; here it is off unless configured (``None``), the 5xx rule on at 5.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum

from mesh.clock import Clock
from sidecar.outcome import Outcome, http_status_of


@dataclass(frozen=True, slots=True, kw_only=True)
class SuccessRateConfig:
    """Envoy's success-rate ejection settings."""

    minimum_hosts: int = 5  # endpoints with enough calls needed to judge any of them
    request_volume: int = 100  # calls in the interval for an endpoint to be judged
    stdev_factor: float = 1.9  # eject below mean - stdev_factor * stdev (Envoy's 1900 / 1000)

    def __post_init__(self) -> None:
        if self.minimum_hosts < 1 or self.request_volume < 1:
            raise ValueError(f"success rate minimum_hosts {self.minimum_hosts} and "
                             f"request_volume {self.request_volume}: must be at least 1")
        if self.stdev_factor < 0:
            raise ValueError(f"success rate stdev_factor {self.stdev_factor}: must not be "
                             f"negative")


@dataclass(frozen=True, slots=True, kw_only=True)
class OutlierDetectionConfig:
    """Envoy's ``OutlierDetection``, with Envoy's defaults."""

    consecutive_5xx: int | None = 5  # None: rule off
    consecutive_gateway_failure: int | None = None  # None: rule off (Envoy: not enforced)
    interval: float = 10.0  # seconds between sweeps
    base_ejection_time: float = 30.0  # seconds, times the number of ejections
    max_ejection_time: float = 300.0  # seconds: the longest ejection
    max_ejection_percent: float = 10.0  # most endpoints out at once, in percent (one may go)
    success_rate: SuccessRateConfig | None = None  # None: no success-rate ejection

    def __post_init__(self) -> None:
        for name in ("consecutive_5xx", "consecutive_gateway_failure"):
            threshold = getattr(self, name)
            if threshold is not None and threshold < 1:
                raise ValueError(f"outlier detection {name} {threshold}: must be at least 1 "
                                 f"(or unset to turn the rule off)")
        if self.interval <= 0 or self.base_ejection_time <= 0:
            raise ValueError(f"outlier detection interval {self.interval} and "
                             f"base_ejection_time {self.base_ejection_time}: must be positive")
        if self.max_ejection_time < self.base_ejection_time:
            raise ValueError(f"outlier detection max_ejection_time {self.max_ejection_time}: "
                             f"must be at least base_ejection_time ({self.base_ejection_time})")
        if not 0 <= self.max_ejection_percent <= 100:
            raise ValueError(f"outlier detection max_ejection_percent "
                             f"{self.max_ejection_percent}: must be within 0..100")


class EjectionReason(Enum):
    """Which rule ejected an endpoint."""

    CONSECUTIVE_5XX = "consecutive-5xx"  # consecutive_5xx failures in a row
    CONSECUTIVE_GATEWAY_FAILURE = "consecutive-gateway-failure"  # 502/503/504 or no response
    SUCCESS_RATE = "success-rate"  # far below the other endpoints' success rate


@dataclass(frozen=True, slots=True, kw_only=True)
class Ejected:
    """Take ``address`` out of balancing until ``until`` (a deadline on the clock)."""

    address: str
    reason: EjectionReason
    until: float


@dataclass(frozen=True, slots=True, kw_only=True)
class Returned:
    """Put ``address`` back into balancing."""

    address: str


class _Host:
    """What the detector remembers about one endpoint."""

    __slots__ = ("calls", "consecutive_5xx", "consecutive_gateway", "ejected_until",
                 "healthy_interval", "multiplier", "successes")

    def __init__(self) -> None:
        self.consecutive_5xx = 0
        self.consecutive_gateway = 0
        self.multiplier = 0  # ejection time = base x multiplier, capped
        self.ejected_until: float | None = None  # None: in service
        self.healthy_interval = False  # in service for the whole interval since the last sweep
        self.calls = 0  # calls in the current interval (for success rate)
        self.successes = 0


class OutlierDetector:
    """Ejects failing endpoints of one cluster and returns them after their time."""

    def __init__(self, config: OutlierDetectionConfig | None = None, *, clock: Clock) -> None:
        self._config = config or OutlierDetectionConfig()
        self._clock = clock
        self._hosts: dict[str, _Host] = {}

    @property
    def ejected(self) -> frozenset[str]:
        """The addresses out of balancing now."""
        return frozenset(a for a, h in self._hosts.items() if h.ejected_until is not None)

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
        if host.ejected_until is not None:
            return None
        gateway_limit, server_limit = (self._config.consecutive_gateway_failure,
                                       self._config.consecutive_5xx)
        if gateway_limit is not None and host.consecutive_gateway >= gateway_limit:
            host.consecutive_gateway = 0  # the next ejection takes as many failures again
            return self._eject(address, host, EjectionReason.CONSECUTIVE_GATEWAY_FAILURE)
        if server_limit is not None and host.consecutive_5xx >= server_limit:
            host.consecutive_5xx = 0
            return self._eject(address, host, EjectionReason.CONSECUTIVE_5XX)
        return None

    def sweep(self) -> list[Ejected | Returned]:
        """The interval's work: return endpoints whose time is up, judge success rates."""
        now = self._clock.now()
        changes: list[Ejected | Returned] = []
        for address, host in self._hosts.items():
            if host.ejected_until is not None and now >= host.ejected_until:
                host.ejected_until = None
                host.consecutive_5xx = host.consecutive_gateway = 0
                changes.append(Returned(address=address))
            elif host.ejected_until is None and host.healthy_interval and host.multiplier > 0:
                host.multiplier -= 1
        if self._config.success_rate is not None:
            changes.extend(self._eject_by_success_rate(self._config.success_rate))
        for host in self._hosts.values():
            host.healthy_interval = host.ejected_until is None
            host.calls = host.successes = 0
        return changes

    def _eject_by_success_rate(self, config: SuccessRateConfig) -> list[Ejected]:
        rates = {a: h.successes / h.calls for a, h in self._hosts.items()
                 if h.ejected_until is None and h.calls >= config.request_volume}
        if len(rates) < config.minimum_hosts:
            return []
        threshold = (statistics.fmean(rates.values())
                     - config.stdev_factor * statistics.pstdev(rates.values()))
        ejections = (self._eject(a, self._hosts[a], EjectionReason.SUCCESS_RATE)
                     for a, rate in rates.items() if rate < threshold)
        return [e for e in ejections if e is not None]

    def _eject(self, address: str, host: _Host, reason: EjectionReason) -> Ejected | None:
        out = sum(h.ejected_until is not None for h in self._hosts.values())
        if out > 0 and 100 * (out + 1) / len(self._hosts) > self._config.max_ejection_percent:
            return None  # too many out already
        base, cap = self._config.base_ejection_time, self._config.max_ejection_time
        if base * host.multiplier < cap:
            host.multiplier += 1
        host.ejected_until = self._clock.now() + min(base * host.multiplier, cap)
        host.healthy_interval = False
        return Ejected(address=address, reason=reason, until=host.ejected_until)

"""A server: one replica of a service, with a concurrency limit, a queue and a service time.

A call that arrives is served at once if fewer than ``concurrency`` calls are being served,
else it waits in a FIFO queue of at most ``queue_limit`` calls, else it is refused with 503
(the server is overloaded). Its service time is drawn from the replica's distribution when
its service starts, then shaped by what the replica is going through (:class:`Behaviour`):

    latency_factor  every service time multiplied (a slow replica, a brownout)
    pinned          every service time this many seconds, whatever the distribution
                    (Linkerd's "one backend pinned to 2 s")
    error_rate      the share of calls answered 500 once served
    black_hole      calls are taken and never answered (only a timeout ends them)
    down            the replica is gone: a new call's connection is refused, and the calls
                    it was serving or queueing are reset
    growth          seconds added per call in service when one starts: service time grows
                    with concurrency — the ingredient of metastable collapse (Brooker: 1 s +
                    0.01 s × concurrency)

Faults (:mod:`simulator.scenario`) change a replica's behaviour at given times. A caller that
gives up on a call (a timeout) does not stop the server serving it: as with most servers, the
work goes on and its answer is thrown away — what makes retries on timeouts amplify load.

**Dependencies** (the call graph): a replica of a service that ``calls`` others, once its own
service time is over, calls each of them at once, in parallel, through its service's sidecar
(one :class:`~simulator.sidecar.Sidecar` shared by the service's replicas — a simplification:
per-replica sidecars would each keep their own balancer state), and answers 500 if any of
those calls failed, else 200. Parallel, because independent downstream calls usually are
(a fan-out), and because it is what makes a fleet's tail grow with its width: a call is as
slow as its slowest dependency (Dean and Barroso, "The Tail at Scale"). The replica keeps its
concurrency slot until the dependencies answer, as a thread-per-request server does: a slow
dependency fills its callers' slots and queues, which is how a slowdown climbs the graph. A
replica's own failure (``error_rate``) answers 500 at once, without calling anyone; deadlines
are not propagated (each hop has its route's timeout).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sidecar.outcome import Failure, Outcome
from simulator.engine import Event, Simulation

if TYPE_CHECKING:
    from simulator.sidecar import Answer, Sidecar

OK = Outcome(status=200)
ERROR = Outcome(status=500)
OVERLOADED = Outcome(status=503)
REFUSED = Outcome(failure=Failure.CONNECT_FAILURE)
RESET = Outcome(failure=Failure.RESET)

Respond = Callable[[Outcome], None]


@dataclass(frozen=True, slots=True)
class ServiceTime:
    """A distribution of service times, in seconds: ``fixed``, ``normal`` (clipped at 0),
    ``exponential`` or ``lognormal`` (given its median and sigma)."""

    kind: str
    mean: float  # fixed: the value; normal, exponential: the mean; lognormal: the median
    spread: float = 0.0  # normal: the standard deviation; lognormal: sigma

    def __post_init__(self) -> None:
        if self.kind not in ("fixed", "normal", "exponential", "lognormal"):
            raise ValueError(f"service time {self.kind!r}: want fixed, normal, exponential "
                             f"or lognormal")
        if self.mean < 0 or self.spread < 0:
            raise ValueError(f"service time {self.kind}: values must not be negative")

    def draw(self, rng_random: Callable[[], float], rng_gauss: Callable[[float, float], float],
             ) -> float:
        if self.kind == "fixed":
            return self.mean
        if self.kind == "normal":
            return max(0.0, rng_gauss(self.mean, self.spread))
        if self.kind == "exponential":
            return -self.mean * math.log(1.0 - rng_random())
        return self.mean * math.exp(rng_gauss(0.0, self.spread))


@dataclass(slots=True)
class Behaviour:
    """What a replica is going through now (faults change it; see the module's table)."""

    latency_factor: float = 1.0
    pinned: float | None = None
    error_rate: float = 0.0
    black_hole: bool = False
    down: bool = False
    growth: float = 0.0


@dataclass(slots=True)
class ServerStats:
    arrivals: int = 0  # calls that reached it (its load)
    served: int = 0
    errors: int = 0  # answered 500 (its own failure, or a dependency's)
    refused: int = 0  # refused: down, or over its queue
    busy: float = 0.0  # seconds of service given (summed over concurrent calls)
    max_queue: int = 0
    arrivals_by_second: list[int] = field(default_factory=list)  # load over time


class Server:
    """One replica; :meth:`receive` is where a call arrives."""

    def __init__(self, sim: Simulation, *, service: str, replica: int, zone: str = "",
                 concurrency: int, queue_limit: int, service_time: ServiceTime,
                 behaviour: Behaviour | None = None, calls: Sequence[str] = ()) -> None:
        """Args:
            calls: the services this replica calls once its own service time is over, through
                ``sidecar`` (set once every service's sidecar exists).
        """
        if concurrency < 1 or queue_limit < 0:
            raise ValueError(f"{service}-{replica}: concurrency must be at least 1 and "
                             f"queue_limit at least 0")
        self.sim = sim
        self.service = service
        self.replica = replica
        self.zone = zone
        self.address = f"{service}-{replica}:8080"
        self.concurrency = concurrency
        self.queue_limit = queue_limit
        self.service_time = service_time
        self.behaviour = behaviour or Behaviour()
        self.calls = tuple(calls)
        self.sidecar: Sidecar | None = None  # its service's, shared by its replicas
        self.stats = ServerStats()
        self.active = 0
        self._queue: deque[Respond] = deque()
        # By call: the end of its service time (None once it waits for its dependencies).
        self._serving: dict[int, tuple[Event | None, Respond]] = {}
        self._ids = 0
        self._random = sim.rng.random
        self._gauss = sim.rng.gauss

    def receive(self, respond: Respond) -> None:
        """A call arrives; ``respond(outcome)`` is called when the server answers it."""
        stats = self.stats
        stats.arrivals += 1
        second = int(self.sim.now())
        by_second = stats.arrivals_by_second
        while len(by_second) <= second:
            by_second.append(0)
        by_second[second] += 1
        behaviour = self.behaviour
        if behaviour.down:
            stats.refused += 1
            respond(REFUSED)
        elif behaviour.black_hole:
            pass  # taken, never answered
        elif self.active < self.concurrency:
            self._start(respond)
        elif len(self._queue) < self.queue_limit:
            self._queue.append(respond)
            stats.max_queue = max(stats.max_queue, len(self._queue))
        else:
            stats.refused += 1
            respond(OVERLOADED)

    def crash(self) -> None:
        """The replica goes down: what it was serving or queueing is reset."""
        self.behaviour.down = True
        serving, self._serving = self._serving, {}
        queued, self._queue = self._queue, deque()
        self.active = 0
        for event, respond in serving.values():
            if event is not None:
                event.cancel()
            respond(RESET)
        for respond in queued:
            respond(RESET)

    def _start(self, respond: Respond) -> None:
        behaviour = self.behaviour
        if behaviour.pinned is not None:
            seconds = behaviour.pinned
        else:
            seconds = self.service_time.draw(self._random, self._gauss) * \
                behaviour.latency_factor
        seconds += behaviour.growth * self.active
        self.active += 1
        self._ids += 1
        call = self._ids
        self._serving[call] = (self.sim.after(seconds, self._finish, call, seconds), respond)

    def _finish(self, call: int, seconds: float) -> None:
        """The call's own service time is over: answer it, or call the dependencies first."""
        stats = self.stats
        stats.busy += seconds
        stats.served += 1
        error_rate = self.behaviour.error_rate
        if error_rate and self._random() < error_rate:
            stats.errors += 1
            self._answer(call, ERROR)
        elif self.calls and self.sidecar is not None:
            self._serving[call] = (None, self._serving[call][1])
            _Fanout(self, call, self.sidecar, self.calls)
        else:
            self._answer(call, OK)

    def _answer(self, call: int, outcome: Outcome) -> None:
        """Answer ``call``, free its slot, and start the next call waiting, if any."""
        _, respond = self._serving.pop(call)
        self.active -= 1
        respond(outcome)
        if self._queue and self.active < self.concurrency:
            self._start(self._queue.popleft())

    def _dependencies_answered(self, call: int, failed: bool) -> None:
        if call not in self._serving:
            return  # reset by a crash while it waited: its caller has had its answer
        if failed:
            self.stats.errors += 1
        self._answer(call, ERROR if failed else OK)


class _Fanout:
    """One call's calls to its replica's dependencies, all at once; the last answer decides."""

    __slots__ = ("call", "failed", "pending", "server")

    def __init__(self, server: Server, call: int, sidecar: Sidecar,
                 services: Sequence[str]) -> None:
        self.server = server
        self.call = call
        self.pending = len(services)
        self.failed = False
        for service in services:
            sidecar.call(service, self.answered)

    def answered(self, answer: Answer) -> None:
        self.failed = self.failed or answer.status >= 500
        self.pending -= 1
        if self.pending == 0:
            self.server._dependencies_answered(self.call, self.failed)

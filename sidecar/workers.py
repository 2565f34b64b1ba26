"""Workers: one sidecar, several processes (Envoy's ``--concurrency``).

    parent ── identity, registration, discovery, certificate rotation, admin
      │  one socketpair per worker: configuration and certificates go down,
      │  the admin's questions (metrics, clusters, tap) go down and come back
      ▼
    worker 0 … N-1 ── the outbound and inbound listeners, each its own socket on the same
                      port (SO_REUSEPORT: the kernel spreads new connections among them),
                      its own upstream pools, balancers, breakers: the whole request path

One Python process runs on one core at a time, so a sidecar that should use N cores runs N
processes, as Envoy runs N worker threads. The parent keeps everything there is one of per
sidecar: its identity, its registration, its discovery stream (it validates each update and
ACKs it, then hands it to every worker, as Envoy's main thread posts a new cluster to its
workers), the certificate's renewal (each worker reloads the files the parent wrote), and the
admin endpoint, which asks every worker and adds the answers up. A worker that dies is
started again with the configuration in force; its listener's connections are lost, the other
workers' are not, and meanwhile the kernel sends new connections to the workers alive.

**What a policy's limits mean with N workers.** A request is seen by one worker only, and
workers share no memory. The limits a policy sets for the whole sidecar (a circuit breaker's
``max_requests``, ``max_pending_requests`` and ``max_retries``; a local rate limit's tokens; a
retry budget's floor) are therefore split: each worker holds its share, the limit divided by N
and rounded up (:func:`worker_share`). The sidecar as a whole lets through at most the limit
plus N - 1, and as little as one share when the traffic comes on one connection (an app's one
HTTP/2 or gRPC channel lands on one worker).
Envoy shares these among its threads exactly, with atomic counters. Ratios (a retry budget's
``retry_ratio``) need no split. Balancers and outlier detection see each worker's own calls:
with N workers an endpoint that fails every call is ejected after ``consecutive_5xx`` failures
*in one worker*, about N times as many calls in all (Envoy runs outlier detection once per
cluster, on its main thread).

Messages are pickled Python tuples on a private socketpair between the parent and a child it
started, each a request ``(op, *args)`` answered in order by ``("ok", value)`` or
``("error", message)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import os
import pickle
import socket
import struct
import sys
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from google.protobuf.message import Message

from mesh.address import Address
from mesh.proto.config_pb2 import Cluster, LocalRateLimit, RetryBudget, RouteConfiguration
from mesh.proto.resources import CLUSTERS, ROUTES
from sidecar.circuit_breaker import CircuitBreakerConfig
from sidecar.retry_budget import ConcurrencyBudgetConfig, RateBudgetConfig

if TYPE_CHECKING:
    from sidecar.sidecar import SidecarOptions

log = logging.getLogger("sidecar.workers")

START_TIMEOUT = 30.0
"""Seconds a worker may take to import, bind its listeners and answer that it has."""

STOP_TIMEOUT = 10.0
"""Seconds past the drain's grace a worker may take to exit before it is killed."""

RESTART_DELAY = 1.0
"""Seconds before a worker that died is started again: one that dies at once does not spin."""

ASK_TIMEOUT = 2.0
"""Seconds the admin waits for a worker's answer: one that hangs (stopped, looping) leaves
the admin answering with the others', well within a Prometheus scrape's timeout (10 s)."""

_LENGTH = struct.Struct("!I")


CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")
"""cgroup v2's CPU quota of this process's group: "QUOTA PERIOD" in µs, or "max PERIOD"."""


def cores_given(cpu_max: Path = CGROUP_CPU_MAX) -> int:
    """The cores this process is given: what ``--concurrency 0`` means. The fewer of the cores
    it may run on (its CPU affinity, which a container's cpuset narrows) and its cgroup's CPU
    quota rounded up (a Kubernetes CPU limit of 2 on a 64-core node: 2)."""
    cores = len(os.sched_getaffinity(0))
    try:
        quota, period = cpu_max.read_text().split()
    except (OSError, ValueError):
        return cores
    if quota == "max":
        return cores
    return max(1, min(cores, math.ceil(int(quota) / int(period))))


# -- the policy's limits, split among the workers -------------------------------------------

def worker_share(type_url: str, resources: Sequence[Message], workers: int) -> list[Message]:
    """``resources`` as one of ``workers`` workers enforces them: every limit the policy sets
    for the whole sidecar divided by ``workers``, rounded up (see the module's docstring).
    An unset limit is split from its default, read from the class that defines it."""
    if workers == 1 or type_url not in (CLUSTERS, ROUTES):
        return list(resources)
    shares: list[Message] = []
    for resource in resources:
        share = type(resource)()
        share.CopyFrom(resource)
        if isinstance(share, Cluster):
            _split_cluster(share, workers)
        elif isinstance(share, RouteConfiguration):
            for host in share.virtual_hosts:
                for route in host.routes:
                    if route.HasField("rate_limit"):
                        _split_rate_limit(route.rate_limit, workers)
        shares.append(share)
    return shares


def _split(value: int, workers: int) -> int:
    return math.ceil(value / workers)


def _split_cluster(cluster: Cluster, workers: int) -> None:
    breakers, defaults = cluster.circuit_breakers, CircuitBreakerConfig()
    for field in ("max_pending_requests", "max_requests", "max_retries"):
        value = getattr(breakers, field) if breakers.HasField(field) else getattr(defaults, field)
        setattr(breakers, field, _split(value, workers))
    budget = cluster.retry_budget
    if not budget.disabled:
        if budget.kind == RetryBudget.CONCURRENCY:
            floor = (budget.min_retry_concurrency if budget.HasField("min_retry_concurrency")
                     else ConcurrencyBudgetConfig().min_retry_concurrency)
            budget.min_retry_concurrency = _split(floor, workers)
        else:
            floor = (budget.min_retries_per_second if budget.HasField("min_retries_per_second")
                     else RateBudgetConfig().min_retries_per_second)
            budget.min_retries_per_second = _split(floor, workers)
    if cluster.HasField("inbound_rate_limit"):
        _split_rate_limit(cluster.inbound_rate_limit, workers)


def _split_rate_limit(limit: LocalRateLimit, workers: int) -> None:
    """The burst divided; the refill rate divided by filling as often ``workers`` times less
    (a fill's tokens are whole, often 1)."""
    limit.max_tokens = _split(limit.max_tokens, workers)
    interval = limit.fill_interval.ToNanoseconds()
    limit.fill_interval.FromNanoseconds(interval * workers)


# -- the link between the parent and one worker ---------------------------------------------

class WorkerError(Exception):
    """A worker answered a request with an error, or is gone."""


class Link:
    """Requests one way, answers the other, in order, over one stream socket."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def over(cls, sock: socket.socket) -> Link:
        reader, writer = await asyncio.open_unix_connection(sock=sock)
        return cls(reader, writer)

    def send(self, message: tuple[Any, ...]) -> None:
        body = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        self.writer.write(_LENGTH.pack(len(body)) + body)

    async def receive(self) -> tuple[Any, ...]:
        """The next message; raises ``asyncio.IncompleteReadError`` when the other end closed."""
        header = await self.reader.readexactly(_LENGTH.size)
        message: tuple[Any, ...] = pickle.loads(
            await self.reader.readexactly(_LENGTH.unpack(header)[0]))
        return message

    def close(self) -> None:
        self.writer.close()


class Worker:
    """The parent's handle on one worker process: start it, ask it, stop it."""

    def __init__(self, index: int, count: int, options: SidecarOptions) -> None:
        self.index, self.count, self.options = index, count, options
        self.process: asyncio.subprocess.Process | None = None
        self.starts = 0
        self._link: Link | None = None
        self._waiting: deque[asyncio.Future[Any]] = deque()
        self._reading: asyncio.Task[None] | None = None

    async def start(self, in_force: Callable[[], list[tuple[Any, ...]]] = list) -> None:
        """Start the process, send it its options and ``in_force()`` (the configuration in
        force, which it installs before it answers anything), and wait until it listens.

        ``in_force`` is read when the request goes out: an update that comes while the
        process starts is either in it or sent after it, never lost in between."""
        parent_end, child_end = socket.socketpair()
        try:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "sidecar.worker", str(child_end.fileno()),
                str(self.index), pass_fds=(child_end.fileno(),),
                env={**os.environ, "MESH_LOG_LEVEL": logging.getLevelName(
                    logging.getLogger().getEffectiveLevel())})
            self._link = await Link.over(parent_end)
        except BaseException:
            parent_end.close()
            raise
        finally:
            child_end.close()
        self._waiting = deque()  # the last link's, if any, are failed by its own reader
        self._reading = asyncio.create_task(self._read(self._link, self._waiting))
        self.starts += 1
        # Sent now, with no await between reading ``in_force`` and the send: anything sent
        # later (an update, a question) goes after it.
        started = self._send("start", self.options, self.index, self.count, in_force())
        try:
            await asyncio.wait_for(started, START_TIMEOUT)
        except TimeoutError:
            await self.kill()
            raise WorkerError(f"worker {self.index} did not start: no answer within "
                              f"{START_TIMEOUT:g} s") from None
        except WorkerError as error:
            await self.kill()
            raise WorkerError(f"worker {self.index} did not start: {error}") from None

    async def _read(self, link: Link, waiting: deque[asyncio.Future[Any]]) -> None:
        try:
            while True:
                outcome, value = await link.receive()
                waiter = waiting.popleft()
                if not waiter.done():
                    if outcome == "ok":
                        waiter.set_result(value)
                    else:
                        waiter.set_exception(WorkerError(value))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            while waiting:
                waiter = waiting.popleft()
                if not waiter.done():
                    waiter.set_exception(WorkerError(f"worker {self.index} is gone"))

    def _send(self, op: str, *args: Any) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if self._link is None or self._reading is None or self._reading.done():
            future.set_exception(WorkerError(f"worker {self.index} is gone"))
            return future
        self._waiting.append(future)
        self._link.send((op, *args))
        return future

    async def ask(self, op: str, *args: Any) -> Any:
        """Send a request and wait at most :data:`ASK_TIMEOUT` for its answer.

        Raises:
            WorkerError: the worker answered an error, is gone, or did not answer in time.
        """
        try:
            return await asyncio.wait_for(self._send(op, *args), ASK_TIMEOUT)
        except TimeoutError:
            raise WorkerError(f"no answer to {op} within {ASK_TIMEOUT:g} s") from None

    def tell(self, op: str, *args: Any) -> None:
        """Send a request without waiting; an error it answers is logged."""
        future = self._send(op, *args)

        def done(answer: asyncio.Future[Any]) -> None:
            if not answer.cancelled() and answer.exception() is not None:
                log.error("worker %d: %s", self.index, answer.exception())
        future.add_done_callback(done)

    async def stop(self, grace: float) -> None:
        """Drain and exit; killed if it takes longer than ``grace`` and :data:`STOP_TIMEOUT`."""
        if self.process is None or self.process.returncode is not None:
            return
        with contextlib.suppress(WorkerError, TimeoutError):  # then killed, if need be
            await asyncio.wait_for(self.ask("stop", grace), grace + STOP_TIMEOUT)
        try:
            await asyncio.wait_for(self.process.wait(), STOP_TIMEOUT)
        except TimeoutError:
            await self.kill()
        self._close()

    async def kill(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()
        self._close()

    def _close(self) -> None:
        if self._link is not None:
            self._link.close()


class Workers:
    """The parent's workers: started together, told every change, asked for the admin.

    The configuration in force is kept as the messages that installed it, so a worker started
    again is sent it with its start. (Certificates need no keeping: a worker reads the files
    its parent keeps up to date.)
    """

    def __init__(self, count: int, options: SidecarOptions) -> None:
        self.workers = [Worker(index, count, options) for index in range(count)]
        self._in_force: dict[str, tuple[Any, ...]] = {}  # by resource type
        self._stopping = False
        self._watching: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        """Start every worker; raise :class:`WorkerError` (and stop those started) if one
        cannot start."""
        try:
            await asyncio.gather(*(worker.start(self._replay) for worker in self.workers))
        except WorkerError:
            await self.stop(0)
            raise
        self._watching = [asyncio.create_task(self._watch(worker)) for worker in self.workers]

    async def _watch(self, worker: Worker) -> None:
        """Start ``worker`` again whenever it dies, until the sidecar stops."""
        while True:
            if worker.process is not None:
                code = await worker.process.wait()
                if self._stopping:
                    return
                log.error("worker %d (pid %d) exited with %d: starting it again", worker.index,
                          worker.process.pid, code)
            await asyncio.sleep(RESTART_DELAY)
            if self._stopping:
                return
            try:
                await worker.start(self._replay)
            except Exception as error:  # e.g. out of processes: try again after the delay
                log.error("worker %d could not be started again: %s", worker.index, error)
                if worker.process is not None and worker.process.returncode is None:
                    await worker.kill()

    def _replay(self) -> list[tuple[Any, ...]]:
        return list(self._in_force.values())

    def running(self) -> int:
        """How many workers are running now."""
        return sum(1 for w in self.workers
                   if w.process is not None and w.process.returncode is None)

    def apply(self, type_url: str, resources: Sequence[Message]) -> None:
        """Hand an update the parent accepted to every worker (in order, without waiting); a
        worker not started yet gets it with its start."""
        message = ("apply", type_url, list(resources))
        self._in_force[type_url] = message
        for worker in self.workers:
            if worker.process is not None:  # else it is sent with the worker's start
                worker.tell(*message)

    def reload_certificates(self) -> None:
        """Every worker loads the certificate files again (the parent renewed them)."""
        for worker in self.workers:
            worker.tell("certificates")

    async def ask(self, op: str, *args: Any) -> list[Any]:
        """Ask every worker; the answers of those that answered, in worker order."""
        return [answer for _, answer in await self.ask_each(op, lambda _: args)]

    async def ask_each(self, op: str, args: Callable[[int], tuple[Any, ...]]
                       ) -> list[tuple[int, Any]]:
        """Ask every worker with its own ``args(index)``; ``(index, answer)`` of those that
        answered."""
        answers = await asyncio.gather(*(w.ask(op, *args(w.index)) for w in self.workers),
                                       return_exceptions=True)
        for answer in answers:
            if isinstance(answer, BaseException):
                log.warning("%s: %s", op, answer)
        return [(index, answer) for index, answer in enumerate(answers)
                if not isinstance(answer, BaseException)]

    def stopping(self) -> None:
        """The sidecar is stopping: a worker that exits from now on is not started again."""
        self._stopping = True

    async def stop(self, grace: float) -> None:
        self._stopping = True
        for task in self._watching:
            task.cancel()
        await asyncio.gather(*(worker.stop(grace) for worker in self.workers))


def reserve_port(address: Address) -> tuple[socket.socket, Address]:
    """Bind (without listening) a socket on ``address`` with ``SO_REUSEPORT``, so workers can
    listen on the same port; its port is the one bound when ``address``'s is 0. A socket that
    does not listen receives no connection: it only holds the port.

    The port is first bound without ``SO_REUSEPORT``, which fails if any socket holds it:
    another sidecar's workers would otherwise join ours on it, and the kernel would share
    the connections between two sidecars without a word.
    """
    probe = _bound(address, reuse_port=False)
    address = (address[0], probe.getsockname()[1])
    probe.close()
    return _bound(address, reuse_port=True), address


def listening_socket(address: Address) -> socket.socket:
    """A socket bound to ``address`` with ``SO_REUSEPORT``, for one worker's listener."""
    sock = _bound(address, reuse_port=True)
    sock.setblocking(False)
    return sock


def _bound(address: Address, *, reuse_port: bool) -> socket.socket:
    family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
    except OSError as error:
        sock.close()
        raise OSError(f"cannot listen on {address[0]}:{address[1]}: {error.strerror}"
                      ) from None
    return sock


def with_ports(options: SidecarOptions, outbound: Address, inbound: Address
               ) -> SidecarOptions:
    """``options`` with the listeners' ports the parent reserved."""
    return dataclasses.replace(options, outbound=outbound, inbound=inbound)

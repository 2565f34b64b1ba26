"""A backend with fault knobs: h2c replicas that take a set time, fail at a set rate, brown out.

    python -m experiments.backend --replica r1=127.0.40.13:8080
        [--replica r2=HOST:PORT,latency_ms=60] [--latency-ms 20] [--workers 4]
        [--queue-limit 100] [--error-rate 0.0] [--tail-rate 0.0 --tail-ms 0] [--seed 1]

Each replica serves every path with ``200 ok`` and an ``x-replica`` header, after its service
time. With ``--workers N`` a replica processes at most N requests at once and queues the rest
(past ``--queue-limit`` it answers 503 at once): a server with a thread pool. Queued work is
done even if the caller has gone — like a thread pool, the backend cannot see that its caller
gave up — which is what turns a brownout into a retry storm.

With ``--tail-rate P`` a share P of requests, drawn at random, takes ``--tail-ms`` instead: a
heavy tail (a GC pause, a cold cache, a noisy neighbour), which a hedge can beat because the
next request, even to the same replica, is as fast as ever.

Control paths, on any replica (not counted as traffic):

    POST /_control/brownout?factor=5&seconds=6    service time x factor for that long, from now
    GET  /_control/stats                          JSON: arrival times, answers (time, status)

Times are ``time.monotonic()``, which processes on one machine share (see ``harness``).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import random
import signal
import sys
import time
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

from mesh.http2 import Server, Stream, serve
from mesh.loop import run


@dataclass
class Replica:
    """One replica's settings and its record of arrivals."""

    name: str
    host: str
    port: int
    latency: float  # seconds of service time per request
    workers: int  # 0: no limit
    queue_limit: int
    error_rate: float
    rng: random.Random
    tail_rate: float = 0.0  # the share of requests that take ``tail`` seconds instead
    tail: float = 0.0
    brownout_factor: float = 1.0
    brownout_until: float = 0.0
    arrivals: list[float] = field(default_factory=list)  # when each request arrived
    answers: list[tuple[float, int]] = field(default_factory=list)  # (when, status) answered
    queue: collections.deque[asyncio.Future[None]] = field(
        default_factory=collections.deque)
    busy: int = 0

    def service_time(self) -> float:
        factor = self.brownout_factor if time.monotonic() < self.brownout_until else 1.0
        slow = self.tail_rate and self.rng.random() < self.tail_rate
        return (self.tail if slow else self.latency) * factor

    async def handle(self, stream: Stream) -> None:
        headers = dict(stream.headers or [])
        path = headers.get(":path", "/")
        await stream.read_all()
        if path.startswith("/_control/"):
            await self._control(stream, path)
            return
        self.arrivals.append(time.monotonic())
        if self.workers and self.busy >= self.workers and len(self.queue) >= self.queue_limit:
            self.answers.append((time.monotonic(), 503))
            await _answer(stream, 503, b"queue full\n", self.name)
            return
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.workers:
            self.queue.append(done)
            self._dispatch()
        else:
            asyncio.get_running_loop().call_later(self.service_time(), _settle, done)
        await done  # cancelled if the caller resets the stream; the job is done anyway
        status = 500 if self.error_rate and self.rng.random() < self.error_rate else 200
        self.answers.append((time.monotonic(), status))
        await _answer(stream, status, b"ok\n" if status == 200 else b"injected error\n",
                      self.name)

    def _dispatch(self) -> None:
        # A worker takes the next job whether or not its caller still waits for it.
        loop = asyncio.get_running_loop()
        while self.busy < self.workers and self.queue:
            done = self.queue.popleft()
            self.busy += 1
            loop.call_later(self.service_time(), self._finished, done)

    def _finished(self, done: asyncio.Future[None]) -> None:
        self.busy -= 1
        _settle(done)
        self._dispatch()

    async def _control(self, stream: Stream, path: str) -> None:
        url = urlsplit(path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        body: dict[str, object]
        if url.path == "/_control/brownout":
            self.brownout_factor = float(query.get("factor", "5"))
            self.brownout_until = time.monotonic() + float(query.get("seconds", "5"))
            body = {"brownout_until": self.brownout_until}
        elif url.path == "/_control/stats":
            body = {"replica": self.name, "arrivals": self.arrivals, "answers": self.answers}
        else:
            await _answer(stream, 404, b"unknown control path\n", self.name)
            return
        await _answer(stream, 200, json.dumps(body).encode(), self.name)


def _settle(done: asyncio.Future[None]) -> None:
    if not done.done():
        done.set_result(None)


async def _answer(stream: Stream, status: int, body: bytes, replica: str) -> None:
    stream.send_headers([(":status", str(status)), ("content-type", "text/plain"),
                         ("x-replica", replica)])
    await stream.send_data(body, end_stream=True)


def parse_replica(text: str, defaults: argparse.Namespace, seed: int) -> Replica:
    """``NAME=HOST:PORT[,latency_ms=N][,error_rate=P][,tail_rate=P,tail_ms=N]`` as a
    :class:`Replica`.

    Raises:
        argparse.ArgumentTypeError: the text does not have that shape.
    """
    try:
        head, *options = text.split(",")
        name, _, address = head.partition("=")
        host, _, port = address.rpartition(":")
        extra = dict(option.split("=", 1) for option in options)
        unknown = set(extra) - {"latency_ms", "error_rate", "tail_rate", "tail_ms"}
        if unknown or not name or not host:
            raise ValueError(f"unknown option(s) {sorted(unknown)}" if unknown else "shape")
        return Replica(name=name, host=host, port=int(port),
                       latency=float(extra.get("latency_ms", defaults.latency_ms)) / 1000,
                       workers=defaults.workers, queue_limit=defaults.queue_limit,
                       error_rate=float(extra.get("error_rate", defaults.error_rate)),
                       rng=random.Random(seed),
                       tail_rate=float(extra.get("tail_rate", defaults.tail_rate)),
                       tail=float(extra.get("tail_ms", defaults.tail_ms)) / 1000)
    except ValueError as error:
        raise argparse.ArgumentTypeError(
            f"--replica {text!r}: want NAME=HOST:PORT[,latency_ms=N][,error_rate=P]"
            f"[,tail_rate=P,tail_ms=N] ({error})") from None


async def serve_replicas(replicas: list[Replica]) -> None:
    servers: list[Server] = [await serve(r.handle, r.host, r.port) for r in replicas]
    print("backend ready: " + ", ".join(f"{r.name}@{r.host}:{r.port}" for r in replicas),
          flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await asyncio.gather(*(s.shutdown(grace=0.5) for s in servers))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.backend",
                                     description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--replica", action="append", required=True,
                        help="NAME=HOST:PORT[,latency_ms=N][,error_rate=P]"
                             "[,tail_rate=P,tail_ms=N]; repeatable")
    parser.add_argument("--latency-ms", type=float, default=5.0)
    parser.add_argument("--workers", type=int, default=0, help="0: unlimited concurrency")
    parser.add_argument("--queue-limit", type=int, default=100)
    parser.add_argument("--error-rate", type=float, default=0.0)
    parser.add_argument("--tail-rate", type=float, default=0.0,
                        help="the share of requests that take --tail-ms instead")
    parser.add_argument("--tail-ms", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    try:
        replicas = [parse_replica(text, args, args.seed + i)
                    for i, text in enumerate(args.replica)]
    except argparse.ArgumentTypeError as error:
        parser.error(str(error))
    run(serve_replicas(replicas))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The load generator: a constant arrival rate, open loop, over HTTP or gRPC (``meshctl load``).

    python -m demo_services.loadgen http://127.0.10.2:15001/orders --authority frontend \\
        --method POST --body '{"sku": "tea", "quantity": 1}' --rate 50 --duration 10 \\
        --backend payments-1=127.0.10.41:15000 --backend payments-2=127.0.10.42:15000
    python -m demo_services.loadgen grpc://127.0.10.20:15001/shop.Inventory/ListProducts \\
        --authority inventory --rate 100 --count 500

Requests leave on a fixed schedule (:mod:`demo_services.arrivals`) whether or not earlier ones
have returned, and each one's latency counts from when it was *due*: no coordinated omission.
While it runs, a progress line shows (only on a terminal); at the end, a summary: the rate
achieved, p50/p90/p99/max, the count of each status, and — from the ``--backend`` sidecars'
``/metrics`` — how many calls each backend actually served and how many retries the mesh made.

The URL's scheme picks the protocol: ``http://`` sends HTTP/1.1 (aiohttp, keep-alive pool of
``--connections``); ``grpc://HOST:PORT/package.Service/Method`` sends unary gRPC over h2c
(``mesh.grpc``), the request built from ``--body`` as the JSON form of the method's input
message (any service compiled into this project: ``shop``, ``hello``). Flags also read
``DEMO_LOAD_*`` environment variables (named in ``--help``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TextIO

import aiohttp
from google.protobuf import descriptor_pool
from google.protobuf.json_format import ParseDict, ParseError
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass

from demo_services.arrivals import Schedule
from demo_services.backend_load import SidecarCounts, received, scrape_all
from demo_services.latency import Recorder
from demo_services.load_report import summary
from demo_services.proto import hello_pb2, shop_pb2
from mesh.clock import SYSTEM_CLOCK, Clock
from mesh.grpc import Channel, GrpcError
from mesh.loop import run

PROGRESS_INTERVAL = 0.5  # seconds between progress line updates
START_DELAY = 0.05  # seconds: the first request is due this long after the plan is made
PROTOS = (hello_pb2, shop_pb2)  # imported so their services are known to grpc_request()


class Client(Protocol):
    """Sends one request; returns the outcome's label (status or code) and whether it is ok."""

    async def send(self) -> tuple[str, bool]: ...

    async def close(self) -> None: ...


class HttpClient:
    """HTTP/1.1 requests with aiohttp: 2xx and 3xx are ok; any other status is an error."""

    def __init__(self, url: str, *, method: str, body: bytes | None, headers: dict[str, str],
                 connections: int) -> None:
        self.url, self.method, self.body, self.headers = url, method, body, headers
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=connections),
            timeout=aiohttp.ClientTimeout(total=None))

    async def send(self) -> tuple[str, bool]:
        async with self.session.request(self.method, self.url, data=self.body,
                                        headers=self.headers) as response:
            await response.read()
            return str(response.status), 200 <= response.status < 400

    async def close(self) -> None:
        await self.session.close()


class _Raw:
    """A request already serialized (what ``mesh.grpc`` sends is anything serializable)."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def SerializeToString(self) -> bytes:
        return self.data


def grpc_request(method: str, body: dict[str, Any]) -> bytes:
    """``body`` as the serialized input message of ``method`` (``/package.Service/Method``).

    Raises:
        ValueError: the method is unknown to this project, or the body does not fit it.
    """
    service, _, name = method.strip("/").rpartition("/")
    pool = descriptor_pool.Default()
    try:
        descriptor = pool.FindServiceByName(service).FindMethodByName(name)
    except KeyError:
        raise ValueError(f"gRPC method {method}: unknown here (services are shop.Inventory, "
                         f"shop.Payments, shop.Orders, hello.Greeter)") from None
    if descriptor is None:
        raise ValueError(f"gRPC method {method}: {service} has no method {name}")
    message: Message = GetMessageClass(descriptor.input_type)()
    try:
        ParseDict(body, message)
    except ParseError as error:
        raise ValueError(f"--body for {method}: {error}") from None
    return message.SerializeToString()


class GrpcClient:
    """Unary gRPC calls over h2c, spread over ``connections`` channels: OK is ok."""

    def __init__(self, host: str, port: int, method: str, request: bytes, *, authority: str,
                 connections: int) -> None:
        self.channels = [Channel(host, port, authority=authority) for _ in range(connections)]
        self.calls = [c.unary_unary(method, lambda data: data) for c in self.channels]
        self.request = _Raw(request)
        self._next = 0

    async def send(self) -> tuple[str, bool]:
        call = self.calls[self._next]
        self._next = (self._next + 1) % len(self.calls)
        try:
            await call(self.request)
        except GrpcError as error:
            return error.code.name, False
        return "OK", True

    async def close(self) -> None:
        for channel in self.channels:
            await channel.close()


@dataclass(frozen=True, slots=True, kw_only=True)
class LoadPlan:
    """How much load, for how long, and how long one request may take."""

    rate: float
    duration: float | None = None
    count: int | None = None
    timeout: float = 5.0  # seconds; a request past it counts as "timeout"


@dataclass(slots=True)
class LoadResult:
    """What a load did: every request's outcome, and what the backends received."""

    description: str
    plan: LoadPlan
    recorder: Recorder
    elapsed: float  # from the first request's due time to the last response
    max_lag: float  # the latest a request was sent after it was due (the generator's own lag)
    backends: dict[str, SidecarCounts | None] = field(default_factory=dict)

    @property
    def achieved_rps(self) -> float:
        return self.recorder.count / self.elapsed if self.elapsed > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        r = self.recorder
        latency = {f"p{p}_ms": round(r.percentile(p) * 1000, 3) for p in (50, 90, 99)} \
            if r.count else {}
        return {
            "target": self.description, "rate": self.plan.rate, "sent": r.count,
            "achieved_rps": round(self.achieved_rps, 2), "elapsed_s": round(self.elapsed, 3),
            "max_lag_ms": round(self.max_lag * 1000, 3), **latency,
            "max_ms": round(r.max * 1000, 3) if r.count else None,
            "outcomes": dict(r.outcomes), "failures": r.failures,
            "error_rate": round(r.error_rate, 5),
            "backends": {name: None if c is None else {
                "requests": c.inbound_total, "by_code": dict(c.inbound),
                "retries": dict(c.retries), "retries_refused": dict(c.refused),
                "ejections": dict(c.ejections)} for name, c in self.backends.items()},
        }


async def generate(client: Client, plan: LoadPlan, *, clock: Clock = SYSTEM_CLOCK,
                   on_progress: Callable[[float, int, int, Recorder], None] | None = None
                   ) -> tuple[Recorder, float, float]:
    """Send ``plan``'s requests on schedule; return the recorder, elapsed time and max lag."""
    recorder = Recorder()
    schedule = Schedule(rate=plan.rate, start=clock.now() + START_DELAY,
                        duration=plan.duration, count=plan.count)
    in_flight: set[asyncio.Task[None]] = set()
    max_lag = 0.0
    last_done = schedule.start

    async def one(due: float) -> None:
        nonlocal last_done
        try:
            async with asyncio.timeout(plan.timeout):
                outcome, ok = await client.send()
        except TimeoutError:
            outcome, ok = "timeout", False
        except Exception as error:  # a failed request is a sample, never the end of the load
            outcome, ok = f"error:{type(error).__name__}", False
        now = clock.now()
        last_done = max(last_done, now)
        recorder.record(now - due, outcome, ok)

    async def report() -> None:
        assert on_progress is not None
        while True:
            await asyncio.sleep(PROGRESS_INTERVAL)
            on_progress(clock.now() - schedule.start, sent, len(in_flight), recorder)

    reporter = asyncio.create_task(report()) if on_progress is not None else None
    sent = 0
    try:
        while sent < schedule.total:
            due_now = schedule.due_by(clock.now())
            while sent < due_now:
                due = schedule.due(sent)
                max_lag = max(max_lag, clock.now() - due)
                task = asyncio.create_task(one(due))
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
                sent += 1
            if sent < schedule.total:
                await asyncio.sleep(max(0.0, schedule.due(sent) - clock.now()))
        if in_flight:
            await asyncio.gather(*in_flight)
    finally:
        if reporter is not None:
            reporter.cancel()
        for task in in_flight:
            task.cancel()
    return recorder, last_done - schedule.start, max_lag


def progress_line(stream: TextIO) -> Callable[[float, int, int, Recorder], None]:
    """A progress callback that rewrites one line of ``stream``."""
    def show(elapsed: float, sent: int, in_flight: int, recorder: Recorder) -> None:
        p99 = f"{recorder.percentile(99) * 1000:.1f} ms" if recorder.count else "-"
        stream.write(f"\r  {elapsed:5.1f} s  sent {sent}  in flight {in_flight}  "
                     f"errors {recorder.failures}  p99 {p99}   ")
        stream.flush()
    return show


async def run_load(client: Client, plan: LoadPlan, description: str, *,
                   backends: dict[str, str] | None = None,
                   progress: TextIO | None = None) -> LoadResult:
    """Scrape the backends, run the load, scrape again: the whole measurement."""
    before = await scrape_all(backends) if backends else {}
    try:
        recorder, elapsed, lag = await generate(
            client, plan, on_progress=progress_line(progress) if progress else None)
    finally:
        await client.close()
        if progress is not None:
            progress.write("\r" + " " * 78 + "\r")
            progress.flush()
    after = await scrape_all(backends) if backends else {}
    return LoadResult(description=description, plan=plan, recorder=recorder,
                      elapsed=elapsed, max_lag=lag, backends=received(before, after))


# -- command line ----------------------------------------------------------------------------

def add_arguments(p: argparse.ArgumentParser, *, url_required: bool) -> None:
    """The load generator's flags (shared by ``meshctl load``)."""
    env = os.environ.get
    p.add_argument("url", nargs=None if url_required else "?", default=env("DEMO_LOAD_URL"),
                   help="http://HOST:PORT/PATH or grpc://HOST:PORT/package.Service/Method "
                        "[DEMO_LOAD_URL]")
    p.add_argument("--rate", type=float, default=float(env("DEMO_LOAD_RATE", "50")),
                   help="requests per second (default 50) [DEMO_LOAD_RATE]")
    p.add_argument("--duration", type=float, default=env("DEMO_LOAD_DURATION"),
                   help="seconds of load [DEMO_LOAD_DURATION]")
    p.add_argument("--count", type=int, default=env("DEMO_LOAD_COUNT"),
                   help="requests to send (with --duration: whichever ends first) "
                        "[DEMO_LOAD_COUNT]")
    p.add_argument("--authority", default=env("DEMO_LOAD_AUTHORITY"),
                   help="Host / :authority: the service a sidecar should route to "
                        "[DEMO_LOAD_AUTHORITY]")
    p.add_argument("--method", default=env("DEMO_LOAD_METHOD"),
                   help="HTTP method (default GET, or POST with --body) [DEMO_LOAD_METHOD]")
    p.add_argument("--body", default=env("DEMO_LOAD_BODY"),
                   help="JSON request body (gRPC: the request message as JSON) "
                        "[DEMO_LOAD_BODY]")
    p.add_argument("--header", action="append", default=[], metavar="NAME:VALUE",
                   help="an extra HTTP header or gRPC metadata entry (repeatable)")
    p.add_argument("--timeout", type=float, default=float(env("DEMO_LOAD_TIMEOUT", "5")),
                   help="seconds one request may take (default 5) [DEMO_LOAD_TIMEOUT]")
    p.add_argument("--connections", type=int,
                   default=int(env("DEMO_LOAD_CONNECTIONS", "32")),
                   help="HTTP: keep-alive connections; gRPC: channels (default 32) "
                        "[DEMO_LOAD_CONNECTIONS]")
    p.add_argument("--backend", action="append", metavar="NAME=HOST:PORT",
                   default=[b for b in env("DEMO_LOAD_BACKENDS", "").split(",") if b],
                   help="a sidecar admin endpoint to read received load from (repeatable; "
                        "env: comma-separated) [DEMO_LOAD_BACKENDS]")
    p.add_argument("--json", action="store_true", help="print the results as JSON")


def client_for(args: argparse.Namespace) -> tuple[Client, str]:
    """The client the flags ask for, and a description of the target.

    Raises:
        ValueError: a bad URL, header or body, named.
    """
    url = urllib.parse.urlsplit(args.url or "")
    if url.scheme not in ("http", "grpc") or not url.hostname:
        raise ValueError(f"target {args.url!r}: want http://HOST:PORT/PATH or "
                         f"grpc://HOST:PORT/package.Service/Method")
    headers = {}
    for header in args.header:
        name, sep, value = header.partition(":")
        if not sep or not name.strip():
            raise ValueError(f"--header {header!r}: want NAME:VALUE")
        headers[name.strip().lower()] = value.strip()
    try:
        body = json.loads(args.body) if args.body is not None else None
    except json.JSONDecodeError as error:
        raise ValueError(f"--body is not JSON: {error}") from None
    port = url.port or 80
    if url.scheme == "grpc":
        if body is not None and not isinstance(body, dict):
            raise ValueError(f"--body for gRPC: want a JSON object, got {args.body}")
        request = grpc_request(url.path, body or {})
        authority = args.authority or f"{url.hostname}:{port}"
        client: Client = GrpcClient(url.hostname, port, url.path, request, authority=authority,
                                    connections=args.connections)
        return client, f"gRPC {url.path} via {url.hostname}:{port} (:authority {authority})"
    method = (args.method or ("POST" if body is not None else "GET")).upper()
    if args.authority:
        headers["host"] = args.authority
    data = json.dumps(body).encode() if body is not None else None
    if data is not None:
        headers.setdefault("content-type", "application/json")
    client = HttpClient(args.url, method=method, body=data, headers=headers,
                        connections=args.connections)
    via = f" (Host: {args.authority})" if args.authority else ""
    return client, f"{method} {args.url}{via}"


def backends_from(specs: list[str]) -> dict[str, str]:
    """``NAME=HOST:PORT`` specs as a dict (a bare HOST:PORT names itself).

    Raises:
        ValueError: a spec without a port.
    """
    out = {}
    for spec in specs:
        name, sep, address = spec.partition("=")
        if not sep:
            name, address = spec, spec
        if not re.fullmatch(r"[^:\s]+:\d+", address):
            raise ValueError(f"--backend {spec!r}: want NAME=HOST:PORT (a sidecar's admin)")
        out[name] = address
    return out


async def main_async(args: argparse.Namespace, backends: dict[str, str]) -> LoadResult:
    if args.duration is None and args.count is None:
        args.duration = 10.0
    plan = LoadPlan(rate=args.rate, duration=args.duration, count=args.count,
                    timeout=args.timeout)
    client, description = client_for(args)
    progress = sys.stdout if sys.stdout.isatty() and not args.json else None
    return await run_load(client, plan, description, backends=backends, progress=progress)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m demo_services.loadgen",
                                description=(__doc__ or "").splitlines()[0],
                                epilog="Without --duration or --count: 10 seconds.")
    add_arguments(p, url_required=True)
    args = p.parse_args(argv)
    try:
        result = run(main_async(args, backends_from(args.backend)))
    except ValueError as error:
        print(f"loadgen: {error}", file=sys.stderr)
        return 2
    print(json.dumps(result.to_json(), indent=2) if args.json else summary(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

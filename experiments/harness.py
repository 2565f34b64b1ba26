"""What every experiment shares: processes on loopback, a PKI, open-loop load, and its report.

- :class:`Lab` owns one run: a temporary folder, the mesh CA and workload certificates (made by
  the ``certs`` command line), and every process it starts, stopped by PID when the run ends
  (SIGTERM, then SIGKILL after a grace period), whatever happened.
- :func:`open_loop` sends requests at a constant arrival rate. Request ``i`` is due at
  ``start + i / rate`` and is sent then, whether or not earlier requests have answered; its
  latency is measured from that *scheduled* time. A closed loop (send, wait, send) would slow
  down when the server does and hide the queue it built — "coordinated omission".
- :class:`Report` is what an experiment produces: a Markdown table (printed, and written to
  ``NAME.md`` with the headlines over the seeded repeats (:mod:`.repeats`), the notes and the
  plot's name), the same numbers as ``NAME.json``, and a PNG plot drawn with matplotlib
  (imported only when plotting, with the Agg backend).

Processes on the same machine share ``CLOCK_MONOTONIC``, so timestamps a backend reports with
``time.monotonic()`` line up with the experiment's own.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import io
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from certs.__main__ import main as certs_main
from mesh.http2 import (
    ConnectionClosed,
    ErrorCode,
    Headers,
    Http2Connection,
    NoStreamAvailable,
    Response,
    connect,
)

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "experiments" / "results"
CLK_TCK = os.sysconf("SC_CLK_TCK")
STOP_GRACE = 5.0  # seconds a process gets to exit after SIGTERM before SIGKILL


# ------------------------------------------------------------------------------- processes


def free_port(host: str) -> int:
    """A TCP port free on ``host`` right now (the kernel picks it)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Proc:
    """A child process of the lab, its log file, and its CPU time."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def cpu_seconds(self) -> float:
        """User + system CPU seconds used so far (``/proc/PID/stat``, fields 14 and 15)."""
        try:
            stat = Path(f"/proc/{self.pid}/stat").read_text()
        except FileNotFoundError:
            return math.nan
        fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) "
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def log_tail(self, lines: int = 15) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        """SIGTERM, wait up to ``STOP_GRACE`` seconds, then SIGKILL; by this PID only."""
        if self.popen.poll() is not None:
            return
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(STOP_GRACE)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(STOP_GRACE)

    def terminate(self) -> None:
        """Send SIGTERM and return at once (see :meth:`wait_exit`)."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)

    async def wait_exit(self, within: float = STOP_GRACE) -> None:
        """Wait (in a thread, the event loop runs on) for the process to exit; else SIGKILL."""
        with contextlib.suppress(subprocess.TimeoutExpired):
            await asyncio.to_thread(self.popen.wait, within)
        self.kill()

    def kill(self) -> None:
        """SIGKILL now: a crash, not a shutdown (no deregistration, no draining)."""
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(STOP_GRACE)


class ExperimentError(Exception):
    """The experiment could not run: a process did not start, a port never opened."""


class Lab:
    """The processes and files of one experiment run; use as a context manager.

    Args:
        name: the experiment's name (used for the temporary folder).
        keep: keep the temporary folder (logs, configs) after the run; by default only when
            the environment sets ``EXPERIMENT_KEEP=1``.
    """

    def __init__(self, name: str, *, keep: bool | None = None) -> None:
        self.name = name
        self.dir = Path(tempfile.mkdtemp(prefix=f"asyncmesh-{name}-"))
        self.keep = os.environ.get("EXPERIMENT_KEEP") == "1" if keep is None else keep
        self.procs: list[Proc] = []
        self.pki_dir = self.dir / "pki"

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop every process still running (newest first) and remove the folder."""
        for proc in reversed(self.procs):
            proc.stop()
        if self.keep:
            print(f"lab files kept in {self.dir}", file=sys.stderr)
        else:
            shutil.rmtree(self.dir, ignore_errors=True)

    # -- certificates ------------------------------------------------------------------------

    def pki(self, services: Sequence[str], *, namespace: str = "default") -> None:
        """A mesh CA in ``pki/`` and a certificate per service, via the ``certs`` CLI."""
        with contextlib.redirect_stdout(io.StringIO()):
            if certs_main(["init", "--dir", str(self.pki_dir)]) != 0:
                raise ExperimentError("certs init failed")
            for service in services:
                if certs_main(["issue", "--dir", str(self.pki_dir), "--service", service,
                               "--namespace", namespace, "--validity", "2h"]) != 0:
                    raise ExperimentError(f"certs issue {service} failed")

    def cert(self, service: str) -> tuple[Path, Path]:
        return self.pki_dir / f"{service}.crt", self.pki_dir / f"{service}.key"

    @property
    def ca(self) -> Path:
        return self.pki_dir / "ca.crt"

    # -- processes ---------------------------------------------------------------------------

    def start(self, name: str, args: Sequence[str], *,
              env: dict[str, str] | None = None) -> Proc:
        """Start ``python ARGS`` with its output going to ``NAME.log`` in the lab's folder."""
        log = self.dir / f"{name}.log"
        with log.open("wb") as out:
            popen = subprocess.Popen(
                [sys.executable, *args], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})
        proc = Proc(name, popen, log)
        self.procs.append(proc)
        return proc

    def sidecar(self, service: str, *, outbound: tuple[str, int], inbound: tuple[str, int],
                admin: tuple[str, int], app: tuple[str, int], config: dict[str, Any],
                app_protocol: str = "h2c", seed: int = 1, name: str | None = None) -> Proc:
        """Start ``python -m sidecar --static-config`` for ``service`` with ``config``."""
        name = name or f"sidecar-{service}"
        path = self.dir / f"{name}.yaml"
        path.write_text(yaml.dump(config, Dumper=_PlainDumper, sort_keys=False))
        cert, key = self.cert(service)
        return self.start(name, [
            "-m", "sidecar", "--service", service, "--static-config", str(path),
            "--cert", str(cert), "--key", str(key), "--ca", str(self.ca),
            "--outbound", _hostport(outbound), "--inbound", _hostport(inbound),
            "--admin", _hostport(admin), "--app", _hostport(app),
            "--app-protocol", app_protocol, "--seed", str(seed),
            "--log-level", "WARNING" if self.keep else "ERROR"])

    def clients_per_seed(self, host: str, config: dict[str, Any], seeds: Sequence[int]
                         ) -> tuple[dict[int, int], list[Coroutine[Any, Any, None]]]:
        """A client sidecar on ``host`` for each repeat's seed, each with its own pool and
        randomness; the outbound port of each by seed, and a wait for each to be ready."""
        outbound, waits = {}, []
        for seed in seeds:
            out, inb, adm = (free_port(host) for _ in range(3))
            proc = self.sidecar("client", outbound=(host, out), inbound=(host, inb),
                                admin=(host, adm), app=(host, 1), config=config, seed=seed,
                                name=f"sidecar-client-{seed}")
            waits.append(wait_ready(proc, (host, adm)))
            outbound[seed] = out
        return outbound, waits


class _PlainDumper(yaml.SafeDumper):
    """Writes shared values out in full: a config file a reader opens has no YAML aliases."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _hostport(address: tuple[str, int]) -> str:
    return f"{address[0]}:{address[1]}"


async def wait_port(proc: Proc, host: str, port: int, within: float = 30.0) -> None:
    """Wait until ``host:port`` accepts TCP connections.

    Raises:
        ExperimentError: ``proc`` exited, or the port did not open in time (with its log).
    """
    deadline = time.monotonic() + within
    while True:
        if not proc.alive():
            raise ExperimentError(f"{proc.name} exited with status {proc.popen.returncode}:\n"
                                  f"{proc.log_tail()}")
        try:
            _, writer = await asyncio.open_connection(host, port)
        except OSError:
            if time.monotonic() > deadline:
                raise ExperimentError(f"{proc.name}: {host}:{port} did not open within "
                                      f"{within:.0f} s:\n{proc.log_tail()}") from None
            await asyncio.sleep(0.05)
            continue
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return


async def wait_ready(proc: Proc, admin: tuple[str, int], within: float = 30.0) -> None:
    """Wait until a sidecar's admin ``/ready`` answers 200."""
    await wait_port(proc, *admin, within=within)
    deadline = time.monotonic() + within
    async with aiohttp.ClientSession() as session:
        while True:
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(f"http://{_hostport(admin)}/ready") as response:
                    if response.status == 200:
                        return
            if time.monotonic() > deadline or not proc.alive():
                raise ExperimentError(f"{proc.name} not ready:\n{proc.log_tail()}")
            await asyncio.sleep(0.05)


async def get_json(url: str, within: float = 10.0) -> Any:
    """GET ``url`` and decode its JSON body (``within`` seconds at most)."""
    async with aiohttp.ClientSession() as session, \
            session.get(url, timeout=aiohttp.ClientTimeout(total=within)) as response:
        response.raise_for_status()
        return await response.json(content_type=None)


# ------------------------------------------------------------------------------- clients


class H2Client:
    """h2c (or h2 over TLS) connections to one address, opened as streams need room.

    One connection carries up to the peer's stream limit; past it another is opened, so an
    open-loop generator never waits for a slot (which would delay its schedule).
    """

    def __init__(self, host: str, port: int, *, authority: str, ssl: Any = None) -> None:
        self.host, self.port, self.authority, self.ssl = host, port, authority, ssl
        self.connections: list[Http2Connection] = []
        self._opening: asyncio.Lock = asyncio.Lock()

    async def _connection(self) -> Http2Connection:
        for conn in self.connections:
            if conn.close_reason is None and not conn.draining and conn.available_streams:
                return conn
        async with self._opening:
            self.connections = [c for c in self.connections if c.close_reason is None]
            for conn in self.connections:
                if not conn.draining and conn.available_streams:
                    return conn
            conn = await connect(self.host, self.port, ssl=self.ssl)
            self.connections.append(conn)
            return conn

    async def request(self, method: str, path: str, *, headers: Headers | None = None,
                      body: bytes = b"", authority: str | None = None) -> Response:
        """One request, read to the end."""
        request = [(":method", method), (":scheme", "https" if self.ssl else "http"),
                   (":authority", authority or self.authority), (":path", path),
                   *(headers or [])]
        while True:
            conn = await self._connection()
            try:
                stream = conn.open_stream(request, end_stream=not body)
                break
            except (NoStreamAvailable, ConnectionClosed):
                continue
        try:
            if body:
                await stream.send_data(body, end_stream=True)
            response = await stream.receive_headers()
            data = await stream.read_all()
        except asyncio.CancelledError:
            stream.reset(ErrorCode.CANCEL)  # the caller gave up: tell the server
            raise
        status = int(dict(response).get(":status", "0"))
        return Response(status=status, headers=response, body=data, trailers=stream.trailers)

    async def close(self) -> None:
        await asyncio.gather(*(c.shutdown(grace=0.5) for c in self.connections))
        self.connections.clear()


# ------------------------------------------------------------------------------- load


@dataclass(frozen=True, slots=True)
class Sample:
    """One request of an open-loop run."""

    due: float  # when it was scheduled, seconds since the run's start
    latency: float  # seconds from ``due`` to its answer (or failure)
    ok: bool
    tag: str = ""  # what the call reported: a replica, a status, an error name

    @property
    def done(self) -> float:
        return self.due + self.latency


Call = Callable[[int], Awaitable[tuple[bool, str]]]
"""One request: given its index, returns (succeeded, tag)."""


async def open_loop(call: Call, *, rate: float, duration: float,
                    give_up: float = 30.0) -> tuple[float, list[Sample]]:
    """Send ``rate`` requests per second for ``duration`` seconds, each on schedule.

    Each call runs as its own task, started at its due time (or at once if the generator fell
    behind, its latency still counted from the due time). An exception counts as a failure
    tagged with its class name; a call still running ``give_up`` seconds after the last was
    sent is cancelled and counted as failed.

    Returns:
        the run's start on the monotonic clock, and the samples in order of due time.
    """
    count = max(1, round(rate * duration))
    start = time.monotonic() + 0.01
    samples: list[Sample | None] = [None] * count
    tasks: set[asyncio.Task[None]] = set()

    async def one(index: int, due: float) -> None:
        try:
            ok, tag = await call(index)
        except asyncio.CancelledError:
            ok, tag = False, "gave-up"
            samples[index] = Sample(due - start, time.monotonic() - due, ok, tag)
            raise
        except Exception as error:
            ok, tag = False, type(error).__name__
        samples[index] = Sample(due - start, time.monotonic() - due, ok, tag)

    for index in range(count):
        due = start + index / rate
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(one(index, due))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        _, pending = await asyncio.wait(set(tasks), timeout=give_up)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    return start, [s for s in samples if s is not None]


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) by linear interpolation; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def buckets(times: Sequence[float], *, width: float, end: float) -> list[int]:
    """How many of ``times`` (seconds since a start) fall in each ``width``-second bucket."""
    counts = [0] * max(1, math.ceil(end / width))
    for t in times:
        index = math.floor(t / width)
        if 0 <= index < len(counts):
            counts[index] += 1
    return counts


def ms(seconds: float) -> str:
    """Seconds as milliseconds for a table cell."""
    return "–" if math.isnan(seconds) else f"{seconds * 1000:.1f}"


# ------------------------------------------------------------------------------- report


HEADLINES = "## Headlines: the median over the seeded repeats, the lowest and highest, each repeat"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub-flavoured Markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


@dataclass
class Report:
    """An experiment's result: its table, notes, the numbers, and the plot to draw."""

    name: str
    title: str
    table: str
    notes: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    plot: Callable[[Any], None] | None = None  # draws on a matplotlib Figure
    headlines: str = ""  # each claim over the seeded repeats (``repeats.headlines_table``)

    def write(self, out: Path) -> list[Path]:
        """Write ``NAME.md``, ``NAME.json`` and ``NAME.png`` into ``out``; return the paths."""
        out.mkdir(parents=True, exist_ok=True)
        written = []
        png = out / f"{self.name}.png"
        if self.plot is not None:
            save_plot(self.plot, png)
            written.append(png)
        md = out / f"{self.name}.md"
        body = [f"# {self.title}", "", self.table, ""]
        if self.headlines:
            body += [HEADLINES, "", self.headlines, ""]
        body += [f"- {note}" for note in self.notes]
        if self.plot is not None:
            body += ["", f"![{self.name}]({png.name})"]
        md.write_text("\n".join(body) + "\n")
        (out / f"{self.name}.json").write_text(json.dumps(self.data, indent=2, default=str))
        return [md, out / f"{self.name}.json", *written]


def save_plot(draw: Callable[[Any], None], path: Path) -> None:
    """Draw a figure with ``draw(figure)`` and save it as PNG (matplotlib, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    figure = Figure(figsize=(9, 5), dpi=100, layout="constrained")
    draw(figure)
    figure.savefig(path)


def main(name: str, title: str, run: Callable[[bool], Coroutine[Any, Any, Report]],
         argv: Sequence[str] | None = None) -> int:
    """The command line of every experiment: ``--quick`` and ``--out DIR``."""
    parser = argparse.ArgumentParser(prog=f"python -m experiments.{name}", description=title)
    parser.add_argument("--quick", action="store_true",
                        help="a short run (seconds, not minutes), as the tests use")
    parser.add_argument("--out", type=Path, default=RESULTS,
                        help=f"where the table, JSON and plot go (default {RESULTS})")
    args = parser.parse_args(argv)
    if importlib.util.find_spec("matplotlib") is None:  # found out before the run, not after
        print(f"experiment {name}: the plots need matplotlib: pip install -e '.[experiments]'",
              file=sys.stderr)
        return 1
    from mesh.loop import run as run_loop

    started = time.monotonic()
    try:
        report = run_loop(run(args.quick))
    except ExperimentError as error:
        print(f"experiment {name}: {error}", file=sys.stderr)
        return 1
    paths = report.write(args.out)
    print(f"## {report.title}\n\n{report.table}\n")
    if report.headlines:
        print(f"{HEADLINES}\n\n{report.headlines}\n")
    for note in report.notes:
        print(f"- {note}")
    print(f"\n({time.monotonic() - started:.0f} s; wrote {', '.join(str(p) for p in paths)})")
    return 0


@contextlib.contextmanager
def cpu_meter(procs: dict[str, Proc]) -> Iterator[dict[str, float]]:
    """CPU seconds each process (and this one, as ``client``) used inside the block."""
    before = {name: proc.cpu_seconds() for name, proc in procs.items()}
    own = os.times()
    used: dict[str, float] = {}
    try:
        yield used
    finally:
        now = os.times()
        used["client"] = (now.user - own.user) + (now.system - own.system)
        for name, proc in procs.items():
            used[name] = proc.cpu_seconds() - before[name]

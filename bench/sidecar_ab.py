"""Benchmark: two checkouts of the sidecar side by side, interleaved — is a change worth it?

``bench/sidecar_pair.py`` compares the sidecar with other proxies; this compares the sidecar
with itself: a sidecar pair started from each checkout given (``--side DIR``, the first is
the baseline; a git worktree of HEAD, say), all ending at one ``nghttpd``::

    h2load ─h2c▶ sidecar A ═HTTP/2+mTLS═▶ sidecar B ─h2c▶ nghttpd     (once per checkout)

Each round measures every side in turn, and the order alternates from round to round, so a
shared machine's noise falls on all alike: req/s with 100 streams in flight (``-c1 -m100``)
and with 1,000 (``-c4 -m250``), and the CPU each hop spends per request at 100 streams (from
/proc/PID/stat). Reported as the median over rounds, with each side's ratio to the first.

    git worktree add /tmp/before HEAD
    python -m bench.sidecar_ab --side /tmp/before --side . --duration 5 --rounds 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import cpu_seconds
from bench.holding_backend import BODY
from bench.http2_server import free_port
from bench.sidecar_pair import Contestant, Processes, h2load, make_pki, start_sidecar_pair, warm_up

FEW, MANY = (1, 100), (4, 250)  # (h2load clients, streams per client)


class CheckoutProcesses(Processes):
    """:class:`Processes` whose ``python -m`` commands import from one checkout."""

    def __init__(self, logs: Path, checkout: Path) -> None:
        super().__init__(logs)
        self.checkout = checkout

    def start(self, name: str, command: list[str], *, listens: int,
              env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        with (self.logs / f"{name}.log").open("wb") as log:
            # ``python -m`` puts the working directory first on sys.path: the checkout's code.
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                       cwd=self.checkout,
                                       env=None if env is None else {**os.environ, **env})
        self.started.append(process)
        self.starting.append((name, process, listens))
        return process


@dataclass
class Side:
    checkout: Path
    port: int
    hops: list[int]
    rates: dict[tuple[int, int], list[float]] = field(default_factory=dict)
    cpu: list[float] = field(default_factory=list)  # seconds per request and hop, at FEW
    failures: int = 0

    def rate(self, load: tuple[int, int]) -> float:
        return statistics.median(self.rates[load])


def measure(side: Side, load: tuple[int, int], duration: float) -> None:
    clients, streams = load
    before = sum(cpu_seconds(pid) for pid in side.hops)
    rate, failed = h2load(["-c", str(clients), "-m", str(streams), "-D",
                           f"{duration * 1000:.0f}ms", "--warm-up-time", "500ms"],
                          f"http://127.0.0.1:{side.port}/")
    used = sum(cpu_seconds(pid) for pid in side.hops) - before
    side.rates.setdefault(load, []).append(rate)
    if rate and load == FEW:  # the CPU covers the warm-up too, assumed at the same rate
        side.cpu.append(used / (rate * (duration + 0.5)) / 2)
    side.failures += failed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--side", action="append", type=Path, required=True,
                        help="a checkout to run a sidecar pair from (twice or more; the "
                             "first is the baseline)")
    parser.add_argument("--duration", type=float, default=5.0,
                        help="seconds of h2load per load, side and round (default 5)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    args = parser.parse_args(argv)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="sidecar-ab-") as tmp:
        root = Path(tmp)
        (root / "www").mkdir()
        (root / "www" / "index.html").write_bytes(BODY)
        pki = make_pki(root)
        everyone = [CheckoutProcesses(root, checkout.resolve()) for checkout in args.side]
        sides: list[Side] = []
        try:
            backend = free_port()
            everyone[0].start("nghttpd", ["nghttpd", "-d", str(root / "www"), "--no-tls",
                                          str(backend)], listens=backend)
            for number, procs in enumerate(everyone):
                port, a, b = start_sidecar_pair(procs, pki, backend, root, f"side{number}")
                sides.append(Side(procs.checkout, port, [a.pid, b.pid]))
            for procs in everyone:
                procs.wait_ready()
            for side in sides:
                warm_up(Contestant(str(side.checkout), side.port, side.hops))
            for round_ in range(args.rounds):
                for side in sides if round_ % 2 == 0 else reversed(sides):
                    measure(side, FEW, args.duration)
                    measure(side, MANY, args.duration)
        finally:
            for procs in everyone:
                procs.stop()
    report(sides, args, load_before)
    return 1 if any(side.failures for side in sides) else 0


def report(sides: list[Side], args: argparse.Namespace, load_before: float) -> None:
    print(f"\n## Sidecar checkouts, interleaved ({args.rounds} round(s) of {args.duration:g} s "
          f"per load; medians; load average before: {load_before:.2f} on {os.cpu_count()} "
          "CPUs)\n")
    print("| checkout | CPU µs/req/hop, 100 streams (each round) | req/s, 100 streams | "
          "req/s, 1,000 streams | 1,000 / 100 | vs first, round by round: CPU, req/s 100, "
          "req/s 1,000 | failed |")
    print("|---|---|---|---|---|---|---|")
    first = sides[0]
    for side in sides:
        rounds = ", ".join(f"{c * 1e6:.0f}" for c in side.cpu)
        # The machine's speed drifts: a round's ratio, side by side, moves less than either.
        paired = ", ".join(f"{paired_ratio(mine, base):.3f}" for mine, base in (
            (side.cpu, first.cpu), (side.rates[FEW], first.rates[FEW]),
            (side.rates[MANY], first.rates[MANY])))
        print(f"| {side.checkout} | {statistics.median(side.cpu) * 1e6:.0f} ({rounds}) | "
              f"{side.rate(FEW):,.0f} | {side.rate(MANY):,.0f} | "
              f"{side.rate(MANY) / side.rate(FEW):.3f} | {paired} | {side.failures} |")


def paired_ratio(ours: list[float], theirs: list[float]) -> float:
    """The median of the rounds' ratios, ``ours[i] / theirs[i]``."""
    return statistics.median(a / b for a, b in zip(ours, theirs, strict=True))


if __name__ == "__main__":
    sys.exit(main())

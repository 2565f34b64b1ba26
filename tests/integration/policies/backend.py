"""Backend replicas with faults, for the policy tests.

``python -m tests.integration.policies.backend --replicas JSON``: one process serves every
replica of a test, each on its own address (each behind its own sidecar, which speaks HTTP/1.1
to it). A replica answers ``GET /work`` after ``delay`` seconds,
with ``status`` instead of 200 for a share ``fail_rate`` of requests drawn from its own
``random.Random(seed)``, so the sequence of failures is the same on every run. It names itself in
``x-replica`` and records, per request, the ``x-test-id`` the client sent and the
``x-mesh-attempt`` the client's sidecar added. ``GET /_stats`` (called directly, not through the
mesh) returns what it saw as JSON: ``requests``, ``failed`` and ``seen`` (id, attempt) pairs.

The replicas come as JSON on the command line::

    --replicas '[{"name": "a", "host": "127.0.30.11", "port": 8080, "fail_rate": 0.5}]'
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import signal
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass(kw_only=True)
class Replica:
    """One replica's fault settings and what it has seen."""

    name: str
    host: str
    port: int
    fail_rate: float = 0.0  # share of requests answered with ``status``
    status: int = 503
    delay: float = 0.0  # seconds added to every answer
    seed: int = 0
    rng: random.Random = field(init=False)
    seen: list[tuple[str, str]] = field(default_factory=list)  # (x-test-id, x-mesh-attempt)
    failed: int = field(init=False, default=0)  # requests answered with ``status``

    def __post_init__(self) -> None:
        if not 0 <= self.fail_rate <= 1:
            raise ValueError(f"replica {self.name}: fail_rate {self.fail_rate} not in 0..1")
        self.rng = random.Random(self.seed)

    async def work(self, request: web.Request) -> web.Response:
        self.seen.append((request.headers.get("x-test-id", ""),
                          request.headers.get("x-mesh-attempt", "")))
        failed = self.rng.random() < self.fail_rate  # drawn on arrival: a fixed sequence
        self.failed += failed
        if self.delay:
            await asyncio.sleep(self.delay)
        return web.Response(status=self.status if failed else 200, text=self.name,
                            headers={"x-replica": self.name})

    async def stats(self, _: web.Request) -> web.Response:
        return web.json_response({"name": self.name, "requests": len(self.seen),
                                  "failed": self.failed, "seen": self.seen})

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/work", self.work)
        app.router.add_get("/_stats", self.stats)
        return app


async def serve(replicas: list[Replica]) -> None:
    runners = []
    for replica in replicas:
        runner = web.AppRunner(replica.app(), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, replica.host, replica.port, reuse_address=True).start()
        runners.append(runner)
    print("backend ready", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    for runner in runners:
        await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicas", required=True, help="JSON list of replica settings")
    args = parser.parse_args()
    settings: list[dict[str, Any]] = json.loads(args.replicas)
    asyncio.run(serve([Replica(**s) for s in settings]))


if __name__ == "__main__":
    main()

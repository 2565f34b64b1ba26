"""One worker of a sidecar: ``python -m sidecar.worker FD INDEX``, started by the sidecar's
parent process with FD its end of their socketpair (``sidecar/workers.py``).

It serves the listeners with its own share of the policy's limits, and answers its parent:

    ("start", options, index, count, in_force)
                                       bind the listeners (SO_REUSEPORT), install the
                                       configuration in force (a list of "apply" requests:
                                       a worker started again), and serve
    ("apply", type_url, resources)     install an update the parent accepted (its share)
    ("certificates",)                  load the certificate files the parent renewed
    ("metrics",)                       (boot, this worker's Prometheus exposition): boot is
                                       its tap's, new each time a worker starts
    ("clusters",)                      this worker's /clusters
    ("tap", boot, after)               the requests it kept after ``after`` (all of them if
                                       ``boot`` is not its own: the reader saw another run)
    ("stop", grace)                    drain for ``grace`` seconds and exit

Only its parent stops it: a SIGINT or SIGTERM sent to the whole process group (a Ctrl-C, a
service manager stopping the group) is left to the parent, which deregisters first and then
tells its workers to drain. A parent gone (the socket closed) stops the worker.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal
import socket
import sys
from typing import Any

from mesh.loop import run
from sidecar.__main__ import tune_gc
from sidecar.admin import clusters_view, metrics_text
from sidecar.sidecar import Sidecar
from sidecar.tap import TAP_SIZE
from sidecar.workers import Link, worker_share

log = logging.getLogger("sidecar.worker")


class WorkerSide:
    """What a worker answers its parent, given the sidecar it runs."""

    def __init__(self, sidecar: Sidecar, count: int) -> None:
        self.sidecar, self.count = sidecar, count

    def answer(self, op: str, *args: Any) -> Any:
        sidecar = self.sidecar
        if op == "apply":
            type_url, resources = args
            try:
                sidecar.config.apply(type_url, worker_share(type_url, resources, self.count))
            except ValueError as error:
                raise ValueError(f"{type_url}: {error}") from None
            return None
        if op == "certificates":
            sidecar.reload_certificates()
            return None
        if op == "metrics":
            return sidecar.metrics.tap.boot, metrics_text(sidecar.config, sidecar.metrics)
        if op == "clusters":
            return clusters_view(sidecar.config)
        if op == "tap":
            boot, after = args
            tap = sidecar.metrics.tap
            return dataclasses.asdict(tap.since(after if boot == tap.boot else 0, TAP_SIZE))
        raise ValueError(f"unknown request {op!r}")


async def serve(fd: int) -> int:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, lambda: None)  # the parent's to handle
    link = await Link.over(socket.socket(fileno=fd))
    first = await link.receive()
    if first[0] != "start" or len(first) != 5:
        link.send(("error", f"the first request must be start, not {first[0]!r}"))
        return 2
    _, options, index, count, in_force = first
    sidecar = Sidecar(dataclasses.replace(options, concurrency=1))
    side = WorkerSide(sidecar, count)

    def configure() -> None:  # before listening: no connection meets an empty configuration
        for request in in_force:
            side.answer(*request)
    try:
        await sidecar.start_worker(configure)
    except Exception as error:
        link.send(("error", str(error) or repr(error)))
        await sidecar.stop(0)
        return 2
    link.send(("ok", os.getpid()))
    tune_gc()
    while True:
        try:
            op, *args = await link.receive()
        except (asyncio.IncompleteReadError, ConnectionError):
            log.warning("worker %d: the sidecar's parent is gone: stopping", index)
            await sidecar.stop()
            return 0
        if op == "stop":
            await sidecar.stop(args[0])
            link.send(("ok", None))
            await link.writer.drain()
            return 0
        try:
            link.send(("ok", side.answer(op, *args)))
        except Exception as error:  # a bad request must not stop the worker
            log.exception("worker %d: %s", index, op)
            link.send(("error", f"{op}: {error}"))


def main() -> int:
    fd, index = int(sys.argv[1]), sys.argv[2]
    logging.basicConfig(level=os.environ.get("MESH_LOG_LEVEL", "INFO").upper(),
                        format=f"%(asctime)s %(levelname)s %(name)s[worker {index}]: "
                               f"%(message)s")
    return run(serve(fd))


if __name__ == "__main__":
    sys.exit(main())

"""One worker of a sidecar: ``python -m sidecar.worker FD INDEX``, started by the sidecar's
parent process with FD its end of their socketpair (``sidecar/workers.py``).

It serves the listeners with its own share of the policy's limits, and answers its parent:

    ("start", options, index, count, in_force)
                                       bind the listeners (SO_REUSEPORT), install the
                                       configuration in force (a list of "apply" requests:
                                       a worker started again), and serve
    ("apply", type_url, resources)     install an update the parent accepted (its share)
    ("certificates",)                  load the certificate files the parent renewed
    ("metrics",)                       this worker's Prometheus exposition
    ("clusters",)                      this worker's /clusters
    ("tap", boot, after)               the requests it kept after ``after`` (all of them if
                                       ``boot`` is not its own: the reader saw another run)
    ("stop", grace)                    drain for ``grace`` seconds and exit

Its parent stops it; so a Ctrl-C, which the terminal sends to every process of the group, is
left to the parent, and a parent gone (the socket closed) stops the worker as a SIGTERM does.
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
            sidecar.config.apply(type_url, worker_share(type_url, resources, self.count))
            return None
        if op == "certificates":
            sidecar.reload_certificates()
            return None
        if op == "metrics":
            return metrics_text(sidecar.config, sidecar.metrics)
        if op == "clusters":
            return clusters_view(sidecar.config)
        if op == "tap":
            boot, after = args
            tap = sidecar.metrics.tap
            return dataclasses.asdict(tap.since(after if boot == tap.boot else 0, TAP_SIZE))
        raise ValueError(f"unknown request {op!r}")


async def serve(fd: int) -> int:
    link = await Link.over(socket.socket(fileno=fd))
    op, options, index, count, in_force = await link.receive()
    assert op == "start", op
    sidecar = Sidecar(dataclasses.replace(options, concurrency=1))
    side = WorkerSide(sidecar, count)
    try:
        await sidecar.start_worker()
        for request in in_force:
            side.answer(*request)
    except (ValueError, OSError) as error:
        link.send(("error", str(error)))
        await sidecar.stop(0)
        return 2
    link.send(("ok", os.getpid()))
    tune_gc()
    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGINT, lambda: None)  # the parent's to handle
    loop.add_signal_handler(signal.SIGTERM, stopped.set)
    receiving = asyncio.ensure_future(link.receive())
    stopping = asyncio.ensure_future(stopped.wait())
    grace = 2.0
    try:
        while True:
            await asyncio.wait([receiving, stopping], return_when=asyncio.FIRST_COMPLETED)
            if stopping.done():
                break
            try:
                op, *args = receiving.result()
            except (asyncio.IncompleteReadError, ConnectionError):
                log.warning("worker %d: the sidecar's parent is gone: stopping", index)
                break
            if op == "stop":
                grace = args[0]
                await sidecar.stop(grace)
                link.send(("ok", None))
                await link.writer.drain()
                return 0
            try:
                link.send(("ok", side.answer(op, *args)))
            except Exception as error:  # a bad request must not stop the worker
                log.exception("worker %d: %s", index, op)
                link.send(("error", f"{op}: {error}"))
            receiving = asyncio.ensure_future(link.receive())
    finally:
        receiving.cancel()
        stopping.cancel()
    await sidecar.stop(grace)
    return 0


def main() -> int:
    fd, index = int(sys.argv[1]), sys.argv[2]
    logging.basicConfig(level=os.environ.get("MESH_LOG_LEVEL", "INFO").upper(),
                        format=f"%(asctime)s %(levelname)s %(name)s[worker {index}]: "
                               f"%(message)s")
    return run(serve(fd))


if __name__ == "__main__":
    sys.exit(main())

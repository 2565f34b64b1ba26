"""N of our discovery clients in one process, dealt round-robin over the control-plane replicas.

Each client is a real :class:`sidecar.discovery.DiscoveryClient` on its own mTLS connection,
subscribed to every resource type as a sidecar is, and applying nothing (what a sidecar does
with the resources is not what :mod:`bench.discovery_fanout` measures). Client ``i`` of this
process is client ``first + i`` of the whole run and connects to replica
``(first + i) mod replicas``, so the clients of every process together are spread evenly. The
process prints ``ready`` once every client holds every type, and runs until stdin closes;
:func:`start` starts such processes for a benchmark.

    python -m bench.discovery_clients --ports 15012,15013 --first 0 --count 100 --pki DIR
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import subprocess
import sys
from pathlib import Path
from typing import Any

from mesh.grpc import Channel
from mesh.loop import run
from mesh.proto.discovery_pb2 import Node
from mesh.tls import client_context
from sidecar.discovery import DiscoveryClient

RECONNECT_DELAY = 0.5  # seconds; a bench stream that breaks is a failed run anyway


async def subscribe(ports: list[int], first: int, count: int, pki: Path) -> None:
    """Run the clients until stdin closes; print 'ready' once all of them are synced."""
    folder = pki / "subscriber"
    tls = client_context(folder / "subscriber.crt", folder / "subscriber.key", pki / "ca.crt")
    clients, tasks = [], []
    for index in range(first, first + count):
        channel = Channel("127.0.0.1", ports[index % len(ports)], ssl=tls,
                          authority="controlplane")
        # Every client proves the same identity: a node may claim no other (it would be cut off).
        client = DiscoveryClient(channel, Node(id=f"subscriber-{index}", service="subscriber"),
                                 lambda *_: None,
                                 backoff=lambda: itertools.repeat(RECONNECT_DELAY))
        clients.append(client)
        tasks.append(asyncio.create_task(client.run()))
    await asyncio.gather(*(client.synced.wait() for client in clients))
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    for task in tasks:
        task.cancel()


def shares(total: int, parts: int) -> list[int]:
    """``total`` dealt round-robin over ``parts``: how many each gets."""
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def start(pki: Path, ports: list[int], clients: int, processes: int,
          started: list[subprocess.Popen[Any]]) -> list[int]:
    """Start ``clients`` clients of the replicas on ``ports`` in up to ``processes`` processes,
    adding each to ``started`` (stdin and stdout piped: it prints ``ready``, and leaves when
    stdin closes); their PIDs."""
    pids = []
    first = 0
    for count in shares(clients, processes):
        if count:
            started.append(subprocess.Popen(
                [sys.executable, "-m", "bench.discovery_clients",
                 "--ports", ",".join(map(str, ports)), "--first", str(first),
                 "--count", str(count), "--pki", str(pki)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
            pids.append(started[-1].pid)
            first += count
    return pids


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--ports", required=True,
                        help="the replicas' gRPC ports on 127.0.0.1, comma-separated")
    parser.add_argument("--first", type=int, default=0, help="index of this process's first "
                        "client in the whole run")
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--pki", type=Path, required=True,
                        help="the run's PKI folder (ca.crt, subscriber/)")
    args = parser.parse_args()
    run(subscribe([int(p) for p in args.ports.split(",")], args.first, args.count, args.pki))
    return 0


if __name__ == "__main__":
    sys.exit(main())

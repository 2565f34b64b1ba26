"""``meshctl demo up|down``: the whole shop as a mesh on this machine (see ``docs/demo.md``).

    meshctl demo up              start everything, run a short load, print where to look;
                                 stays in the foreground until Ctrl-C, then stops it all
    meshctl demo up --detach     the same, but leave the mesh running and return
    meshctl demo up --ha         the control plane as three replicas sharing a three-member
                                 etcd cluster (Debian's etcd-server); sidecars get all three
    meshctl demo down            stop a mesh started here (foreground or detached)

The mesh's state (PIDs, certificates, policy copy, logs) is kept in ``--state-dir``
(``DEMO_STATE_DIR``, default ``.mesh/demo``); ``--net`` (``DEMO_NET``, default ``127.0.10``)
picks the loopback addresses, so a second mesh can run beside the first.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
from pathlib import Path
from typing import Any

from demo_services.local_mesh import LocalMesh, MeshError, MeshOptions, down
from demo_services.processes import Record, read_state
from demo_services.where_to_look import print_summary
from mesh.loop import run

DEFAULT_STATE_DIR = ".mesh/demo"


def add_state_dir(p: argparse.ArgumentParser) -> None:
    p.add_argument("--state-dir", type=Path,
                   default=Path(os.environ.get("DEMO_STATE_DIR", DEFAULT_STATE_DIR)),
                   help=f"the local mesh's state folder (default {DEFAULT_STATE_DIR}) "
                        f"[DEMO_STATE_DIR]")


def demo_state(state_dir: Path) -> dict[str, Any]:
    """The state of the local mesh in ``state_dir``.

    Raises:
        ValueError: no mesh is running there (the message says how to start one).
    """
    state = read_state(state_dir / "state.json")
    if state is None:
        raise ValueError(f"no demo mesh is running here (no {state_dir / 'state.json'}): "
                         f"start one with `meshctl demo up`")
    return state


def register(sub: Any) -> None:
    """Add ``demo`` to meshctl's subcommands."""
    p = sub.add_parser("demo", help="run the shop as a local mesh: demo up | demo down",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("action", choices=["up", "down"])
    add_state_dir(p)
    p.add_argument("--net", default=os.environ.get("DEMO_NET", "127.0.10"),
                   help="the first three numbers of the loopback addresses (default 127.0.10) "
                        "[DEMO_NET]")
    p.add_argument("--detach", action="store_true",
                   help="up: leave the mesh running and return (stop it with demo down)")
    p.add_argument("--load-rate", type=float, default=40.0,
                   help="up: requests per second of the first load (default 40)")
    p.add_argument("--load-duration", type=float, default=5.0,
                   help="up: seconds of the first load (default 5; 0: none)")
    p.add_argument("--ha", action="store_true", default=os.environ.get("DEMO_HA", "") == "1",
                   help="up: three control-plane replicas keeping their shared state in a "
                        "three-member etcd cluster, every sidecar given all three [DEMO_HA=1]")
    p.set_defaults(run=main)


def main(args: argparse.Namespace) -> int:
    if args.action == "down":
        try:
            print(down(args.state_dir))
        except ValueError as error:
            print(f"meshctl demo down: {error}")
            return 1
        return 0
    try:
        options = MeshOptions(state_dir=args.state_dir, net=args.net,
                              load_rate=args.load_rate, load_duration=args.load_duration,
                              prometheus=shutil.which("prometheus"), ha=args.ha)
        mesh = LocalMesh(options)
    except ValueError as error:
        print(f"meshctl demo up: {error}")
        return 2
    if not args.detach:  # `demo down` stops a foreground `up` through it
        argv = Path("/proc/self/cmdline").read_bytes().split(b"\0")
        mesh.owner = Record(name="meshctl demo up", pid=os.getpid(),
                            argv=tuple(a.decode() for a in argv if a), log="-")
    return run(_up(mesh, detach=args.detach))


async def _up(mesh: LocalMesh, *, detach: bool) -> int:
    task = asyncio.current_task()
    assert task is not None
    for sig in (signal.SIGINT, signal.SIGTERM):  # Ctrl-C, or `meshctl demo down`
        asyncio.get_running_loop().add_signal_handler(sig, task.cancel)
    keep = False
    try:
        result = await mesh.up()
        print_summary(mesh, result)
        if detach:
            keep = True
            return 0
        await asyncio.Event().wait()  # until Ctrl-C or SIGTERM (meshctl demo down)
        return 0
    except MeshError as error:
        print(f"meshctl demo up: {error}", flush=True)
        return 1
    except asyncio.CancelledError:
        print("\ninterrupted", flush=True)
        return 130
    finally:
        if not keep:
            print("stopping the mesh...", flush=True)
            mesh.stop()
            print(f"stopped; logs kept in {mesh.state_dir / 'logs'}", flush=True)

"""``meshctl load [URL]``: the load generator (:mod:`demo_services.loadgen`), aimed at the demo.

    meshctl load --rate 100 --duration 20       orders through the local mesh, 100/s for 20 s
    meshctl load http://127.0.10.2:15001/products --authority frontend --rate 200 --count 1000
    meshctl load grpc://127.0.10.20:15001/shop.Inventory/ListProducts --authority inventory

Without a URL it places orders through the load generator's sidecar of the local mesh
(``POST /orders``, ``Host: frontend``); without ``--backend`` it reads the received load from
every sidecar of the local mesh (when one is running). The flags are the load generator's.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from demo_services.load_report import summary
from demo_services.loadgen import add_arguments, backends_from, main_async
from demo_services.local_mesh import ORDER
from mesh.loop import run
from meshctl.demo import add_state_dir, demo_state


def register(sub: Any) -> None:
    """Add ``load`` to meshctl's subcommands."""
    p = sub.add_parser("load", help="open-loop load at a constant rate, with a summary",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p, url_required=False)
    add_state_dir(p)
    p.set_defaults(run=main)


def main(args: argparse.Namespace) -> int:
    try:
        backends = backends_from(args.backend)
        if args.url is None or not backends:
            state = demo_state(args.state_dir) if args.url is None else \
                _state_if_any(args)
            if state is not None:
                if args.url is None:
                    loadgen = next(i for i in state["instances"] if i["service"] == "loadgen")
                    args.url = f"http://{loadgen['outbound']}/orders"
                    args.authority = args.authority or "frontend"
                    args.body = args.body if args.body is not None else ORDER
                if not backends:
                    backends = {i["name"]: i["sidecar_admin"] for i in state["instances"]}
        result = run(main_async(args, backends))
    except ValueError as error:
        print(f"meshctl load: {error}", file=sys.stderr)
        return 2
    print(json.dumps(result.to_json(), indent=2) if args.json else summary(result))
    return 0


def _state_if_any(args: argparse.Namespace) -> dict[str, Any] | None:
    try:
        return demo_state(args.state_dir)
    except ValueError:
        return None

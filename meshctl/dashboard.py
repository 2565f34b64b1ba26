"""``meshctl dashboard [--listen HOST:PORT] [--api HOST:PORT] [--prometheus URL]``: the web page.

    meshctl dashboard                          http://127.0.0.1:15020, the demo's control plane
    meshctl dashboard --api 127.0.61.1:15014   the control plane of a mesh on another block
    meshctl dashboard --prometheus http://127.0.10.5:9090   golden metrics by PromQL

Serves the dashboard (``dashboard/``), updated live: the topology, golden metrics per service
and per edge, the inside of a service's clusters, the policy rolling out, and a sample of live
requests. It asks the control plane's operator API (the operator token found as every meshctl
command finds it) twice a second, Prometheus (when given) or else every sidecar's ``/metrics``
for the golden metrics, and the sidecars' admin endpoints for what a page looks inside of;
see ``docs/dashboard.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from typing import Any

from mesh.address import host_port

LISTEN = "127.0.0.1:15020"


def register(sub: Any) -> None:
    """Add ``dashboard`` to meshctl's subcommands."""
    p = sub.add_parser("dashboard", help="serve the live dashboard (topology, golden metrics)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--listen", type=host_port, default=host_port(LISTEN),
                   help=f"where the page is served (default {LISTEN})")
    p.add_argument("--api", dest="dashboard_api",
                   help="the control plane's operator API (default: meshctl's --api)")
    p.add_argument("--prometheus", metavar="URL",
                   help="a Prometheus scraping the sidecars, asked for the golden metrics "
                        "(default: scrape every sidecar's /metrics)")
    p.set_defaults(run=main)


def main(args: argparse.Namespace) -> int:
    from dashboard.app import make_app
    from dashboard.collector import Collector
    from dashboard.prometheus import PrometheusSource
    from mesh.loop import run

    # Imported here: meshctl/__main__.py imports this module to register the command.
    from meshctl.__main__ import operator_token_file

    api = args.dashboard_api or args.api
    token_file = operator_token_file(api)
    try:
        token = token_file.read_text().strip() if token_file else None
    except OSError as error:
        print(f"meshctl dashboard: cannot read the operator token: {error}", file=sys.stderr)
        return 1
    if token is None:
        print(f"meshctl dashboard: no operator token found for {api} (set "
              f"MESH_OPERATOR_TOKEN_FILE); the operator API will refuse", file=sys.stderr)
    host, port = args.listen
    prometheus = PrometheusSource(args.prometheus) if args.prometheus else None
    app = make_app(Collector(api=api, token=token, prometheus=prometheus))
    run(_serve(app, host, port, api))
    return 0


async def _serve(app: Any, host: str, port: int, api: str) -> None:
    from aiohttp import web

    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):  # a clean stop, whichever is sent
            loop.add_signal_handler(sig, stop.set)
        print(f"dashboard on http://{host}:{port}/ (control plane {api})", flush=True)
        await stop.wait()
    finally:
        await runner.cleanup()

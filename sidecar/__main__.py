"""Run a sidecar: ``python -m sidecar --service NAME ...`` (every flag also reads MESH_* env).

With a control plane (``--control-plane``) the sidecar joins with a one-time join token (from
``--join-token-file`` or MESH_JOIN_TOKEN, never the command line), then registers and
subscribes; without one it needs ``--static-config`` and its own certificate.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import signal
import sys
from pathlib import Path

from mesh.address import host_port, host_ports
from mesh.loop import run
from sidecar.sidecar import Sidecar, SidecarOptions
from sidecar.workers import cores_given


def parser() -> argparse.ArgumentParser:
    env = os.environ.get
    # No abbreviations: the removed --join-token would otherwise be taken for
    # --join-token-file, and its secret for a file name.
    p = argparse.ArgumentParser(prog="python -m sidecar", description=__doc__,
                                allow_abbrev=False)
    p.add_argument("--service", default=env("MESH_SERVICE"), required=not env("MESH_SERVICE"),
                   help="the service this sidecar fronts [MESH_SERVICE]")
    p.add_argument("--namespace", default=env("MESH_NAMESPACE", "default"),
                   help="its namespace, part of its SPIFFE ID [MESH_NAMESPACE]")
    p.add_argument("--trust-domain", default=env("MESH_TRUST_DOMAIN", "cluster.local"),
                   help="the mesh's trust domain [MESH_TRUST_DOMAIN]")
    p.add_argument("--outbound", type=host_port, default=env("MESH_OUTBOUND", "127.0.0.1:15001"),
                   help="listener for the local app's calls, h2c or HTTP/1.1 [MESH_OUTBOUND]")
    p.add_argument("--inbound", type=host_port, default=env("MESH_INBOUND", "127.0.0.1:15006"),
                   help="mTLS listener for peer sidecars [MESH_INBOUND]")
    p.add_argument("--admin", type=host_port, default=env("MESH_ADMIN", "127.0.0.1:15000"),
                   help="admin endpoint: /metrics /config_dump /clusters /ready [MESH_ADMIN]")
    p.add_argument("--advertise", default=env("MESH_ADVERTISE"),
                   help="address to register (default: the inbound host) [MESH_ADVERTISE]")
    p.add_argument("--app", type=host_port, default=env("MESH_APP", "127.0.0.1:8080"),
                   help="the local app [MESH_APP]")
    p.add_argument("--app-protocol", choices=["h2c", "http1"],
                   default=env("MESH_APP_PROTOCOL") or None,
                   help="what the app speaks; unset: as the configuration's cluster for this "
                        "service declares (app_protocol GRPC or HTTP1), else h2c "
                        "[MESH_APP_PROTOCOL]")
    p.add_argument("--control-plane", type=host_ports, default=env("MESH_CONTROL_PLANE") or (),
                   help="the control plane's gRPC address, or several replicas' separated "
                        "by commas (one at a time; the next when it is lost) "
                        "[MESH_CONTROL_PLANE]")
    p.add_argument("--bootstrap-ca", type=Path, default=env("MESH_BOOTSTRAP_CA"),
                   help="the mesh CA certificate, to verify the control plane on first start "
                        "[MESH_BOOTSTRAP_CA]")
    p.add_argument("--join-token-file", type=Path, default=env("MESH_JOIN_TOKEN_FILE"),
                   help="a file holding the one-time token for the first certificate (meshctl "
                        "token create), read when one is needed; or give the token itself in "
                        "MESH_JOIN_TOKEN — never as a flag, since every process can read a "
                        "command line [MESH_JOIN_TOKEN_FILE]")
    p.add_argument("--cert-dir", type=Path, default=Path(env("MESH_CERT_DIR", ".mesh/sidecar")),
                   help="where the issued certificate and key are kept [MESH_CERT_DIR]")
    p.add_argument("--static-config", type=Path, default=env("MESH_STATIC_CONFIG"),
                   help="YAML policy + endpoints, instead of a control plane "
                        "[MESH_STATIC_CONFIG]")
    p.add_argument("--cert", type=Path, default=env("MESH_CERT"),
                   help="static mode: this workload's certificate [MESH_CERT]")
    p.add_argument("--key", type=Path, default=env("MESH_KEY"),
                   help="static mode: its key [MESH_KEY]")
    p.add_argument("--ca", type=Path, default=env("MESH_CA"),
                   help="static mode: the mesh CA [MESH_CA]")
    p.add_argument("--seed", type=int, default=env("MESH_SEED"),
                   help="seed for balancer and retry randomness [MESH_SEED]")
    p.add_argument("--concurrency", type=int, default=env("MESH_CONCURRENCY", "1"),
                   help="worker processes serving the listeners, as Envoy's worker threads "
                        "(sidecar/workers.py); 0: one per core this process may use "
                        "[MESH_CONCURRENCY]")
    p.add_argument("--log-level", default=env("MESH_LOG_LEVEL", "INFO"),
                   help="logging level [MESH_LOG_LEVEL]")
    return p


GC_THRESHOLD = 40_000
"""Net new container objects before a young-generation collection (CPython's default: 700).
Each request in flight holds a few dozen: at 10,000, 1,000 requests in flight set off a
collection every few hundred requests, each scanning them all; 40,000 gave 1.10× to 1.14× the
req/s at 1,000 streams and no less at 100 (``bench/sidecar_ab.py``, interleaved; 100,000 no
better than 40,000)."""


def tune_gc() -> None:
    """Keep the cyclic garbage collector off the request path, once the sidecar has started.

    Forwarding makes almost no cyclic garbage, yet with the defaults the collector ran every
    few dozen requests (100 requests in flight hold that many new objects) and, every few
    thousand, scanned the whole heap — the ~50,000 objects of imports and configuration that
    live as long as the process. ``bench/sidecar_pair.py`` measured 15 µs of CPU per request
    and hop in collections. :func:`gc.freeze` moves what exists after start-up to a permanent
    generation that collections skip (what Instagram does for its Python servers), and a
    higher threshold lets the requests in flight come and go without a collection; cyclic
    garbage (a failed call's traceback) is still collected, only less often.
    """
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_THRESHOLD, older, oldest)


async def main_async(options: SidecarOptions) -> int:
    sidecar = Sidecar(options)
    try:
        await sidecar.start()
    except (ValueError, OSError) as error:
        print(f"sidecar: {error}", file=sys.stderr)
        await sidecar.stop()
        return 2
    tune_gc()
    print(f"sidecar {options.service}: ready to serve (admin http://{options.admin[0]}:"
          f"{options.admin[1]}/ready)", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await sidecar.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if args.app_protocol not in (None, "h2c", "http1"):  # from the environment: not checked
        p.error(f"MESH_APP_PROTOCOL: want h2c or http1, got {args.app_protocol!r}")
    if args.concurrency < 0:
        p.error(f"--concurrency {args.concurrency}: want 0 (one per core) or more")
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    options = SidecarOptions(
        service=args.service, namespace=args.namespace, trust_domain=args.trust_domain,
        outbound=args.outbound, inbound=args.inbound, admin=args.admin,
        advertise=args.advertise, app=args.app, app_protocol=args.app_protocol,
        control_plane=args.control_plane, bootstrap_ca=args.bootstrap_ca,
        join_token=os.environ.get("MESH_JOIN_TOKEN", ""),
        join_token_file=args.join_token_file, cert_dir=args.cert_dir,
        static_config=args.static_config,
        cert=args.cert, key=args.key, ca=args.ca, seed=args.seed,
        concurrency=args.concurrency or cores_given())
    return run(main_async(options))


if __name__ == "__main__":
    sys.exit(main())

"""Run the control plane: ``python -m controlplane --pki-dir DIR [--policy FILE|DIR]``.

Every flag can also come from the environment variable named in its help.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from pathlib import Path

from certs.pki import create_ca, load_ca, parse_validity, write_ca
from controlplane.api import start_api
from controlplane.operator import OperatorCredentialError
from controlplane.policy import PolicyError
from controlplane.server import ControlPlane
from controlplane.store.etcd import EtcdStore
from mesh.address import host_port
from mesh.loop import run


def parser() -> argparse.ArgumentParser:
    env = os.environ.get
    p = argparse.ArgumentParser(prog="python -m controlplane", description=__doc__)
    p.add_argument("--pki-dir", type=Path, default=Path(env("MESH_PKI_DIR", ".mesh/pki")),
                   help="folder with the mesh CA (ca.crt, ca.key) [MESH_PKI_DIR]")
    p.add_argument("--init-pki", action="store_true",
                   default=env("MESH_INIT_PKI", "") == "1",
                   help="create the CA if the folder has none [MESH_INIT_PKI=1]")
    p.add_argument("--trust-domain", default=env("MESH_TRUST_DOMAIN", "cluster.local"),
                   help="trust domain of a CA made by --init-pki [MESH_TRUST_DOMAIN]")
    p.add_argument("--listen", type=host_port, default=env("MESH_CP_LISTEN", "127.0.0.1:15012"),
                   help="gRPC (mTLS) address [MESH_CP_LISTEN]")
    p.add_argument("--api", type=host_port, default=env("MESH_CP_API", "127.0.0.1:15014"),
                   help="operator HTTP API address [MESH_CP_API]")
    p.add_argument("--operator-token-file", type=Path,
                   default=env("MESH_OPERATOR_TOKEN_FILE") or None,
                   help="the operator API's bearer token, made (mode 0600) if absent; default "
                        "operator.token in the PKI folder [MESH_OPERATOR_TOKEN_FILE]")
    p.add_argument("--policy", type=Path, default=env("MESH_POLICY") or None,
                   help="policy YAML file or folder, hot-reloaded [MESH_POLICY]")
    p.add_argument("--lease-ttl", type=float, default=float(env("MESH_LEASE_TTL", "10")),
                   help="seconds an instance stays registered without renewal [MESH_LEASE_TTL]")
    p.add_argument("--cert-validity", type=parse_validity,
                   default=parse_validity(env("MESH_CERT_VALIDITY", "1h")),
                   help="workload certificate lifetime, e.g. 1h, 30m [MESH_CERT_VALIDITY]")
    p.add_argument("--store", type=store_spec, default=store_spec(env("MESH_STORE", "memory")),
                   help="where the state replicas share lives (registrations, join tokens, "
                        "the policy): "
                        "'memory' (this process), or 'etcd://HOST:PORT[,HOST:PORT...]' (an etcd "
                        "cluster's members) [MESH_STORE]")
    p.add_argument("--log-level", default=env("MESH_LOG_LEVEL", "INFO"),
                   help="logging level [MESH_LOG_LEVEL]")
    return p


def store_spec(text: str) -> tuple[str, ...]:
    """``memory`` as ``()``; ``etcd://a:2379,b:2379`` as its endpoints; an argparse type.

    Raises:
        argparse.ArgumentTypeError: neither.
    """
    if text == "memory":
        return ()
    if text.startswith("etcd://"):
        endpoints = tuple(e for e in text.removeprefix("etcd://").split(",") if e)
        if endpoints and all(host_port(e) for e in endpoints):
            return endpoints
    raise argparse.ArgumentTypeError(f"want 'memory' or 'etcd://HOST:PORT[,HOST:PORT...]', "
                                     f"got {text!r}")


async def main_async(args: argparse.Namespace) -> int:
    if args.init_pki and not (args.pki_dir / "ca.crt").exists():
        write_ca(create_ca(trust_domain=args.trust_domain), args.pki_dir)
    try:
        store = None if not args.store else EtcdStore(
            args.store, trust_domain=load_ca(args.pki_dir).trust_domain)
        cp = ControlPlane(args.pki_dir, lease_ttl=args.lease_ttl,
                          cert_validity=args.cert_validity, policy_path=args.policy,
                          operator_token_file=args.operator_token_file, store=store)
    except OperatorCredentialError as error:
        print(f"controlplane: {error}", file=sys.stderr)
        return 2
    except PolicyError as error:
        print(f"controlplane: policy rejected:\n{error}", file=sys.stderr)
        return 2
    except FileNotFoundError as error:
        print(f"controlplane: {error} (create the CA with --init-pki or python -m certs init)",
              file=sys.stderr)
        return 2
    await cp.start(*args.listen, api=f"{args.api[0]}:{args.api[1]}")
    api = await start_api(cp, *args.api)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):  # before saying it runs: a stop is clean
        loop.add_signal_handler(sig, stop.set)
    print(f"control plane: gRPC on {args.listen[0]}:{cp.port}, API on "
          f"http://{args.api[0]}:{args.api[1]}", flush=True)
    await stop.wait()
    await api.cleanup()
    await cp.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())

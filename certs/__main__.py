"""The PKI command line: ``python -m certs init`` creates the mesh CA, ``issue`` a workload cert.

    python -m certs init --dir .mesh/pki [--trust-domain cluster.local] [--validity 7d] [--force]
    python -m certs issue --dir .mesh/pki --service checkout [--namespace default]
                          [--validity 1h] [--out DIR]

``issue`` writes ``<service>.crt`` and ``<service>.key`` (mode 0600) into ``--out``, which
defaults to the CA's directory.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

from certs import pki
from mesh.identity import SpiffeId


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; return the process exit status."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "init":
            return _init(args)
        return _issue(args)
    except FileExistsError as exc:
        print(f"certs: error: {exc}; pass --force to replace it", file=sys.stderr)
    except (FileNotFoundError, ValueError) as exc:
        print(f"certs: error: {exc}", file=sys.stderr)
    return 1


def _init(args: argparse.Namespace) -> int:
    ca = pki.create_ca(trust_domain=args.trust_domain, validity=args.validity)
    cert_path, key_path = pki.write_ca(ca, args.dir, overwrite=args.force)
    print(
        f"wrote {cert_path} and {key_path}: CA for trust domain {ca.trust_domain}, "
        f"valid until {ca.certificate.not_valid_after_utc.isoformat()}"
    )
    return 0


def _issue(args: argparse.Namespace) -> int:
    ca = pki.load_ca(args.dir)
    spiffe_id = SpiffeId(
        trust_domain=ca.trust_domain, namespace=args.namespace, service=args.service
    )
    workload = pki.issue_workload(ca, spiffe_id, args.validity)
    cert_path, key_path = pki.write_workload(workload, args.out or args.dir)
    print(
        f"wrote {cert_path} and {key_path}: {spiffe_id}, "
        f"valid until {workload.certificate.not_valid_after_utc.isoformat()}"
    )
    return 0


def _validity(text: str) -> timedelta:
    try:
        return pki.parse_validity(text)
    except ValueError as exc:  # argparse would replace our message with a generic one
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m certs", description="Create the mesh CA and issue workload certificates."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    init = commands.add_parser("init", help="create the mesh CA")
    init.add_argument("--dir", type=Path, required=True, help="where ca.crt and ca.key go")
    init.add_argument("--trust-domain", default="cluster.local")
    init.add_argument("--validity", type=_validity, default=timedelta(days=7), help="e.g. 7d")
    init.add_argument("--force", action="store_true", help="replace an existing CA")

    issue = commands.add_parser("issue", help="issue a workload certificate")
    issue.add_argument("--dir", type=Path, required=True, help="the CA's directory")
    issue.add_argument("--service", required=True)
    issue.add_argument("--namespace", default="default")
    issue.add_argument("--validity", type=_validity, default=timedelta(hours=1), help="e.g. 1h")
    issue.add_argument("--out", type=Path, help="where <service>.crt/.key go (default: --dir)")
    return parser


if __name__ == "__main__":
    sys.exit(main())

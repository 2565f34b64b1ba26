"""``meshctl experiment NAME [--quick] [--out DIR]``: run one of the teaching experiments.

    meshctl experiment list                 the experiments and the question each answers
    meshctl experiment retry_storm          about 3.5 minutes; --quick: under a minute and a half

The same as ``python -m experiments.NAME``: it starts what it needs on 127.0.40.x, prints a
Markdown table, and writes the table, its numbers (JSON) and a plot (PNG) under
``experiments/results/`` (see ``docs/tour.md`` for what each one shows).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    """Add ``experiment`` to meshctl's subcommands."""
    from experiments import NAMES

    p = sub.add_parser("experiment", help="run a teaching experiment (numbers and a plot)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", choices=["list", *NAMES], help="which experiment")
    p.add_argument("--quick", action="store_true", help="a short run, as the tests use")
    p.add_argument("--out", type=Path, help="where results go (default experiments/results)")
    p.set_defaults(run=main)


def main(args: argparse.Namespace) -> int:
    from experiments import NAMES

    if args.name == "list":
        for name in NAMES:
            module = importlib.import_module(f"experiments.{name}")
            print(f"{name:14} {(module.__doc__ or '').splitlines()[0]}")
        return 0
    if args.name not in NAMES:  # argparse checks too; this guards direct callers
        print(f"meshctl experiment: unknown experiment {args.name!r} (want one of "
              f"{', '.join(NAMES)})", file=sys.stderr)
        return 2
    module = importlib.import_module(f"experiments.{args.name}")
    argv = [*(["--quick"] if args.quick else []), *(["--out", str(args.out)] if args.out
                                                     else [])]
    result: int = module.main(module.NAME, module.TITLE, module.run, argv)
    return result

"""``meshctl simulate SCENARIO [--policy FILE] [--seed N] [--out DIR]``: what would a policy do?

    meshctl simulate list                          the scenarios shipped, and what each asks
    meshctl simulate beyond-round-robin            its table, JSON and plot (experiments/results)
    meshctl simulate retry-sweep --policy my.yaml  the scenario with my policy as its one arm
    meshctl simulate path/to/scenario.yaml         a scenario of one's own

The simulator (``simulator/``) runs the sidecar's own policy classes at virtual time: a minute
of traffic in about a second, the same numbers for the same seed. A policy is read and checked
by the control plane's own parser, so one it would refuse is refused here, with the same
messages (see ``docs/simulator.md``).
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path
from typing import Any

RESULTS = Path("experiments/results")


def register(sub: Any) -> None:
    """Add ``simulate`` to meshctl's subcommands."""
    p = sub.add_parser("simulate", help="run a policy at virtual time on a simulated fleet",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("scenario", help="a shipped scenario's name, 'list', or a scenario file")
    p.add_argument("--policy", type=Path,
                   help="a policy file or folder to run instead of the scenario's policies")
    p.add_argument("--seed", type=int, help="instead of the scenario's seed")
    p.add_argument("--quick", action="store_true",
                   help="a short form: the scenario's times scaled by its quick_scale (a "
                        "fifth, unless it says otherwise)")
    p.add_argument("--out", type=Path, default=RESULTS,
                   help=f"where the table, JSON and plot go (default {RESULTS})")
    p.set_defaults(run=main)


def main(args: argparse.Namespace) -> int:
    from simulator import report, scenario

    if args.scenario == "list":
        for name in scenario.names():
            shipped = scenario.load(name)
            print(f"{name:20} {shipped.title}")
        return 0
    if importlib.util.find_spec("matplotlib") is None:
        print("meshctl simulate: the plots need matplotlib: pip install -e '.[experiments]'",
              file=sys.stderr)
        return 1
    try:
        chosen = scenario.load(args.scenario, policy=args.policy)
    except scenario.ScenarioError as error:
        print(f"meshctl simulate: {error}", file=sys.stderr)
        return 2
    if args.seed is not None:
        chosen = scenario.with_seed(chosen, args.seed)
    if args.quick:
        chosen = chosen.scaled(chosen.quick_scale)
    started = time.monotonic()
    result = report.report(chosen, scenario.run(chosen))
    paths = result.write(args.out)
    print(f"## {result.title}\n\n{result.table}\n")
    for note in result.notes:
        print(f"- {note}")
    print(f"\n({time.monotonic() - started:.1f} s; wrote {', '.join(str(p) for p in paths)})")
    return 0

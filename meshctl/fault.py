"""``meshctl fault SERVICE ...``: turn a demo service's fault knobs (its admin endpoint).

    meshctl fault payments                                  show every replica's knobs
    meshctl fault payments --latency 50ms                   +50 ms on every call
    meshctl fault payments --latency 20ms --distribution lognormal --sigma 1.2
                                                            heavy tail: median 20 ms
    meshctl fault payments --latency 5ms --distribution pareto --alpha 1.2
                                                            at least 5 ms, a very long tail
    meshctl fault payments --replica 2 --error-rate 0.3     30 % UNAVAILABLE, one replica
    meshctl fault inventory --brownout 10 --latency 200ms --error-rate 0.5
                                                            slow and failing for 10 s
    meshctl fault payments --replica 2 --crash              the process exits at once
    meshctl fault payments --clear                          back to normal

Every replica of SERVICE is changed unless ``--replica`` names one (``2`` or ``payments-2``).
The addresses come from the local mesh's state (``meshctl demo up``); ``--admin HOST:PORT``
(repeatable) names them instead, e.g. for the compose demo.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import urllib.error
import urllib.request
from typing import Any

from meshctl.demo import add_state_dir, demo_state

REQUEST_TIMEOUT = 5.0


def duration(text: str, unit: str) -> float:
    """``"50ms"``, ``"1.5s"``, or a bare number in ``unit`` ("ms" or "s"), as seconds.

    Raises:
        ValueError: anything else, with the text.
    """
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(ms|s)?\s*", text)
    if match is None:
        raise ValueError(f"duration {text!r}: want a number with ms or s, like 50ms or 2s")
    value = float(match.group(1))
    return value / 1000 if (match.group(2) or unit) == "ms" else value


def register(sub: Any) -> None:
    """Add ``fault`` to meshctl's subcommands."""
    p = sub.add_parser("fault", help="turn a demo service's fault knobs",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("service", help="frontend, orders, inventory or payments")
    p.add_argument("--replica", help="one replica: its number or name (default: all)")
    p.add_argument("--latency", help="added latency, e.g. 50ms (a bare number: ms); with "
                                     "--brownout, the brownout's")
    p.add_argument("--distribution", choices=["fixed", "lognormal", "pareto"],
                   help="how latency is drawn: fixed; lognormal (median --latency); pareto "
                        "(at least --latency)")
    p.add_argument("--sigma", type=float, help="lognormal spread (default 1.0)")
    p.add_argument("--alpha", type=float, help="pareto tail index (default 1.5; smaller: "
                                               "heavier)")
    p.add_argument("--error-rate", type=float,
                   help="share of calls failed with UNAVAILABLE / 503, 0..1; with --brownout, "
                        "the brownout's")
    p.add_argument("--brownout", metavar="SECONDS",
                   help="slow and failing for that long (default 200ms, 0.5)")
    p.add_argument("--crash", action="store_true", help="make the process exit at once")
    p.add_argument("--exit-code", type=int, default=1, help="with --crash (default 1)")
    p.add_argument("--clear", action="store_true", help="no latency, no errors, no brownout")
    p.add_argument("--admin", action="append", metavar="HOST:PORT",
                   help="a replica's admin endpoint (repeatable), instead of the demo state")
    add_state_dir(p)
    p.set_defaults(run=main)


def targets(args: argparse.Namespace) -> dict[str, str]:
    """Replica name → admin address, for the replicas the flags select.

    Raises:
        ValueError: no such service or replica, or no state to look them up in.
    """
    if args.admin:
        return {f"{args.service}@{a}": a for a in args.admin}
    state = demo_state(args.state_dir)
    replicas = {i["name"]: i["app_admin"] for i in state["instances"]
                if i["service"] == args.service and i["app_admin"]}
    if not replicas:
        services = sorted({i["service"] for i in state["instances"] if i["app_admin"]})
        raise ValueError(f"no service {args.service!r} with fault knobs in the demo (have "
                         f"{', '.join(services)})")
    if args.replica is None:
        return replicas
    name = args.replica if args.replica in replicas else f"{args.service}-{args.replica}"
    if name not in replicas:
        raise ValueError(f"{args.service} has no replica {args.replica!r} (have "
                         f"{', '.join(replicas)})")
    return {name: replicas[name]}


def request(args: argparse.Namespace) -> tuple[str, str, dict[str, Any] | None]:
    """The admin call the flags ask for: (method, path, JSON body).

    Raises:
        ValueError: flags that do not go together, or a bad value.
    """
    if args.crash:
        return "POST", "/crash", {"exit_code": args.exit_code}
    if args.clear:
        return "DELETE", "/faults", None
    if args.brownout is not None:
        body: dict[str, Any] = {"seconds": duration(args.brownout, "s")}
        if args.latency is not None:
            body["latency_ms"] = duration(args.latency, "ms") * 1000
        if args.error_rate is not None:
            body["error_rate"] = args.error_rate
        return "POST", "/brownout", body
    body = {}
    if args.latency is not None:
        body["latency_ms"] = duration(args.latency, "ms") * 1000
    for name in ("distribution", "sigma", "alpha", "error_rate"):
        if getattr(args, name) is not None:
            body[name] = getattr(args, name)
    return ("POST", "/faults", body) if body else ("GET", "/faults", None)


def call(address: str, method: str, path: str, body: dict[str, Any] | None) -> dict[str, Any]:
    """One admin request; the JSON answer.

    Raises:
        ValueError: the replica refused it (its reason) or cannot be reached.
    """
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"http://{address}{path}", data=data, method=method,
                                 headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=REQUEST_TIMEOUT) as response:
            answer: dict[str, Any] = json.loads(response.read())
            return answer
    except urllib.error.HTTPError as error:
        raise ValueError(f"{address}{path}: {error.read().decode(errors='replace').strip()}") \
            from None
    except OSError as error:
        raise ValueError(f"cannot reach {address}: {error}") from None


def describe(name: str, view: dict[str, Any]) -> str:
    """One replica's knobs on one line."""
    if view.get("crashing"):
        return f"{name}: crashing now (exit code {view['exit_code']})"
    s, b, c = view["settings"], view["brownout"], view["counters"]
    parts = []
    if s["latency_ms"]:
        shape = {"fixed": "", "lognormal": f" lognormal (median, sigma {s['sigma']})",
                 "pareto": f" pareto (minimum, alpha {s['alpha']})"}[s["distribution"]]
        parts.append(f"+{s['latency_ms']:g} ms{shape}")
    if s["error_rate"]:
        parts.append(f"error rate {s['error_rate']:g}")
    if b is not None:
        parts.append(f"BROWNOUT {b['remaining_s']:.1f} s left (+{b['latency_ms']:g} ms, error "
                     f"rate {b['error_rate']:g})")
    knobs = ", ".join(parts) or "no faults"
    return (f"{name}: {knobs}; so far {c['calls']} calls, {c['failed']} failed, "
            f"{c['delayed']} delayed (mean +{c['mean_added_delay_ms']:g} ms)")


def main(args: argparse.Namespace) -> int:
    try:
        method, path, body = request(args)
        replicas = targets(args)
        failed = 0
        for name, address in replicas.items():
            try:
                print(describe(name, call(address, method, path, body)))
            except ValueError as error:
                print(f"{name}: {error}", file=sys.stderr)
                failed += 1
    except ValueError as error:
        print(f"meshctl fault: {error}", file=sys.stderr)
        return 2
    return 1 if failed else 0

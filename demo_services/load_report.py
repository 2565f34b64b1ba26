"""A load's summary as a person reads it: rate, percentiles, outcomes, what each backend got.

The backend table is the part a load generator alone cannot print: the calls each replica's
sidecar served during the load, each replica's share of its service, and calls per request
sent — above 1.00× for a service, the mesh retried (and that is the load retries add).
"""

from __future__ import annotations

import re
from collections import Counter
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from demo_services.loadgen import LoadResult


def service_of(instance: str) -> str:
    """``payments-2`` → ``payments`` (an instance name without its replica number)."""
    return re.sub(r"-\d+$", "", instance)


def summary(result: LoadResult) -> str:
    """The load's results as a person reads them."""
    r, plan = result.recorder, result.plan
    lines = [f"load: {result.description}, {plan.rate:g}/s open loop"]
    if not r.count:
        return "\n".join([*lines, "no requests were sent"])
    lines.append(f"  sent {r.count} in {result.elapsed:.1f} s: {result.achieved_rps:.1f}/s "
                 f"achieved (the generator was at most {result.max_lag * 1000:.1f} ms late)")
    lines.append("  latency from each request's due time: "
                 + "  ".join(f"p{p} {r.percentile(p) * 1000:.1f} ms" for p in (50, 90, 99))
                 + f"  max {r.max * 1000:.1f} ms")
    lines.append("  outcomes: " + ", ".join(f"{k} ×{v}" for k, v in sorted(r.outcomes.items()))
                 + f"  (errors {r.failures}, {r.error_rate:.2%})")
    if result.backends:
        lines.append("  what each backend received (inbound calls counted by its sidecar):")
        lines.extend("    " + line for line in backend_table(result).splitlines())
        retries, refused, ejections = Counter[str](), Counter[str](), Counter[str]()
        for counts in result.backends.values():
            if counts is not None:
                retries.update(counts.retries)
                refused.update(counts.refused)
                ejections.update(counts.ejections)
        if retries or refused:
            lines.append("  retries made by callers' sidecars: " + _listed(retries)
                         + (f"; not made: {_listed(refused)}" if refused else ""))
        if ejections:
            lines.append(f"  endpoints ejected by outlier detection: {_listed(ejections)}")
    return "\n".join(lines)


def _listed(counts: Counter[str]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none"


def backend_table(result: LoadResult) -> str:
    """Per instance: calls served, its share of its service's calls, and per request sent.

    Calls are counted by status class only for HTTP: a failed gRPC call is an HTTP 200 with an
    error in ``grpc-status``, so the load generator's outcomes are the place to read errors.
    """
    sent = result.recorder.count
    totals: dict[str, int] = {}
    for name, counts in result.backends.items():
        if counts is not None:
            totals[service_of(name)] = totals.get(service_of(name), 0) + counts.inbound_total
    rows: list[list[str]] = []
    for name, counts in result.backends.items():
        service = service_of(name)
        if counts is None:
            rows.append([name, "unreachable", "", ""])
        elif totals.get(service) or service != "loadgen":  # loadgen's sidecar serves nothing
            total, of_service = counts.inbound_total, totals[service]
            rows.append([name, str(total), f"{total / of_service:.0%}" if of_service else "-",
                         f"{total / sent:.2f}×" if sent else "-"])
    for service, total in totals.items():
        if sum(1 for n in result.backends if service_of(n) == service) > 1:
            rows.append([f"{service} (all)", str(total), "",
                         f"{total / sent:.2f}×" if sent else "-"])
    header = ["BACKEND", "CALLS", "SHARE", "PER REQUEST SENT"]
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h)
              for i, h in enumerate(header)]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True))
                     .rstrip() for row in [header, *rows])

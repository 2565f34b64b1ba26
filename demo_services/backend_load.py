"""The load each backend actually received, read from the sidecars' Prometheus ``/metrics``.

What a load generator *sent* is not what the backends *got*: retries add to it (a 50 %
brownout with three retries makes 1.875×), the balancer splits it, outlier detection moves it
away from a sick replica. Each sidecar counts the calls its inbound side served
(``mesh_sidecar_requests_total{direction="inbound"}``) and the retries its outbound side made
(``mesh_sidecar_retries_total{cluster}``) or refused (``mesh_sidecar_retries_refused_total``); a
scrape before and after a load, subtracted, says what that load did to each of them.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

SCRAPE_TIMEOUT = 2.0  # seconds


@dataclass(slots=True)
class SidecarCounts:
    """The counters of one sidecar that a load changes."""

    inbound: Counter[str] = field(default_factory=Counter)  # by status class: "2xx", "5xx"
    retries: Counter[str] = field(default_factory=Counter)  # by cluster called
    refused: Counter[str] = field(default_factory=Counter)  # "cluster/reason"
    ejections: Counter[str] = field(default_factory=Counter)  # by cluster

    @property
    def inbound_total(self) -> int:
        return sum(self.inbound.values())

    def minus(self, before: SidecarCounts) -> SidecarCounts:
        """What happened between the scrape ``before`` and this one."""
        def sub(a: Counter[str], b: Counter[str]) -> Counter[str]:
            return Counter({k: a[k] - b.get(k, 0) for k in a if a[k] - b.get(k, 0)})
        return SidecarCounts(inbound=sub(self.inbound, before.inbound),
                             retries=sub(self.retries, before.retries),
                             refused=sub(self.refused, before.refused),
                             ejections=sub(self.ejections, before.ejections))


def parse(text: str) -> SidecarCounts:
    """The counters in one ``/metrics`` page (Prometheus text format)."""
    counts = SidecarCounts()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels, value = sample.labels, int(sample.value)
            if value == 0:
                continue  # a series started at 0 before anything was counted in it
            if sample.name == "mesh_sidecar_requests_total" and \
                    labels.get("direction") == "inbound":
                counts.inbound[labels["code"]] += value
            elif sample.name == "mesh_sidecar_retries_total":
                counts.retries[labels["cluster"]] += value
            elif sample.name == "mesh_sidecar_retries_refused_total":
                counts.refused[f"{labels['cluster']}/{labels['reason']}"] += value
            elif sample.name == "mesh_sidecar_outlier_ejections_total":
                counts.ejections[labels["cluster"]] += value
    return counts


async def scrape(session: aiohttp.ClientSession, address: str) -> SidecarCounts | None:
    """The counters of the sidecar whose admin endpoint is ``address``; None if unreachable."""
    try:
        async with session.get(f"http://{address}/metrics",
                               timeout=aiohttp.ClientTimeout(total=SCRAPE_TIMEOUT)) as response:
            if response.status != 200:
                return None
            return parse(await response.text())
    except (aiohttp.ClientError, TimeoutError):
        return None


async def scrape_all(admins: dict[str, str]) -> dict[str, SidecarCounts | None]:
    """Every sidecar in ``admins`` (name → admin address), scraped at once."""
    async with aiohttp.ClientSession() as session:
        results = await asyncio.gather(*(scrape(session, a) for a in admins.values()))
    return dict(zip(admins, results, strict=True))


def received(before: dict[str, SidecarCounts | None],
             after: dict[str, SidecarCounts | None]) -> dict[str, SidecarCounts | None]:
    """Per sidecar, what changed between two scrapes (None: it could not be read both times)."""
    out: dict[str, SidecarCounts | None] = {}
    for name, now in after.items():
        then = before.get(name)
        out[name] = None if now is None or then is None else now.minus(then)
    return out

"""The collector: what the dashboard knows of the mesh, polled from public interfaces.

Once a second at most, one round asks:

1. the control plane's operator API (with the operator token): ``/status`` (policy version,
   replicas, discovery streams), ``/services``, and ``/endpoints/{service}`` for each service;
2. every sidecar's admin endpoint, ``GET /metrics`` (Prometheus text), all at once.

Where a sidecar's admin endpoint is: no interface publishes it today. A registered endpoint
names its sidecar's address (the IP its inbound listener is on), and a sidecar's admin listens
on port 15000 (:data:`ADMIN_PORT`) of that same address in the local demo and in compose, so the
collector asks ``{endpoint address}:{admin port}``. A sidecar whose admin listens elsewhere is
shown with the error its scrape met. Instances that do not register (proxyless gRPC clients)
are not scraped.

Each sidecar's scrapes are kept for the window (15 s by default); an edge — a source service
calling a destination cluster — is the sum over the service's sidecars of what they counted
between their oldest scrape in the window and their newest (:mod:`dashboard.golden`). The
state is plain JSON; each round that changes it wakes whoever waits in
:meth:`Collector.next_state`.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import deque
from collections.abc import Mapping
from dataclasses import asdict
from typing import Any
from urllib.parse import quote

import aiohttp

from dashboard.golden import Scrape, golden, increase, merge, parse
from mesh.clock import SYSTEM_CLOCK, Clock

log = logging.getLogger("dashboard.collector")

INTERVAL = 1.0  # seconds between rounds: the page is at most this far behind
TIMEOUT = 0.8  # seconds one request of a round may take, so a round fits its interval
ADMIN_PORT = 15000  # the sidecar's admin port (sidecar/__main__.py's default, demo, compose)


class Collector:
    """Polls the mesh and holds the dashboard's state (see the module docstring).

    Args:
        api: the operator API, ``host:port``.
        token: the operator token, or ``None`` to send none (the API will refuse).
        window: seconds the golden metrics are taken over.
        admin_port: the port of a sidecar's admin endpoint on its registered address.
    """

    def __init__(self, *, api: str, token: str | None, window: float = 15.0,
                 admin_port: int = ADMIN_PORT, clock: Clock = SYSTEM_CLOCK) -> None:
        if window <= 0:
            raise ValueError(f"window {window}: want a positive number of seconds")
        self.api, self.window, self.admin_port, self.clock = api, window, admin_port, clock
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._scrapes: dict[str, deque[Scrape]] = {}  # admin address → scrapes in the window
        self.state: dict[str, Any] = {"api": api, "window_s": window, "round": 0}
        self.version = 0  # counts the changes of state
        self.payload = json.dumps(self.state)
        self._changed = asyncio.Condition()

    async def run(self) -> None:
        """Poll until cancelled."""
        timeout = aiohttp.ClientTimeout(total=TIMEOUT)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            while True:
                started = self.clock.now()
                await self.poll(http)
                await asyncio.sleep(max(0.0, INTERVAL - (self.clock.now() - started)))

    async def next_state(self, after: int) -> tuple[int, str]:
        """The state (version, JSON) once its version is past ``after``."""
        async with self._changed:
            await self._changed.wait_for(lambda: self.version > after)
            return self.version, self.payload

    async def poll(self, http: aiohttp.ClientSession) -> None:
        """One round: ask everything once, recompute the state, wake the waiting."""
        errors: list[str] = []
        control_plane, services, sidecars = await self._control_plane(http, errors)
        scrapes = await asyncio.gather(*(self._scrape(http, s["admin"]) for s in sidecars))
        for sidecar, problem in zip(sidecars, scrapes, strict=True):
            sidecar["error"] = problem
        self._forget(keep={s["admin"] for s in sidecars})
        state = {"api": self.api, "window_s": self.window, "errors": errors,
                 "control_plane": control_plane, "services": services, "sidecars": sidecars,
                 "edges": self._edges(sidecars)}
        payload = json.dumps(state, sort_keys=True)
        if payload != self.payload:
            async with self._changed:
                self.state, self.payload = state, payload
                self.version += 1
                self._changed.notify_all()

    async def _get(self, http: aiohttp.ClientSession, path: str) -> Any:
        async with http.get(f"http://{self.api}{path}", headers=self._headers) as response:
            if response.status != 200:
                raise aiohttp.ClientError(f"GET {path}: HTTP {response.status} "
                                          f"{(await response.text()).strip()[:200]}")
            return await response.json()

    async def _control_plane(self, http: aiohttp.ClientSession, errors: list[str]
                             ) -> tuple[dict[str, Any] | None, list[Any], list[dict[str, Any]]]:
        try:
            status = await self._get(http, "/status")
            services: list[dict[str, Any]] = await self._get(http, "/services")
            endpoints = await asyncio.gather(*(
                self._get(http, f"/endpoints/{quote(s['service'])}"
                                f"?namespace={quote(s['namespace'])}") for s in services))
        except (aiohttp.ClientError, TimeoutError, ValueError) as error:
            errors.append(f"operator API {self.api}: {error!r}")
            return None, [], []
        streams = [{"node": s["node"], "service": s["service"], "protocol": s["protocol"],
                    "in_sync": all(t["sent"] == t["acked"] for t in s["types"].values()),
                    "nacks": sum(t["nacks"] for t in s["types"].values())}
                   for s in status["streams"]]
        control_plane = {"policy_version": status["policy_version"],
                         "policy_error": status["policy_error"],
                         "replicas": [r["name"] for r in status["replicas"]],
                         "instances": status["instances"], "streams": streams}
        sidecars = [{"service": s["service"], "namespace": s["namespace"],
                     "instance": e["instance"], "admin": f"{e['address']}:{self.admin_port}"}
                    for s, rows in zip(services, endpoints, strict=True) for e in rows]
        return control_plane, services, sorted(sidecars, key=lambda s: s["instance"])

    async def _scrape(self, http: aiohttp.ClientSession, admin: str) -> str | None:
        """Scrape one sidecar into its window; the problem met, or ``None``."""
        try:
            async with http.get(f"http://{admin}/metrics") as response:
                text = await response.text()
                if response.status != 200:
                    return f"GET /metrics: HTTP {response.status}"
            scrape = parse(text, self.clock.now())
        except (aiohttp.ClientError, TimeoutError, ValueError) as error:
            return f"GET http://{admin}/metrics: {error!r}"
        window = self._scrapes.setdefault(admin, deque())
        window.append(scrape)
        # Keep the newest scrape at or before the window's start, so the window is covered.
        while len(window) > 2 and window[1].at <= scrape.at - self.window:
            window.popleft()
        return None

    def _forget(self, keep: set[str]) -> None:
        for admin in self._scrapes.keys() - keep:
            del self._scrapes[admin]

    def _edges(self, sidecars: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Per (source service, destination cluster), the golden metrics over the window."""
        parts: dict[tuple[str, str], list[tuple[Any, float]]] = {}
        for sidecar in sidecars:
            window = self._scrapes.get(sidecar["admin"])
            if not window or sidecar["error"]:
                continue
            first, last = window[0], window[-1]
            grown: Mapping[str, Any] = increase(first, last) if len(window) > 1 else {}
            for cluster, counts in last.clusters.items():
                if counts.total == 0:
                    continue  # never called: not an edge
                parts.setdefault((sidecar["service"], cluster), []).append(
                    (grown.get(cluster), last.at - first.at))
        edges = []
        for (source, cluster), seen in sorted(parts.items()):
            grown_parts = [g for g, _ in seen if g is not None]
            spans = [s for g, s in seen if g is not None]
            metrics = golden(merge(grown_parts), sum(spans) / len(spans) if spans else 0.0)
            shown = {k: None if v is None else round(v, 3) for k, v in asdict(metrics).items()}
            edges.append({"source": source, "destination": cluster, **shown})
        return edges

"""The collector: what the dashboard knows of the mesh, polled from public interfaces.

Twice a second at most (:data:`INTERVAL`), one round asks:

1. the control plane's operator API (with the operator token): ``/status`` (policy version,
   replicas, every discovery stream and the policy version it ACKed), ``/services``,
   ``/endpoints/{service}`` for each service (where each sidecar's admin endpoint is: the
   registered address and the ``admin_port`` the sidecar published), and
   ``/policy/history`` when the policy version moved;
2. the golden metrics, from one of two sources:

   - **Prometheus**, when the dashboard is given one (``--prometheus``): a handful of PromQL
     queries per window shown (:mod:`dashboard.prometheus`), however many sidecars there are;
   - otherwise **every sidecar's** ``GET /metrics``, all at once; each sidecar's scrapes are
     kept for the longest window (five minutes) and a window's metrics are the difference
     between its newest scrape and the newest one at or before the window's start
     (:mod:`dashboard.golden`). This is two requests per sidecar per second: right for a demo,
     wrong for a thousand sidecars, where Prometheus is the answer;

3. only while a page looks at them: the ``GET /clusters`` of the sidecars of the service a page
   shows the inside of, and for the *top* view the ``GET /tap`` (recent requests) of at most
   :data:`TOP_SIDECARS` sidecars a round, taken in turn — a sample, whatever the fleet's size.

What pages look at is registered with :meth:`Collector.watching` for as long as each page's
event stream is open. The state is plain JSON; each round that changes it wakes whoever waits
in :meth:`Collector.next_state`. ``at`` in the state is the wall-clock time (ms) its round
started, so a page can tell how far behind the mesh it draws.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import difflib
import json
import logging
import time
from collections import Counter, defaultdict, deque
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import quote

import aiohttp

from dashboard.golden import (
    ClusterCounts,
    Scrape,
    attempt_success,
    connections_shown,
    golden,
    increase,
    merge,
    parse,
)
from dashboard.prometheus import PrometheusError, PrometheusSource
from mesh.clock import SYSTEM_CLOCK, Clock

log = logging.getLogger("dashboard.collector")

INTERVAL = 0.5  # seconds between rounds: half the page's 1 s budget from event to screen
# Seconds one request of a round may take: a slower sidecar is shown with an error rather than
# holding every later round up.
TIMEOUT = 1.0
# The windows a page can choose for its golden metrics, seconds: Linkerd viz's users ask for
# these three; the first is the default.
WINDOWS = (15.0, 60.0, 300.0)
TOP_SIDECARS = 10  # sidecars asked for their recent requests per round, in turn
TOP_PER_SIDECAR = 20  # the newest requests taken from each
TOP_KEPT = 30  # requests the top view holds: a screenful
HISTORY_SHOWN = 20  # policy versions the policy view shows (with their diffs)
XDS = "xds.v3"  # the discovery dialect proxyless gRPC workloads speak (/status "protocol")


@dataclass(frozen=True, slots=True)
class Watch:
    """What one open page looks at: its window, the service whose clusters it shows (if any),
    and whether it shows the live requests."""

    window: float = WINDOWS[0]
    service: str | None = None
    top: bool = False

    def __post_init__(self) -> None:
        if self.window not in WINDOWS:
            raise ValueError(f"window {self.window:g}: want one of "
                             f"{', '.join(f'{w:g}' for w in WINDOWS)} seconds")


class Collector:
    """Polls the mesh and holds the dashboard's state (see the module docstring).

    Args:
        api: the operator API, ``host:port``.
        token: the operator token, or ``None`` to send none (the API will refuse).
        prometheus: where to ask for the golden metrics; ``None``: scrape every sidecar.
    """

    def __init__(self, *, api: str, token: str | None,
                 prometheus: PrometheusSource | None = None,
                 clock: Clock = SYSTEM_CLOCK) -> None:
        self.api, self.prometheus, self.clock = api, prometheus, clock
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._watches: Counter[Watch] = Counter()
        self._scrapes: dict[str, deque[Scrape]] = {}  # admin address → scrapes, oldest first
        self._policy: tuple[int | None, list[dict[str, Any]]] = (None, [])  # version, history
        self._tap_seq: dict[str, int] = {}  # admin address → the tap's next sequence number
        self._tap_turn = 0  # where the next round's sample of sidecars starts
        self._top: deque[dict[str, Any]] = deque(maxlen=TOP_KEPT)
        self.state: dict[str, Any] = {"api": api, "windows": list(WINDOWS)}
        self.version = 0  # counts the changes of state
        self.payload = json.dumps(self.state)
        self._compared = ""  # the last state without its time, to tell a change
        self._changed = asyncio.Condition()
        self._asked = asyncio.Event()  # a page asked for something new: poll now

    @contextlib.contextmanager
    def watching(self, watch: Watch) -> Iterator[None]:
        """Register what a page looks at while the ``with`` block runs."""
        self._watches[watch] += 1
        self._asked.set()
        try:
            yield
        finally:
            self._watches[watch] -= 1
            if self._watches[watch] <= 0:
                del self._watches[watch]

    async def run(self) -> None:
        """Poll until cancelled."""
        timeout = aiohttp.ClientTimeout(total=TIMEOUT)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            while True:
                started = self.clock.now()
                self._asked.clear()
                await self.poll(http)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(0.0, INTERVAL - (self.clock.now() - started))):
                        await self._asked.wait()

    async def next_state(self, after: int) -> tuple[int, str]:
        """The state (version, JSON) once its version is past ``after``."""
        async with self._changed:
            await self._changed.wait_for(lambda: self.version > after)
            return self.version, self.payload

    async def poll(self, http: aiohttp.ClientSession) -> None:
        """One round: ask what is needed once, recompute the state, wake the waiting."""
        at_ms = round(time.time() * 1000)
        errors: list[str] = []
        watches = list(self._watches)
        windows = sorted({WINDOWS[0], *(w.window for w in watches)})
        control_plane, services, sidecars = await self._control_plane(http, errors)
        policy = await self._policy_view(http, control_plane, errors)
        golden_by_window, clusters, top = await asyncio.gather(
            self._golden(http, windows, sidecars, errors),
            self._clusters(http, {w.service for w in watches if w.service}, sidecars),
            self._tap(http, sidecars) if any(w.top for w in watches) else _nothing())
        proxyless = sorted({s["service"] for s in (control_plane or {}).get("streams", [])
                            if s["protocol"] == XDS})
        state = {"api": self.api, "windows": list(WINDOWS), "errors": errors,
                 "source": self.prometheus.url if self.prometheus else "sidecars",
                 "control_plane": control_plane, "services": services, "sidecars": sidecars,
                 "proxyless": proxyless, "golden": golden_by_window, "policy": policy,
                 "clusters": clusters, "top": top}
        compared = json.dumps(state, sort_keys=True)
        if compared != self._compared:
            async with self._changed:
                self._compared = compared
                self.state = {**state, "at": at_ms}
                self.payload = json.dumps(self.state, sort_keys=True)
                self.version += 1
                self._changed.notify_all()

    async def _get(self, http: aiohttp.ClientSession, url: str, *,
                   headers: Mapping[str, str] | None = None) -> Any:
        async with http.get(url, headers=headers) as response:
            if response.status != 200:
                raise aiohttp.ClientError(f"GET {url}: HTTP {response.status} "
                                          f"{(await response.text()).strip()[:200]}")
            return await response.json()

    async def _api(self, http: aiohttp.ClientSession, path: str) -> Any:
        return await self._get(http, f"http://{self.api}{path}", headers=self._headers)

    async def _control_plane(self, http: aiohttp.ClientSession, errors: list[str]
                             ) -> tuple[dict[str, Any] | None, list[Any], list[dict[str, Any]]]:
        try:
            status = await self._api(http, "/status")
            services: list[dict[str, Any]] = await self._api(http, "/services")
            endpoints = await asyncio.gather(*(
                self._api(http, f"/endpoints/{quote(s['service'])}"
                                f"?namespace={quote(s['namespace'])}") for s in services))
        except (aiohttp.ClientError, TimeoutError, ValueError) as error:
            errors.append(f"operator API {self.api}: {error}")
            return None, [], []
        streams = [{"node": s["node"], "service": s["service"], "namespace": s["namespace"],
                    "protocol": s["protocol"],
                    "in_sync": all(t["sent"] == t["acked"] for t in s["types"].values()),
                    "policy_version": s.get("policy_version"), "nack": s.get("nack")}
                   for s in status["streams"]]
        control_plane = {"policy_version": status["policy_version"],
                         "policy_error": status["policy_error"],
                         "replicas": [r["name"] for r in status["replicas"]],
                         "instances": status["instances"],
                         "streams": sorted(streams, key=lambda s: (s["service"], s["node"]))}
        sidecars = [{"service": s["service"], "namespace": s["namespace"],
                     "instance": e["instance"],
                     "admin": f"{e['address']}:{e['admin_port']}" if e.get("admin_port")
                     else None,
                     "error": None if e.get("admin_port") else "its admin endpoint is not "
                                                               "published (admin_port 0)"}
                    for s, rows in zip(services, endpoints, strict=True) for e in rows]
        return control_plane, services, sorted(sidecars, key=lambda s: s["instance"])

    # ------------------------------------------------------------------ policy

    async def _policy_view(self, http: aiohttp.ClientSession,
                           control_plane: dict[str, Any] | None,
                           errors: list[str]) -> dict[str, Any] | None:
        """The version in force, its history with diffs, and what every stream ACKed."""
        if control_plane is None:
            return None
        version = control_plane["policy_version"]
        if self._policy[0] != version:
            try:
                answer = await self._api(http, "/policy/history")
                self._policy = (version, _with_diffs(answer["versions"])[-HISTORY_SHOWN:])
            except (aiohttp.ClientError, TimeoutError, ValueError, KeyError) as error:
                errors.append(f"operator API {self.api}: policy history: {error}")
        return {"version": version, "error": control_plane["policy_error"],
                "history": self._policy[1], "streams": control_plane["streams"]}

    # ------------------------------------------------------------------ golden metrics

    async def _golden(self, http: aiohttp.ClientSession, windows: list[float],
                      sidecars: list[dict[str, Any]], errors: list[str]
                      ) -> dict[str, dict[str, Any]]:
        """Per window shown (``"15"``, ``"60"``, ``"300"``): edges and services."""
        if self.prometheus is not None:
            source = self.prometheus
            try:
                answers = await asyncio.gather(*(
                    asyncio.gather(source.edges(http, w), source.services(http, w))
                    for w in windows))
            except PrometheusError as error:
                errors.append(str(error))
                return {}
            return {f"{w:g}": {"edges": edges, "services": services}
                    for w, (edges, services) in zip(windows, answers, strict=True)}
        scraped = [s for s in sidecars if s["admin"]]
        problems = await asyncio.gather(*(self._scrape(http, s["admin"]) for s in scraped))
        for sidecar, problem in zip(scraped, problems, strict=True):
            sidecar["error"] = problem
        for admin in self._scrapes.keys() - {s["admin"] for s in scraped}:
            del self._scrapes[admin]
        fresh = [s for s in scraped if not s["error"]]
        return {f"{w:g}": {"edges": self._edges(fresh, w), "services": self._services(fresh, w)}
                for w in windows}

    async def _scrape(self, http: aiohttp.ClientSession, admin: str) -> str | None:
        """Scrape one sidecar into its scrapes; the problem met, or ``None``."""
        try:
            async with http.get(f"http://{admin}/metrics") as response:
                text = await response.text()
                if response.status != 200:
                    return f"GET http://{admin}/metrics: HTTP {response.status}"
            scrape = parse(text, self.clock.now())
        except (aiohttp.ClientError, TimeoutError, ValueError) as error:
            return f"GET http://{admin}/metrics: {error!r}"
        kept = self._scrapes.setdefault(admin, deque())
        kept.append(scrape)
        # Keep the newest scrape at or before the longest window's start, so it is covered.
        while len(kept) > 2 and kept[1].at <= scrape.at - WINDOWS[-1]:
            kept.popleft()
        return None

    def _span(self, admin: str, window: float) -> tuple[Scrape, Scrape] | None:
        """The scrapes a window is measured between: the newest one at or before its start
        (the oldest kept, while the dashboard has run for less than the window) and the
        newest; ``None`` with fewer than two."""
        kept = self._scrapes.get(admin)
        if not kept or len(kept) < 2:
            return None
        last = kept[-1]
        times = [s.at for s in kept]
        first = max(0, bisect.bisect_right(times, last.at - window) - 1)
        return (kept[first], last) if first < len(kept) - 1 else None

    def _edges(self, sidecars: list[dict[str, Any]], window: float) -> list[dict[str, Any]]:
        """Per (source service, destination cluster), the golden metrics over ``window``, the
        success of its attempts, and its open connections now."""
        parts: dict[tuple[str, str], list[tuple[ClusterCounts, float]]] = {}
        tries: dict[tuple[str, str], list[ClusterCounts]] = {}
        opened: dict[tuple[str, str], defaultdict[str, float]] = {}
        for sidecar in sidecars:
            kept = self._scrapes[sidecar["admin"]]
            for (direction, cluster, tls), count in kept[-1].connections.items():
                if direction == "outbound":
                    opened.setdefault((sidecar["service"], cluster), defaultdict(float))[tls] += \
                        count
            span = self._span(sidecar["admin"], window)
            grown = increase(*span) if span else {}
            attempts = increase(*span, of=lambda s: s.attempts) if span else {}
            for cluster, counts in kept[-1].clusters.items():
                if counts.total == 0:
                    continue  # never called: not an edge
                key = (sidecar["service"], cluster)
                parts.setdefault(key, [])
                tries.setdefault(key, [])
                if span is not None and cluster in grown:
                    parts[key].append((grown[cluster], span[1].at - span[0].at))
                if cluster in attempts:
                    tries[key].append(attempts[cluster])
        return [{"source": source, "destination": cluster, **_metrics(seen),
                 "attempt_success": attempt_success(merge(tries[source, cluster])),
                 **connections_shown(opened.get((source, cluster), {}))}
                for (source, cluster), seen in sorted(parts.items())]

    def _services(self, sidecars: list[dict[str, Any]], window: float) -> list[dict[str, Any]]:
        """Per service, what its sidecars answered inbound over ``window``, and their open
        inbound connections now."""
        parts: dict[str, list[tuple[ClusterCounts, float]]] = {}
        opened: dict[str, defaultdict[str, float]] = {}
        for sidecar in sidecars:
            service, kept = sidecar["service"], self._scrapes[sidecar["admin"]]
            parts.setdefault(service, [])
            tally = opened.setdefault(service, defaultdict(float))
            for (direction, _, tls), count in kept[-1].connections.items():
                if direction == "inbound":
                    tally[tls] += count
            span = self._span(sidecar["admin"], window)
            if span is not None:
                parts[service].append((merge(increase(*span, of=lambda s: s.inbound).values()),
                                       span[1].at - span[0].at))
        return [{"service": service, **_metrics(seen), **connections_shown(opened[service])}
                for service, seen in sorted(parts.items())]

    # ------------------------------------------------------------------ on demand

    async def _clusters(self, http: aiohttp.ClientSession, services: set[str],
                        sidecars: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
        """Per service a page shows the inside of: each of its sidecars' ``/clusters``."""
        asked = [s for s in sidecars if s["service"] in services and s["admin"]]
        answers = await asyncio.gather(*(self._get(http, f"http://{s['admin']}/clusters")
                                         for s in asked), return_exceptions=True)
        shown: dict[str, list[dict[str, Any]]] = {service: [] for service in sorted(services)}
        for sidecar, answer in zip(asked, answers, strict=True):
            failed = isinstance(answer, BaseException)
            shown[sidecar["service"]].append({
                "instance": sidecar["instance"], "admin": sidecar["admin"],
                "error": f"GET http://{sidecar['admin']}/clusters: {answer!r}" if failed
                else None, "clusters": {} if failed else answer})
        return shown

    async def _tap(self, http: aiohttp.ClientSession,
                   sidecars: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The newest requests: a sample of :data:`TOP_SIDECARS` sidecars a round, in turn."""
        tapped = [s for s in sidecars if s["admin"]]
        if tapped:
            start = self._tap_turn % len(tapped)
            asked = (tapped[start:] + tapped[:start])[:TOP_SIDECARS]
            self._tap_turn = start + len(asked)
            answers = await asyncio.gather(*(self._read_tap(http, s) for s in asked),
                                           return_exceptions=True)
            fresh = [r for a in answers if not isinstance(a, BaseException) for r in a]
            self._top.extend(sorted(fresh, key=lambda r: r["at"]))
        return list(self._top)[::-1]  # newest first

    async def _read_tap(self, http: aiohttp.ClientSession,
                        sidecar: dict[str, Any]) -> list[dict[str, Any]]:
        admin = sidecar["admin"]
        after = self._tap_seq.get(admin)
        query = f"limit={TOP_PER_SIDECAR}" + ("" if after is None else f"&after={after}")
        answer = await self._get(http, f"http://{admin}/tap?{query}")
        self._tap_seq[admin] = answer["next"]
        return [{**r, "source": sidecar["service"], "instance": sidecar["instance"]}
                for r in answer["requests"]]


async def _nothing() -> None:
    return None


def _metrics(seen: list[tuple[ClusterCounts, float]]) -> dict[str, Any]:
    """The golden metrics of several sidecars' increases, each over its own span: the counts
    add up, and the rate is taken over the spans' mean."""
    spans = [span for _, span in seen]
    metrics = golden(merge(counts for counts, _ in seen), sum(spans) / len(spans)
                     if spans else 0.0)
    return {k: None if v is None else round(v, 3) for k, v in asdict(metrics).items()}


def _with_diffs(versions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The policy history, each version with its unified diff against the one before."""
    shown, before = [], ""
    for entry in versions:
        text = entry["policy"]
        diff = "".join(difflib.unified_diff(
            before.splitlines(keepends=True), text.splitlines(keepends=True),
            fromfile="before", tofile=f"version {entry['version']}"))
        shown.append({"version": entry["version"], "source": entry.get("source"),
                      "applied_at": entry.get("applied_at"), "diff": diff})
        before = text
    return shown

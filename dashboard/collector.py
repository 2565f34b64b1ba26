"""The collector: what the dashboard knows of the mesh, polled from public interfaces.

Twice a second at most (:data:`INTERVAL`), one round asks:

1. the control plane's operator API (with the operator token): ``/status`` of every replica
   (the policy version, the replicas, and every discovery stream with the policy version it
   ACKed — a replica lists only the streams it holds), and ``/policy/history`` when the policy
   version moved. The topology — ``/services`` and ``/endpoints/{service}`` for each service,
   which say where each sidecar's admin endpoint is (the registered address and the
   ``admin_port`` the sidecar published) — is asked again only when the number of instances
   changed or :data:`TOPOLOGY_EVERY` passed;
2. the golden metrics: of **Prometheus** when the dashboard is given one (a handful of PromQL
   queries per window shown, however many sidecars: :mod:`dashboard.prometheus`), else of
   **every sidecar's** ``/metrics`` (:mod:`dashboard.sidecar_source`);
3. only while a page looks at them: the ``/clusters`` of at most :data:`CLUSTER_SIDECARS`
   sidecars of the service a page shows the inside of, and for the *top* view the ``/tap``
   (recent requests) of at most :data:`TOP_SIDECARS` sidecars a round, taken in turn — a
   sample, whatever the fleet's size.

What pages look at is registered with :meth:`Collector.watching` for as long as each page's
event stream is open; a new kind of look starts a round at once. The state is plain JSON; each
round that changes it wakes whoever waits in :meth:`Collector.next_state`. ``at`` in the state
is the wall-clock time (ms) its round started, so a page can tell how far behind it draws.

A round that fails in a way nobody foresaw is logged and shown in ``errors``, and the next
round comes as usual: the page says what is wrong rather than freezing.
"""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import json
import logging
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp

from dashboard.prometheus import PrometheusError, PrometheusSource
from dashboard.sidecar_source import SidecarSource
from mesh.clock import SYSTEM_CLOCK, Clock

log = logging.getLogger("dashboard.collector")

INTERVAL = 0.5  # seconds between rounds: half the page's 1 s budget from event to screen
MIN_GAP = 0.1  # seconds at least between the starts of two rounds, however often pages ask
# Seconds one request of a round may take: a slower sidecar is shown with an error rather than
# holding every later round up.
TIMEOUT = 1.0
TOPOLOGY_EVERY = 5.0  # seconds between askings of the topology when the instances stay as many
# The windows a page can choose for its golden metrics, seconds: Linkerd viz's users ask for
# these three; the first is the default.
WINDOWS = (15.0, 60.0, 300.0)
CLUSTER_SIDECARS = 10  # sidecars of a service whose clusters a page is shown
TOP_SIDECARS = 10  # sidecars asked for their recent requests per round, in turn
TOP_PER_SIDECAR = 20  # the newest requests taken from each
TOP_KEPT = 30  # requests the top view holds: a screenful
HISTORY_SHOWN = 20  # policy versions the policy view shows (with their diffs)
XDS = "xds.v3"  # the discovery dialect proxyless gRPC workloads speak (/status "protocol")
TAPPED = {"seq": int, "at": float, "cluster": str, "authority": str, "method": str,
          "path": str, "latency_ms": float, "retries": int, "hedges": int}  # and "status"


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
        clock: the monotonic clock rounds and scrapes are timed by.
        wall: the wall clock the state's ``at`` is read from (seconds since the epoch).
    """

    def __init__(self, *, api: str, token: str | None,
                 prometheus: PrometheusSource | None = None, clock: Clock = SYSTEM_CLOCK,
                 wall: Callable[[], float] = time.time) -> None:
        self.api, self.prometheus, self.clock, self.wall = api, prometheus, clock, wall
        self.sidecar_source = SidecarSource(longest=WINDOWS[-1], clock=clock)
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._watches: Counter[Watch] = Counter()
        # The topology as last asked: services, sidecars, when, and for how many instances.
        self._topology: tuple[list[Any], list[dict[str, Any]]] = ([], [])
        self._topology_at: float | None = None
        self._instances: int | None = None
        self._policy: tuple[int | None, list[dict[str, Any]]] = (None, [])  # version, history
        self._taps: dict[str, tuple[str, int]] = {}  # admin address → the tap's boot and next
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
        if self._watches[watch] == 1:  # nobody looked at this yet: a round now, not later
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
                try:
                    await self.poll(http)
                except Exception as error:  # shown, and the next round comes anyway
                    log.exception("a dashboard round failed")
                    await self._publish({**self.state, "errors": [
                        f"the dashboard's round failed: {error!r} (see its log)"]})
                await asyncio.sleep(max(0.0, MIN_GAP - (self.clock.now() - started)))
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
        at_ms = round(self.wall() * 1000)
        errors: list[str] = []
        watches = list(self._watches)
        windows = sorted({WINDOWS[0], *(w.window for w in watches)})
        control_plane = await self._control_plane(http, errors)
        services, sidecars = await self._topology_now(http, control_plane, errors)
        policy = await self._policy_view(http, control_plane, errors)
        golden_by_window, clusters, top = await asyncio.gather(
            self._golden(http, windows, sidecars, errors),
            self._clusters(http, {w.service for w in watches if w.service}, sidecars),
            self._tap(http, sidecars, errors) if any(w.top for w in watches) else _nothing())
        proxyless = sorted({s["service"] for s in (control_plane or {}).get("streams", [])
                            if s["protocol"] == XDS})
        await self._publish({
            "api": self.api, "windows": list(WINDOWS), "errors": errors,
            "source": self.prometheus.url if self.prometheus else "sidecars",
            "control_plane": control_plane, "services": services, "sidecars": sidecars,
            "proxyless": proxyless, "golden": golden_by_window, "policy": policy,
            "clusters": clusters, "top": top, "at": at_ms})

    async def _publish(self, state: dict[str, Any]) -> None:
        """Make ``state`` the state, if it says something new (its time aside)."""
        compared = json.dumps({**state, "at": None}, sort_keys=True)
        if compared != self._compared:
            async with self._changed:
                self._compared = compared
                self.state = state
                self.payload = json.dumps(state, sort_keys=True)
                self.version += 1
                self._changed.notify_all()

    async def _get(self, http: aiohttp.ClientSession, url: str, *,
                   headers: Mapping[str, str] | None = None) -> Any:
        async with http.get(url, headers=headers) as response:
            if response.status != 200:
                raise aiohttp.ClientError(f"GET {url}: HTTP {response.status} "
                                          f"{(await response.text()).strip()[:200]}")
            return await response.json()

    async def _api(self, http: aiohttp.ClientSession, path: str, at: str | None = None) -> Any:
        return await self._get(http, f"http://{at or self.api}{path}", headers=self._headers)

    # ------------------------------------------------------------------ control plane

    async def _control_plane(self, http: aiohttp.ClientSession,
                             errors: list[str]) -> dict[str, Any] | None:
        """The control plane's ``/status``, with the streams of every replica."""
        try:
            status = await self._api(http, "/status")
        except (aiohttp.ClientError, TimeoutError, ValueError) as error:
            errors.append(f"operator API {self.api}: {error}")
            return None
        # Each replica lists the streams it holds: ask the others too (their own APIs).
        others = [r for r in status["replicas"]
                  if r.get("api") and r["name"] != status["replica"]["name"]]
        answers = await asyncio.gather(*(self._api(http, "/status", r["api"])
                                         for r in others), return_exceptions=True)
        raw = list(status["streams"])
        for replica, answer in zip(others, answers, strict=True):
            if isinstance(answer, BaseException):
                errors.append(f"replica {replica['name']} (operator API {replica['api']}): "
                              f"its streams are not shown: {answer}")
            else:
                raw += answer["streams"]
        streams = [{"node": s["node"], "service": s["service"], "namespace": s["namespace"],
                    "protocol": s["protocol"],
                    "in_sync": all(t["sent"] == t["acked"] for t in s["types"].values()),
                    "policy_version": s.get("policy_version"), "nack": s.get("nack")}
                   for s in raw]
        return {"policy_version": status["policy_version"],
                "policy_error": status["policy_error"],
                "replicas": [r["name"] for r in status["replicas"]],
                "instances": status["instances"],
                "streams": sorted(streams, key=lambda s: (s["service"], s["node"]))}

    async def _topology_now(self, http: aiohttp.ClientSession,
                            control_plane: dict[str, Any] | None, errors: list[str]
                            ) -> tuple[list[Any], list[dict[str, Any]]]:
        """Services and their sidecars: asked again when the instances changed in number or
        :data:`TOPOLOGY_EVERY` passed; else, and when the API fails, as last known."""
        now = self.clock.now()
        instances = control_plane["instances"] if control_plane else None
        due = self._topology_at is None or now - self._topology_at >= TOPOLOGY_EVERY or \
            instances != self._instances
        if control_plane is not None and due:
            try:
                services: list[dict[str, Any]] = await self._api(http, "/services")
                endpoints = await asyncio.gather(*(
                    self._api(http, f"/endpoints/{quote(s['service'])}"
                                    f"?namespace={quote(s['namespace'])}") for s in services))
            except (aiohttp.ClientError, TimeoutError, ValueError) as error:
                errors.append(f"operator API {self.api}: {error}")
            else:
                sidecars = [_sidecar(s, e) for s, rows in zip(services, endpoints, strict=True)
                            for e in rows]
                self._topology = services, sorted(sidecars, key=lambda s: s["instance"])
                self._topology_at, self._instances = now, instances
        services, sidecars = self._topology
        # Each round's errors are its own: copies, so a scrape's error is not kept.
        return services, [dict(s) for s in sidecars]

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
        await self.sidecar_source.scrape(http, sidecars)
        return {f"{w:g}": {"edges": self.sidecar_source.edges(sidecars, w),
                           "services": self.sidecar_source.services(sidecars, w)}
                for w in windows}

    # ------------------------------------------------------------------ on demand

    async def _clusters(self, http: aiohttp.ClientSession, services: set[str],
                        sidecars: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
        """Per service a page shows the inside of: the ``/clusters`` of its first
        :data:`CLUSTER_SIDECARS` sidecars, and how many it has."""
        shown: dict[str, dict[str, Any]] = {}
        for service in sorted(services):
            of_service = [s for s in sidecars if s["service"] == service and s["admin"]]
            asked = of_service[:CLUSTER_SIDECARS]
            answers = await asyncio.gather(*(self._get(http, f"http://{s['admin']}/clusters")
                                             for s in asked), return_exceptions=True)
            shown[service] = {"sidecars": len(of_service), "shown": [
                {"instance": s["instance"], "admin": s["admin"],
                 "error": f"GET http://{s['admin']}/clusters: {a!r}"
                 if isinstance(a, BaseException) else None,
                 "clusters": {} if isinstance(a, BaseException) else a}
                for s, a in zip(asked, answers, strict=True)]}
        return shown

    async def _tap(self, http: aiohttp.ClientSession, sidecars: list[dict[str, Any]],
                   errors: list[str]) -> list[dict[str, Any]]:
        """The newest requests: a sample of :data:`TOP_SIDECARS` sidecars a round, in turn."""
        tapped = [s for s in sidecars if s["admin"]]
        for admin in self._taps.keys() - {s["admin"] for s in tapped}:
            del self._taps[admin]
        if tapped:
            start = self._tap_turn % len(tapped)
            asked = (tapped[start:] + tapped[:start])[:TOP_SIDECARS]
            self._tap_turn = start + len(asked)
            answers = await asyncio.gather(*(self._read_tap(http, s) for s in asked),
                                           return_exceptions=True)
            errors += [f"{s['instance']}: {a}" for s, a in zip(asked, answers, strict=True)
                       if isinstance(a, BaseException)]
            fresh = [r for a in answers if not isinstance(a, BaseException) for r in a]
            self._top.extend(sorted(fresh, key=lambda r: r["at"]))
        return list(self._top)[::-1]  # newest first

    async def _read_tap(self, http: aiohttp.ClientSession,
                        sidecar: dict[str, Any]) -> list[dict[str, Any]]:
        """The requests a sidecar's tap holds past what was read of it, each checked to be
        what a tap answers (else ``ValueError``); from its start after it restarted."""
        admin = sidecar["admin"]
        boot, after = self._taps.get(admin, ("", None))
        query = f"limit={TOP_PER_SIDECAR}" + ("" if after is None else f"&after={after}")
        answer = await self._get(http, f"http://{admin}/tap?{query}")
        if answer.get("boot", "") != boot and after is not None:  # restarted: start over
            answer = await self._get(http, f"http://{admin}/tap?limit={TOP_PER_SIDECAR}")
        rows = []
        for row in answer["requests"]:
            if not (all(isinstance(row.get(k), (t, int) if t is float else t)
                        for k, t in TAPPED.items())
                    and isinstance(row.get("status"), int | str)):
                raise ValueError(f"GET http://{admin}/tap: not a tapped request: {row!r}")
            rows.append({**{k: row[k] for k in (*TAPPED, "status")},
                         "source": sidecar["service"], "instance": sidecar["instance"]})
        self._taps[admin] = (str(answer.get("boot", "")), int(answer["next"]))
        return rows


async def _nothing() -> None:
    return None


def _sidecar(service: Mapping[str, Any], endpoint: Mapping[str, Any]) -> dict[str, Any]:
    """A registered instance, with where its sidecar's admin endpoint is (if published)."""
    published = bool(endpoint.get("admin_port"))
    return {"service": service["service"], "namespace": service["namespace"],
            "instance": endpoint["instance"],
            "admin": f"{endpoint['address']}:{endpoint['admin_port']}" if published else None,
            "error": None if published else "its admin endpoint is not published "
                                            "(admin_port 0)"}


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

"""The dashboard: a web page showing the mesh live, served by its own aiohttp process.

It learns everything through public interfaces — the control plane's operator API and the
sidecars' admin endpoints — and imports no sidecar or control-plane code.

- **collector** (:mod:`dashboard.collector`): polls those interfaces once a second and holds
  the state the page shows.
- **edge**: a source service calling a destination cluster, as the source's sidecars count it.
- **golden metrics** (:mod:`dashboard.golden`): an edge's requests per second, success rate and
  latency percentiles over a window, from two scrapes of the sidecars' counters.
- **window**: the seconds the golden metrics are taken over (15 s by default).
- **app** (:mod:`dashboard.app`): the page, ``/api/state`` and ``/events`` (server-sent events).
"""

"""The dashboard: a web page showing the mesh live, served by its own aiohttp process.

It learns everything through public interfaces — the control plane's operator API, the
sidecars' admin endpoints and, when one runs, Prometheus — and imports no sidecar or
control-plane code.

- **collector** (:mod:`dashboard.collector`): polls those interfaces twice a second and holds
  the state the page shows; it asks a sidecar's cluster internals and recent requests only
  while a page shows them.
- **edge**: a source service calling a destination cluster, as the source's sidecars count it.
- **golden metrics**: requests per second, success rate and latency percentiles over a window,
  per edge and per service — from the sidecars' counters (:mod:`dashboard.sidecar_source`,
  with the maths of :mod:`dashboard.golden`) or from Prometheus by PromQL
  (:mod:`dashboard.prometheus`).
- **window**: the seconds the golden metrics are taken over: 15 s, 1 min or 5 min, as the page
  chooses.
- **app** (:mod:`dashboard.app`): the page, ``/api/state`` and ``/events`` (server-sent events).
"""

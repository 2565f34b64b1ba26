"""The demo: a small shop that runs on the mesh, the knobs that break it, the load that tests it.

Glossary:
    shop           ``frontend`` (HTTP/JSON) → ``orders`` → ``inventory`` and ``payments`` (gRPC,
                   ``proto/shop.proto``); each calls the next only through its own sidecar.
    service        what every shop service shares: flags (``DEMO_*``), lifecycle, the channel
                   to its sidecar (:mod:`.service`).
    faults         the knobs: added latency (fixed, lognormal, pareto), an error rate, a
                   brownout, a crash (:mod:`.faults`, decided; :mod:`.admin`, served over HTTP).
    open loop      requests leave on a fixed schedule, latency counts from when each was due:
                   no coordinated omission (:mod:`.arrivals`, :mod:`.latency`, :mod:`.loadgen`).
    backend load   what each backend actually served, from its sidecar's ``/metrics``
                   (:mod:`.backend_load`).
    local mesh     the whole shop on 127.0.10.x with a control plane and Prometheus, started and
                   stopped by PID (:mod:`.topology`, :mod:`.local_mesh`, :mod:`.processes`,
                   :mod:`.prometheus`, :mod:`.where_to_look`); ``meshctl demo up``.
    etcd cluster   ``meshctl demo up --ha``: three control-plane replicas keep their shared
                   state in three etcd members on loopback, run as processes of the mesh
                   (:mod:`.etcd_cluster`).
    proxyless      a workload with no sidecar: grpcio's own xDS client takes its configuration
                   from the control plane (:mod:`.auditor`, enrolled by ``meshctl proxyless``).
    hello          the first demo: one gRPC greeter over mTLS, every call shape (:mod:`.hello`).
"""

"""A discrete-event simulator that runs the mesh's own policy classes at virtual time.

Glossary:
    event          something to do at a virtual time; the simulation runs them in time order
                   (:mod:`simulator.engine`).
    virtual clock  the simulation's time: it jumps from event to event, so a minute of traffic
                   takes as long to simulate as its events take to process.
    server         one replica of a service: a concurrency limit, a queue, a service time, and
                   a behaviour that faults change over time (:mod:`simulator.server`).
    caller sidecar what a client's sidecar does with a call — route, cluster, balancer,
                   attempts with per-try timeouts, a deadline, retries, hedges — driving the
                   sidecar's own policy objects (:mod:`simulator.sidecar`).
    client         where calls come from: open loop (a rate, whatever the answers) or closed
                   loop (users who wait for an answer, then think) (:mod:`simulator.clients`).
    scenario       a topology, a load and faults over time, and the policies to compare, in
                   YAML (:mod:`simulator.scenario`); the policies are the control plane's own
                   YAML, read by its own parser.

It imports pure code only: the policy modules of ``sidecar/`` and the policy parser of
``controlplane/`` — never asyncio, sockets or ``mesh/http2``.
"""

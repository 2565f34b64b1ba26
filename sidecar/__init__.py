"""The sidecar: the mesh's data plane (listeners, router, clusters, pool, policies).

Glossary:
    sidecar          the sidecar assembled (``Sidecar``): identity, configuration, listeners,
                     admin, and their start and stop; ``python -m sidecar`` runs one.
    discovery        the client end of the xDS-like stream: apply, ACK or NACK, reconnect.
    registration     keeps this instance registered, renewing its lease with heartbeats.
    balancers        which endpoint gets the next call: round robin, random, least request,
                     peak EWMA, ring hash (see ``balancers/__init__.py``).
    backoff          growing, jittered delays between attempts (AWS decorrelated and full jitter).
    outcome          how one call to an endpoint ended (a response, or a failure and why), and
                     the HTTP status it counts as; judged by retry, outlier detection, metrics.
    retry            a route's retry policy, and one request's attempts: retry after a delay,
                     hedge beside a slow one (gRPC's hedging, Envoy's hedge on per-try
                     timeout), or stop and say why.
    retry_budget     retries capped at a share of recent requests (Finagle, Linkerd) or of
                     requests in progress (Envoy).
    outlier          outlier detection: endpoints that keep failing are ejected for a growing time.
    circuit_breaker  per-cluster caps on connections, pending requests, requests and retries;
                     overflow is answered at once (503 / UNAVAILABLE).
    cluster_settings a Cluster message read into the settings a cluster runs with, every
                     default filled in from the constant beside its algorithm (and which were).
    fault            a route's injected delay and abort (Envoy's fault filter).
    rate_limit       a token bucket per route or per service's inbound side (Envoy's local
                     rate limit): over it, 429 / RESOURCE_EXHAUSTED.
    pool             HTTP/2 connections to one endpoint, shared by every request; a new one
                     must prove the identity that registered the endpoint.
"""

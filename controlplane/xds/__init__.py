"""Envoy's xDS v3, spoken to proxyless gRPC workloads from the same snapshot our sidecars get.

A grpcio client whose target is ``xds:///orders`` and whose ``GRPC_XDS_BOOTSTRAP`` names this
control plane opens one ADS stream (``envoy.service.discovery.v3.AggregatedDiscoveryService``)
and asks, in turn, for the Listener ``orders``, the RouteConfiguration it names, the Clusters
its routes name and their ClusterLoadAssignments; it then balances, retries and does mTLS by
itself, with no sidecar. A grpcio *server* built with ``xds=True`` asks for its inbound
Listener (the bootstrap's ``server_listener_resource_name_template`` with its address): TLS
that requires a mesh certificate, and RBAC from our authorization policy.

    resources.py   type URLs, push order, names shared with ``meshctl proxyless``'s bootstrap
    translate.py   our clusters, endpoints, routes and authorization → Envoy's messages, with
                   a warning for each policy gRPC cannot apply; one module per type:
      clusters.py    Cluster (CDS): balancer, circuit breakers, outlier detection, mTLS
      endpoints.py   ClusterLoadAssignment (EDS): endpoints by zone, weights, health
      routes.py      RouteConfiguration (RDS): matches, splits, retries, hashing, faults
      listeners.py   Listener (LDS): a client's API listener, a server's inbound one (RBAC)
      messages.py    what they share: typed configs, the ADS config source, mesh TLS contexts
    proxyless.py   a proxyless server is registered while its stream asks for its listener

This package is the only place that imports Envoy's messages (the ``xds-protos`` package); the
protocol rules (versions, nonces, ACK, NACK) are :mod:`controlplane.discovery`'s, shared with
our own ``mesh.v1`` stream.
"""

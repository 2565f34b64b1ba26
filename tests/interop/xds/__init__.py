"""Interop with grpcio's own xDS client and server: proxyless gRPC workloads in the mesh.

    harness.py             a control plane, backends behind sidecars, grpcio's client as a
                           process, and waiting for a condition
    grpcio_client.py       the proxyless client: grpcio only, one command per line on stdin
    test_grpcio_client.py  what grpcio's client applies of our policies: routes, weighted
                           clusters, ring hash, retries, outlier detection, circuit breaking,
                           a NACK it keeps working after, and mTLS to the control plane
    server_apps.py         a proxyless server: ``grpc.server(xds=True)`` and the hello stubs
    test_grpcio_server.py  a proxyless server registered from its Listener request, called
                           by our sidecars over mTLS, guarding itself with our RBAC
"""

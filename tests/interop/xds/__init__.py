"""Interop with grpcio's own xDS client and server: proxyless gRPC workloads in the mesh.

    harness.py             a control plane, backends behind sidecars, and the client process
    grpcio_client.py       the proxyless client: grpcio only, one command per line on stdin
    test_grpcio_client.py  what grpcio applies of our policies: routes, balancing, retries,
                           outlier detection, circuit breaking, and a NACK it keeps going after
"""

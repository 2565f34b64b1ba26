"""The sidecar: the mesh's data plane (listeners, router, clusters, pool, policies)."""

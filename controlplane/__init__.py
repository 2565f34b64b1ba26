"""The control plane: registry, identity (CSR signing), policy store, discovery server."""

"""The control plane: registry, identity (CSR signing), policy store, discovery server.

    server         the pieces assembled behind one gRPC (mTLS) port
    listener       accepts connections and runs their TLS handshakes, logging every refusal
    identity       join tokens, and signing a CSR into a short-lived workload certificate
    registry       instances by service, with authenticated registration and leases
    policy         the policy store: the mesh policy in force, its version, hot reload
    policy_file    one YAML file → a MeshPolicy, each schema mistake named by field path
    policy_history the policy versions this replica had in force since it started
    validation     the rules beyond the schema (unknown clusters, weights, budgets, ...)
    snapshot       every resource a sidecar should have, built once per change
    discovery      the xDS-like stream: versions, nonces, ACK and NACK, pushes on change
    rollout        the policy version a stream runs in full, and the NACK holding it back
    api            the operator HTTP API that meshctl reads and writes
    metrics        Prometheus counters and histograms
    errors         the refusals, with the gRPC status each becomes
"""

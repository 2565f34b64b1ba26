"""The mesh PKI: a certificate authority and the workload certificates it issues.

Glossary:
    CA                    the mesh certificate authority: a self-signed ECDSA P-256 certificate
                          (``ca.crt``) and its key (``ca.key``). Sidecars trust it and nothing
                          else: not the system store.
    trust domain          the root of every SPIFFE ID the CA signs for, ``cluster.local`` by
                          default; written in the CA certificate's URI SAN.
    SPIFFE ID             a workload's name, ``spiffe://<trust-domain>/ns/<namespace>/sa/<service>``
                          (see ``mesh.identity``).
    workload certificate  a short-lived certificate (an X.509-SVID) whose URI SAN is one SPIFFE ID;
                          the same certificate serves and calls (EKU serverAuth and clientAuth).
    CSR                   certificate signing request: a public key, signed by its private key to
                          prove possession. The CA keeps the key and ignores every other claim.
    validity              how long a certificate is good for, written ``30s``, ``15m``, ``1h``,
                          ``7d``; a *not before* and a *not after* fixed at issue.
    pki                   the library: create, issue, sign, load, write.
    __main__              the CLI, ``python -m certs init|issue``.
"""

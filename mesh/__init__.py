"""The library both sides of the mesh share; it knows no mesh role.

Glossary:
    http2     an HTTP/2 endpoint (server and client) on the sans-IO ``h2`` state machine.
    grpc      gRPC = HTTP/2 + length-prefixed protobuf messages + status in trailers.
    tls       mTLS ``SSLContext``s for the mesh and the peer's SPIFFE ID.
    identity  SPIFFE IDs: ``spiffe://<trust-domain>/ns/<namespace>/sa/<service>``.
    clock     the injected notion of "now" that every policy takes.
    loop      the event loop choice: uvloop where it imports, plain asyncio otherwise.
"""

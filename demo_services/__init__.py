"""Demo services that show the mesh working: small programs that talk through their sidecar."""

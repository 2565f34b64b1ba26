"""``meshctl``: the operator's command line (talks to the control plane's HTTP API)."""

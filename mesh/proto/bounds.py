"""Range bounds of policy fields that both sides of the mesh enforce.

The control plane refuses a policy outside them (``controlplane/validation.py``) and a sidecar
NACKs one (``sidecar/retry_budget.py``, ``sidecar/balancers/ring_hash.py``); the two never
import each other, so a bound neither side can do without lives here, beside the schema.
Defaults are not here: they are the sidecar's alone, next to each algorithm.
"""

from __future__ import annotations

MIN_RETRY_BUDGET_TTL, MAX_RETRY_BUDGET_TTL = 1.0, 60.0
"""Seconds a retry budget remembers requests and retries: Finagle's 1–60 s."""

MAX_RING_SIZE = 1 << 18
"""Most points on one hash ring, and so the most ``points_per_weight``: 262,144 (Envoy allows
8M, but a Python list of those is ~300 MB)."""

"""Authorization: may this caller (its SPIFFE ID, proved by mTLS) call this path here?

Istio's AuthorizationPolicy semantics, ALLOW and DENY only: a call matching any DENY rule is
refused; then, if the service has ALLOW rules, the call must match one of them; a service with
no rules at all lets every authenticated caller in. Principals are written
``<trust-domain>/ns/<namespace>/sa/<service>``, or ``*`` for any authenticated caller; paths are
exact, or a prefix ending in ``*``.

Pure: no IO, just the policies and the question.
"""

from __future__ import annotations

from dataclasses import dataclass

from mesh.proto.config_pb2 import AuthorizationPolicy, AuthorizationRule


@dataclass(frozen=True, slots=True)
class Verdict:
    allowed: bool
    reason: str


def _path_matches(patterns: list[str], path: str) -> bool:
    path = path.split("?", 1)[0]
    return not patterns or any(
        path.startswith(p[:-1]) if p.endswith("*") else path == p for p in patterns)


def _rule_matches(rule: AuthorizationRule, principal: str | None, path: str) -> bool:
    if principal is None:
        return False
    principals = list(rule.principals)
    who = not principals or "*" in principals or principal in principals
    return who and _path_matches(list(rule.paths), path)


class Authorizer:
    """The authorization policies of one service."""

    def __init__(self, policies: list[AuthorizationPolicy]) -> None:
        self._deny = [r for p in policies if p.action == AuthorizationPolicy.DENY
                      for r in p.rules]
        self._allow = [r for p in policies if p.action == AuthorizationPolicy.ALLOW
                       for r in p.rules]

    def check(self, principal: str | None, path: str) -> Verdict:
        """Whether ``principal`` (None: no verified identity) may call ``path``."""
        if principal is None:
            return Verdict(False, "the caller proved no identity")
        if any(_rule_matches(rule, principal, path) for rule in self._deny):
            return Verdict(False, f"{principal} is denied {path} by policy")
        if self._allow and not any(_rule_matches(rule, principal, path)
                                   for rule in self._allow):
            return Verdict(False, f"{principal} is not allowed to call {path}")
        return Verdict(True, "allowed")

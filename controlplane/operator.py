"""The operator credential: a bearer token that only operators hold, for the operator API.

The operator API mints join tokens (so identities) and replaces the policy (so every route and
every authorization rule): whoever reaches it owns the mesh. So every request but ``/metrics``
and the ``/healthz`` probe must carry ``Authorization: Bearer <operator token>``.

Why a bearer token, and not an operator client certificate: it is what operators of the
systems we follow already handle — the Kubernetes API server's bootstrap and service-account
tokens, Consul's and Nomad's ACL tokens, Vault's tokens — and it works with every tool an
operator has (``curl -H``, a script, a dashboard) without a PKI of their own. Its weakness is
that it crosses the network as it is, so the API listens on loopback by default; in docker
compose it crosses the compose network only between the one-shot bootstrap step and the
control plane (see docs/architecture.md, "Trust model").

The token is made at the control plane's first start: 32 random bytes, written with mode 0600
to ``operator.token`` in its PKI folder (next to the CA key, which is just as secret), where
``meshctl`` on the same machine finds it. A token file that others may read is refused, as
ssh refuses such a key. The control plane keeps only the token's SHA-256 digest and compares
digests with :func:`hmac.compare_digest`, in constant time whatever the input's length. The
audit log names a credential by its *fingerprint* (the digest's first 12 hex digits), never by
the token.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import stat
from pathlib import Path

log = logging.getLogger("controlplane.operator")

TOKEN_FILE = "operator.token"  # in the PKI folder, unless --operator-token-file says otherwise
TOKEN_BYTES = 32


class OperatorCredentialError(Exception):
    """The token file cannot be used (unreadable, empty, or readable by others)."""


class OperatorToken:
    """The operator token this control plane accepts."""

    def __init__(self, token: str) -> None:
        self._digest = _digest(token)
        self.fingerprint = "sha256:" + self._digest.hex()[:12]

    @classmethod
    def load_or_create(cls, path: Path) -> OperatorToken:
        """The token in ``path``; a new one, written there with mode 0600, if there is none.

        Raises:
            OperatorCredentialError: the file is empty, or group or others may read it.
        """
        try:  # O_EXCL: never write through a file or symlink someone placed there
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return cls._load(path)
        token = secrets.token_urlsafe(TOKEN_BYTES)
        with os.fdopen(descriptor, "w") as file:
            file.write(token + "\n")
        credential = cls(token)
        log.info("operator token created in %s (%s)", path, credential.fingerprint)
        return credential

    @classmethod
    def _load(cls, path: Path) -> OperatorToken:
        # Opened without following a symlink, and judged by what was opened (fstat), so that
        # a file planted or swapped in a folder others can write is not taken for ours.
        try:
            descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError as error:
            raise OperatorCredentialError(f"{path}: cannot open the operator token "
                                          f"({error.strerror}; a symlink is refused)") from None
        with os.fdopen(descriptor) as file:
            info = os.fstat(file.fileno())
            if info.st_uid != os.geteuid():
                raise OperatorCredentialError(f"{path}: the operator token belongs to uid "
                                              f"{info.st_uid}, not to us ({os.geteuid()})")
            if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
                raise OperatorCredentialError(
                    f"{path}: the operator token may be read by others (mode "
                    f"{stat.filemode(info.st_mode)}); chmod 600 it")
            token = file.read().strip()
        if not token:
            raise OperatorCredentialError(f"{path}: the operator token file is empty")
        return cls(token)

    def accepts(self, presented: str) -> bool:
        """Whether ``presented`` is the operator token (compared in constant time)."""
        return hmac.compare_digest(_digest(presented), self._digest)


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()

"""Reading the files that hold credentials: the TCP listener's token and TLS key, by one set
of rules for the daemon (which checks the token) and the clients (which send it)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from lineage_core.errors import ConfigError

__all__ = ["read_secret", "read_token"]

logger = logging.getLogger(__name__)


def read_secret(path: str, what: str) -> bytes:
    """The bytes of a secret file; ``ConfigError`` naming ``what`` when it cannot be read."""
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the {what} {path}: {exc.strerror}") from exc


def read_token(path: str) -> str:
    """The token in a token file: one line of printable ASCII without spaces."""
    token = read_secret(path, "token file").decode("utf-8", "replace").strip()
    if not token:
        raise ConfigError(f"token file {path} is empty")
    if not token.isascii() or not token.isprintable() or " " in token:
        raise ConfigError(f"token file {path} must hold one line of printable ASCII, no spaces")
    if os.stat(path).st_mode & 0o077:
        logger.warning("token file %s is readable by other users; chmod 600 it", path)
    return token

"""Client-side hashing of files the daemon must not open: sources and files outside roots."""

from __future__ import annotations

import dataclasses

from lineage_core.hasher import hash_file
from lineage_core.models import Access

__all__ = ["hash_external"]


def _digest_file(path: str) -> tuple[str, int, int]:
    """Return (BLAKE3 hex digest, size, mtime_ns) of the file at ``path``, through the daemon's
    hasher: one descriptor, fstat before and after, so the digest is of a complete state."""
    result = hash_file(path)
    return result.digest, result.stat_key.size, result.stat_key.mtime_ns


def hash_external(access: Access) -> Access:
    """Return ``access`` with digest, size and mtime_ns of the file as it is now.

    For files outside every watched root, which the daemon never opens (docs/design.md,
    invariant 6). A file that is gone or unreadable is returned unchanged (no digest).
    """
    try:
        digest, size, mtime_ns = _digest_file(access.path)
    except OSError:
        return access
    return dataclasses.replace(access, digest=digest, size=size, mtime_ns=mtime_ns)

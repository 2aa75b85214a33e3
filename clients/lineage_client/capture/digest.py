"""Client-side hashing of files the daemon must not open: sources and files outside roots."""

from __future__ import annotations

import dataclasses
import os

import blake3

from lineaged.models import Access

__all__ = ["hash_external"]

_CHUNK = 1 << 20


def _digest_file(path: str) -> tuple[str, int, int]:
    """Return (BLAKE3 hex digest, size, mtime_ns) of the file at ``path``.

    The one place this package reads file bytes; the lead may swap the body for
    ``lineaged.hasher.hash_file`` once that lands.
    """
    # One descriptor for the bytes and the stat, so size and mtime describe what was hashed.
    with open(path, "rb") as stream:
        before = os.fstat(stream.fileno())
        hasher = blake3.blake3(max_threads=blake3.blake3.AUTO)
        size = 0
        while chunk := stream.read(_CHUNK):
            hasher.update(chunk)
            size += len(chunk)
        return hasher.hexdigest(), size, before.st_mtime_ns


def hash_external(access: Access) -> Access:
    """Return ``access`` with digest, size and mtime_ns of the file as it is now.

    For files outside every watched root, which the daemon never opens (DESIGN.md,
    invariant 5). A file that is gone or unreadable is returned unchanged (no digest).
    """
    try:
        digest, size, mtime_ns = _digest_file(access.path)
    except OSError:
        return access
    return dataclasses.replace(access, digest=digest, size=size, mtime_ns=mtime_ns)

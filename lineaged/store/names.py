"""Digests and file names as the store keeps them.

The store trusts the values it is given: requests were checked once, at the gRPC edge
(``lineage_core.gate``). What is here converts (a digest's hex to the 32 bytes a row holds) or
filters what the watcher and the scanner find on disk (``storable``), never a request.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)

DIGEST_BYTES = 32


def digest_to_blob(digest: str) -> bytes:
    """A digest's 64 hex characters as the 32 bytes a row holds."""
    return bytes.fromhex(digest)


_warned_names: set[str] = set()


def storable(path: str) -> bool:
    """Whether a path can be stored: its name is valid UTF-8 (SQLite text, protobuf strings).

    A file or directory name that is not (``os.fsdecode`` gives it lone surrogates) is
    skipped with one warning per path, never a traceback: docs/security.md.
    """
    if path.isascii():
        return True
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        if path not in _warned_names and len(_warned_names) < 10_000:
            _warned_names.add(path)
            log.warning(
                "skipping %r: its name is not valid UTF-8 (lineaged stores paths as text)",
                os.fsencode(path),
            )
        return False
    return True

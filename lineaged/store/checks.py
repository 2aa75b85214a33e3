"""The input checks the store makes on the values its callers pass, gathered in one place.

Each of them duplicates a check at the gRPC edge (``convert``, the engine); they stay until
one input gate makes every value valid before it reaches the store. ``storable`` is not one
of them: it filters file names the watcher and the scanner find on disk, not requests.
"""

from __future__ import annotations

import logging
import os

from lineage_core.errors import InvalidArgument
from lineage_core.models import is_new_run_id

log = logging.getLogger(__name__)

DIGEST_BYTES = 32
MIN_PREFIX = 8  # hex characters of the shortest digest prefix (and run id prefix) looked up


def check_path(path: str) -> str:
    """An absolute path without NUL bytes, normalised; InvalidArgument otherwise."""
    if not path or "\x00" in path:
        raise InvalidArgument("a path must be non-empty and free of NUL bytes")
    if not os.path.isabs(path):
        raise InvalidArgument(f"paths are absolute on the wire, got {path!r}")
    return os.path.normpath(path)


def digest_to_blob(digest: str) -> bytes:
    """64 hex characters to 32 bytes; InvalidArgument otherwise."""
    if len(digest) != 2 * DIGEST_BYTES:
        raise InvalidArgument(f"a digest is 64 hex characters, got {len(digest)}: {digest[:80]!r}")
    try:
        return bytes.fromhex(digest)
    except ValueError:
        raise InvalidArgument(f"a digest is hexadecimal: {digest[:80]!r}") from None


def check_digest_or_prefix(digest: str) -> str:
    """A full digest or a prefix of 8 to 64 hex characters, stripped and lower case."""
    digest = digest.strip().lower()
    if not digest or any(c not in "0123456789abcdef" for c in digest):
        raise InvalidArgument(f"a digest is hexadecimal: {digest[:80]!r}")
    if len(digest) < MIN_PREFIX or len(digest) > 2 * DIGEST_BYTES:
        raise InvalidArgument(
            f"a digest prefix needs {MIN_PREFIX} to 64 hex characters, got {len(digest)}"
        )
    return digest


def check_run_id(run_id: str) -> None:
    """A run id (or prefix) to look up: 1 to 64 characters without NUL bytes."""
    if not run_id or "\x00" in run_id or len(run_id) > 64:
        raise InvalidArgument("a run id is 1 to 64 characters without NUL bytes")


def check_new_run_id(run_id: str) -> None:
    """A run id a client chose for a new run: 32 lowercase hex characters."""
    if not is_new_run_id(run_id):
        raise InvalidArgument(
            f"a run id chosen by a client is 32 lowercase hex characters, not {run_id!r}"
        )


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

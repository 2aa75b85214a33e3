"""The engine's checks of what a caller sends: page sizes, paths, run fields, lineage limits.

Each check raises ``InvalidArgument`` with the words the client shows, or returns the value
in its normal form. The limits every listing and walk keeps are here too.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import replace

from lineage_core.errors import InvalidArgument
from lineage_core.models import (
    Access,
    AccessHow,
    AccessRole,
    Capture,
    RunStart,
    RunStatus,
    StartNode,
)
from lineage_core.paths import is_normal_path

from lineaged.store import digest_to_blob

__all__ = [
    "MAX_ACCESSES",
    "MAX_DEPTH",
    "MAX_NODES",
    "MAX_PAGE",
    "check_abs",
    "check_accesses_count",
    "check_fields",
    "check_graph_limits",
    "check_limit",
    "check_no_nul",
    "check_restore",
    "check_run_end",
    "check_run_start",
    "check_start",
    "check_version_id",
    "is_clean_abs",
]

MAX_PAGE = 1000  # the largest page any listing returns; bigger limits are InvalidArgument
MAX_NODES = 10_000  # the largest lineage graph one answer carries
MAX_DEPTH = 10_000
MAX_ACCESSES = 10_000  # per RecordAccesses call


def check_limit(limit: int, what: str = "page size") -> int:
    """A page size: 0 means 100; otherwise 1 to ``MAX_PAGE``."""
    if limit == 0:
        return 100
    if not 1 <= limit <= MAX_PAGE:
        raise InvalidArgument(f"{what} must be between 1 and {MAX_PAGE}, got {limit}")
    return limit


def check_abs(path: str) -> str:
    """An absolute path without NUL bytes, at most 4096 bytes; returned normalised."""
    if not path or "\x00" in path:
        raise InvalidArgument("a path must be non-empty and free of NUL bytes")
    if len(path) > 4096:
        raise InvalidArgument("a path is at most 4096 bytes")
    if not os.path.isabs(path):
        raise InvalidArgument(
            f"paths are absolute on the wire (the client resolves them): {path!r}"
        )
    return os.path.normpath(path)


def is_clean_abs(path: str) -> bool:
    """Whether ``check_abs(path)`` would return ``path`` unchanged (the normpath is only paid
    for a path that fails here, and then decides)."""
    return path[:1] == "/" and len(path) <= 4096 and "\x00" not in path and is_normal_path(path)


def check_no_nul(text: str, what: str) -> None:
    """A filter or prefix (``what`` names it) holds no NUL bytes."""
    if "\x00" in text:
        raise InvalidArgument(f"{what} has no NUL bytes")


def check_version_id(version_id: int) -> None:
    """A version id asked for by itself is positive."""
    if version_id <= 0:
        raise InvalidArgument(f"a version id is a positive integer, got {version_id}")


def check_accesses_count(accesses: Sequence[Access]) -> None:
    """One RecordAccesses call carries at most ``MAX_ACCESSES``."""
    if len(accesses) > MAX_ACCESSES:
        raise InvalidArgument(f"at most {MAX_ACCESSES} accesses per call, got {len(accesses)}")


def check_fields(accesses: Sequence[Access]) -> None:
    """An access's fields besides its path, checked for a whole batch at once (each value set
    is small: a run reports a handful of distinct ones)."""
    if not accesses:
        return
    hows = {access.how for access in accesses} - {AccessHow.DECLARED, AccessHow.TRACED}
    if hows:
        raise InvalidArgument(f"access 'how' is declared or traced, got {str(min(hows))!r}")
    roles = {access.role for access in accesses} - set(AccessRole)
    if roles:
        raise InvalidArgument(f"access role is data or code, got {str(min(roles))!r}")
    for access in accesses:
        if access.digest:
            digest_to_blob(access.digest)
    if (
        min(access.size for access in accesses) < 0
        or min(access.first_at for access in accesses) < 0
        or min(access.last_at for access in accesses) < 0
    ):
        raise InvalidArgument("sizes and times cannot be negative")


def check_run_start(start: RunStart) -> None:
    """A new run's name, argv and working directory."""
    if not start.name or "\x00" in start.name or len(start.name) > 256:
        raise InvalidArgument("a run name is 1 to 256 characters without NUL bytes")
    if any("\x00" in a for a in start.argv) or len(start.argv) > 10_000:
        raise InvalidArgument("argv has at most 10000 arguments without NUL bytes")
    if start.cwd:
        check_abs(start.cwd)


def check_run_end(status: RunStatus, warnings: Sequence[str], capture: Capture | None) -> None:
    """How a run ended: not running; its warnings and its capture's reasons bounded."""
    if status is RunStatus.RUNNING:
        raise InvalidArgument("a run cannot end with status running")
    if len(warnings) > 100 or any(len(w) > 4096 or "\x00" in w for w in warnings):
        raise InvalidArgument("at most 100 warnings of at most 4096 characters")
    if capture is not None and (
        len(capture.reasons) > 100
        or any(len(r) > 4096 or "\x00" in r for r in capture.reasons)
        or len(capture.method) > 64
    ):
        raise InvalidArgument("at most 100 capture reasons of at most 4096 characters")
    if capture is not None and capture.complete and capture.reasons:
        raise InvalidArgument("a complete capture has no reasons to be partial")


def check_start(start: StartNode) -> StartNode:
    """Where a walk, a verify or a pin starts: exactly one of path, digest, version, run."""
    given = sum(bool(x) for x in (start.path, start.digest, start.version_id, start.run_id))
    if given != 1:
        raise InvalidArgument("give exactly one start: a path, a digest, a version id or a run id")
    if start.path:
        return replace(start, path=check_abs(start.path))
    if start.version_id < 0:
        raise InvalidArgument("a version id is a positive integer")
    return start


def check_graph_limits(max_depth: int, max_nodes: int) -> tuple[int, int]:
    """A lineage walk's depth and size limits: 0 means 50 levels and 1000 nodes."""
    max_depth = max_depth or 50
    max_nodes = max_nodes or 1000
    if not 1 <= max_depth <= MAX_DEPTH:
        raise InvalidArgument(f"max_depth must be between 1 and {MAX_DEPTH}, got {max_depth}")
    if not 1 <= max_nodes <= MAX_NODES:
        raise InvalidArgument(f"max_nodes must be between 1 and {MAX_NODES}, got {max_nodes}")
    return max_depth, max_nodes


def check_restore(path: str, digest: str) -> str:
    """What ``lineage restore`` names: a path, a digest or both; the path normalised."""
    if not path and not digest:
        raise InvalidArgument("restore needs a path, a digest, or both")
    return check_abs(path) if path else path

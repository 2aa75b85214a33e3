"""The row codec: how values are stored in columns and read back, each row kind named.

A version row is selected as ``VERSION_COLUMNS`` and read as a ``VersionRecord``; a run row as
``RUN_COLUMNS`` and a ``RunRecord``. Rows are decoded in bulk (a history, a listing, the stat
cache load, a lineage graph): one named tuple per row, built by one constructor call.

Version rows carry a checksum over the fields that never change (``version_checksum``); a
``RowChecker`` refuses a row that fails it, and remembers the damage.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import struct
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple, TypeVar

import blake3
from lineage_core.errors import DamagedRow
from lineage_core.hasher import hash_bytes
from lineage_core.models import (
    AccessHow,
    AccessRole,
    Capture,
    ChangeKind,
    CodeState,
    EdgeKind,
    EnvState,
    Run,
    RunStatus,
    SourceFile,
    StatKey,
    Version,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

CHECKSUM_BYTES = 16
# Paths per query when a run's accesses are looked up in bulk (one JSON array per query).
BATCH_PATHS = 5_000

_STAT_KEY = struct.Struct("<5q")
_CHECKED_FIELDS = struct.Struct("<3q")

# Enum members by stored value: a dict lookup, where ``ChangeKind(text)`` walks the enum
# machinery (graphs and histories decode hundreds of rows per call).
CHANGE_KINDS = {kind.value: kind for kind in ChangeKind}
RUN_STATUSES = {status.value: status for status in RunStatus}
EDGE_KINDS = {kind.value: kind for kind in EdgeKind}
# An edge's or access's ``how``/``role`` column left NULL (or empty) reads as traced data.
ACCESS_HOWS: dict[str | None, AccessHow] = {
    None: AccessHow.TRACED,
    "": AccessHow.TRACED,
    **{how.value: how for how in AccessHow},
}
ACCESS_ROLES: dict[str | None, AccessRole] = {
    None: AccessRole.DATA,
    "": AccessRole.DATA,
    **{role.value: role for role in AccessRole},
}


# --- version rows -------------------------------------------------------------------------


class VersionRecord(NamedTuple):
    """A version row as selected by ``VERSION_COLUMNS``."""

    id: int
    path: str
    digest: bytes
    size: int
    mtime_ns: int
    valid_from: int
    valid_until: int | None
    seen: str
    closed_by: str | None
    external: int  # the artifact has no root
    checksum: bytes | None


VERSION_COLUMNS = (
    "v.id, a.path, v.digest, v.size, v.mtime_ns, v.valid_from, v.valid_until, v.seen, "
    "v.closed_by, a.root_id IS NULL, v.checksum"
)


def version_checksum(path: str, digest: bytes, size: int, mtime_ns: int, valid_from: int) -> bytes:
    """A version row's checksum: BLAKE3 (16 bytes) over the fields that never change once
    inserted: the artifact's path, the digest, size, mtime and the start of validity.

    Checked whenever a version is served: a flipped byte that SQLite's page checks cannot
    see (it is a valid page holding a wrong value) makes the row refused, never served.
    Unkeyed on purpose: ``lineaged check`` verifies it with the database alone. It finds
    damage, not a forger who can write the database (and so recompute it).
    """
    fields = _CHECKED_FIELDS.pack(size, mtime_ns, valid_from)
    data = path.encode("utf-8", "surrogateescape") + b"\0" + bytes(digest) + fields
    return blake3.blake3(data).digest(CHECKSUM_BYTES)


class RowChecker:
    """Checks version rows against their checksums before they are served, and remembers
    which rows failed (id -> path) for ``status`` and whoever set ``on_damage``."""

    def __init__(self) -> None:
        self._damage: dict[int, str] = {}
        self._lock = threading.Lock()
        self.on_damage: Callable[[int, str], None] | None = None

    def version(self, row: Sequence[Any]) -> Version:
        """A version row (``VERSION_COLUMNS``, as ``VersionRecord`` names them) as a value once
        its checksum holds."""
        (
            version_id,
            path,
            digest,
            size,
            mtime_ns,
            valid_from,
            valid_until,
            seen,
            closed_by,
            external,
            checksum,
        ) = row
        self.verify(version_id, path, digest, size, mtime_ns, valid_from, checksum)
        return Version(
            version_id,
            path,
            digest.hex(),
            size,
            mtime_ns,
            valid_from,
            valid_until,
            CHANGE_KINDS[seen],
            CHANGE_KINDS[closed_by] if closed_by else None,
            bool(external),
        )

    def verify(
        self,
        version_id: int,
        path: str,
        digest: bytes,
        size: int,
        mtime_ns: int,
        valid_from: int,
        checksum: bytes | None,
    ) -> None:
        """DamagedRow (and the damage remembered and reported) when a version row fails its
        checksum; a row without one (written by a lineaged that did not make them) passes."""
        if checksum is None:
            return
        if version_checksum(path, digest, size, mtime_ns, valid_from) == bytes(checksum):
            return
        with self._lock:
            new = version_id not in self._damage
            self._damage[version_id] = path
        if new:
            log.error(
                "store damage: version %d of %s fails its checksum; it is not served, and the "
                "file is hashed again ('lineaged check' lists every damaged row)",
                version_id,
                path,
            )
            callback = self.on_damage
            if callback is not None:
                try:
                    callback(version_id, path)
                except Exception:
                    log.exception("damage callback failed")
        raise DamagedRow(
            f"version {version_id} of {path} is damaged in the store (it fails its checksum): "
            "its digest is not served; restore a backup ('lineaged check' lists the damage)"
        )

    def damaged(self) -> dict[int, str]:
        """Version rows found failing their checksum so far (id -> path)."""
        with self._lock:
            return dict(self._damage)


# --- run rows -----------------------------------------------------------------------------


class RunRecord(NamedTuple):
    """A run row as selected by ``RUN_COLUMNS`` (JSON columns still text)."""

    id: int
    run_id: str
    name: str
    argv: str | None
    cwd: str | None
    host: str | None
    user: str | None
    pid: int | None
    started_at: int
    ended_at: int | None
    status: str
    exit_code: int | None
    params: str | None
    parent_run_id: str | None
    code: str | None
    diff_digest: bytes | None
    env_body: str | None
    warnings: str | None
    capture: str | None


RUN_COLUMNS = (
    "r.id, r.run_id, r.name, r.argv, r.cwd, r.host, r.user, r.pid, r.started_at, r.ended_at, "
    "r.status, r.exit_code, r.params, r.parent_run_id, r.code, r.diff_digest, e.body, r.warnings, "
    "r.capture"
)


def decode_runs(
    rows: Sequence[Sequence[Any]], sources: Mapping[int, tuple[SourceFile, ...]]
) -> list[Run]:
    """Decode run rows (``RUN_COLUMNS``) into values, with each run's code inputs: one JSON
    parse for every row's argv, params, code and warnings (a lineage graph or a listing
    decodes many runs; one call per field would dominate)."""
    # Each row's columns are taken apart by name once (tuple unpacking: no object per row).
    texts: list[str] = []
    for _, _, _, argv, *_, params, _, code, _, _, warnings, _ in rows:
        texts += (argv or "[]", params or "{}", code or "null", warnings or "[]")
    decoded = json.loads("[" + ",".join(texts) + "]")
    # Runs of one pipeline mostly ran the same code: equal code is one value, built once.
    codes: dict[tuple[str | None, bytes | None, tuple[SourceFile, ...]], CodeState | None] = {}
    statuses = RUN_STATUSES
    runs: list[Run] = []
    for i, (
        row_id,
        run_id,
        name,
        _,
        cwd,
        host,
        user,
        pid,
        started_at,
        ended_at,
        status,
        exit_code,
        _,
        parent_run_id,
        code_text,
        diff_digest,
        env_body,
        _,
        capture,
    ) in enumerate(rows):
        argv, params, code_raw, warnings = decoded[4 * i : 4 * i + 4]
        run_sources = sources.get(row_id, ())
        key = (code_text, diff_digest, run_sources)
        if key in codes:
            code = codes[key]
        else:
            code = codes[key] = _run_code(code_raw, diff_digest, run_sources)
        runs.append(
            Run(
                run_id=run_id,
                name=name,
                argv=tuple(argv),
                cwd=cwd or "",
                host=host or "",
                user=user or "",
                pid=pid or 0,
                started_at=started_at,
                ended_at=ended_at,
                status=statuses[status],
                exit_code=exit_code,
                params=params,
                parent_run_id=parent_run_id or "",
                code=code,
                env=env_from_json(env_body),
                warnings=tuple(warnings),
                id=row_id,
                capture=capture_from_json(capture),
            )
        )
    return runs


def _code_from_raw(raw: dict[str, Any] | None, diff_digest: bytes | None) -> CodeState | None:
    if not raw:
        return None
    return CodeState(
        commit=raw.get("commit", ""),
        branch=raw.get("branch", ""),
        remote=raw.get("remote", ""),
        dirty=bool(raw.get("dirty", False)),
        diff_digest=raw.get("diff_digest", "") or hex_or_empty(diff_digest),
        diff_size=int(raw.get("diff_size", 0)),
        diff_truncated=bool(raw.get("diff_truncated", False)),
        untracked=tuple(raw.get("untracked", ())),
        sources=tuple(SourceFile(s["path"], s["digest"]) for s in raw.get("sources", ())),
    )


def code_to_json(code: CodeState) -> str:
    """The stored form of a run's git state (the diff itself is a blob of its own)."""
    return json.dumps(
        {
            "commit": code.commit,
            "branch": code.branch,
            "remote": code.remote,
            "dirty": code.dirty,
            "diff_digest": code.diff_digest,
            "diff_size": code.diff_size,
            "diff_truncated": code.diff_truncated,
            "untracked": list(code.untracked),
            "sources": [{"path": s.path, "digest": s.digest} for s in code.sources],
        },
        sort_keys=True,
    )


def env_to_json(env: EnvState) -> str:
    """The stored form of a run's environment (one row per distinct body)."""
    return json.dumps(
        {
            "python_version": env.python_version,
            "implementation": env.implementation,
            "platform": env.platform,
            "packages": list(env.packages),
            "packages_digest": env.packages_digest,
            "variables": dict(env.variables),
        },
        sort_keys=True,
    )


@functools.lru_cache(maxsize=64)
def env_from_json(body: str | None) -> EnvState | None:
    """A stored environment as a value (runs of one pipeline share a few bodies: cached)."""
    if not body:
        return None
    raw = json.loads(body)
    return EnvState(
        python_version=raw.get("python_version", ""),
        implementation=raw.get("implementation", ""),
        platform=raw.get("platform", ""),
        packages=tuple(raw.get("packages", ())),
        packages_digest=raw.get("packages_digest", ""),
        variables=dict(raw.get("variables", {})),
    )


def capture_from_json(text: str | None) -> Capture | None:
    """A stored capture as a value (None when not known)."""
    if not text:
        return None
    raw = json.loads(text)
    return Capture(
        complete=bool(raw.get("complete")),
        reasons=tuple(raw.get("reasons", ())),
        method=str(raw.get("method", "")),
    )


def capture_to_json(capture: Capture | None) -> str | None:
    """The stored form of a run's capture (None when not known)."""
    if capture is None:
        return None
    return json.dumps(
        {"complete": capture.complete, "reasons": list(capture.reasons), "method": capture.method}
    )


def _run_code(
    code_raw: dict[str, Any] | None, diff_digest: bytes | None, sources: tuple[SourceFile, ...]
) -> CodeState | None:
    code = _code_from_raw(code_raw, diff_digest)
    if sources and code is None:
        return CodeState(sources=sources)  # not in a git work tree: the sources still count
    if code is not None and sources and not code.sources:
        return CodeState(**{**code_fields(code), "sources": sources})
    return code


def code_fields(code: CodeState) -> dict[str, Any]:
    """A code state's fields by name (to build a changed copy)."""
    return {name: getattr(code, name) for name in CodeState.__slots__}


# --- columns of other kinds ---------------------------------------------------------------


def pack_stat_key(key: StatKey) -> bytes:
    """The stat key as 40 bytes, compared whole by the rescan."""
    return _STAT_KEY.pack(key.dev, key.ino, key.size, key.mtime_ns, key.ctime_ns)


def pack_stat(st: os.stat_result) -> bytes:
    """``pack_stat_key(StatKey.from_stat(st))`` without the key object (one per file read)."""
    return _STAT_KEY.pack(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def unpack_stat_key(packed: bytes) -> StatKey:
    """The stat key ``pack_stat_key`` packed."""
    dev, ino, size, mtime_ns, ctime_ns = _STAT_KEY.unpack(packed)
    return StatKey(dev, ino, size, mtime_ns, ctime_ns)


def hex_or_empty(blob: bytes | None) -> str:
    """A stored digest as hex ("" for none)."""
    return blob.hex() if blob else ""


def blake3_blob(data: bytes) -> bytes:
    """The BLAKE3 digest of ``data`` as stored (32 bytes): environments and diffs by content."""
    return bytes.fromhex(hash_bytes(data))


def iso(ns: int) -> str:
    """A stored time (ns since the epoch) as UTC text, for messages."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ns / 1e9))


def chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    """``items`` in slices of ``size``: one query each (SQLite bounds a statement's size)."""
    for i in range(0, len(items), size):
        yield items[i : i + size]

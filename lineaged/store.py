"""The SQLite store: every SQL statement of lineaged lives in this module.

One writer thread owns the write connection (``Writer``); every other thread reads through its
own connection (WAL lets them run beside the writer). History is append-only: a new content
state inserts a version and closes the previous one's interval; a deletion closes the interval
of the current version. Nothing in normal operation deletes a version, a run or an edge.

Digests are stored as 32-byte BLOBs (docs/design.md: smaller index, faster inserts) and shown as
64 lowercase hex characters.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import operator
import os
import queue
import sqlite3
import struct
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    import sqlite_utils

    from lineaged.redact import Redactor


import blake3

from lineaged.errors import (
    AlreadyExists,
    AmbiguousDigest,
    CorruptStore,
    DamagedRow,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    StoreError,
)
from lineaged.hasher import hash_bytes
from lineaged.models import (
    Access,
    AccessMode,
    Capture,
    ChangeKind,
    CodeState,
    Counts,
    Direction,
    Edge,
    EnvState,
    Graph,
    Role,
    Root,
    Run,
    RunFile,
    RunStart,
    RunStatus,
    SourceFile,
    StartNode,
    StatKey,
    VerifyItem,
    VerifyState,
    Version,
    is_new_run_id,
    new_run_id,
    run_node_id,
    version_node_id,
)

__all__ = [
    "APP_ID",
    "CACHE_KIB",
    "DB_NAME",
    "SCHEMA_VERSION",
    "CacheEntry",
    "OutboxEntry",
    "Store",
    "TransactionLost",
    "VersionWrite",
    "Writer",
    "pack_stat",
    "pack_stat_key",
]

log = logging.getLogger(__name__)

DB_NAME = "lineaged.db"
APP_ID = 0x4C494E45  # "LINE": PRAGMA application_id marks a lineaged database
SQLITE_HEADER = b"SQLite format 3\x00"
DIGEST_BYTES = 32
MIN_PREFIX = 8
CACHE_KIB = 32768  # SQLite's page cache per connection (its default is 2 MiB)
# The WAL file is cut back to this size when SQLite restarts it (it never shrinks otherwise).
WAL_KEEP_BYTES = 64 << 20  # as Writer.WAL_FORCE_BYTES: no cutting back and regrowing

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class CacheEntry:
    """What the store remembers of a live path: its stat key and digest when last checked."""

    artifact_id: int
    stat_key: StatKey
    digest: str
    checked_at: int
    hash_format: int


_STAT_KEY = struct.Struct("<5q")
_CHECKED_FIELDS = struct.Struct("<3q")
CHECKSUM_BYTES = 16
# Paths per query when a run's accesses are looked up in bulk (one JSON array per query).
_BATCH_PATHS = 5_000


def pack_stat_key(key: StatKey) -> bytes:
    """The stat key as 40 bytes, compared whole by the rescan."""
    return _STAT_KEY.pack(key.dev, key.ino, key.size, key.mtime_ns, key.ctime_ns)


def pack_stat(st: os.stat_result) -> bytes:
    """``pack_stat_key(StatKey.from_stat(st))`` without the key object (one per file read)."""
    return _STAT_KEY.pack(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    """An OpenLineage event a run owes: its run, ``phase`` "start" or "end", tries so far."""

    id: int
    run_id: str
    phase: str
    attempts: int
    queued_at: int


@dataclass(frozen=True, slots=True)
class VersionWrite:
    """One observed content state of a path under a root, to be recorded."""

    path: str
    root_id: int
    digest: str
    stat_key: StatKey
    seen: ChangeKind
    observed_at: int


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


# --- schema -----------------------------------------------------------------------------


def _migration_1(db: sqlite_utils.Database) -> None:
    db.table("meta").create({"key": str, "value": str}, pk="key")
    db.table("roots").create(
        {"id": int, "path": str, "role": str, "added_at": int},
        pk="id",
        not_null={"path", "role", "added_at"},
    )
    db.table("roots").create_index(["path"], unique=True)
    # The stat cache lives on the artifact row (NULL cache_key: not live): one B-tree insert
    # per new file instead of two, and the rescan reads it without a join.
    db.table("artifacts").create(
        {
            "id": int,
            "path": str,
            "root_id": int,
            "cache_key": bytes,  # packed (dev, ino, size, mtime_ns, ctime_ns)
            "cache_digest": bytes,
            "cache_mtime_ns": int,
            "checked_at": int,
            "hash_format": int,
        },
        pk="id",
        not_null={"path"},
        foreign_keys=[("root_id", "roots", "id")],
    )
    db.table("artifacts").create_index(["path"], unique=True)
    db.table("versions").create(
        {
            "id": int,
            "artifact_id": int,
            "digest": bytes,
            "size": int,
            "mtime_ns": int,
            "valid_from": int,
            "valid_until": int,
            "seen": str,
            "closed_by": str,
        },
        pk="id",
        not_null={"artifact_id", "digest", "size", "mtime_ns", "valid_from", "seen"},
        foreign_keys=[("artifact_id", "artifacts", "id")],
    )
    db.table("versions").create_index(
        ["artifact_id", "valid_from"], index_name="versions_by_artifact"
    )
    db.table("versions").create_index(["digest"], index_name="versions_by_digest")
    db.table("blobs").create({"digest": bytes, "data": bytes}, pk="digest")
    db.table("envs").create({"id": int, "digest": bytes, "body": str}, pk="id", not_null={"digest"})
    db.table("envs").create_index(["digest"], unique=True)
    db.table("runs").create(
        {
            "id": int,
            "run_id": str,
            "name": str,
            "argv": str,
            "cwd": str,
            "host": str,
            "user": str,
            "pid": int,
            "started_at": int,
            "ended_at": int,
            "status": str,
            "exit_code": int,
            "params": str,
            "parent_run_id": str,
            "code": str,
            "diff_digest": bytes,
            "env_id": int,
            "warnings": str,
        },
        pk="id",
        not_null={"run_id", "name", "started_at", "status"},
        foreign_keys=[("env_id", "envs", "id"), ("diff_digest", "blobs", "digest")],
    )
    db.table("runs").create_index(["run_id"], unique=True)
    db.table("runs").create_index(["name", "id"], index_name="runs_by_name")
    db.table("accesses").create(
        {
            "id": int,
            "run_id": int,
            "path": str,
            "mode": str,
            "how": str,
            "role": str,
            "first_at": int,
            "last_at": int,
            "digest": bytes,
            "size": int,
            "mtime_ns": int,
        },
        pk="id",
        not_null={"run_id", "path", "mode", "first_at", "last_at"},
        foreign_keys=[("run_id", "runs", "id")],
    )
    db.table("accesses").create_index(["run_id", "mode"], index_name="accesses_by_run")
    db.table("edges").create(
        {
            "id": int,
            "run_id": int,
            "version_id": int,
            "kind": str,
            "how": str,
            "role": str,
            "first_at": int,
            "last_at": int,
            "changed_during_run": int,
        },
        pk="id",
        not_null={"run_id", "version_id", "kind"},
        foreign_keys=[("run_id", "runs", "id"), ("version_id", "versions", "id")],
    )
    db.table("edges").create_index(["run_id", "kind", "version_id"], unique=True)
    db.table("edges").create_index(["version_id", "kind"], index_name="edges_by_version")


def _migration_row_checksum(db: sqlite_utils.Database) -> None:
    """``versions.checksum`` (see :func:`version_checksum`), computed for existing rows."""
    conn = db.conn
    _add_column(conn, "versions", "checksum", "BLOB")
    last = 0
    while True:
        rows = conn.execute(
            "SELECT v.id, a.path, v.digest, v.size, v.mtime_ns, v.valid_from FROM versions v "
            "JOIN artifacts a ON a.id=v.artifact_id WHERE v.id > ? ORDER BY v.id LIMIT 50000",
            (last,),
        ).fetchall()
        if not rows:
            return
        conn.executemany(
            "UPDATE versions SET checksum=? WHERE id=?",
            [(version_checksum(*row[1:]), row[0]) for row in rows],
        )
        last = rows[-1][0]


def _migration_redact_secrets(db: sqlite_utils.Database) -> None:
    """Secrets recorded before redaction existed (issue 13) are replaced by ``<redacted>``.

    The same rules as for new runs (``lineaged.redact``) over argv, params, the git remote,
    warnings and environment variables. The store's key lives outside the database, so old
    values get the plain marker. ``secure_delete`` zeroes the freed bytes in the file.
    """
    from lineaged.redact import Redactor

    conn = db.conn
    secure_delete = conn.execute("PRAGMA secure_delete").fetchone()[0]
    conn.execute("PRAGMA secure_delete=ON")
    try:
        _redact_stored_runs(conn, Redactor())
    finally:
        conn.execute(f"PRAGMA secure_delete={int(secure_delete)}")


def _redact_stored_runs(conn: sqlite3.Connection, redactor: Redactor) -> None:
    rows = conn.execute("SELECT id, argv, params, code, warnings FROM runs").fetchall()
    for row_id, argv, params, code, warnings in rows:
        new_argv = json.dumps(list(redactor.argv(json.loads(argv)))) if argv else argv
        new_params = (
            json.dumps(redactor.params(json.loads(params)), sort_keys=True) if params else params
        )
        new_code = code
        if code:
            raw = json.loads(code)
            remote = redactor.text(raw.get("remote", ""))
            if remote != raw.get("remote", ""):
                raw["remote"] = remote
                new_code = json.dumps(raw, sort_keys=True)
        new_warnings = (
            json.dumps(list(redactor.texts(json.loads(warnings)))) if warnings else warnings
        )
        if (new_argv, new_params, new_code, new_warnings) != (argv, params, code, warnings):
            conn.execute(
                "UPDATE runs SET argv=?, params=?, code=?, warnings=? WHERE id=?",
                (new_argv, new_params, new_code, new_warnings, row_id),
            )
    for env_id, body in conn.execute("SELECT id, body FROM envs").fetchall():
        raw = json.loads(body)
        variables = raw.get("variables", {})
        redacted = redactor.variables(variables, drop_secret=False)
        if redacted == variables:
            continue
        raw["variables"] = redacted
        new_body = json.dumps(raw, sort_keys=True)
        digest = _blake3(new_body.encode())
        same = conn.execute("SELECT id FROM envs WHERE digest=?", (digest,)).fetchone()
        if same is not None:  # another stored environment already reads the same once redacted
            conn.execute("UPDATE runs SET env_id=? WHERE env_id=?", (same[0], env_id))
            conn.execute("DELETE FROM envs WHERE id=?", (env_id,))
        else:
            conn.execute("UPDATE envs SET body=?, digest=? WHERE id=?", (new_body, digest, env_id))


def _migration_openlineage(db: sqlite_utils.Database) -> None:
    # The OpenLineage outbox: one row per event a run owes the configured consumer, written in
    # the transaction that begins or ends the run, marked delivered once the transport took it.
    # The event itself is built from the run at delivery (history is append-only, so the same
    # row always gives the same event); a row records the phase, not the payload.
    db.execute(
        "CREATE TABLE IF NOT EXISTS openlineage_outbox ("
        " id INTEGER PRIMARY KEY,"
        " run_id INTEGER NOT NULL REFERENCES runs(id),"
        " phase TEXT NOT NULL CHECK (phase IN ('start', 'end')),"
        " queued_at INTEGER NOT NULL,"
        " attempts INTEGER NOT NULL DEFAULT 0,"
        " last_error TEXT,"
        " delivered_at INTEGER)"
    )
    db.execute(
        "CREATE INDEX IF NOT EXISTS openlineage_pending ON openlineage_outbox(id) "
        "WHERE delivered_at IS NULL"
    )


def _migration_capture_spool(db: sqlite_utils.Database) -> None:
    # `lineage show` lists a run's nested runs (ListRuns by parent): one index lookup.
    db.table("runs").create_index(
        ["parent_run_id", "id"], index_name="runs_by_parent", if_not_exists=True
    )


def _migration_capture_completeness(db: sqlite_utils.Database) -> None:
    """How completely each run's file accesses were captured (JSON of ``Capture``; NULL:
    not known, as for every run recorded before)."""
    _add_column(db.conn, "runs", "capture", "TEXT")


def _add_column(conn: sqlite3.Connection, table: str, column: str, kind: str) -> None:
    """``ALTER TABLE ... ADD COLUMN`` unless the column is there: a migration after the first
    leaves what it finds already done, so running one again is harmless."""
    have = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
    if column not in have:
        conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")


def _migration_content_store(db: sqlite_utils.Database) -> None:
    # What the content store holds (objects.py owns the files): one row per digest.
    db.table("objects").create(
        {"digest": bytes, "size": int, "stored_at": int, "method": str},
        pk="digest",
        not_null={"size", "stored_at"},
        if_not_exists=True,
    )
    # Why a version's bytes could not be kept (NULL: kept, or never asked for).
    _add_column(db.conn, "versions", "not_kept", "TEXT")
    db.table("pins").create(
        {"id": int, "version_id": int, "note": str, "pinned_at": int},
        pk="id",
        not_null={"version_id", "pinned_at"},
        foreign_keys=[("version_id", "versions", "id")],
        if_not_exists=True,
    )
    db.table("pins").create_index(["version_id"], unique=True, if_not_exists=True)
    db.table("reproductions").create(
        {"run_id": int, "original_id": int, "linked_at": int},
        pk="run_id",
        not_null={"original_id", "linked_at"},
        foreign_keys=[("run_id", "runs", "id"), ("original_id", "runs", "id")],
        if_not_exists=True,
    )
    db.table("reproductions").create_index(
        ["original_id"], index_name="reproductions_by_original", if_not_exists=True
    )


MIGRATIONS: tuple[Callable[[sqlite_utils.Database], None], ...] = (
    _migration_1,
    _migration_row_checksum,
    _migration_openlineage,
    _migration_capture_spool,
    _migration_capture_completeness,
    _migration_content_store,
    _migration_redact_secrets,
)
SCHEMA_VERSION = len(MIGRATIONS)  # a store at version N has had the first N migrations


# --- helpers ------------------------------------------------------------------------------


def digest_to_blob(digest: str) -> bytes:
    """64 hex characters to 32 bytes; InvalidArgument otherwise."""
    if len(digest) != 2 * DIGEST_BYTES:
        raise InvalidArgument(f"a digest is 64 hex characters, got {len(digest)}: {digest[:80]!r}")
    try:
        return bytes.fromhex(digest)
    except ValueError:
        raise InvalidArgument(f"a digest is hexadecimal: {digest[:80]!r}") from None


def _hex(blob: bytes | None) -> str:
    return blob.hex() if blob else ""


def _prefix_range(prefix: str) -> tuple[bytes, bytes | None]:
    """The half-open BLOB range ``[low, high)`` of every digest starting with ``prefix``."""
    low_hex = prefix + "0" * (2 * DIGEST_BYTES - len(prefix))
    low = bytes.fromhex(low_hex)
    value = int(prefix, 16) + 1
    if value >= 16 ** len(prefix):
        return low, None
    high_hex = format(value, f"0{len(prefix)}x") + "0" * (2 * DIGEST_BYTES - len(prefix))
    return low, bytes.fromhex(high_hex)


_warned_names: set[str] = set()


def _storable(path: str) -> bool:
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


def _check_path(path: str) -> str:
    if not path or "\x00" in path:
        raise InvalidArgument("a path must be non-empty and free of NUL bytes")
    if not os.path.isabs(path):
        raise InvalidArgument(f"paths are absolute on the wire, got {path!r}")
    return os.path.normpath(path)


_VERSION_COLUMNS = (
    "v.id, a.path, v.digest, v.size, v.mtime_ns, v.valid_from, v.valid_until, v.seen, "
    "v.closed_by, a.root_id IS NULL, v.checksum"
)

_RUN_COLUMNS = (
    "r.id, r.run_id, r.name, r.argv, r.cwd, r.host, r.user, r.pid, r.started_at, r.ended_at, "
    "r.status, r.exit_code, r.params, r.parent_run_id, r.code, r.diff_digest, e.body, r.warnings, "
    "r.capture"
)


# Enum members by stored value: a dict lookup, where ``ChangeKind(text)`` walks the enum
# machinery (graphs and histories decode hundreds of rows per call).
_CHANGE_KINDS = {kind.value: kind for kind in ChangeKind}
_RUN_STATUSES = {status.value: status for status in RunStatus}
# A run that may still receive accesses and its end: running, or abandoned by a wrapper that
# spooled what it could not deliver (capture-reliability.md).
_OPEN_STATUSES = (RunStatus.RUNNING.value, RunStatus.ABANDONED.value)


def _version(row: Sequence[Any]) -> Version:
    return Version(
        id=row[0],
        path=row[1],
        digest=row[2].hex(),
        size=row[3],
        mtime_ns=row[4],
        valid_from=row[5],
        valid_until=row[6],
        seen=_CHANGE_KINDS[row[7]],
        closed_by=_CHANGE_KINDS[row[8]] if row[8] else None,
        external=bool(row[9]),
    )


def _code_from_raw(raw: dict[str, Any] | None, diff_digest: bytes | None) -> CodeState | None:
    if not raw:
        return None
    return CodeState(
        commit=raw.get("commit", ""),
        branch=raw.get("branch", ""),
        remote=raw.get("remote", ""),
        dirty=bool(raw.get("dirty", False)),
        diff_digest=raw.get("diff_digest", "") or _hex(diff_digest),
        diff_size=int(raw.get("diff_size", 0)),
        diff_truncated=bool(raw.get("diff_truncated", False)),
        untracked=tuple(raw.get("untracked", ())),
        sources=tuple(SourceFile(s["path"], s["digest"]) for s in raw.get("sources", ())),
    )


def _code_to_json(code: CodeState) -> str:
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


def _env_to_json(env: EnvState) -> str:
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
def _env_from_json(body: str | None) -> EnvState | None:
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


def _runs(
    rows: Sequence[Sequence[Any]], sources: Mapping[int, tuple[SourceFile, ...]]
) -> list[Run]:
    """Decode run rows into values: one JSON parse for every row's argv, params, code and
    warnings (a lineage graph or a listing decodes many runs; one call per field would
    dominate)."""
    texts: list[str] = []
    for row in rows:
        texts += (row[3] or "[]", row[12] or "{}", row[14] or "null", row[17] or "[]")
    decoded = json.loads("[" + ",".join(texts) + "]")
    # Runs of one pipeline mostly ran the same code: equal code is one value, built once.
    codes: dict[tuple[str | None, bytes | None, tuple[SourceFile, ...]], CodeState | None] = {}
    statuses = _RUN_STATUSES
    runs: list[Run] = []
    for i, row in enumerate(rows):
        argv, params, code_raw, warnings = decoded[4 * i : 4 * i + 4]
        run_sources = sources.get(row[0], ())
        key = (row[14], row[15], run_sources)
        if key in codes:
            code = codes[key]
        else:
            code = codes[key] = _run_code(code_raw, row[15], run_sources)
        runs.append(
            Run(
                run_id=row[1],
                name=row[2],
                argv=tuple(argv),
                cwd=row[4] or "",
                host=row[5] or "",
                user=row[6] or "",
                pid=row[7] or 0,
                started_at=row[8],
                ended_at=row[9],
                status=statuses[row[10]],
                exit_code=row[11],
                params=params,
                parent_run_id=row[13] or "",
                code=code,
                env=_env_from_json(row[16]),
                warnings=tuple(warnings),
                id=row[0],
                capture=_capture_from_json(row[18]),
            )
        )
    return runs


def _capture_from_json(text: str | None) -> Capture | None:
    if not text:
        return None
    raw = json.loads(text)
    return Capture(
        complete=bool(raw.get("complete")),
        reasons=tuple(raw.get("reasons", ())),
        method=str(raw.get("method", "")),
    )


def _capture_to_json(capture: Capture | None) -> str | None:
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
        return CodeState(**{**_code_fields(code), "sources": sources})
    return code


def _code_fields(code: CodeState) -> dict[str, Any]:
    return {name: getattr(code, name) for name in CodeState.__slots__}


# --- the store --------------------------------------------------------------------------


class Store:
    """A lineaged database: open it once per process, read from any thread, write on one."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self._write_conn: sqlite3.Connection | None = None
        # Version rows found failing their checksum (id -> path), and who wants to know.
        self._damage: dict[int, str] = {}
        self._damage_lock = threading.Lock()
        self.on_damage: Callable[[int, str], None] | None = None
        # Found at open and worth telling every status caller (a vanished WAL).
        self.open_warnings: list[str] = []
        # Set by the engine when OpenLineage is on: beginning and ending a run then also queue
        # its event in the outbox, in the same transaction.
        self.openlineage_outbox = False

    # -- opening and closing

    @classmethod
    def open(cls, path: Path) -> Store:
        """Open (creating if needed) and migrate the store at ``path``; refuse foreign or
        corrupt files, leaving them untouched."""
        _refuse_foreign(path)
        store = cls(path)
        side_files = [Path(f"{path}{suffix}") for suffix in ("-wal", "-shm", "-journal")]
        absent = [side for side in side_files if not side.exists()]
        clean = _closed_cleanly(path)  # read and remove the marker before anything else
        vanished = _vanished_wal(path)
        try:
            if path.exists() and path.stat().st_size > 0:
                # Check on a read-only connection first: switching to WAL, migrating or
                # writing would change a foreign or damaged file.
                with contextlib.closing(
                    sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30.0)
                ) as probe:
                    _check_identity(path, probe)
                    if not clean:
                        _check_pages(path, probe)
            store._write_conn = store._connect(write=True)
            store._migrate()
            store.ensure_indexes()
            if vanished:
                newest = store._wc.execute(
                    "SELECT run_id, started_at FROM runs ORDER BY id DESC LIMIT 1"
                ).fetchone()
                if newest is not None:
                    vanished += f"; the newest run still recorded is {newest[0]}"
                    vanished += f" (began {_iso(newest[1])})"
                log.error("%s", vanished)
                store.open_warnings.append(vanished)
            _mark_open(path)
        except sqlite3.DatabaseError as exc:
            store.close()
            _remove_created(absent)
            if _is_io_error(exc):  # a full disk or an I/O error: not a verdict on the file
                raise StoreError(f"cannot open the store {path}: {exc}") from exc
            raise CorruptStore(
                f"{path} is corrupt or not a usable lineaged database ({exc}); refusing to "
                "start and leaving it untouched: restore a backup or move it away"
            ) from exc
        except BaseException:
            store.close()
            _remove_created(absent)
            raise
        return store

    @classmethod
    def open_readonly(cls, path: Path) -> Store:
        """Open an existing store for reading only (``lineaged check``/``backup``)."""
        _refuse_foreign(path)
        store = cls(path)
        try:
            _check_identity(path, store._rc)
        except sqlite3.DatabaseError as exc:
            store.close()
            raise CorruptStore(f"{path} is not a usable lineaged database ({exc})") from exc
        return store

    def _connect(self, *, write: bool) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path,
            timeout=30.0,
            isolation_level=None,  # we issue BEGIN/COMMIT ourselves
            check_same_thread=False,
        )
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA busy_timeout=30000")
        if write:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(f"PRAGMA journal_size_limit={WAL_KEEP_BYTES}")
            # Statement journals (a multi-row upsert inside a savepoint) in memory: on disk
            # they were 10 MB of writes to /var/tmp per 10,000 reads a run reported.
            conn.execute("PRAGMA temp_store=MEMORY")
        else:
            conn.execute("PRAGMA query_only=ON")
        conn.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
        return conn

    def _migrate(self) -> None:
        conn = self._wc
        version = _check_identity(self.path, conn)
        if version == SCHEMA_VERSION:
            return
        import sqlite_utils  # only needed to migrate; slow to import

        db = sqlite_utils.Database(conn)
        for number, migration in enumerate(MIGRATIONS, start=1):
            if number <= version:
                continue
            conn.execute("BEGIN IMMEDIATE")
            try:
                migration(db)
                conn.execute(f"PRAGMA application_id={APP_ID}")
                conn.execute(f"PRAGMA user_version={number}")
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            log.info("store migrated to schema %d", number)

    def defer_digest_index(self) -> bool:
        """On an empty store, drop the digest index for a bulk load (rebuilt after).

        Measured on the 2-core development machine: 1,000,000 rows with a random-key index
        maintained during the load took 64 s against 6.9 s with the index built afterwards.
        """
        conn = self._wc
        if conn.execute("SELECT 1 FROM versions LIMIT 1").fetchone():
            return False
        conn.execute("DROP INDEX IF EXISTS versions_by_digest")
        return True

    def ensure_indexes(self) -> None:
        """Create any index a deferred bulk load (or a crash during one) left out."""
        self._wc.execute("CREATE INDEX IF NOT EXISTS versions_by_digest ON versions(digest)")

    def close(self) -> None:
        """Close every connection (the writer must have stopped)."""
        with self._readers_lock:
            for conn in self._readers:
                conn.close()
            self._readers.clear()
        if self._write_conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self._write_conn.execute("PRAGMA optimize")
            self._write_conn.close()
            self._write_conn = None
            _mark_clean(self.path)

    @property
    def _wc(self) -> sqlite3.Connection:
        if self._write_conn is None:
            raise StoreError("the store is closed")
        return self._write_conn

    @property
    def _rc(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect(write=False)
            self._local.conn = conn
            with self._readers_lock:
                self._readers.append(conn)
        return conn

    @contextlib.contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        """A consistent snapshot for several reads (one read transaction)."""
        conn = self._rc
        conn.execute("BEGIN")
        try:
            yield conn
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"reading the store failed: {exc}") from exc
        finally:
            try:
                conn.execute("COMMIT")
            except sqlite3.Error:  # ending a read loses nothing; never mask the real error
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")

    # -- transactions on the write connection (writer thread only)

    def begin(self) -> None:
        """Start a write transaction."""
        self._wc.execute("BEGIN IMMEDIATE")

    def commit(self) -> None:
        """Commit the write transaction."""
        self._wc.execute("COMMIT")

    @property
    def wal_path(self) -> Path:
        """The store's write-ahead log."""
        return self.path.with_name(self.path.name + "-wal")

    def set_auto_checkpoint(self, pages: int) -> None:
        """SQLite's own checkpoint after a commit that leaves the WAL over ``pages`` pages
        (0: never; the :class:`Writer` checkpoints beside the writes instead)."""
        self._wc.execute(f"PRAGMA wal_autocheckpoint={int(pages)}")

    def checkpoint(self) -> None:
        """A passive WAL checkpoint on the write connection, outside a transaction: it copies
        what no reader still needs and makes nobody wait."""
        self._wc.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()

    def rollback(self) -> None:
        """Roll the write transaction back."""
        if self._wc.in_transaction:
            self._wc.execute("ROLLBACK")

    @contextlib.contextmanager
    def savepoint(self) -> Iterator[None]:
        """One logical change inside the writer's batch: all of it or none of it.

        When the change cannot be undone on its own (SQLite already rolled the whole
        transaction back, as it may on a full disk or an I/O error, or the undo itself
        failed), ``TransactionLost`` is raised and the whole batch must be retried.
        """
        conn = self._wc
        conn.execute("SAVEPOINT change")
        try:
            yield
        except BaseException as exc:
            if not conn.in_transaction:
                raise TransactionLost(f"{exc}; the transaction was rolled back") from exc
            try:
                conn.execute("ROLLBACK TO change")
                conn.execute("RELEASE change")
            except sqlite3.Error as undo:
                raise TransactionLost(f"{exc}; undoing the change failed: {undo}") from exc
            raise
        try:
            conn.execute("RELEASE change")
        except sqlite3.Error as exc:
            raise TransactionLost(f"{exc}; the change could not be kept") from exc

    # -- roots and artifacts (writes)

    def ensure_root(self, path: str, role: Role) -> int:
        """The id of a root, adding it (or updating its role) as needed."""
        conn = self._wc
        row = conn.execute("SELECT id, role FROM roots WHERE path=?", (path,)).fetchone()
        if row is None:
            cur = conn.execute(
                "INSERT INTO roots(path, role, added_at) VALUES (?, ?, ?)",
                (path, role.value, time.time_ns()),
            )
            return int(cur.lastrowid or 0)
        if row[1] != role.value:
            conn.execute("UPDATE roots SET role=? WHERE id=?", (role.value, row[0]))
        return int(row[0])

    def _external_artifact_id(self, path: str) -> int:
        """The artifact of a path outside every root, created on first report."""
        conn = self._wc
        row = conn.execute("SELECT id FROM artifacts WHERE path=?", (path,)).fetchone()
        if row is not None:
            return int(row[0])
        cur = conn.execute("INSERT INTO artifacts(path, root_id) VALUES (?, NULL)", (path,))
        return int(cur.lastrowid or 0)

    # -- versions (writes)

    def record_versions(self, writes: Sequence[VersionWrite], hash_format: int) -> list[Version]:
        """Record observed content states; returns the versions that are new.

        A state whose digest equals the path's current version only refreshes the stat cache.
        Set-based: a few statements per batch, not per file (a first scan writes 100k rows).
        """
        if not writes:
            return []
        conn = self._wc
        latest: dict[str, VersionWrite] = {}
        for write in writes:
            if _storable(write.path):
                latest[write.path] = write  # the last observation of a path in the batch wins
        existing = self._existing_artifacts(latest)
        current: dict[int, tuple[int, bytes, int]] = {}
        for chunk in _chunks(list(existing.values()), 20_000):
            for row in conn.execute(
                "SELECT artifact_id, id, digest, valid_from FROM versions WHERE valid_until IS NULL "
                "AND artifact_id IN (SELECT value FROM json_each(?))",
                (json.dumps(list(chunk)),),
            ):
                current[row[0]] = (row[1], row[2], row[3])
        new_paths = sorted(p for p in latest if p not in existing)
        next_artifact = int(
            conn.execute("SELECT coalesce(max(id), 0) + 1 FROM artifacts").fetchone()[0]
        )
        ids = dict(existing)
        for offset, path in enumerate(new_paths):
            ids[path] = next_artifact + offset
        new_rows = []
        cache_updates = []
        closes = []
        inserts: list[tuple[Any, ...]] = []
        pending: list[tuple[VersionWrite, int]] = []
        for path in [*existing, *new_paths]:
            write = latest[path]
            artifact_id = ids[path]
            blob = bytes.fromhex(write.digest)
            key = write.stat_key
            packed = pack_stat_key(key)
            if path in existing:
                cache_updates.append(
                    (packed, blob, key.mtime_ns, write.observed_at, hash_format, artifact_id)
                )
            else:
                new_rows.append(
                    (
                        path,
                        write.root_id,
                        packed,
                        blob,
                        key.mtime_ns,
                        write.observed_at,
                        hash_format,
                    )
                )
            now = current.get(artifact_id)
            if now is not None and now[1] == blob:
                continue
            valid_from = _valid_from(write, now[2] if now is not None else None)
            if now is not None:
                closes.append((valid_from, write.seen.value, now[0]))
            inserts.append(
                (
                    artifact_id,
                    blob,
                    key.size,
                    key.mtime_ns,
                    valid_from,
                    write.seen.value,
                    version_checksum(path, blob, key.size, key.mtime_ns, valid_from),
                )
            )
            pending.append((write, valid_from))
        conn.executemany(
            "INSERT INTO artifacts(path, root_id, cache_key, cache_digest, cache_mtime_ns, "
            "checked_at, hash_format) VALUES (?,?,?,?,?,?,?)",
            new_rows,
        )
        conn.executemany(
            "UPDATE artifacts SET cache_key=?, cache_digest=?, cache_mtime_ns=?, checked_at=?, "
            "hash_format=? WHERE id=?",
            cache_updates,
        )
        conn.executemany("UPDATE versions SET valid_until=?, closed_by=? WHERE id=?", closes)
        # One writer inserts in order, so the new rowids are max(id)+1, max(id)+2, ...
        first_id = int(conn.execute("SELECT coalesce(max(id), 0) + 1 FROM versions").fetchone()[0])
        conn.executemany(
            "INSERT INTO versions(artifact_id, digest, size, mtime_ns, valid_from, seen, checksum) "
            "VALUES (?,?,?,?,?,?,?)",
            inserts,
        )
        return [
            Version(
                first_id + offset,
                write.path,
                write.digest,
                write.stat_key.size,
                write.stat_key.mtime_ns,
                valid_from,
                None,
                write.seen,
            )
            for offset, (write, valid_from) in enumerate(pending)
        ]

    def _existing_artifacts(self, writes: Mapping[str, VersionWrite]) -> dict[str, int]:
        """Ids of the artifacts that already exist for these paths (an external path that
        now lies under a root is adopted by it)."""
        conn = self._wc
        found: dict[str, int] = {}
        adopt: list[tuple[int, int]] = []
        for chunk in _chunks(list(writes), 20_000):
            for path, artifact_id, root_id in conn.execute(
                "SELECT path, id, root_id FROM artifacts WHERE path IN (SELECT value FROM json_each(?))",
                (json.dumps(list(chunk)),),
            ):
                found[path] = artifact_id
                if root_id is None:
                    adopt.append((writes[path].root_id, artifact_id))
        if adopt:
            conn.executemany("UPDATE artifacts SET root_id=? WHERE id=?", adopt)
        return found

    def touch_stat(self, path: str, stat_key: StatKey, checked_at: int) -> None:
        """Remember a new stat key for unchanged content (no new version)."""
        if not _storable(path):
            return
        self._wc.execute(
            "UPDATE artifacts SET cache_key=?, cache_mtime_ns=?, checked_at=? "
            "WHERE path=? AND cache_key IS NOT NULL",
            (pack_stat_key(stat_key), stat_key.mtime_ns, checked_at, path),
        )

    def record_gone(self, paths: Iterable[str], at: int, how: ChangeKind) -> list[str]:
        """Close the current version of each path (deleted or moved away); returns the closed paths."""
        conn = self._wc
        closed: list[str] = []
        for path in paths:
            if not _storable(path):
                continue
            row = conn.execute("SELECT id FROM artifacts WHERE path=?", (path,)).fetchone()
            if row is None:
                continue
            artifact_id = row[0]
            conn.execute(
                "UPDATE artifacts SET cache_key=NULL, cache_digest=NULL, cache_mtime_ns=NULL, "
                "checked_at=NULL WHERE id=?",
                (artifact_id,),
            )
            current = conn.execute(
                "SELECT id, valid_from FROM versions WHERE artifact_id=? AND valid_until IS NULL",
                (artifact_id,),
            ).fetchone()
            if current is None:
                continue
            conn.execute(
                "UPDATE versions SET valid_until=?, closed_by=? WHERE id=?",
                (max(at, current[1] + 1), how.value, current[0]),
            )
            closed.append(path)
        return closed

    def record_external(self, path: str, digest: str, size: int, mtime_ns: int, at: int) -> int:
        """The version id of a file outside every root, as a client hashed it."""
        conn = self._wc
        artifact_id = self._external_artifact_id(path)
        blob = digest_to_blob(digest)
        current = conn.execute(
            "SELECT id, digest, valid_from FROM versions WHERE artifact_id=? AND valid_until IS NULL",
            (artifact_id,),
        ).fetchone()
        if current is not None and current[1] == blob:
            return int(current[0])
        valid_from = min(mtime_ns, at) if mtime_ns > 0 else at
        if current is not None:
            valid_from = max(valid_from, current[2] + 1)
            conn.execute(
                "UPDATE versions SET valid_until=?, closed_by=? WHERE id=?",
                (valid_from, ChangeKind.EXTERNAL.value, current[0]),
            )
        cur = conn.execute(
            "INSERT INTO versions(artifact_id, digest, size, mtime_ns, valid_from, seen, checksum) "
            "VALUES (?,?,?,?,?,?,?)",
            (
                artifact_id,
                blob,
                size,
                mtime_ns,
                valid_from,
                ChangeKind.EXTERNAL.value,
                version_checksum(path, blob, size, mtime_ns, valid_from),
            ),
        )
        return int(cur.lastrowid or 0)

    # -- runs (writes)

    def begin_run(self, start: RunStart) -> str:
        """Insert a running run; returns its run_id (``start.run_id`` when the client chose it)."""
        conn = self._wc
        run_id = start.run_id or new_run_id()
        if start.run_id:
            if not is_new_run_id(run_id):
                raise InvalidArgument(
                    f"a run id chosen by a client is 32 lowercase hex characters, not {run_id!r}"
                )
            # The one writer thread runs this: nothing can take the id between check and insert.
            if conn.execute("SELECT 1 FROM runs WHERE run_id=?", (run_id,)).fetchone():
                raise AlreadyExists(f"run {run_id} exists already: choose a new run id")
        env_id = None
        if start.env is not None:
            body = _env_to_json(start.env)
            env_digest = _blake3(body.encode())
            conn.execute(
                "INSERT OR IGNORE INTO envs(digest, body) VALUES (?, ?)", (env_digest, body)
            )
            env_id = conn.execute("SELECT id FROM envs WHERE digest=?", (env_digest,)).fetchone()[0]
        diff_digest = None
        code_json = None
        if start.code is not None:
            code = start.code
            if code.diff:
                diff_digest = _blake3(code.diff)
                conn.execute(
                    "INSERT OR IGNORE INTO blobs(digest, data) VALUES (?, ?)",
                    (diff_digest, code.diff),
                )
                if not code.diff_digest:
                    code = CodeState(**{**_code_fields(code), "diff_digest": diff_digest.hex()})
            code_json = _code_to_json(code)
        if (
            start.parent_run_id
            and not conn.execute(
                "SELECT 1 FROM runs WHERE run_id=?", (start.parent_run_id,)
            ).fetchone()
        ):
            raise NotFound(f"parent run {start.parent_run_id!r} does not exist")
        conn.execute(
            "INSERT INTO runs(run_id, name, argv, cwd, host, user, pid, started_at, status, "
            "params, parent_run_id, code, diff_digest, env_id, warnings) "
            "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                run_id,
                start.name,
                json.dumps(list(start.argv)),
                start.cwd,
                start.host,
                start.user,
                start.pid,
                start.started_at or time.time_ns(),
                RunStatus.RUNNING.value,
                json.dumps(dict(start.params), sort_keys=True),
                start.parent_run_id,
                code_json,
                diff_digest,
                env_id,
                "[]",
            ),
        )
        if self.openlineage_outbox:
            self._queue_openlineage(conn, run_id, "start")
        return run_id

    def _run_row_id(self, conn: sqlite3.Connection, run_id: str) -> tuple[int, str, int]:
        row = conn.execute(
            "SELECT id, status, started_at FROM runs WHERE run_id=?", (run_id,)
        ).fetchone()
        if row is None:
            raise NotFound(f"no run {run_id!r}")
        return int(row[0]), str(row[1]), int(row[2])

    def add_accesses(self, run_id: str, accesses: Sequence[Access]) -> int:
        """Store a run's raw accesses (resolved to edges by ``link_reads``/``link_writes``)."""
        conn = self._wc
        row_id, status, _ = self._run_row_id(conn, run_id)
        if status not in _OPEN_STATUSES:
            raise FailedPrecondition(f"run {run_id} has ended ({status}); no more accesses")
        conn.executemany(
            "INSERT INTO accesses(run_id, path, mode, how, role, first_at, last_at, digest, "
            "size, mtime_ns) VALUES (?,?,?,?,?,?,?,?,?,?)",
            [
                (
                    row_id,
                    a.path,
                    a.mode.value,
                    a.how,
                    a.role,
                    a.first_at,
                    a.last_at,
                    digest_to_blob(a.digest) if a.digest else None,
                    a.size,
                    a.mtime_ns,
                )
                for a in accesses
            ],
        )
        return len(accesses)

    def link(
        self,
        run_id: str,
        version_id: int,
        kind: str,
        access: Access,
        *,
        changed_during_run: bool = False,
    ) -> bool:
        """Add an edge run->version (kind "read" or "wrote"); False when it already existed."""
        conn = self._wc
        row_id, _, _ = self._run_row_id(conn, run_id)
        cur = conn.execute(
            "INSERT INTO edges(run_id, version_id, kind, how, role, first_at, last_at, "
            "changed_during_run) VALUES (?,?,?,?,?,?,?,?) "
            "ON CONFLICT(run_id, kind, version_id) DO UPDATE SET "
            "first_at=min(first_at, excluded.first_at), last_at=max(last_at, excluded.last_at), "
            "changed_during_run=max(changed_during_run, excluded.changed_during_run)",
            (
                row_id,
                version_id,
                kind,
                access.how,
                access.role,
                access.first_at,
                access.last_at,
                int(changed_during_run),
            ),
        )
        return cur.rowcount > 0

    def link_many(self, run_id: str, kind: str, links: Sequence[tuple[int, Access]]) -> None:
        """:meth:`link` for many (version id, access) pairs: one statement, run looked up once."""
        conn = self._wc
        row_id, _, _ = self._run_row_id(conn, run_id)
        # A repeated access widens the edge's times; a source file reported first as data
        # (lineage run sends reads while the command runs) becomes code when it is known as one.
        conn.executemany(
            "INSERT INTO edges(run_id, version_id, kind, how, role, first_at, last_at, "
            "changed_during_run) VALUES (?,?,?,?,?,?,?,0) "
            "ON CONFLICT(run_id, kind, version_id) DO UPDATE SET "
            "first_at=min(first_at, excluded.first_at), last_at=max(last_at, excluded.last_at), "
            "role=CASE WHEN excluded.role = 'code' THEN 'code' ELSE role END",
            [
                (row_id, version_id, kind, a.how, a.role, a.first_at, a.last_at)
                for version_id, a in links
            ],
        )

    def run_accesses(self, run_id: str, mode: AccessMode) -> list[Access]:
        """The raw accesses a run reported, merged per path (write connection)."""
        conn = self._wc
        row_id, _, _ = self._run_row_id(conn, run_id)
        rows = conn.execute(
            "SELECT path, min(first_at), max(last_at), max(how), max(role), "
            "max(digest), max(size), max(mtime_ns) FROM accesses "
            "WHERE run_id=? AND mode=? GROUP BY path ORDER BY path",
            (row_id, mode.value),
        ).fetchall()
        return [
            Access(
                path=r[0],
                mode=mode,
                first_at=r[1],
                last_at=r[2],
                how=r[3] or "traced",
                role=r[4] or "data",
                digest=_hex(r[5]),
                size=r[6] or 0,
                mtime_ns=r[7] or 0,
            )
            for r in rows
        ]

    def flag_changed_reads(self, run_id: str, ended_at: int) -> int:
        """Flag read edges whose path got a newer version before the run ended."""
        conn = self._wc
        row_id, _, _ = self._run_row_id(conn, run_id)
        cur = conn.execute(
            "UPDATE edges SET changed_during_run=1 WHERE run_id=? AND kind='read' AND id IN ("
            " SELECT e.id FROM edges e JOIN versions v ON v.id=e.version_id"
            " JOIN versions later ON later.artifact_id=v.artifact_id AND later.id<>v.id"
            "  AND later.valid_from>v.valid_from AND later.valid_from<=?"
            " WHERE e.run_id=? AND e.kind='read')",
            (row_id, ended_at, row_id),
        )
        return cur.rowcount

    def end_run(
        self,
        run_id: str,
        *,
        exit_code: int | None,
        status: RunStatus,
        ended_at: int,
        warnings: Sequence[str],
        capture: Capture | None = None,
    ) -> None:
        """Close a running run."""
        conn = self._wc
        row_id, current, started_at = self._run_row_id(conn, run_id)
        if current not in _OPEN_STATUSES:
            raise FailedPrecondition(f"run {run_id} already ended ({current})")
        if status is RunStatus.RUNNING:
            raise InvalidArgument("a run cannot end with status running")
        conn.execute(
            "UPDATE runs SET ended_at=?, status=?, exit_code=?, warnings=?, capture=? WHERE id=?",
            (
                max(ended_at, started_at),
                status.value,
                exit_code,
                json.dumps(list(warnings)),
                _capture_to_json(capture),
                row_id,
            ),
        )
        if self.openlineage_outbox:
            self._queue_openlineage(conn, run_id, "end")

    def open_runs(self) -> list[tuple[str, str, int, int]]:
        """(run_id, host, pid, started_at) of every run still marked running (write connection)."""
        rows = self._wc.execute(
            "SELECT run_id, host, pid, started_at FROM runs WHERE status=? ORDER BY id",
            (RunStatus.RUNNING.value,),
        ).fetchall()
        return [(str(r[0]), str(r[1] or ""), int(r[2] or 0), int(r[3])) for r in rows]

    def mark_abandoned(self, reasons: Mapping[str, str]) -> int:
        """Mark running runs ``abandoned``, each with its reason as a warning; what they
        recorded stays. Returns how many were marked."""
        conn = self._wc
        marked = 0
        for run_id, reason in reasons.items():
            row = conn.execute(
                "SELECT warnings FROM runs WHERE run_id=? AND status=?",
                (run_id, RunStatus.RUNNING.value),
            ).fetchone()
            if row is None:
                continue
            warnings = [*json.loads(row[0] or "[]"), reason]
            conn.execute(
                "UPDATE runs SET status=?, warnings=? WHERE run_id=?",
                (RunStatus.ABANDONED.value, json.dumps(warnings), run_id),
            )
            if self.openlineage_outbox:
                self._queue_openlineage(conn, run_id, "end")  # an ABORT event
            marked += 1
        return marked

    # -- reads (any thread)

    def version_digests(self, version_ids: Sequence[int]) -> dict[int, str]:
        """The digest (hex) of each version id."""
        found: dict[int, str] = {}
        for chunk in _chunks(list(version_ids), _BATCH_PATHS):
            for version_id, blob in self._rc.execute(
                "SELECT id, digest FROM versions WHERE id IN (SELECT value FROM json_each(?))",
                (json.dumps(list(chunk)),),
            ):
                found[int(version_id)] = blob.hex()
        return found

    def version_with_digest(self, path: str, digest: str, at: int) -> int | None:
        """The version of ``path`` that held ``digest`` (the one valid at ``at`` if any, else
        the nearest in time), None when the path never held it: how a capture delivered late
        (the client hashed what the run read or wrote) finds the state it saw."""
        row = self._rc.execute(
            "SELECT v.id FROM versions v JOIN artifacts a ON a.id=v.artifact_id "
            "WHERE a.path=? AND v.digest=? ORDER BY "
            "(v.valid_from<=? AND (v.valid_until IS NULL OR v.valid_until>?)) DESC, "
            "abs(v.valid_from-?) LIMIT 1",
            (path, digest_to_blob(digest), at, at, at),
        ).fetchone()
        return None if row is None else int(row[0])

    def counts(self) -> Counts:
        """How many roots, artifacts, versions, runs and edges the store holds.

        Every table here is append-only and keyed by an INTEGER PRIMARY KEY that SQLite
        assigns as max(rowid) + 1, so ``max(id)`` is the row count: one index lookup instead
        of a full count (45 ms per call on a store of a million edges).
        """
        with self._reading() as conn:
            values = [
                conn.execute(f"SELECT coalesce(max(id), 0) FROM {table}").fetchone()[0]
                for table in ("roots", "artifacts", "versions", "runs", "edges")
            ]
        return Counts(*values)

    def roots(self) -> list[Root]:
        """Every root the store has known."""
        rows = self._rc.execute("SELECT id, path, role FROM roots ORDER BY id").fetchall()
        return [Root(path=r[1], role=Role(r[2]), id=r[0]) for r in rows]

    def trusted_keys(self, root_id: int, hash_format: int, racy_ns: int) -> dict[str, bytes | None]:
        """Every live path under a root with its packed stat key, or None when the entry
        cannot be trusted (another hash format, or inside the racy window).

        A rescan compares ``pack_stat_key`` of each file with this: one dict lookup and one
        bytes comparison per file, no objects built.
        """
        rows = self._rc.execute(
            "SELECT path, CASE WHEN hash_format=? AND cache_mtime_ns < checked_at - ? "
            "THEN cache_key END FROM artifacts WHERE root_id=? AND cache_key IS NOT NULL",
            (hash_format, racy_ns, root_id),
        ).fetchall()
        return dict(rows)

    def cache_entry(self, path: str) -> CacheEntry | None:
        """The stat cache entry of one live path."""
        if not _storable(path):
            return None
        r = self._rc.execute(
            "SELECT id, cache_key, cache_digest, checked_at, hash_format FROM artifacts "
            "WHERE path=? AND cache_key IS NOT NULL",
            (path,),
        ).fetchone()
        if r is None:
            return None
        return CacheEntry(r[0], StatKey(*_STAT_KEY.unpack(r[1])), _hex(r[2]), r[3], r[4])

    def read_versions(self, reads: Sequence[tuple[str, int]]) -> dict[tuple[str, int], int]:
        """For each (path, time): the version the path held then, else its current one.

        What :meth:`version_at` then :meth:`current_version` answer, for a run's reads in one
        query per chunk, keyed by (path, time): two reads of a path at different times may
        find different versions. Pairs with neither are left out.
        """
        return {
            read: version_id
            for read, (_, version_id) in self.read_states(reads, -1, 0).items()
            if version_id is not None
        }

    def read_states(
        self, reads: Sequence[tuple[str, int]], hash_format: int, racy_ns: int
    ) -> dict[tuple[str, int], tuple[bytes | None, int | None]]:
        """For each (path, time) of a known path: its trusted stat key (as
        :meth:`trusted_keys` trusts one) and the version :meth:`read_versions` finds.

        A run's reads need both: the key tells whether the version is up to date. Most
        reads are of a file's current version, found by path alone (no JSON pairs to take
        apart, no search by time); only the others are looked up by time after.
        """
        found: dict[tuple[str, int], tuple[bytes | None, int | None]] = {}
        current: dict[str, tuple[bytes | None, int | None, int | None]] = {}
        for paths in _chunks(list(dict.fromkeys(path for path, _ in reads)), _BATCH_PATHS):
            rows = self._rc.execute(
                "SELECT a.path, CASE WHEN a.hash_format=? AND a.cache_mtime_ns < a.checked_at - ?"
                " THEN a.cache_key END, v.id, v.valid_from FROM json_each(?) j"
                " JOIN artifacts a ON a.path=j.value"
                " LEFT JOIN versions v ON v.artifact_id=a.id AND v.valid_until IS NULL",
                (hash_format, racy_ns, json.dumps(paths)),
            ).fetchall()
            for path, key, version_id, valid_from in rows:
                current[path] = (key, version_id, valid_from)
        earlier: list[tuple[str, int]] = []
        for read in reads:
            state = current.get(read[0])
            if state is None:
                continue  # never seen: neither a key nor a version
            key, version_id, valid_from = state
            # Versions of a path do not overlap: the current one, begun by then, is the one.
            if version_id is not None and valid_from is not None and valid_from <= read[1]:
                found[read] = (key, version_id)
            else:
                earlier.append(read)
        for chunk in _chunks(earlier, _BATCH_PATHS):
            rows = self._rc.execute(
                "SELECT w.path, w.at, ("
                " SELECT v.id FROM versions v WHERE v.artifact_id=a.id AND v.valid_from<=w.at"
                " AND (v.valid_until IS NULL OR v.valid_until>w.at)"
                " ORDER BY v.valid_from DESC LIMIT 1"
                ") FROM (SELECT json_extract(j.value, '$[0]') AS path,"
                " json_extract(j.value, '$[1]') AS at FROM json_each(?) j) w"
                " JOIN artifacts a ON a.path=w.path",
                (json.dumps(list(chunk)),),
            ).fetchall()
            for path, at, version_id in rows:
                state = current[path]
                # Nothing valid then: the current version, as version_at then current_version.
                found[(path, at)] = (state[0], state[1] if version_id is None else version_id)
        return found

    def live_paths_under(self, directory: str) -> list[str]:
        """Every path with a current version at or below ``directory``."""
        if not _storable(directory):
            return []  # nothing below a name that cannot be stored was ever stored
        prefix = directory.rstrip("/") + "/"
        rows = self._rc.execute(
            "SELECT a.path FROM artifacts a JOIN versions v ON v.artifact_id=a.id "
            "AND v.valid_until IS NULL WHERE a.path >= ? AND a.path < ?",
            (prefix, prefix[:-1] + "0"),  # "0" sorts right after "/"
        ).fetchall()
        return [r[0] for r in rows]

    def history(self, path: str, *, limit: int, before_id: int | None = None) -> list[Version]:
        """Every version of a path, newest first."""
        path = _check_path(path)
        rows = self._rc.execute(
            f"SELECT {_VERSION_COLUMNS} FROM versions v JOIN artifacts a ON a.id=v.artifact_id "
            "WHERE a.path=? AND v.id < ? ORDER BY v.valid_from DESC, v.id DESC LIMIT ?",
            (path, before_id if before_id is not None else 2**63 - 1, limit),
        ).fetchall()
        if not rows and before_id is None:
            raise NotFound(f"{path} has never been seen by lineaged")
        return [self._checked(r) for r in rows]

    def version_at(self, path: str, at: int) -> Version:
        """The version a path held at time ``at``."""
        path = _check_path(path)
        row = self._rc.execute(
            f"SELECT {_VERSION_COLUMNS} FROM versions v JOIN artifacts a ON a.id=v.artifact_id "
            "WHERE a.path=? AND v.valid_from<=? AND (v.valid_until IS NULL OR v.valid_until>?) "
            "ORDER BY v.valid_from DESC LIMIT 1",
            (path, at, at),
        ).fetchone()
        if row is None:
            if not self._rc.execute("SELECT 1 FROM artifacts WHERE path=?", (path,)).fetchone():
                raise NotFound(f"{path} has never been seen by lineaged")
            raise NotFound(f"{path} held no recorded content at {_iso(at)}")
        return self._checked(row)

    def current_version(self, path: str) -> Version | None:
        """The version a path holds now, or None when it does not exist (any more)."""
        path = _check_path(path)
        row = self._rc.execute(
            f"SELECT {_VERSION_COLUMNS} FROM versions v JOIN artifacts a ON a.id=v.artifact_id "
            "WHERE a.path=? AND v.valid_until IS NULL",
            (path,),
        ).fetchone()
        return self._checked(row) if row else None

    def get_version(self, version_id: int) -> Version:
        """One version by id."""
        row = self._rc.execute(
            f"SELECT {_VERSION_COLUMNS} FROM versions v JOIN artifacts a ON a.id=v.artifact_id "
            "WHERE v.id=?",
            (version_id,),
        ).fetchone()
        if row is None:
            raise NotFound(f"no version {version_id}")
        return self._checked(row)

    def resolve_digest(self, digest: str) -> bytes:
        """A full digest, or the unique digest a >= 8 hex character prefix names."""
        digest = digest.strip().lower()
        if not digest or any(c not in "0123456789abcdef" for c in digest):
            raise InvalidArgument(f"a digest is hexadecimal: {digest[:80]!r}")
        if len(digest) == 2 * DIGEST_BYTES:
            return bytes.fromhex(digest)
        if len(digest) < MIN_PREFIX or len(digest) > 2 * DIGEST_BYTES:
            raise InvalidArgument(
                f"a digest prefix needs {MIN_PREFIX} to 64 hex characters, got {len(digest)}"
            )
        low, high = _prefix_range(digest)
        if high is None:
            rows = self._rc.execute(
                "SELECT DISTINCT digest FROM versions WHERE digest>=? LIMIT 6", (low,)
            ).fetchall()
        else:
            rows = self._rc.execute(
                "SELECT DISTINCT digest FROM versions WHERE digest>=? AND digest<? LIMIT 6",
                (low, high),
            ).fetchall()
        if not rows:
            raise NotFound(f"no version has a digest starting with {digest}")
        if len(rows) > 1:
            shown = ", ".join(r[0].hex() for r in rows[:5])
            more = " and more" if len(rows) > 5 else ""
            raise AmbiguousDigest(
                f"digest prefix {digest} is ambiguous: it matches {shown}{more}; give more characters"
            )
        return bytes(rows[0][0])

    def versions_by_digest(self, digest: str, *, limit: int) -> list[Version]:
        """Every version of any path that held this digest (or unique prefix), newest first."""
        blob = self.resolve_digest(digest)
        rows = self._rc.execute(
            f"SELECT {_VERSION_COLUMNS} FROM versions v JOIN artifacts a ON a.id=v.artifact_id "
            "WHERE v.digest=? ORDER BY v.valid_from DESC, v.id DESC LIMIT ?",
            (blob, limit),
        ).fetchall()
        if not rows:
            raise NotFound(f"no path has ever held {blob.hex()}")
        return [self._checked(r) for r in rows]

    def _runs_where(
        self, conn: sqlite3.Connection, where: str, params: Sequence[Any], tail: str = ""
    ) -> list[Run]:
        rows = conn.execute(
            f"SELECT {_RUN_COLUMNS} FROM runs r LEFT JOIN envs e ON e.id=r.env_id "
            f"WHERE {where} {tail}",
            params,
        ).fetchall()
        if not rows:
            return []
        sources = self._sources(conn, [r[0] for r in rows])
        return _runs(rows, sources)

    def _sources(
        self, conn: sqlite3.Connection, run_row_ids: Sequence[int]
    ) -> dict[int, tuple[SourceFile, ...]]:
        found: dict[int, list[SourceFile]] = {}
        for chunk in _chunks(run_row_ids, 500):
            marks = ",".join("?" * len(chunk))
            for row in conn.execute(
                "SELECT e.run_id, a.path, v.digest, v.id, v.size, v.mtime_ns, v.valid_from, "
                "v.checksum FROM edges e JOIN versions v ON v.id=e.version_id "
                f"JOIN artifacts a ON a.id=v.artifact_id WHERE e.run_id IN ({marks}) "
                "AND e.kind='read' AND e.role='code' ORDER BY a.path",
                list(chunk),
            ):
                self.verify_row(row[3], row[1], row[2], row[4], row[5], row[6], row[7])
                found.setdefault(row[0], []).append(SourceFile(row[1], row[2].hex()))
        return {k: tuple(v) for k, v in found.items()}

    def get_run(self, run_id: str) -> Run:
        """One run by id, or by a unique prefix of at least 8 characters."""
        if not run_id or "\x00" in run_id or len(run_id) > 64:
            raise InvalidArgument("a run id is 1 to 64 characters without NUL bytes")
        with self._reading() as conn:
            runs = self._runs_where(conn, "r.run_id=?", (run_id,))
            if not runs and len(run_id) >= MIN_PREFIX:
                runs = self._runs_where(
                    conn, "r.run_id >= ? AND r.run_id < ?", (run_id, run_id + "\uffff"), "LIMIT 3"
                )
                if len(runs) > 1:
                    raise InvalidArgument(
                        f"run id prefix {run_id} is ambiguous: " + ", ".join(r.run_id for r in runs)
                    )
            if not runs:
                raise NotFound(f"no run {run_id!r}")
            run = runs[0]
            if run.code is not None and run.code.diff_digest:
                # Only a single run carries its diff (stored once per content, by the digest
                # of the stored bytes); listings and graphs leave it out.
                row = conn.execute(
                    "SELECT b.data FROM blobs b JOIN runs r ON r.diff_digest=b.digest WHERE r.id=?",
                    (run.id,),
                ).fetchone()
                if row is not None:
                    run = dataclasses.replace(
                        run, code=dataclasses.replace(run.code, diff=bytes(row[0]))
                    )
        return run

    def list_runs(
        self,
        *,
        limit: int,
        name: str = "",
        status: RunStatus | None = None,
        since: int | None = None,
        until: int | None = None,
        before_id: int | None = None,
        parent_run_id: str = "",
    ) -> list[Run]:
        """Runs newest first, filtered by name, status, start time and parent run."""
        clauses = ["r.id < ?"]
        params: list[Any] = [before_id if before_id is not None else 2**63 - 1]
        if name:
            clauses.append("r.name = ?")
            params.append(name)
        if status is not None:
            clauses.append("r.status = ?")
            params.append(status.value)
        if since is not None:
            clauses.append("r.started_at >= ?")
            params.append(since)
        if until is not None:
            clauses.append("r.started_at < ?")
            params.append(until)
        if parent_run_id:
            clauses.append("r.parent_run_id = ?")
            params.append(parent_run_id)
        params.append(limit)
        with self._reading() as conn:
            return self._runs_where(
                conn, " AND ".join(clauses), params, "ORDER BY r.id DESC LIMIT ?"
            )

    # -- lineage

    def start_versions(self, start: StartNode) -> tuple[list[Version], list[Run]]:
        """Resolve a walk's start node to versions (or a run)."""
        if start.run_id:
            return [], [self.get_run(start.run_id)]
        if start.version_id:
            return [self.get_version(start.version_id)], []
        if start.digest:
            blob = self.resolve_digest(start.digest)
            rows = self._rc.execute(
                f"SELECT {_VERSION_COLUMNS} FROM versions v JOIN artifacts a ON a.id=v.artifact_id "
                "WHERE v.digest=? ORDER BY v.id LIMIT 1000",
                (blob,),
            ).fetchall()
            if not rows:
                raise NotFound(f"no path has ever held {blob.hex()}")
            return [self._checked(r) for r in rows], []
        if start.path:
            if start.at is not None:
                return [self.version_at(start.path, start.at)], []
            current = self.current_version(start.path)
            if current is None:
                history = self.history(start.path, limit=1)  # NotFound when never seen
                return history, []
            return [current], []
        raise InvalidArgument("a lineage start needs a path, a digest, a version id or a run id")

    def lineage(
        self, start: StartNode, direction: Direction, *, max_depth: int, max_nodes: int
    ) -> Graph:
        """Walk run/version edges from ``start``; versions with equal digests are bridged.

        ``max_depth`` counts run levels: upstream of a model, depth 1 is the run that wrote
        it and the versions that run read; depth 2 the runs that wrote those, and so on.
        """
        start_versions, start_runs = self.start_versions(start)
        ways = (
            (Direction.UPSTREAM, Direction.DOWNSTREAM)
            if direction is Direction.BOTH
            else (direction,)
        )
        with self._reading() as conn:
            walk = _Walk(self, conn, start_versions, start_runs)
            for way in ways:
                walk.walk(way, max_depth=max_depth, max_nodes=max_nodes)
            return walk.graph()

    def verify(self, start: StartNode, *, max_nodes: int = 10_000) -> list[VerifyItem]:
        """Every input on the upstream closure of ``start`` and what its path holds now."""
        graph = self.lineage(start, Direction.UPSTREAM, max_depth=1000, max_nodes=max_nodes)
        by_id = {version_node_id(v.id): v for v in graph.versions}
        runs = {run_node_id(r.run_id): r for r in graph.runs}
        items: dict[tuple[str, str], VerifyItem] = {}
        for edge in graph.edges:
            if edge.kind != "read":
                continue
            version = by_id.get(edge.target)
            run = runs.get(edge.source)
            if version is None or run is None:
                continue
            key = (version.path, version.digest)
            if key in items:
                continue
            if version.external:
                state, current_digest = VerifyState.UNKNOWN, ""
            else:
                now = self.current_version(version.path)
                if now is None:
                    state, current_digest = VerifyState.MISSING, ""
                elif now.digest == version.digest:
                    state, current_digest = VerifyState.MATCH, now.digest
                else:
                    state, current_digest = VerifyState.CHANGED, now.digest
            items[key] = VerifyItem(
                path=version.path,
                recorded_digest=version.digest,
                state=state,
                current_digest=current_digest,
                version_id=version.id,
                run_id=run.run_id,
                changed_during_run=edge.changed_during_run,
            )
        return sorted(items.values(), key=lambda i: (i.path, i.version_id))

    # -- row checksums

    def _checked(self, row: Sequence[Any]) -> Version:
        """A version row (``_VERSION_COLUMNS``) as a value once its checksum holds."""
        self.verify_row(row[0], row[1], row[2], row[3], row[4], row[5], row[10])
        return _version(row)

    def verify_row(
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
        with self._damage_lock:
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

    def damaged_rows(self) -> dict[int, str]:
        """Version rows found failing their checksum since the store was opened (id -> path)."""
        with self._damage_lock:
            return dict(self._damage)

    def distrust(self, path: str) -> None:
        """Forget the stat cache of a path (writer thread): it is hashed again, and a new
        version recorded, whatever its stat key says."""
        self._wc.execute(
            "UPDATE artifacts SET cache_digest=NULL, hash_format=-1 "
            "WHERE path=? AND cache_key IS NOT NULL",
            (path,),
        )

    def checksum_problems(self, limit: int = 1000) -> list[str]:
        """Every version row whose checksum fails (at most ``limit``), for ``lineaged check``."""
        problems: list[str] = []
        last = 0
        conn = self._rc
        while len(problems) < limit:
            rows = conn.execute(
                "SELECT v.id, a.path, v.digest, v.size, v.mtime_ns, v.valid_from, v.checksum "
                "FROM versions v JOIN artifacts a ON a.id=v.artifact_id WHERE v.id > ? "
                "ORDER BY v.id LIMIT 50000",
                (last,),
            ).fetchall()
            if not rows:
                break
            for vid, path, digest, size, mtime_ns, valid_from, checksum in rows:
                if checksum is not None and checksum != version_checksum(
                    path, digest, size, mtime_ns, valid_from
                ):
                    problems.append(f"version {vid} of {path!r} fails its checksum")
            last = rows[-1][0]
        return problems[:limit]

    # -- content store (which bytes are kept; objects.py owns the files)

    def record_objects(self, kept: Sequence[tuple[str, int, str]], at: int) -> None:
        """Note objects now kept: (digest, size, method); an object kept already stays."""
        self._wc.executemany(
            "INSERT OR IGNORE INTO objects(digest, size, stored_at, method) VALUES (?,?,?,?)",
            [(bytes.fromhex(digest), size, at, method) for digest, size, method in kept],
        )

    def mark_not_kept(self, versions: Sequence[tuple[int, str]]) -> None:
        """Record why these versions' bytes could not be kept: (version id, reason)."""
        self._wc.executemany(
            "UPDATE versions SET not_kept=? WHERE id=? AND NOT EXISTS "
            "(SELECT 1 FROM objects o WHERE o.digest=versions.digest)",
            [(reason, version_id) for version_id, reason in versions],
        )

    def mark_not_kept_current(self, items: Sequence[tuple[str, str, str]]) -> None:
        """:meth:`mark_not_kept` for the current version of paths: (path, digest, reason)."""
        self._wc.executemany(
            "UPDATE versions SET not_kept=? WHERE valid_until IS NULL AND digest=? AND "
            "artifact_id=(SELECT id FROM artifacts WHERE path=?) AND NOT EXISTS "
            "(SELECT 1 FROM objects o WHERE o.digest=versions.digest)",
            [(reason, bytes.fromhex(digest), path) for path, digest, reason in items],
        )

    def unkept_versions(self, version_ids: Sequence[int]) -> list[tuple[int, str, str, int, int]]:
        """Of these versions, those under a root whose bytes are not kept yet:
        (version id, path, digest, size, root id)."""
        found: list[tuple[int, str, str, int, int]] = []
        for chunk in _chunks(sorted(set(version_ids)), 20_000):
            for row in self._rc.execute(
                "SELECT v.id, a.path, v.digest, v.size, a.root_id FROM versions v "
                "JOIN artifacts a ON a.id=v.artifact_id "
                "WHERE v.id IN (SELECT value FROM json_each(?)) AND a.root_id IS NOT NULL "
                "AND NOT EXISTS (SELECT 1 FROM objects o WHERE o.digest=v.digest)",
                (json.dumps(list(chunk)),),
            ):
                found.append((row[0], row[1], row[2].hex(), row[3], row[4]))
        return found

    def not_kept_reason(self, version_id: int) -> str:
        """Why a version's bytes could not be kept ("" when no reason was recorded)."""
        row = self._rc.execute("SELECT not_kept FROM versions WHERE id=?", (version_id,)).fetchone()
        return str(row[0]) if row and row[0] else ""

    def object_kept(self, digest: str) -> bool:
        """Whether the content store holds the bytes of ``digest``."""
        row = self._rc.execute(
            "SELECT 1 FROM objects WHERE digest=?", (digest_to_blob(digest),)
        ).fetchone()
        return row is not None

    def object_totals(self) -> tuple[int, int]:
        """(objects, bytes) the content store holds."""
        row = self._rc.execute("SELECT count(*), coalesce(sum(size), 0) FROM objects").fetchone()
        return int(row[0]), int(row[1])

    def run_files(self, run_id: str) -> list[RunFile]:
        """Every version a run read or wrote, with whether its bytes are kept."""
        run = self.get_run(run_id)
        rows = self._rc.execute(
            f"SELECT {_VERSION_COLUMNS}, e.kind, e.role, "
            "EXISTS (SELECT 1 FROM objects o WHERE o.digest=v.digest), v.not_kept "
            "FROM edges e JOIN versions v ON v.id=e.version_id "
            "JOIN artifacts a ON a.id=v.artifact_id WHERE e.run_id=? ORDER BY e.kind, a.path",
            (run.id,),
        ).fetchall()
        return [
            RunFile(self._checked(r[:11]), r[11], r[12] or "data", bool(r[13]), r[14] or "")
            for r in rows
        ]

    def pin(self, version_ids: Sequence[int], note: str, at: int) -> None:
        """Pin versions (a version pinned twice keeps its first pin)."""
        self._wc.executemany(
            "INSERT OR IGNORE INTO pins(version_id, note, pinned_at) VALUES (?,?,?)",
            [(version_id, note, at) for version_id in version_ids],
        )

    def pinned_versions(self) -> list[int]:
        """Every pinned version id."""
        return [r[0] for r in self._rc.execute("SELECT version_id FROM pins ORDER BY version_id")]

    def upstream_digests(self, version_ids: Sequence[int]) -> set[bytes]:
        """The digests of these versions and of everything upstream of them (the lineage
        walk, copies bridged by digest), with no depth or node limit."""
        if not version_ids:
            return set()
        rows = self._rc.execute(
            _WALK_SQL,
            {
                "versions": json.dumps(list(version_ids)),
                "runs": "[]",
                "to_run": "wrote",
                "from_run": "read",
                "max_depth": 1_000_000,
                "row_cap": 2**62,
            },
        ).fetchall()
        return {bytes(row[1]) for row in rows if row[0] == "d"}

    def objects_kept_by(self, digests: Iterable[bytes]) -> int:
        """How many of these digests have their bytes kept."""
        count = 0
        for chunk in _chunks(list(digests), 20_000):
            marks = ",".join("?" * len(chunk))
            count += self._rc.execute(
                f"SELECT count(*) FROM objects WHERE digest IN ({marks})", list(chunk)
            ).fetchone()[0]
        return int(count)

    def object_needs(
        self, keep_all: Sequence[int], keep_lineage: Sequence[int]
    ) -> list[tuple[bytes, int, int, bool]]:
        """Every kept object as (digest, size, stored_at, wanted): wanted when a version of
        it is under a root that keeps all versions, or under a root that keeps lineage and
        a run read or wrote it. Oldest first."""
        rows = self._rc.execute(
            "SELECT o.digest, o.size, o.stored_at, EXISTS ("
            " SELECT 1 FROM versions v JOIN artifacts a ON a.id=v.artifact_id"
            " WHERE v.digest=o.digest AND (a.root_id IN (SELECT value FROM json_each(:all))"
            " OR (a.root_id IN (SELECT value FROM json_each(:lineage))"
            "  AND EXISTS (SELECT 1 FROM edges e WHERE e.version_id=v.id))))"
            " FROM objects o ORDER BY o.stored_at, o.digest",
            {"all": json.dumps(list(keep_all)), "lineage": json.dumps(list(keep_lineage))},
        ).fetchall()
        return [(bytes(r[0]), int(r[1]), int(r[2]), bool(r[3])) for r in rows]

    def forget_objects(self, digests: Sequence[bytes]) -> None:
        """The content store no longer holds these digests."""
        for chunk in _chunks(list(digests), 20_000):
            marks = ",".join("?" * len(chunk))
            self._wc.execute(f"DELETE FROM objects WHERE digest IN ({marks})", list(chunk))

    def link_reproduction(self, run_id: str, original_run_id: str, at: int) -> None:
        """Record that ``run_id`` re-ran ``original_run_id`` (``lineage reproduce``)."""
        conn = self._wc
        row_id, _, _ = self._run_row_id(conn, run_id)
        original_id, _, _ = self._run_row_id(conn, original_run_id)
        if row_id == original_id:
            raise InvalidArgument("a run cannot reproduce itself")
        conn.execute(
            "INSERT INTO reproductions(run_id, original_id, linked_at) VALUES (?,?,?) "
            "ON CONFLICT(run_id) DO UPDATE SET original_id=excluded.original_id, "
            "linked_at=excluded.linked_at",
            (row_id, original_id, at),
        )

    def reproductions_of(self, run_id: str) -> list[str]:
        """The run ids of every recorded reproduction of a run, oldest first."""
        run = self.get_run(run_id)
        rows = self._rc.execute(
            "SELECT r.run_id FROM reproductions p JOIN runs r ON r.id=p.run_id "
            "WHERE p.original_id=? ORDER BY p.run_id",
            (run.id,),
        ).fetchall()
        return [r[0] for r in rows]

    def reproduces(self, run_id: str) -> str:
        """The run id ``run_id`` reproduces, or ""."""
        run = self.get_run(run_id)
        row = self._rc.execute(
            "SELECT r.run_id FROM reproductions p JOIN runs r ON r.id=p.original_id "
            "WHERE p.run_id=?",
            (run.id,),
        ).fetchone()
        return str(row[0]) if row else ""

    # -- integrity and maintenance

    def integrity_problems(self) -> list[str]:
        """``PRAGMA integrity_check`` and ``foreign_key_check`` findings (empty when healthy)."""
        conn = self._rc
        try:
            problems = [
                r[0] for r in conn.execute("PRAGMA integrity_check").fetchall() if r[0] != "ok"
            ]
            problems += [
                f"foreign key: {r[0]} row {r[1]} -> {r[2]}"
                for r in conn.execute("PRAGMA foreign_key_check").fetchall()
            ]
            if not problems and _has_checksums(conn):
                problems += self.checksum_problems()
        except sqlite3.DatabaseError as exc:  # damage bad enough to stop the check itself
            return [f"the check could not finish: {exc}"]
        return problems

    def backup(self, dest: Path) -> None:
        """A consistent copy of the live database through SQLite's backup API."""
        if dest.exists():
            raise InvalidArgument(f"{dest} already exists; choose a new file")
        target = sqlite3.connect(dest)
        try:
            with contextlib.closing(sqlite3.connect(self.path, timeout=30.0)) as source:
                source.backup(target)
        finally:
            target.close()

    def logical_digest(self) -> str:
        """A digest of every table's rows in rowid order: equal digests, equal content."""
        import blake3

        hasher = blake3.blake3()
        with self._reading() as conn:
            tables = [
                r[0]
                for r in conn.execute(
                    "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%' "
                    "ORDER BY name"
                )
            ]
            for table in tables:
                hasher.update(table.encode() + b"\x00")
                for row in conn.execute(f'SELECT * FROM "{table}" ORDER BY rowid'):
                    hasher.update(repr(row).encode())
        return str(hasher.hexdigest())

    # -- the OpenLineage outbox (see _migration_openlineage)

    def _queue_openlineage(self, conn: sqlite3.Connection, run_id: str, phase: str) -> None:
        conn.execute(
            "INSERT INTO openlineage_outbox(run_id, phase, queued_at) "
            "SELECT id, ?, ? FROM runs WHERE run_id=?",
            (phase, time.time_ns(), run_id),
        )

    def openlineage_pending(self, limit: int) -> list[OutboxEntry]:
        """The oldest undelivered outbox entries, in the order they were queued."""
        with self._reading() as conn:
            rows = conn.execute(
                "SELECT o.id, r.run_id, o.phase, o.attempts, o.queued_at FROM openlineage_outbox o "
                "JOIN runs r ON r.id=o.run_id WHERE o.delivered_at IS NULL ORDER BY o.id LIMIT ?",
                (limit,),
            ).fetchall()
        return [OutboxEntry(*row) for row in rows]

    def openlineage_backlog(self) -> tuple[int, str]:
        """How many outbox entries wait, and the error the oldest of them last failed with."""
        with self._reading() as conn:
            count = conn.execute(
                "SELECT count(*) FROM openlineage_outbox WHERE delivered_at IS NULL"
            ).fetchone()[0]
            row = conn.execute(
                "SELECT last_error FROM openlineage_outbox WHERE delivered_at IS NULL "
                "ORDER BY id LIMIT 1"
            ).fetchone()
        return int(count), (row[0] or "") if row else ""

    def openlineage_delivered(self, entry_ids: Sequence[int], at: int) -> None:
        """Mark outbox entries delivered (writer thread)."""
        self._wc.executemany(
            "UPDATE openlineage_outbox SET delivered_at=?, attempts=attempts+1, last_error=NULL "
            "WHERE id=?",
            [(at, entry_id) for entry_id in entry_ids],
        )

    def openlineage_failed(self, entry_id: int, error: str) -> None:
        """Count a failed delivery of an outbox entry and keep its error (writer thread)."""
        self._wc.execute(
            "UPDATE openlineage_outbox SET attempts=attempts+1, last_error=? WHERE id=?",
            (error[:4096], entry_id),
        )

    def openlineage_runs(self, since: int | None) -> list[str]:
        """The ids of runs started at or after ``since`` (all when None), oldest first."""
        with self._reading() as conn:
            rows = conn.execute(
                "SELECT run_id FROM runs WHERE started_at >= ? ORDER BY id",
                (since if since is not None else -(2**63),),
            ).fetchall()
        return [row[0] for row in rows]

    def run_datasets(self, run_id: str) -> list[tuple[str, bool, Version]]:
        """A run's data edges (not code) as (kind, changed_during_run, version), by path."""
        with self._reading() as conn:
            row_id, _, _ = self._run_row_id(conn, run_id)
            rows = conn.execute(
                f"SELECT e.kind, e.changed_during_run, {_VERSION_COLUMNS} FROM edges e "
                "JOIN versions v ON v.id=e.version_id JOIN artifacts a ON a.id=v.artifact_id "
                "WHERE e.run_id=? AND coalesce(e.role, 'data') <> 'code' ORDER BY a.path, e.kind",
                (row_id,),
            ).fetchall()
        return [(row[0], bool(row[1]), self._checked(row[2:])) for row in rows]


# One recursive query walks the graph and returns the edges it crosses. Nodes are digests ('d')
# and runs ('r'): going through digests is what bridges copies (same bytes, another path). Each
# row carries the edge it was reached by, so the edges need no second pass; a node reached by
# several edges has a row for each (UNION drops repeated rows, so each is expanded once per
# distinct row). Depth counts run levels; the LIMIT bounds the work.
_WALK_SQL = """
WITH RECURSIVE walk(kind, node, depth, edge) AS (
    SELECT 'd', v.digest, 0, NULL FROM versions v
     WHERE v.id IN (SELECT value FROM json_each(:versions))
    UNION
    SELECT 'r', value, 1, NULL FROM json_each(:runs)
    UNION
    SELECT 'r', e.run_id, w.depth + 1, e.id
      FROM walk w JOIN versions same ON w.kind = 'd' AND same.digest = w.node
      JOIN edges e ON e.version_id = same.id AND e.kind = :to_run
     WHERE w.depth < :max_depth
    UNION
    SELECT 'd', v.digest, w.depth, e.id
      FROM walk w JOIN edges e ON w.kind = 'r' AND e.run_id = w.node AND e.kind = :from_run
      JOIN versions v ON v.id = e.version_id
    LIMIT :row_cap
)
SELECT w.kind, w.node, w.depth, e.run_id, e.version_id, e.kind, e.how, e.role,
       e.changed_during_run
  FROM walk w LEFT JOIN edges e ON e.id = w.edge
"""

# The rows of a walk's nodes in one statement: runs (kind 'r') and versions ('v', digests as
# hex: SQLite makes the strings), each padded to the width of the other.
_NODES_SQL = f"""
SELECT 'r', {_RUN_COLUMNS} FROM runs r LEFT JOIN envs e ON e.id = r.env_id
 WHERE r.id IN (SELECT value FROM json_each(:runs))
UNION ALL
SELECT 'v', v.id, a.path, lower(hex(v.digest)), v.size, v.mtime_ns, v.valid_from,
       v.valid_until, v.seen, v.closed_by, a.root_id IS NULL,
       v.checksum, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL
  FROM versions v JOIN artifacts a ON a.id = v.artifact_id
 WHERE v.id IN (SELECT value FROM json_each(:versions))
"""

# An edge as the walk keeps it: (run row id, version id, kind, how, role, changed_during_run).
_EdgeRow = tuple[int, int, str, str | None, str | None, int | None]


class _Walk:
    """One or two walks from the same start, then the graph: nodes loaded in one statement."""

    def __init__(
        self,
        store: Store,
        conn: sqlite3.Connection,
        start_versions: Sequence[Version],
        start_runs: Sequence[Run],
    ) -> None:
        self.store = store
        self.conn = conn
        self.start_versions = list(start_versions)
        self.start_runs = list(start_runs)
        self.truncated = False
        # (run row id, version id, kind) -> the edge; each walk adds the edges it keeps.
        self.edges: dict[tuple[int, int, str], _EdgeRow] = {}
        # Kept edges that are only known to be on the walk once their versions' digests are
        # (a walk cut by max_nodes): (edge, the digests that walk kept).
        self.pending: list[tuple[_EdgeRow, set[bytes]]] = []
        self.run_ids: set[int] = {run.id for run in start_runs}
        self.upstream_runs: set[int] = set()  # runs whose every read edge was crossed

    def walk(self, direction: Direction, *, max_depth: int, max_nodes: int) -> None:
        upstream = direction is Direction.UPSTREAM
        to_run, from_run = ("wrote", "read") if upstream else ("read", "wrote")
        row_cap = max_nodes * 8 + 64
        rows = self.conn.execute(
            _WALK_SQL,
            {
                "versions": json.dumps([v.id for v in self.start_versions]),
                "runs": json.dumps([r.id for r in self.start_runs]),
                "to_run": to_run,
                "from_run": from_run,
                "max_depth": max_depth,
                "row_cap": row_cap,
            },
        ).fetchall()
        cut = len(rows) >= row_cap
        depths: dict[tuple[str, Any], int] = {}
        for row in rows:
            key = (row[0], row[1])
            known = depths.get(key)
            if known is None or row[2] < known:
                depths[key] = row[2]
        if len(depths) > max_nodes:
            cut = True
            nearest = sorted(depths, key=depths.__getitem__)[:max_nodes]  # nearest first
            depths = {key: depths[key] for key in nearest}
        runs = {node for kind, node in depths if kind == "r"}
        digests = {node for kind, node in depths if kind == "d"}
        crossed = [row[3:] for row in rows if row[3] is not None and row[3] in runs]
        if cut:
            self.truncated = True
            # A crossed edge whose version's digest was cut away is off the walk: decided once
            # the versions are loaded.
            self.pending += [(edge, digests) for edge in crossed]
        else:
            for edge in crossed:
                self.edges[(edge[0], edge[1], edge[2])] = edge
        frontier = [
            node for (kind, node), depth in depths.items() if kind == "d" and depth >= max_depth
        ]
        if frontier:
            self._frontier(frontier, to_run, runs)
        self.run_ids |= runs
        if upstream and not cut:
            self.upstream_runs |= runs

    def _frontier(self, digests: list[bytes], to_run: str, runs: set[int]) -> None:
        """Digests at the depth limit: edges from runs on the walk into them belong to the
        graph; an edge from any other run means the walk stopped with more beyond."""
        for chunk in _chunks(digests, 500):
            marks = ",".join("?" * len(chunk))
            for edge in self.conn.execute(
                "SELECT e.run_id, e.version_id, e.kind, e.how, e.role, e.changed_during_run "
                f"FROM versions v JOIN edges e ON e.version_id = v.id AND e.kind = ? "
                f"WHERE v.digest IN ({marks})",
                [to_run, *chunk],
            ):
                if edge[0] in runs:
                    self.edges[(edge[0], edge[1], edge[2])] = edge
                else:
                    self.truncated = True

    def graph(self) -> Graph:
        version_ids = {edge[1] for edge in self.edges.values()}
        version_ids |= {edge[1] for edge, _ in self.pending}
        versions: dict[int, Version] = {v.id: v for v in self.start_versions}
        start_ids = set(versions)
        run_rows: list[Sequence[Any]] = []
        kinds = _CHANGE_KINDS
        for row in self.conn.execute(
            _NODES_SQL,
            {
                "runs": json.dumps(sorted(self.run_ids)),
                "versions": json.dumps(sorted(version_ids - start_ids)),
            },
        ):
            if row[0] == "r":
                run_rows.append(row[1:])
            else:
                self.store.verify_row(
                    row[1], row[2], bytes.fromhex(row[3]), row[4], row[5], row[6], row[11]
                )
                closed = row[9]
                versions[row[1]] = Version(
                    id=row[1],
                    path=row[2],
                    digest=row[3],
                    size=row[4],
                    mtime_ns=row[5],
                    valid_from=row[6],
                    valid_until=row[7],
                    seen=kinds[row[8]],
                    closed_by=kinds[closed] if closed else None,
                    external=bool(row[10]),
                )
        for edge, digests in self.pending:
            version = versions.get(edge[1])
            if version is not None and bytes.fromhex(version.digest) in digests:
                self.edges[(edge[0], edge[1], edge[2])] = edge
        kept_ids = {edge[1] for edge in self.edges.values()} | start_ids
        versions = {vid: versions[vid] for vid in sorted(kept_ids) if vid in versions}
        runs = _runs(run_rows, self._sources(versions))
        runs.sort(key=_ROW_ID)
        run_nodes = {run.id: run_node_id(run.run_id) for run in runs}
        edges = [
            Edge(
                source=run_nodes[run_id],
                target=version_node_id(version_id),
                kind=kind,
                how=how or "traced",
                role=role or "data",
                changed_during_run=bool(changed),
            )
            for run_id, version_id, kind, how, role, changed in self.edges.values()
            if run_id in run_nodes
        ]
        edges += _bridges(versions, self.edges)
        edges.sort(key=_EDGE_ORDER)
        return Graph(
            versions=tuple(versions.values()),
            runs=tuple(runs),
            edges=tuple(edges),
            truncated=self.truncated,
            start=tuple(
                [version_node_id(v.id) for v in self.start_versions]
                + [run_node_id(r.run_id) for r in self.start_runs]
            ),
        )

    def _sources(self, versions: Mapping[int, Version]) -> dict[int, tuple[SourceFile, ...]]:
        """Each run's code inputs (``CodeState.sources``), by run row id."""
        found: dict[int, list[SourceFile]] = {}
        # An upstream walk crossed every read edge of its runs: their sources are among the
        # kept edges. Other runs' are looked up.
        for run_id, version_id, kind, _, role, _ in self.edges.values():
            if role == "code" and kind == "read" and run_id in self.upstream_runs:
                version = versions[version_id]
                found.setdefault(run_id, []).append(SourceFile(version.path, version.digest))
        others = sorted(self.run_ids - self.upstream_runs)
        if others:
            for (
                run_id,
                vid,
                path,
                digest,
                size,
                mtime_ns,
                valid_from,
                checksum,
            ) in self.conn.execute(
                "SELECT e.run_id, v.id, a.path, v.digest, v.size, v.mtime_ns, v.valid_from, "
                "v.checksum FROM edges e "
                "JOIN versions v ON v.id = e.version_id JOIN artifacts a ON a.id = v.artifact_id "
                "WHERE e.run_id IN (SELECT value FROM json_each(?)) AND e.kind = 'read' "
                "AND e.role = 'code'",
                (json.dumps(others),),
            ):
                self.store.verify_row(vid, path, digest, size, mtime_ns, valid_from, checksum)
                found.setdefault(run_id, []).append(SourceFile(path, digest.hex()))
        return {
            run_id: tuple(sorted(files, key=lambda s: s.path)) for run_id, files in found.items()
        }


_ROW_ID = operator.attrgetter("id")  # a run's row id
_EDGE_ORDER = operator.attrgetter("source", "target", "kind")


def _bridges(
    versions: Mapping[int, Version], kept: Mapping[tuple[int, int, str], object]
) -> list[Edge]:
    """``same_digest`` edges from a version a run wrote to every other version with its bytes,
    written by another run or not (``versions`` in id order: the caps keep the oldest).

    A copy is shown as a copy: the run that wrote X is credited for a version with X's bytes
    only through this edge ("same bytes as X, written by R"), never as its writer; two runs
    that wrote the same bytes are bridged both ways, so every answer (text trace, JSON,
    verify) shows both, each as what it is."""
    written = {version_id for (_, version_id, kind) in kept if kind == "wrote"}
    by_digest: dict[str, list[int]] = {}
    for version in versions.values():
        by_digest.setdefault(version.digest, []).append(version.id)
    bridges: list[Edge] = []
    for group in by_digest.values():
        if len(group) < 2:
            continue
        sources = [v for v in group if v in written][:20]
        for source in sources:
            for target in group[:50]:
                if target != source:
                    bridges.append(
                        Edge(
                            source=version_node_id(source),
                            target=version_node_id(target),
                            kind="same_digest",
                            how="digest",
                        )
                    )
    return bridges


# --- the writer thread ----------------------------------------------------------------------


class TransactionLost(sqlite3.OperationalError):
    """The writer's transaction is gone or half-undone: the whole batch must be retried."""


class _Checkpointer:
    """Copies the WAL into the database beside the writer: PASSIVE checkpoints on a connection
    of its own, a moment after commits, so no commit waits for a checkpoint's writes and
    fsyncs (SQLite's automatic checkpoint runs inside the commit that crosses its threshold:
    on a store of a few hundred thousand edges, 200 ms of a 10,000-read RecordAccesses).

    A passive checkpoint never blocks readers or the writer. It copies what no reader still
    needs; the writer restarts the WAL from its start once a checkpoint has copied it all, and
    :meth:`Writer._bound_wal` forces that when writes never pause long enough.
    """

    def __init__(self, path: Path, delay: float) -> None:
        self._path = path
        self._delay = delay
        self._wanted = threading.Event()
        self._stopping = threading.Event()
        self._failing = False
        self._thread = threading.Thread(target=self._loop, name="lineaged-checkpoint", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def poke(self) -> None:
        """A commit added to the WAL: checkpoint soon."""
        self._wanted.set()

    def stop(self) -> None:
        """Stop; the store's last connection to close copies what is left."""
        if self._thread.is_alive():
            self._stopping.set()
            self._wanted.set()
            self._thread.join()

    def _loop(self) -> None:
        conn = sqlite3.connect(self._path, timeout=30.0, isolation_level=None)
        try:
            while True:
                self._wanted.wait()
                # Commits that come meanwhile join this checkpoint: a page rewritten by each
                # of them is copied once.
                if self._stopping.wait(self._delay):
                    return
                self._wanted.clear()
                self._checkpoint(conn)
        finally:
            conn.close()

    def _checkpoint(self, conn: sqlite3.Connection) -> None:
        try:
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except sqlite3.Error as exc:  # disk full, I/O: the WAL keeps the data; retried later
            if not self._failing:
                log.warning("store checkpoint failed (%s); the WAL grows until one succeeds", exc)
            self._failing = True
            self._wanted.set()
        else:
            if self._failing:
                log.warning("store checkpoints succeed again")
            self._failing = False


class Writer:
    """The one thread that writes: jobs are grouped into transactions (group commit).

    Each job runs in its own savepoint, so a failing job changes nothing and does not undo the
    others in its batch; the batch commits once. ``submit`` returns a Future of the job's result.

    When the store itself fails (disk full, an I/O error, the database locked), the whole
    batch is rolled back and run again from the start, with back-off, up to
    ``RETRY_ATTEMPTS`` times: jobs must therefore be functions of the store's state, not of
    their own earlier attempts. What earlier batches committed is never touched. A batch that
    still fails is given up: its callers get a ``StoreError``, ``problem`` says why, and
    ``on_recovered(lost)`` is called after the next commit that succeeds (the engine then
    rescans, so file changes are recorded once the fault clears).
    """

    RETRY_ATTEMPTS = 8
    RETRY_MAX_DELAY = 5.0
    CHECKPOINT_DELAY = 0.25  # seconds from a commit to the background checkpoint
    # A WAL past this size (writes that never paused for the background checkpoint to copy
    # all of it, so the WAL never restarted) is checkpointed by the writer between batches.
    WAL_FORCE_BYTES = 64 << 20

    def __init__(
        self,
        store: Store,
        *,
        batch_seconds: float = 0.05,
        batch_jobs: int = 256,
        after_commit: Callable[[list[Any]], None] | None = None,
        on_recovered: Callable[[int], None] | None = None,
        checkpoint_delay: float | None = None,
        wal_force_bytes: int | None = None,
    ) -> None:
        self.store = store
        self.batch_seconds = batch_seconds
        self.batch_jobs = batch_jobs
        self.wal_force_bytes = self.WAL_FORCE_BYTES if wal_force_bytes is None else wal_force_bytes
        self.after_commit = after_commit
        self.on_recovered = on_recovered
        # (job, future, urgent): an urgent job's batch is written without waiting for more.
        self._queue: queue.Queue[tuple[Callable[[Store], Any], Future[Any], bool] | None] = (
            queue.Queue()
        )
        self._thread = threading.Thread(target=self._loop, name="lineaged-writer", daemon=True)
        self._checkpointer = _Checkpointer(
            store.path, self.CHECKPOINT_DELAY if checkpoint_delay is None else checkpoint_delay
        )
        self._stopping = False
        self._problem = ""
        self._lost = 0  # jobs given up since the last successful commit

    def __enter__(self) -> Writer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        """Start the thread (and the checkpoints beside it)."""
        self.store.set_auto_checkpoint(0)
        self._checkpointer.start()
        self._thread.start()

    def stop(self) -> None:
        """Finish every queued job, commit, and stop."""
        if self._thread.is_alive():
            self._stopping = True
            self._queue.put(None)
            self._thread.join()
        self._checkpointer.stop()
        with contextlib.suppress(StoreError, sqlite3.Error):  # a store closed already
            self.store.set_auto_checkpoint(1000)  # SQLite's default, for whoever writes next

    @property
    def depth(self) -> int:
        """Jobs waiting."""
        return self._queue.qsize()

    @property
    def problem(self) -> str:
        """Why the store is failing to write right now ("" when the last batch committed)."""
        return self._problem

    @property
    def lost(self) -> int:
        """Jobs given up since the last batch that committed."""
        return self._lost

    def submit(self, job: Callable[[Store], T], *, urgent: bool = False) -> Future[T]:
        """Queue ``job(store)`` to run in a write transaction.

        ``urgent``: someone waits on it (``call`` always does), so its batch commits with
        what is queued already instead of waiting ``batch_seconds`` for more.
        """
        future: Future[T] = Future()
        if self._stopping and not self._thread.is_alive():
            future.set_exception(StoreError("the store writer has stopped"))
            return future
        self._queue.put((job, future, urgent))
        return future

    def call(self, job: Callable[[Store], T], timeout: float | None = 60.0) -> T:
        """Run ``job`` on the writer thread and wait for its committed result.

        The caller is blocked, so the job is urgent: waiting ``batch_seconds`` for company
        only delayed it (two such waits were a tenth of a rescan of 100,000 files).
        """
        return self.submit(job, urgent=True).result(timeout)

    def _loop(self) -> None:
        stop = False
        while not stop:
            item = self._queue.get()
            if item is None:
                break
            batch = [item[:2]]
            urgent = item[2]
            deadline = time.monotonic() + self.batch_seconds
            while len(batch) < self.batch_jobs:
                remaining = deadline - time.monotonic()
                try:
                    nxt = (
                        self._queue.get(timeout=max(0.0, remaining))
                        if remaining > 0 and not urgent
                        else self._queue.get_nowait()
                    )
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                batch.append(nxt[:2])
                urgent = urgent or nxt[2]
            try:
                self._run_batch(batch)
            except BaseException as exc:  # the one writer must outlive any batch
                log.exception("store writer failed a batch of %d changes", len(batch))
                self._fail(batch, StoreError(f"store write failed: {exc}"))

    def _run_batch(self, batch: list[tuple[Callable[[Store], Any], Future[Any]]]) -> None:
        # A future is marked running once; the retries below re-run its job, never re-mark it.
        batch = [(job, fut) for job, fut in batch if fut.set_running_or_notify_cancel()]
        if not batch:
            return
        results: list[tuple[Future[Any], Any, BaseException | None]] = []
        attempt = 0
        while True:
            attempt += 1
            results = []
            try:
                self.store.begin()
                for job, future in batch:
                    try:
                        with self.store.savepoint():
                            value = job(self.store)
                    except sqlite3.OperationalError as exc:
                        if isinstance(exc, TransactionLost) or _is_io_error(exc):
                            raise  # the store failed, not the job: retry the whole batch
                        results.append((future, None, exc))
                    except Exception as exc:  # a job's own failure: report it to its caller
                        results.append((future, None, exc))
                    else:
                        results.append((future, value, None))
                self.store.commit()
                break
            except sqlite3.Error as exc:
                self._rollback_quietly()
                # What the store said, not how the writer noticed it.
                cause = exc.__cause__ if isinstance(exc, TransactionLost) else None
                self._problem = f"writes failing ({cause or exc}); retrying"
                # While stopping, a failing store is not waited out: what the watcher saw is
                # found again by the next start's scan.
                if attempt >= (2 if self._stopping else self.RETRY_ATTEMPTS):
                    log.error(
                        "store write failed %d times (%s); giving up on %d changes",
                        attempt,
                        exc,
                        len(batch),
                    )
                    self._lost += len(batch)
                    self._problem = (
                        f"writes failing ({cause or exc}); {self._lost} changes not recorded, "
                        "a reconcile scan follows when writes succeed again"
                    )
                    self._fail(batch, StoreError(f"store write failed: {exc}"))
                    return
                delay = min(self.RETRY_MAX_DELAY, 0.1 * 2**attempt)
                log.error(
                    "store write failed (%s); retrying %d changes in %.1fs (attempt %d of %d)",
                    exc,
                    len(batch),
                    delay,
                    attempt,
                    self.RETRY_ATTEMPTS,
                )
                time.sleep(delay)
        if self._problem:
            log.warning("store writes succeed again (after %d attempts)", attempt)
            self._problem = ""
        lost, self._lost = self._lost, 0
        outputs = []
        for future, value, error in results:
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(value)
                outputs.append(value)
        if self.after_commit is not None:
            try:
                self.after_commit(outputs)
            except Exception:
                log.exception("after-commit hook failed")
        if lost and self.on_recovered is not None:
            try:
                self.on_recovered(lost)
            except Exception:
                log.exception("store-recovered hook failed")
        # After the callers have their answers: a forced checkpoint delays the next batch only.
        self._checkpointer.poke()
        self._bound_wal()

    def _bound_wal(self) -> None:
        """A WAL over ``wal_force_bytes`` is checkpointed here, after the commit, as SQLite's
        automatic checkpoint would: the next write then restarts it, cut to
        ``WAL_KEEP_BYTES``, unless a reader still needs it (passive: nobody is made to wait)."""
        try:
            size = os.stat(self.store.wal_path).st_size
        except OSError:
            return
        if size > self.wal_force_bytes:
            try:
                self.store.checkpoint()
            except sqlite3.Error as exc:
                log.warning("store checkpoint of a %d MB WAL failed: %s", size >> 20, exc)

    def _rollback_quietly(self) -> None:
        try:
            self.store.rollback()
        except sqlite3.Error as exc:
            # The next attempt's BEGIN fails (and is retried) if a transaction survived.
            log.error("store rollback failed: %s", exc)

    @staticmethod
    def _fail(
        batch: list[tuple[Callable[[Store], Any], Future[Any]]], error: BaseException
    ) -> None:
        for _, future in batch:
            if not future.done():
                future.set_exception(error)


# The store failed, not the statement: worth retrying the batch once it recovers.
_RETRYABLE = (
    "SQLITE_FULL",
    "SQLITE_IOERR",
    "SQLITE_BUSY",
    "SQLITE_LOCKED",
    "SQLITE_READONLY",
    "SQLITE_NOMEM",
    "SQLITE_PROTOCOL",
    "SQLITE_CANTOPEN",
)


def _is_io_error(exc: sqlite3.Error) -> bool:
    name = getattr(exc, "sqlite_errorname", None)
    if name:
        return str(name).startswith(_RETRYABLE)
    text = str(exc).lower()
    if "malformed" in text:  # corruption does not heal by retrying
        return False
    return any(word in text for word in ("disk", "i/o", "full", "readonly", "locked", "busy"))


def _valid_from(write: VersionWrite, previous_from: int | None) -> int:
    """When the path started holding this content: its mtime, unless it arrived by a move."""
    if write.seen is ChangeKind.MOVED or write.stat_key.mtime_ns <= 0:
        start = write.observed_at
    else:
        start = min(write.stat_key.mtime_ns, write.observed_at)
    if previous_from is not None:
        start = max(start, previous_from + 1)
    return start


def _blake3(data: bytes) -> bytes:
    return bytes.fromhex(hash_bytes(data))


def _iso(ns: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ns / 1e9))


def _chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _check_identity(path: Path, conn: sqlite3.Connection) -> int:
    """The schema version of a lineaged database; CorruptStore for anything else."""
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    app_id = int(conn.execute("PRAGMA application_id").fetchone()[0])
    tables = conn.execute("SELECT count(*) FROM sqlite_master WHERE type='table'").fetchone()[0]
    if version == 0 and tables:
        raise CorruptStore(
            f"{path} is a SQLite database but not a lineaged store ({tables} foreign tables); "
            "refusing to start and leaving it untouched"
        )
    if version and app_id != APP_ID:
        raise CorruptStore(
            f"{path} is not a lineaged store (application_id {app_id:#x}); "
            "refusing to start and leaving it untouched"
        )
    if version > SCHEMA_VERSION:
        raise CorruptStore(
            f"{path} has schema {version}, newer than this lineaged ({SCHEMA_VERSION}); "
            "upgrade lineaged"
        )
    return version


def _has_checksums(conn: sqlite3.Connection) -> bool:
    return any(r[1] == "checksum" for r in conn.execute("PRAGMA table_info(versions)"))


def _remove_created(created: list[Path]) -> None:
    """Remove the side files a refused open created; a -wal holding data is never removed."""
    for side in created:
        with contextlib.suppress(OSError):
            if side.stat().st_size == 0:
                side.unlink()
    for side in created:
        # The -shm only indexes the -wal: without a -wal it describes nothing.
        if side.name.endswith("-shm") and not side.with_name(side.name[:-4] + "-wal").exists():
            with contextlib.suppress(OSError):
                side.unlink()


def _clean_marker(path: Path) -> Path:
    return Path(f"{path}-clean")


def _open_marker(path: Path) -> Path:
    return Path(f"{path}-open")


def _file_digest(path: Path) -> str:
    """BLAKE3 of the database file (about 25 ms for 200 MB here: both cores, mmap)."""
    hasher = blake3.blake3(max_threads=blake3.blake3.AUTO)
    if path.stat().st_size:
        hasher.update_mmap(path)
    return str(hasher.hexdigest())


def _mark_open(path: Path) -> None:
    """While the store is open: an unclean stop leaves this marker, and whether the WAL
    existed then (a WAL gone at the next start lost what it held)."""
    wal = Path(f"{path}-wal").exists()
    try:
        _open_marker(path).write_text(f"pid {os.getpid()} wal {int(wal)}\n")
    except OSError as exc:  # a full disk: the start goes on, the vanished-WAL check is off
        log.warning("cannot write %s (%s)", _open_marker(path), exc.strerror)


def _mark_clean(path: Path) -> None:
    """After a clean close (the WAL checkpointed away), remember exactly which bytes those were.

    The marker holds the BLAKE3 of the whole database file: the next open skips the full
    ``quick_check`` only when the file is still byte for byte the one closed here. Any change
    after the stop, whatever it does to mtime and ctime, brings the check back. The marker is
    removed at open, so a crash never leaves one behind.
    """
    with contextlib.suppress(OSError):
        _open_marker(path).unlink()
    if Path(f"{path}-wal").exists() or not path.exists():
        return
    with contextlib.suppress(OSError):
        _clean_marker(path).write_text(f"blake3 {_file_digest(path)}\n")


def _closed_cleanly(path: Path) -> bool:
    marker = _clean_marker(path)
    try:
        recorded = marker.read_text().strip()
    except OSError:
        return False
    with contextlib.suppress(OSError):
        marker.unlink()
    try:
        if Path(f"{path}-wal").exists() or not path.exists():
            return False
        return recorded == f"blake3 {_file_digest(path)}"
    except OSError:
        return False


def _vanished_wal(path: Path) -> str:
    """What to say when the last stop was unclean and the WAL it left is gone ("" if not)."""
    try:
        note = _open_marker(path).read_text()
    except OSError:
        return ""
    if "wal 1" not in note or Path(f"{path}-wal").exists() or not path.exists():
        return ""
    since = _iso(path.stat().st_mtime_ns)
    return (
        f"the write-ahead log {path}-wal vanished after an unclean stop ({note.strip()}): "
        f"what was committed after the last checkpoint (the database file was last written at "
        f"{since}) is lost: runs begun or ended since then, their accesses, and file versions "
        "seen since (the reconcile scan records the files' present state again)"
    )


def _check_pages(path: Path, conn: sqlite3.Connection) -> None:
    """CorruptStore when SQLite's ``quick_check`` finds damage (O(size): 0.6 s for 200 MB).

    A store whose first page is intact but whose other pages are garbage opens without an
    error and fails only on the first write that touches them, so every page is read once.
    """
    findings = [row[0] for row in conn.execute("PRAGMA quick_check(3)").fetchall()]
    if findings != ["ok"]:
        lines = [line.strip() for finding in findings for line in finding.splitlines()]
        damage = "; ".join(line for line in lines if line and "***" not in line)
        raise CorruptStore(
            f"{path} is corrupt ({damage}); refusing to start and leaving it untouched: "
            "restore a backup or move it away ('lineaged check' lists the damage)"
        )


def _refuse_foreign(path: Path) -> None:
    """A file that is not SQLite where the database should be: refuse, leave it untouched."""
    try:
        with open(path, "rb") as f:
            header = f.read(len(SQLITE_HEADER))
    except FileNotFoundError:
        return
    except IsADirectoryError:
        raise CorruptStore(f"{path} is a directory, not a lineaged database") from None
    except OSError as exc:
        raise StoreError(f"cannot read {path}: {exc}") from exc
    if header and header != SQLITE_HEADER:
        raise CorruptStore(
            f"{path} is not a SQLite database (it may be corrupt or a foreign file); "
            "refusing to start and leaving it untouched — move it away or restore a backup"
        )

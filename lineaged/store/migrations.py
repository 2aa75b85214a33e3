"""The schema and its migrations: ``MIGRATIONS[n-1]`` takes a store from schema n-1 to n.

The first migration holds the tables and indexes of schema 1; each later one adds to them and
leaves what it finds already done, so running one again is harmless. A store records its
schema in ``PRAGMA user_version`` and is marked as lineaged's by ``PRAGMA application_id``.
New migrations go at the end, before ``_migration_redact_secrets``, which stays last.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Callable
from typing import TYPE_CHECKING

from lineage_core.redact import Redactor

from lineaged.store.rows import blake3_blob, version_checksum

if TYPE_CHECKING:
    import sqlite_utils

log = logging.getLogger(__name__)

APP_ID = 0x4C494E45  # "LINE": PRAGMA application_id marks a lineaged database


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
            [
                (version_checksum(path, digest, size, mtime_ns, valid_from), version_id)
                for version_id, path, digest, size, mtime_ns, valid_from in rows
            ],
        )
        last = rows[-1][0]


def _migration_redact_secrets(db: sqlite_utils.Database) -> None:
    """Secrets recorded before redaction existed (issue 13) are replaced by ``<redacted>``.

    The same rules as for new runs (``lineage_core.redact``) over argv, params, the git remote,
    warnings and environment variables. The store's key lives outside the database, so old
    values get the plain marker. ``secure_delete`` zeroes the freed bytes in the file.
    """
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
        digest = blake3_blob(new_body.encode())
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


def migrate(conn: sqlite3.Connection, version: int) -> None:
    """Run the migrations a store at schema ``version`` has not had, one transaction each."""
    if version == SCHEMA_VERSION:
        return
    # Deferred (e): sqlite-utils imports pandas when it is installed (0.9 s at every daemon
    # start here), and only a migration needs it; tests/test_daemon.py holds this.
    import sqlite_utils

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

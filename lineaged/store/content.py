"""What the content store holds (``lineaged/objects.py`` owns the files): kept objects by
digest, why a version's bytes could not be kept, pins, and what retention may forget."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Sequence

from lineage_core.models import RunFile

from lineaged.store.names import digest_to_blob
from lineaged.store.rows import ACCESS_ROLES, EDGE_KINDS, VERSION_COLUMNS, RowChecker, chunks


def record_objects(conn: sqlite3.Connection, kept: Sequence[tuple[str, int, str]], at: int) -> None:
    """Note objects now kept: (digest, size, method); an object kept already stays."""
    conn.executemany(
        "INSERT OR IGNORE INTO objects(digest, size, stored_at, method) VALUES (?,?,?,?)",
        [(bytes.fromhex(digest), size, at, method) for digest, size, method in kept],
    )


def mark_not_kept(conn: sqlite3.Connection, versions: Sequence[tuple[int, str]]) -> None:
    """Record why these versions' bytes could not be kept: (version id, reason)."""
    conn.executemany(
        "UPDATE versions SET not_kept=? WHERE id=? AND NOT EXISTS "
        "(SELECT 1 FROM objects o WHERE o.digest=versions.digest)",
        [(reason, version_id) for version_id, reason in versions],
    )


def mark_not_kept_current(conn: sqlite3.Connection, items: Sequence[tuple[str, str, str]]) -> None:
    """:meth:`mark_not_kept` for the current version of paths: (path, digest, reason)."""
    conn.executemany(
        "UPDATE versions SET not_kept=? WHERE valid_until IS NULL AND digest=? AND "
        "artifact_id=(SELECT id FROM artifacts WHERE path=?) AND NOT EXISTS "
        "(SELECT 1 FROM objects o WHERE o.digest=versions.digest)",
        [(reason, bytes.fromhex(digest), path) for path, digest, reason in items],
    )


def unkept_versions(
    conn: sqlite3.Connection, version_ids: Sequence[int]
) -> list[tuple[int, str, str, int, int]]:
    """Of these versions, those under a root whose bytes are not kept yet:
    (version id, path, digest, size, root id)."""
    found: list[tuple[int, str, str, int, int]] = []
    for chunk in chunks(sorted(set(version_ids)), 20_000):
        for version_id, path, digest, size, root_id in conn.execute(
            "SELECT v.id, a.path, v.digest, v.size, a.root_id FROM versions v "
            "JOIN artifacts a ON a.id=v.artifact_id "
            "WHERE v.id IN (SELECT value FROM json_each(?)) AND a.root_id IS NOT NULL "
            "AND NOT EXISTS (SELECT 1 FROM objects o WHERE o.digest=v.digest)",
            (json.dumps(list(chunk)),),
        ):
            found.append((version_id, path, digest.hex(), size, root_id))
    return found


def not_kept_reason(conn: sqlite3.Connection, version_id: int) -> str:
    """Why a version's bytes could not be kept ("" when no reason was recorded)."""
    row = conn.execute("SELECT not_kept FROM versions WHERE id=?", (version_id,)).fetchone()
    return str(row[0]) if row and row[0] else ""


def object_kept(conn: sqlite3.Connection, digest: str) -> bool:
    """Whether the content store holds the bytes of ``digest``."""
    row = conn.execute("SELECT 1 FROM objects WHERE digest=?", (digest_to_blob(digest),)).fetchone()
    return row is not None


def object_totals(conn: sqlite3.Connection) -> tuple[int, int]:
    """(objects, bytes) the content store holds."""
    row = conn.execute("SELECT count(*), coalesce(sum(size), 0) FROM objects").fetchone()
    return int(row[0]), int(row[1])


def run_files(conn: sqlite3.Connection, checker: RowChecker, run_row_id: int) -> list[RunFile]:
    """Every version a run (by row id) read or wrote, with whether its bytes are kept."""
    rows = conn.execute(
        "SELECT e.kind, e.role, EXISTS (SELECT 1 FROM objects o WHERE o.digest=v.digest), "
        f"v.not_kept, {VERSION_COLUMNS} FROM edges e JOIN versions v ON v.id=e.version_id "
        "JOIN artifacts a ON a.id=v.artifact_id WHERE e.run_id=? ORDER BY e.kind, a.path",
        (run_row_id,),
    ).fetchall()
    return [
        RunFile(
            checker.version(version),
            EDGE_KINDS[kind],
            ACCESS_ROLES[role],
            bool(kept),
            not_kept or "",
        )
        for kind, role, kept, not_kept, *version in rows
    ]


def pin(conn: sqlite3.Connection, version_ids: Sequence[int], note: str, at: int) -> None:
    """Pin versions (a version pinned twice keeps its first pin)."""
    conn.executemany(
        "INSERT OR IGNORE INTO pins(version_id, note, pinned_at) VALUES (?,?,?)",
        [(version_id, note, at) for version_id in version_ids],
    )


def pinned_versions(conn: sqlite3.Connection) -> list[int]:
    """Every pinned version id."""
    return [
        version_id
        for (version_id,) in conn.execute("SELECT version_id FROM pins ORDER BY version_id")
    ]


def objects_kept_by(conn: sqlite3.Connection, digests: Iterable[bytes]) -> int:
    """How many of these digests have their bytes kept."""
    count = 0
    for chunk in chunks(list(digests), 20_000):
        marks = ",".join("?" * len(chunk))
        count += conn.execute(
            f"SELECT count(*) FROM objects WHERE digest IN ({marks})", list(chunk)
        ).fetchone()[0]
    return int(count)


def object_needs(
    conn: sqlite3.Connection, keep_all: Sequence[int], keep_lineage: Sequence[int]
) -> list[tuple[bytes, int, int, bool]]:
    """Every kept object as (digest, size, stored_at, wanted): wanted when a version of
    it is under a root that keeps all versions, or under a root that keeps lineage and
    a run read or wrote it. Oldest first."""
    rows = conn.execute(
        "SELECT o.digest, o.size, o.stored_at, EXISTS ("
        " SELECT 1 FROM versions v JOIN artifacts a ON a.id=v.artifact_id"
        " WHERE v.digest=o.digest AND (a.root_id IN (SELECT value FROM json_each(:all))"
        " OR (a.root_id IN (SELECT value FROM json_each(:lineage))"
        "  AND EXISTS (SELECT 1 FROM edges e WHERE e.version_id=v.id))))"
        " FROM objects o ORDER BY o.stored_at, o.digest",
        {"all": json.dumps(list(keep_all)), "lineage": json.dumps(list(keep_lineage))},
    ).fetchall()
    return [
        (bytes(digest), int(size), int(stored_at), bool(wanted))
        for digest, size, stored_at, wanted in rows
    ]


def forget_objects(conn: sqlite3.Connection, digests: Sequence[bytes]) -> None:
    """The content store no longer holds these digests."""
    for chunk in chunks(list(digests), 20_000):
        marks = ",".join("?" * len(chunk))
        conn.execute(f"DELETE FROM objects WHERE digest IN ({marks})", list(chunk))

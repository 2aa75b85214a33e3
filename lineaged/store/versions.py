"""Roots, artifacts, versions and the stat cache: recording what paths hold, and reading it
back (history, the version at a time, by digest, the rescan's trusted stat keys).

Functions over a connection: the write connection for the ``record_*`` functions (writer
thread), a reader's for the rest. Versions served pass their row checksum (``RowChecker``).
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from lineage_core.errors import AmbiguousDigest, NotFound
from lineage_core.models import ChangeKind, Counts, Role, Root, StatKey, Version

from lineaged.store.names import (
    DIGEST_BYTES,
    digest_to_blob,
    storable,
)
from lineaged.store.rows import (
    BATCH_PATHS,
    VERSION_COLUMNS,
    RowChecker,
    chunks,
    hex_or_empty,
    iso,
    pack_stat_key,
    unpack_stat_key,
    version_checksum,
)


@dataclass(frozen=True, slots=True)
class CacheEntry:
    """What the store remembers of a live path: its stat key and digest when last checked."""

    artifact_id: int
    stat_key: StatKey
    digest: str
    checked_at: int
    hash_format: int


@dataclass(frozen=True, slots=True)
class VersionWrite:
    """One observed content state of a path under a root, to be recorded."""

    path: str
    root_id: int
    digest: str
    stat_key: StatKey
    seen: ChangeKind
    observed_at: int


class _Current(NamedTuple):
    """A path's current version, as a write compares with it."""

    id: int
    digest: bytes
    valid_from: int


# --- writes (writer thread) ---------------------------------------------------------------


def ensure_root(conn: sqlite3.Connection, path: str, role: Role) -> int:
    """The id of a root, adding it (or updating its role) as needed."""
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


def _external_artifact_id(conn: sqlite3.Connection, path: str) -> int:
    """The artifact of a path outside every root, created on first report."""
    row = conn.execute("SELECT id FROM artifacts WHERE path=?", (path,)).fetchone()
    if row is not None:
        return int(row[0])
    cur = conn.execute("INSERT INTO artifacts(path, root_id) VALUES (?, NULL)", (path,))
    return int(cur.lastrowid or 0)


def record_versions(
    conn: sqlite3.Connection, writes: Sequence[VersionWrite], hash_format: int
) -> list[Version]:
    """Record observed content states; returns the versions that are new.

    A state whose digest equals the path's current version only refreshes the stat cache.
    Set-based: a few statements per batch, not per file (a first scan writes 100k rows).
    """
    if not writes:
        return []
    latest: dict[str, VersionWrite] = {}
    for write in writes:
        if storable(write.path):
            latest[write.path] = write  # the last observation of a path in the batch wins
    existing = _existing_artifacts(conn, latest)
    current: dict[int, _Current] = {}
    for chunk in chunks(list(existing.values()), 20_000):
        for artifact_id, version_id, digest, valid_from in conn.execute(
            "SELECT artifact_id, id, digest, valid_from FROM versions WHERE valid_until IS NULL "
            "AND artifact_id IN (SELECT value FROM json_each(?))",
            (json.dumps(list(chunk)),),
        ):
            current[artifact_id] = _Current(version_id, digest, valid_from)
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
        if now is not None and now.digest == blob:
            continue
        valid_from = _valid_from(write, now.valid_from if now is not None else None)
        if now is not None:
            closes.append((valid_from, write.seen.value, now.id))
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


def _existing_artifacts(
    conn: sqlite3.Connection, writes: Mapping[str, VersionWrite]
) -> dict[str, int]:
    """Ids of the artifacts that already exist for these paths (an external path that
    now lies under a root is adopted by it)."""
    found: dict[str, int] = {}
    adopt: list[tuple[int, int]] = []
    for chunk in chunks(list(writes), 20_000):
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


def touch_stat(conn: sqlite3.Connection, path: str, stat_key: StatKey, checked_at: int) -> None:
    """Remember a new stat key for unchanged content (no new version)."""
    if not storable(path):
        return
    conn.execute(
        "UPDATE artifacts SET cache_key=?, cache_mtime_ns=?, checked_at=? "
        "WHERE path=? AND cache_key IS NOT NULL",
        (pack_stat_key(stat_key), stat_key.mtime_ns, checked_at, path),
    )


def record_gone(
    conn: sqlite3.Connection, paths: Iterable[str], at: int, how: ChangeKind
) -> list[str]:
    """Close the current version of each path (deleted or moved away); returns the closed paths."""
    closed: list[str] = []
    for path in paths:
        if not storable(path):
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
        version_id, valid_from = current
        conn.execute(
            "UPDATE versions SET valid_until=?, closed_by=? WHERE id=?",
            (max(at, valid_from + 1), how.value, version_id),
        )
        closed.append(path)
    return closed


def record_external(
    conn: sqlite3.Connection, path: str, digest: str, size: int, mtime_ns: int, at: int
) -> int:
    """The version id of a file outside every root, as a client hashed it."""
    artifact_id = _external_artifact_id(conn, path)
    blob = digest_to_blob(digest)
    row = conn.execute(
        "SELECT id, digest, valid_from FROM versions WHERE artifact_id=? AND valid_until IS NULL",
        (artifact_id,),
    ).fetchone()
    current = None if row is None else _Current._make(row)
    if current is not None and current.digest == blob:
        return int(current.id)
    valid_from = min(mtime_ns, at) if mtime_ns > 0 else at
    if current is not None:
        valid_from = max(valid_from, current.valid_from + 1)
        conn.execute(
            "UPDATE versions SET valid_until=?, closed_by=? WHERE id=?",
            (valid_from, ChangeKind.EXTERNAL.value, current.id),
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


def distrust(conn: sqlite3.Connection, path: str) -> None:
    """Forget the stat cache of a path (writer thread): it is hashed again, and a new
    version recorded, whatever its stat key says."""
    conn.execute(
        "UPDATE artifacts SET cache_digest=NULL, hash_format=-1 "
        "WHERE path=? AND cache_key IS NOT NULL",
        (path,),
    )


def _valid_from(write: VersionWrite, previous_from: int | None) -> int:
    """When the path started holding this content: its mtime, unless it arrived by a move."""
    if write.seen is ChangeKind.MOVED or write.stat_key.mtime_ns <= 0:
        start = write.observed_at
    else:
        start = min(write.stat_key.mtime_ns, write.observed_at)
    if previous_from is not None:
        start = max(start, previous_from + 1)
    return start


# --- reads (any thread) -------------------------------------------------------------------


def version_digests(conn: sqlite3.Connection, version_ids: Sequence[int]) -> dict[int, str]:
    """The digest (hex) of each version id."""
    found: dict[int, str] = {}
    for chunk in chunks(list(version_ids), BATCH_PATHS):
        for version_id, blob in conn.execute(
            "SELECT id, digest FROM versions WHERE id IN (SELECT value FROM json_each(?))",
            (json.dumps(list(chunk)),),
        ):
            found[int(version_id)] = blob.hex()
    return found


def version_with_digest(conn: sqlite3.Connection, path: str, digest: str, at: int) -> int | None:
    """The version of ``path`` that held ``digest`` (the one valid at ``at`` if any, else
    the nearest in time), None when the path never held it: how a capture delivered late
    (the client hashed what the run read or wrote) finds the state it saw."""
    row = conn.execute(
        "SELECT v.id FROM versions v JOIN artifacts a ON a.id=v.artifact_id "
        "WHERE a.path=? AND v.digest=? ORDER BY "
        "(v.valid_from<=? AND (v.valid_until IS NULL OR v.valid_until>?)) DESC, "
        "abs(v.valid_from-?) LIMIT 1",
        (path, digest_to_blob(digest), at, at, at),
    ).fetchone()
    return None if row is None else int(row[0])


def counts(conn: sqlite3.Connection) -> Counts:
    """How many roots, artifacts, versions, runs and edges the store holds.

    Every table here is append-only and keyed by an INTEGER PRIMARY KEY that SQLite
    assigns as max(rowid) + 1, so ``max(id)`` is the row count: one index lookup instead
    of a full count (45 ms per call on a store of a million edges).
    """
    values = [
        conn.execute(f"SELECT coalesce(max(id), 0) FROM {table}").fetchone()[0]
        for table in ("roots", "artifacts", "versions", "runs", "edges")
    ]
    return Counts(*values)


def roots(conn: sqlite3.Connection) -> list[Root]:
    """Every root the store has known."""
    rows = conn.execute("SELECT id, path, role FROM roots ORDER BY id").fetchall()
    return [Root(path=path, role=Role(role), id=root_id) for root_id, path, role in rows]


def trusted_keys(
    conn: sqlite3.Connection, root_id: int, hash_format: int, racy_ns: int
) -> dict[str, bytes | None]:
    """Every live path under a root with its packed stat key, or None when the entry
    cannot be trusted (another hash format, or inside the racy window).

    A rescan compares ``pack_stat_key`` of each file with this: one dict lookup and one
    bytes comparison per file, no objects built.
    """
    rows = conn.execute(
        "SELECT path, CASE WHEN hash_format=? AND cache_mtime_ns < checked_at - ? "
        "THEN cache_key END FROM artifacts WHERE root_id=? AND cache_key IS NOT NULL",
        (hash_format, racy_ns, root_id),
    ).fetchall()
    return dict(rows)


def cache_entry(conn: sqlite3.Connection, path: str) -> CacheEntry | None:
    """The stat cache entry of one live path."""
    if not storable(path):
        return None
    row = conn.execute(
        "SELECT id, cache_key, cache_digest, checked_at, hash_format FROM artifacts "
        "WHERE path=? AND cache_key IS NOT NULL",
        (path,),
    ).fetchone()
    if row is None:
        return None
    artifact_id, cache_key, cache_digest, checked_at, hash_format = row
    return CacheEntry(
        artifact_id, unpack_stat_key(cache_key), hex_or_empty(cache_digest), checked_at, hash_format
    )


def read_versions(
    conn: sqlite3.Connection, reads: Sequence[tuple[str, int]]
) -> dict[tuple[str, int], int]:
    """For each (path, time): the version the path held then, else its current one.

    What :meth:`version_at` then :meth:`current_version` answer, for a run's reads in one
    query per chunk, keyed by (path, time): two reads of a path at different times may
    find different versions. Pairs with neither are left out.
    """
    return {
        read: version_id
        for read, (_, version_id) in read_states(conn, reads, -1, 0).items()
        if version_id is not None
    }


def read_states(
    conn: sqlite3.Connection, reads: Sequence[tuple[str, int]], hash_format: int, racy_ns: int
) -> dict[tuple[str, int], tuple[bytes | None, int | None]]:
    """For each (path, time) of a known path: its trusted stat key (as
    :meth:`trusted_keys` trusts one) and the version :meth:`read_versions` finds.

    A run's reads need both: the key tells whether the version is up to date. Most
    reads are of a file's current version, found by path alone (no JSON pairs to take
    apart, no search by time); only the others are looked up by time after.
    """
    found: dict[tuple[str, int], tuple[bytes | None, int | None]] = {}
    current: dict[str, tuple[bytes | None, int | None, int | None]] = {}
    for paths in chunks(list(dict.fromkeys(path for path, _ in reads)), BATCH_PATHS):
        rows = conn.execute(
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
    for chunk in chunks(earlier, BATCH_PATHS):
        rows = conn.execute(
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


def live_paths_under(conn: sqlite3.Connection, directory: str) -> list[str]:
    """Every path with a current version at or below ``directory``."""
    if not storable(directory):
        return []  # nothing below a name that cannot be stored was ever stored
    prefix = directory.rstrip("/") + "/"
    rows = conn.execute(
        "SELECT a.path FROM artifacts a JOIN versions v ON v.artifact_id=a.id "
        "AND v.valid_until IS NULL WHERE a.path >= ? AND a.path < ?",
        (prefix, prefix[:-1] + "0"),  # "0" sorts right after "/"
    ).fetchall()
    return [r[0] for r in rows]


def history(
    conn: sqlite3.Connection,
    checker: RowChecker,
    path: str,
    *,
    limit: int,
    before_id: int | None = None,
) -> list[Version]:
    """Every version of a path, newest first."""
    rows = conn.execute(
        f"SELECT {VERSION_COLUMNS} FROM versions v JOIN artifacts a ON a.id=v.artifact_id "
        "WHERE a.path=? AND v.id < ? ORDER BY v.valid_from DESC, v.id DESC LIMIT ?",
        (path, before_id if before_id is not None else 2**63 - 1, limit),
    ).fetchall()
    if not rows and before_id is None:
        raise NotFound(f"{path} has never been seen by lineaged")
    return [checker.version(r) for r in rows]


def version_at(conn: sqlite3.Connection, checker: RowChecker, path: str, at: int) -> Version:
    """The version a path held at time ``at``."""
    row = conn.execute(
        f"SELECT {VERSION_COLUMNS} FROM versions v JOIN artifacts a ON a.id=v.artifact_id "
        "WHERE a.path=? AND v.valid_from<=? AND (v.valid_until IS NULL OR v.valid_until>?) "
        "ORDER BY v.valid_from DESC LIMIT 1",
        (path, at, at),
    ).fetchone()
    if row is None:
        if not conn.execute("SELECT 1 FROM artifacts WHERE path=?", (path,)).fetchone():
            raise NotFound(f"{path} has never been seen by lineaged")
        raise NotFound(f"{path} held no recorded content at {iso(at)}")
    return checker.version(row)


def current_version(conn: sqlite3.Connection, checker: RowChecker, path: str) -> Version | None:
    """The version a path holds now, or None when it does not exist (any more)."""
    row = conn.execute(
        f"SELECT {VERSION_COLUMNS} FROM versions v JOIN artifacts a ON a.id=v.artifact_id "
        "WHERE a.path=? AND v.valid_until IS NULL",
        (path,),
    ).fetchone()
    return checker.version(row) if row else None


def get_version(conn: sqlite3.Connection, checker: RowChecker, version_id: int) -> Version:
    """One version by id."""
    row = conn.execute(
        f"SELECT {VERSION_COLUMNS} FROM versions v JOIN artifacts a ON a.id=v.artifact_id "
        "WHERE v.id=?",
        (version_id,),
    ).fetchone()
    if row is None:
        raise NotFound(f"no version {version_id}")
    return checker.version(row)


def resolve_digest(conn: sqlite3.Connection, digest: str) -> bytes:
    """A full digest, or the unique digest a >= 8 hex character prefix names."""
    if len(digest) == 2 * DIGEST_BYTES:
        return bytes.fromhex(digest)
    low, high = _prefix_range(digest)
    if high is None:
        rows = conn.execute(
            "SELECT DISTINCT digest FROM versions WHERE digest>=? LIMIT 6", (low,)
        ).fetchall()
    else:
        rows = conn.execute(
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


def versions_by_digest(
    conn: sqlite3.Connection, checker: RowChecker, digest: str, *, limit: int
) -> list[Version]:
    """Every version of any path that held this digest (or unique prefix), newest first."""
    blob = resolve_digest(conn, digest)
    rows = conn.execute(
        f"SELECT {VERSION_COLUMNS} FROM versions v JOIN artifacts a ON a.id=v.artifact_id "
        "WHERE v.digest=? ORDER BY v.valid_from DESC, v.id DESC LIMIT ?",
        (blob, limit),
    ).fetchall()
    if not rows:
        raise NotFound(f"no path has ever held {blob.hex()}")
    return [checker.version(r) for r in rows]


def checksum_problems(conn: sqlite3.Connection, limit: int = 1000) -> list[str]:
    """Every version row whose checksum fails (at most ``limit``), for ``lineaged check``."""
    problems: list[str] = []
    last = 0
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


def _prefix_range(prefix: str) -> tuple[bytes, bytes | None]:
    """The half-open BLOB range ``[low, high)`` of every digest starting with ``prefix``."""
    low_hex = prefix + "0" * (2 * DIGEST_BYTES - len(prefix))
    low = bytes.fromhex(low_hex)
    value = int(prefix, 16) + 1
    if value >= 16 ** len(prefix):
        return low, None
    high_hex = format(value, f"0{len(prefix)}x") + "0" * (2 * DIGEST_BYTES - len(prefix))
    return low, bytes.fromhex(high_hex)

"""Opening the database file: the checks before it is trusted, the connections and their
pragmas, the clean-stop marker, the write-ahead log's checks, and how SQLite's errors are told
apart (the store failed, or the statement did).

``open_writer`` is what ``Store.open`` does: refuse a foreign or damaged file and leave it
untouched, skip the full page check after a clean stop (the marker holds the file's BLAKE3),
migrate, and say when the WAL of an unclean stop vanished.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
from pathlib import Path

import blake3
from lineage_core.errors import CorruptStore, StoreError

from lineaged.store.migrations import APP_ID, SCHEMA_VERSION, migrate
from lineaged.store.rows import iso

log = logging.getLogger(__name__)

DB_NAME = "lineaged.db"
SQLITE_HEADER = b"SQLite format 3\x00"
CACHE_KIB = 32768  # SQLite's page cache per connection (its default is 2 MiB)
# The WAL file is cut back to this size when SQLite restarts it (it never shrinks otherwise).
WAL_KEEP_BYTES = 64 << 20  # as Writer.WAL_FORCE_BYTES: no cutting back and regrowing


class TransactionLost(sqlite3.OperationalError):
    """The writer's transaction is gone or half-undone: the whole batch must be retried."""


def open_writer(path: Path) -> tuple[sqlite3.Connection, list[str]]:
    """The write connection of the store at ``path`` (created if needed), migrated, and the
    warnings worth telling every status caller; refuse foreign or corrupt files, leaving
    them untouched."""
    refuse_foreign(path)
    side_files = [Path(f"{path}{suffix}") for suffix in ("-wal", "-shm", "-journal")]
    absent = [side for side in side_files if not side.exists()]
    clean = _closed_cleanly(path)  # read and remove the marker before anything else
    vanished = _vanished_wal(path)
    warnings: list[str] = []
    conn: sqlite3.Connection | None = None
    try:
        if path.exists() and path.stat().st_size > 0:
            # Check on a read-only connection first: switching to WAL, migrating or
            # writing would change a foreign or damaged file.
            with contextlib.closing(
                sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30.0)
            ) as probe:
                check_identity(path, probe)
                if not clean:
                    _check_pages(path, probe)
        conn = connect(path, write=True)
        migrate(conn, check_identity(path, conn))
        ensure_indexes(conn)
        if vanished:
            newest = conn.execute(
                "SELECT run_id, started_at FROM runs ORDER BY id DESC LIMIT 1"
            ).fetchone()
            if newest is not None:
                run_id, started_at = newest
                vanished += f"; the newest run still recorded is {run_id}"
                vanished += f" (began {iso(started_at)})"
            log.error("%s", vanished)
            warnings.append(vanished)
        _mark_open(path)
    except sqlite3.DatabaseError as exc:
        if conn is not None:
            close_writer(conn, path)
        _remove_created(absent)
        if is_io_error(exc):  # a full disk or an I/O error: not a verdict on the file
            raise StoreError(f"cannot open the store {path}: {exc}") from exc
        raise CorruptStore(
            f"{path} is corrupt or not a usable lineaged database ({exc}); refusing to "
            "start and leaving it untouched: restore a backup or move it away"
        ) from exc
    except BaseException:
        if conn is not None:
            close_writer(conn, path)
        _remove_created(absent)
        raise
    return conn, warnings


def connect(path: Path, *, write: bool) -> sqlite3.Connection:
    """A connection with lineaged's pragmas: the writer's (WAL) or a reader's (query only)."""
    conn = sqlite3.connect(
        path,
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


def ensure_indexes(conn: sqlite3.Connection) -> None:
    """Create any index a deferred bulk load (or a crash during one) left out."""
    conn.execute("CREATE INDEX IF NOT EXISTS versions_by_digest ON versions(digest)")


def close_writer(conn: sqlite3.Connection, path: Path) -> None:
    """Close the write connection and leave the clean-stop marker."""
    with contextlib.suppress(sqlite3.Error):
        conn.execute("PRAGMA optimize")
    conn.close()
    _mark_clean(path)


def check_identity(path: Path, conn: sqlite3.Connection) -> int:
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


def has_checksums(conn: sqlite3.Connection) -> bool:
    """Whether the versions table has its checksum column (schema 2 and later)."""
    return any(name == "checksum" for _, name, *_ in conn.execute("PRAGMA table_info(versions)"))


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
    since = iso(path.stat().st_mtime_ns)
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


def refuse_foreign(path: Path) -> None:
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


def is_io_error(exc: sqlite3.Error) -> bool:
    """Whether the store failed (full disk, I/O, locked), not the statement."""
    name = getattr(exc, "sqlite_errorname", None)
    if name:
        return str(name).startswith(_RETRYABLE)
    text = str(exc).lower()
    if "malformed" in text:  # corruption does not heal by retrying
        return False
    return any(word in text for word in ("disk", "i/o", "full", "readonly", "locked", "busy"))

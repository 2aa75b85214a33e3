"""``Store``: a lineaged database, open once per process, read from any thread, written on
one (``writer.Writer``).

The class holds the connections (the writer's, one per reading thread), the transactions on
the write connection, and the row checker; each method hands its connection to the module
that holds its SQL: ``versions``, ``runs``, ``content``, ``outbox``, ``walk``.

History is append-only: a new content state inserts a version and closes the previous one's
interval; a deletion closes the interval of the current version. Nothing in normal operation
deletes a version, a run or an edge. Digests are stored as 32-byte BLOBs (docs/design.md:
smaller index, faster inserts) and shown as 64 lowercase hex characters.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path

import blake3
from lineage_core.errors import CorruptStore, InvalidArgument, NotFound, StoreError
from lineage_core.models import (
    Access,
    AccessMode,
    Capture,
    ChangeKind,
    Counts,
    Direction,
    EdgeKind,
    Graph,
    Role,
    Root,
    Run,
    RunFile,
    RunStart,
    RunStatus,
    StartNode,
    StatKey,
    VerifyItem,
    Version,
)

from lineaged.store import content, outbox, runs, versions, walk
from lineaged.store.connection import (
    TransactionLost,
    check_identity,
    close_writer,
    connect,
    ensure_indexes,
    has_checksums,
    open_writer,
    refuse_foreign,
)
from lineaged.store.outbox import OutboxEntry
from lineaged.store.rows import VERSION_COLUMNS, RowChecker
from lineaged.store.versions import CacheEntry, VersionWrite


class Store:
    """A lineaged database: open it once per process, read from any thread, write on one."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self._write_conn: sqlite3.Connection | None = None
        # Version rows found failing their checksum, and who wants to know (``on_damage``).
        self._rows = RowChecker()
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
        store = cls(path)
        store._write_conn, store.open_warnings = open_writer(path)
        return store

    @classmethod
    def open_readonly(cls, path: Path) -> Store:
        """Open an existing store for reading only (``lineaged check``/``backup``)."""
        refuse_foreign(path)
        store = cls(path)
        try:
            check_identity(path, store._rc)
        except sqlite3.DatabaseError as exc:
            store.close()
            raise CorruptStore(f"{path} is not a usable lineaged database ({exc})") from exc
        return store

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
        ensure_indexes(self._wc)

    def close(self) -> None:
        """Close every connection (the writer must have stopped)."""
        with self._readers_lock:
            for conn in self._readers:
                conn.close()
            self._readers.clear()
        if self._write_conn is not None:
            close_writer(self._write_conn, self.path)
            self._write_conn = None

    @property
    def _wc(self) -> sqlite3.Connection:
        if self._write_conn is None:
            raise StoreError("the store is closed")
        return self._write_conn

    @property
    def _rc(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = connect(self.path, write=False)
            self._local.conn = conn
            with self._readers_lock:
                self._readers.append(conn)
        return conn

    @contextlib.contextmanager
    def reading(self) -> Iterator[sqlite3.Connection]:
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

    # -- row checksums (rows.RowChecker)

    @property
    def on_damage(self) -> Callable[[int, str], None] | None:
        """Called with (version id, path) the first time a version row fails its checksum."""
        return self._rows.on_damage

    @on_damage.setter
    def on_damage(self, callback: Callable[[int, str], None] | None) -> None:
        self._rows.on_damage = callback

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
        self._rows.verify(version_id, path, digest, size, mtime_ns, valid_from, checksum)

    def damaged_rows(self) -> dict[int, str]:
        """Version rows found failing their checksum since the store was opened (id -> path)."""
        return self._rows.damaged()

    def checksum_problems(self, limit: int = 1000) -> list[str]:
        """Every version row whose checksum fails (at most ``limit``), for ``lineaged check``."""
        return versions.checksum_problems(self._rc, limit)

    # -- roots, artifacts and versions: writes (versions.py)

    def ensure_root(self, path: str, role: Role) -> int:
        """The id of a root, adding it (or updating its role) as needed."""
        return versions.ensure_root(self._wc, path, role)

    def record_versions(self, writes: Sequence[VersionWrite], hash_format: int) -> list[Version]:
        """Record observed content states; returns the versions that are new."""
        return versions.record_versions(self._wc, writes, hash_format)

    def touch_stat(self, path: str, stat_key: StatKey, checked_at: int) -> None:
        """Remember a new stat key for unchanged content (no new version)."""
        versions.touch_stat(self._wc, path, stat_key, checked_at)

    def record_gone(self, paths: Iterable[str], at: int, how: ChangeKind) -> list[str]:
        """Close the current version of each path (deleted or moved away); returns the closed paths."""
        return versions.record_gone(self._wc, paths, at, how)

    def record_external(self, path: str, digest: str, size: int, mtime_ns: int, at: int) -> int:
        """The version id of a file outside every root, as a client hashed it."""
        return versions.record_external(self._wc, path, digest, size, mtime_ns, at)

    def distrust(self, path: str) -> None:
        """Forget the stat cache of a path (writer thread): it is hashed again."""
        versions.distrust(self._wc, path)

    # -- versions and the stat cache: reads (versions.py)

    def version_digests(self, version_ids: Sequence[int]) -> dict[int, str]:
        """The digest (hex) of each version id."""
        return versions.version_digests(self._rc, version_ids)

    def version_with_digest(self, path: str, digest: str, at: int) -> int | None:
        """The version of ``path`` that held ``digest`` (nearest ``at``), None if it never did."""
        return versions.version_with_digest(self._rc, path, digest, at)

    def counts(self) -> Counts:
        """How many roots, artifacts, versions, runs and edges the store holds."""
        with self.reading() as conn:
            return versions.counts(conn)

    def roots(self) -> list[Root]:
        """Every root the store has known."""
        return versions.roots(self._rc)

    def trusted_keys(self, root_id: int, hash_format: int, racy_ns: int) -> dict[str, bytes | None]:
        """Every live path under a root with its packed stat key, or None when untrusted."""
        return versions.trusted_keys(self._rc, root_id, hash_format, racy_ns)

    def cache_entry(self, path: str) -> CacheEntry | None:
        """The stat cache entry of one live path."""
        return versions.cache_entry(self._rc, path)

    def read_versions(self, reads: Sequence[tuple[str, int]]) -> dict[tuple[str, int], int]:
        """For each (path, time): the version the path held then, else its current one."""
        return versions.read_versions(self._rc, reads)

    def read_states(
        self, reads: Sequence[tuple[str, int]], hash_format: int, racy_ns: int
    ) -> dict[tuple[str, int], tuple[bytes | None, int | None]]:
        """For each (path, time) of a known path: its trusted stat key and its version."""
        return versions.read_states(self._rc, reads, hash_format, racy_ns)

    def live_paths_under(self, directory: str) -> list[str]:
        """Every path with a current version at or below ``directory``."""
        return versions.live_paths_under(self._rc, directory)

    def history(self, path: str, *, limit: int, before_id: int | None = None) -> list[Version]:
        """Every version of a path, newest first."""
        return versions.history(self._rc, self._rows, path, limit=limit, before_id=before_id)

    def version_at(self, path: str, at: int) -> Version:
        """The version a path held at time ``at``."""
        return versions.version_at(self._rc, self._rows, path, at)

    def current_version(self, path: str) -> Version | None:
        """The version a path holds now, or None when it does not exist (any more)."""
        return versions.current_version(self._rc, self._rows, path)

    def get_version(self, version_id: int) -> Version:
        """One version by id."""
        return versions.get_version(self._rc, self._rows, version_id)

    def resolve_digest(self, digest: str) -> bytes:
        """A full digest, or the unique digest a >= 8 hex character prefix names."""
        return versions.resolve_digest(self._rc, digest)

    def versions_by_digest(self, digest: str, *, limit: int) -> list[Version]:
        """Every version of any path that held this digest (or unique prefix), newest first."""
        return versions.versions_by_digest(self._rc, self._rows, digest, limit=limit)

    # -- runs, accesses and edges: writes (runs.py)

    def begin_run(self, start: RunStart) -> str:
        """Insert a running run; returns its run_id (``start.run_id`` when the client chose it)."""
        return runs.begin_run(self._wc, start, openlineage=self.openlineage_outbox)

    def add_accesses(self, run_id: str, accesses: Sequence[Access]) -> int:
        """Store a run's raw accesses (resolved to edges by ``link_reads``/``link_writes``)."""
        return runs.add_accesses(self._wc, run_id, accesses)

    def link(
        self,
        run_id: str,
        version_id: int,
        kind: EdgeKind,
        access: Access,
        *,
        changed_during_run: bool = False,
    ) -> bool:
        """Add an edge run->version (read or wrote); False when it already existed."""
        return runs.link(
            self._wc, run_id, version_id, kind, access, changed_during_run=changed_during_run
        )

    def link_many(self, run_id: str, kind: EdgeKind, links: Sequence[tuple[int, Access]]) -> None:
        """:meth:`link` for many (version id, access) pairs: one statement, run looked up once."""
        runs.link_many(self._wc, run_id, kind, links)

    def run_accesses(self, run_id: str, mode: AccessMode) -> list[Access]:
        """The raw accesses a run reported, merged per path (write connection)."""
        return runs.run_accesses(self._wc, run_id, mode)

    def flag_changed_reads(self, run_id: str, ended_at: int) -> int:
        """Flag read edges whose path got a newer version before the run ended."""
        return runs.flag_changed_reads(self._wc, run_id, ended_at)

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
        runs.end_run(
            self._wc,
            run_id,
            exit_code=exit_code,
            status=status,
            ended_at=ended_at,
            warnings=warnings,
            capture=capture,
            openlineage=self.openlineage_outbox,
        )

    def open_runs(self) -> list[tuple[str, str, int, int]]:
        """(run_id, host, pid, started_at) of every run still marked running (write connection)."""
        return runs.open_runs(self._wc)

    def mark_abandoned(self, reasons: Mapping[str, str]) -> int:
        """Mark running runs ``abandoned``, each with its reason as a warning."""
        return runs.mark_abandoned(self._wc, reasons, openlineage=self.openlineage_outbox)

    def link_reproduction(self, run_id: str, original_run_id: str, at: int) -> None:
        """Record that ``run_id`` re-ran ``original_run_id`` (``lineage reproduce``)."""
        runs.link_reproduction(self._wc, run_id, original_run_id, at)

    # -- runs: reads (runs.py)

    def get_run(self, run_id: str) -> Run:
        """One run by id, or by a unique prefix of at least 8 characters."""
        with self.reading() as conn:
            return runs.get_run(conn, self._rows, run_id)

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
        with self.reading() as conn:
            return runs.list_runs(
                conn,
                self._rows,
                limit=limit,
                name=name,
                status=status,
                since=since,
                until=until,
                before_id=before_id,
                parent_run_id=parent_run_id,
            )

    def run_datasets(self, run_id: str) -> list[tuple[EdgeKind, bool, Version]]:
        """A run's data edges (not code) as (kind, changed_during_run, version), by path."""
        with self.reading() as conn:
            return runs.run_datasets(conn, self._rows, run_id)

    def reproductions_of(self, run_id: str) -> list[str]:
        """The run ids of every recorded reproduction of a run, oldest first."""
        return runs.reproductions_of(self._rc, self.get_run(run_id).id)

    def reproduces(self, run_id: str) -> str:
        """The run id ``run_id`` reproduces, or ""."""
        return runs.reproduces(self._rc, self.get_run(run_id).id)

    # -- lineage (walk.py)

    def start_versions(self, start: StartNode) -> tuple[list[Version], list[Run]]:
        """Resolve a walk's start node to versions (or a run)."""
        if start.run_id:
            return [], [self.get_run(start.run_id)]
        if start.version_id:
            return [self.get_version(start.version_id)], []
        if start.digest:
            blob = self.resolve_digest(start.digest)
            rows = self._rc.execute(
                f"SELECT {VERSION_COLUMNS} FROM versions v JOIN artifacts a ON a.id=v.artifact_id "
                "WHERE v.digest=? ORDER BY v.id LIMIT 1000",
                (blob,),
            ).fetchall()
            if not rows:
                raise NotFound(f"no path has ever held {blob.hex()}")
            return [self._rows.version(row) for row in rows], []
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
        """Walk run/version edges from ``start``; versions with equal digests are bridged."""
        return walk.lineage(self, start, direction, max_depth=max_depth, max_nodes=max_nodes)

    def verify(self, start: StartNode, *, max_nodes: int = 10_000) -> list[VerifyItem]:
        """Every input on the upstream closure of ``start`` and what its path holds now."""
        return walk.verify(self, start, max_nodes=max_nodes)

    def upstream_digests(self, version_ids: Sequence[int]) -> set[bytes]:
        """The digests of these versions and of everything upstream of them, unbounded."""
        return walk.upstream_digests(self._rc, version_ids)

    # -- the content store's rows (content.py)

    def record_objects(self, kept: Sequence[tuple[str, int, str]], at: int) -> None:
        """Note objects now kept: (digest, size, method); an object kept already stays."""
        content.record_objects(self._wc, kept, at)

    def mark_not_kept(self, versions: Sequence[tuple[int, str]]) -> None:
        """Record why these versions' bytes could not be kept: (version id, reason)."""
        content.mark_not_kept(self._wc, versions)

    def mark_not_kept_current(self, items: Sequence[tuple[str, str, str]]) -> None:
        """:meth:`mark_not_kept` for the current version of paths: (path, digest, reason)."""
        content.mark_not_kept_current(self._wc, items)

    def unkept_versions(self, version_ids: Sequence[int]) -> list[tuple[int, str, str, int, int]]:
        """Of these versions, those under a root whose bytes are not kept yet."""
        return content.unkept_versions(self._rc, version_ids)

    def not_kept_reason(self, version_id: int) -> str:
        """Why a version's bytes could not be kept ("" when no reason was recorded)."""
        return content.not_kept_reason(self._rc, version_id)

    def object_kept(self, digest: str) -> bool:
        """Whether the content store holds the bytes of ``digest``."""
        return content.object_kept(self._rc, digest)

    def object_totals(self) -> tuple[int, int]:
        """(objects, bytes) the content store holds."""
        return content.object_totals(self._rc)

    def run_files(self, run_id: str) -> list[RunFile]:
        """Every version a run read or wrote, with whether its bytes are kept."""
        return content.run_files(self._rc, self._rows, self.get_run(run_id).id)

    def pin(self, version_ids: Sequence[int], note: str, at: int) -> None:
        """Pin versions (a version pinned twice keeps its first pin)."""
        content.pin(self._wc, version_ids, note, at)

    def pinned_versions(self) -> list[int]:
        """Every pinned version id."""
        return content.pinned_versions(self._rc)

    def objects_kept_by(self, digests: Iterable[bytes]) -> int:
        """How many of these digests have their bytes kept."""
        return content.objects_kept_by(self._rc, digests)

    def object_needs(
        self, keep_all: Sequence[int], keep_lineage: Sequence[int]
    ) -> list[tuple[bytes, int, int, bool]]:
        """Every kept object as (digest, size, stored_at, wanted), oldest first."""
        return content.object_needs(self._rc, keep_all, keep_lineage)

    def forget_objects(self, digests: Sequence[bytes]) -> None:
        """The content store no longer holds these digests."""
        content.forget_objects(self._wc, digests)

    # -- the OpenLineage outbox (outbox.py)

    def openlineage_pending(self, limit: int) -> list[OutboxEntry]:
        """The oldest undelivered outbox entries, in the order they were queued."""
        with self.reading() as conn:
            return outbox.pending(conn, limit)

    def openlineage_backlog(self) -> tuple[int, str]:
        """How many outbox entries wait, and the error the oldest of them last failed with."""
        with self.reading() as conn:
            return outbox.backlog(conn)

    def openlineage_delivered(self, entry_ids: Sequence[int], at: int) -> None:
        """Mark outbox entries delivered (writer thread)."""
        outbox.delivered(self._wc, entry_ids, at)

    def openlineage_failed(self, entry_id: int, error: str) -> None:
        """Count a failed delivery of an outbox entry and keep its error (writer thread)."""
        outbox.failed(self._wc, entry_id, error)

    def openlineage_runs(self, since: int | None) -> list[str]:
        """The ids of runs started at or after ``since`` (all when None), oldest first."""
        with self.reading() as conn:
            return outbox.runs_since(conn, since)

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
            if not problems and has_checksums(conn):
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
        hasher = blake3.blake3()
        with self.reading() as conn:
            tables = [
                name
                for (name,) in conn.execute(
                    "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%' "
                    "ORDER BY name"
                )
            ]
            for table in tables:
                hasher.update(table.encode() + b"\x00")
                for row in conn.execute(f'SELECT * FROM "{table}" ORDER BY rowid'):
                    hasher.update(repr(row).encode())
        return str(hasher.hexdigest())

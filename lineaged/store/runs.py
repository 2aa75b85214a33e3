"""Runs and what they touched: beginning and ending runs, their accesses (what is not an
edge), their edges to versions (read, wrote), reproductions, and reading runs back.

Functions over a connection: the write connection for changes (writer thread), a reader's
(inside one snapshot, ``Store.reading``) for the rest. ``outbox``: OpenLineage is on, so
beginning and ending a run also queue its event (``outbox.py``) in the same transaction.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import time
from collections.abc import Mapping, Sequence
from typing import Any

from lineage_core.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from lineage_core.limits import MIN_DIGEST_PREFIX
from lineage_core.models import (
    Access,
    AccessMode,
    Capture,
    CodeState,
    EdgeKind,
    Run,
    RunStart,
    RunStatus,
    SourceFile,
    Version,
    new_run_id,
)

from lineaged.store import outbox
from lineaged.store.names import digest_to_blob
from lineaged.store.rows import (
    ACCESS_HOWS,
    ACCESS_ROLES,
    EDGE_KINDS,
    RUN_COLUMNS,
    VERSION_COLUMNS,
    RowChecker,
    RunRecord,
    blake3_blob,
    capture_to_json,
    chunks,
    code_fields,
    code_to_json,
    decode_runs,
    env_to_json,
    hex_or_empty,
)

# A run that may still receive accesses and its end: running, or abandoned by a wrapper that
# spooled what it could not deliver (capture-reliability.md).
OPEN_STATUSES = (RunStatus.RUNNING.value, RunStatus.ABANDONED.value)


# --- writes (writer thread) ---------------------------------------------------------------


def begin_run(conn: sqlite3.Connection, start: RunStart, *, openlineage: bool) -> str:
    """Insert a running run; returns its run_id (``start.run_id`` when the client chose it)."""
    run_id = start.run_id or new_run_id()
    # The one writer thread runs this: nothing can take the id between check and insert.
    if start.run_id and conn.execute("SELECT 1 FROM runs WHERE run_id=?", (run_id,)).fetchone():
        raise AlreadyExists(f"run {run_id} exists already: choose a new run id")
    env_id = None
    if start.env is not None:
        body = env_to_json(start.env)
        env_digest = blake3_blob(body.encode())
        conn.execute("INSERT OR IGNORE INTO envs(digest, body) VALUES (?, ?)", (env_digest, body))
        env_id = conn.execute("SELECT id FROM envs WHERE digest=?", (env_digest,)).fetchone()[0]
    diff_digest = None
    code_json = None
    if start.code is not None:
        code = start.code
        if code.diff:
            diff_digest = blake3_blob(code.diff)
            conn.execute(
                "INSERT OR IGNORE INTO blobs(digest, data) VALUES (?, ?)",
                (diff_digest, code.diff),
            )
            if not code.diff_digest:
                code = CodeState(**{**code_fields(code), "diff_digest": diff_digest.hex()})
        code_json = code_to_json(code)
    if (
        start.parent_run_id
        and not conn.execute("SELECT 1 FROM runs WHERE run_id=?", (start.parent_run_id,)).fetchone()
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
    if openlineage:
        outbox.queue_event(conn, run_id, "start")
    return run_id


def _run_row_id(conn: sqlite3.Connection, run_id: str) -> tuple[int, str, int]:
    """A run's (row id, status, started_at); NotFound when there is no such run."""
    row = conn.execute(
        "SELECT id, status, started_at FROM runs WHERE run_id=?", (run_id,)
    ).fetchone()
    if row is None:
        raise NotFound(f"no run {run_id!r}")
    row_id, status, started_at = row
    return int(row_id), str(status), int(started_at)


def add_accesses(conn: sqlite3.Connection, run_id: str, accesses: Sequence[Access]) -> int:
    """Store a run's raw accesses (resolved to edges by ``link_reads``/``link_writes``)."""
    row_id, status, _ = _run_row_id(conn, run_id)
    if status not in OPEN_STATUSES:
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
    conn: sqlite3.Connection,
    run_id: str,
    version_id: int,
    kind: EdgeKind,
    access: Access,
    *,
    changed_during_run: bool = False,
) -> bool:
    """Add an edge run->version (read or wrote); False when it already existed."""
    row_id, _, _ = _run_row_id(conn, run_id)
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


def link_many(
    conn: sqlite3.Connection, run_id: str, kind: EdgeKind, links: Sequence[tuple[int, Access]]
) -> None:
    """:meth:`link` for many (version id, access) pairs: one statement, run looked up once."""
    row_id, _, _ = _run_row_id(conn, run_id)
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


def run_accesses(conn: sqlite3.Connection, run_id: str, mode: AccessMode) -> list[Access]:
    """The raw accesses a run reported, merged per path (write connection)."""
    row_id, _, _ = _run_row_id(conn, run_id)
    rows = conn.execute(
        "SELECT path, min(first_at), max(last_at), max(how), max(role), "
        "max(digest), max(size), max(mtime_ns) FROM accesses "
        "WHERE run_id=? AND mode=? GROUP BY path ORDER BY path",
        (row_id, mode.value),
    ).fetchall()
    return [
        Access(
            path=path,
            mode=mode,
            first_at=first_at,
            last_at=last_at,
            how=ACCESS_HOWS[how],
            role=ACCESS_ROLES[role],
            digest=hex_or_empty(digest),
            size=size or 0,
            mtime_ns=mtime_ns or 0,
        )
        for path, first_at, last_at, how, role, digest, size, mtime_ns in rows
    ]


def flag_changed_reads(conn: sqlite3.Connection, run_id: str, ended_at: int) -> int:
    """Flag read edges whose path got a newer version before the run ended."""
    row_id, _, _ = _run_row_id(conn, run_id)
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
    conn: sqlite3.Connection,
    run_id: str,
    *,
    exit_code: int | None,
    status: RunStatus,
    ended_at: int,
    warnings: Sequence[str],
    capture: Capture | None = None,
    openlineage: bool,
) -> None:
    """Close a running run."""
    row_id, current, started_at = _run_row_id(conn, run_id)
    if current not in OPEN_STATUSES:
        raise FailedPrecondition(f"run {run_id} already ended ({current})")
    conn.execute(
        "UPDATE runs SET ended_at=?, status=?, exit_code=?, warnings=?, capture=? WHERE id=?",
        (
            max(ended_at, started_at),
            status.value,
            exit_code,
            json.dumps(list(warnings)),
            capture_to_json(capture),
            row_id,
        ),
    )
    if openlineage:
        outbox.queue_event(conn, run_id, "end")


def open_runs(conn: sqlite3.Connection) -> list[tuple[str, str, int, int]]:
    """(run_id, host, pid, started_at) of every run still marked running (write connection)."""
    rows = conn.execute(
        "SELECT run_id, host, pid, started_at FROM runs WHERE status=? ORDER BY id",
        (RunStatus.RUNNING.value,),
    ).fetchall()
    return [
        (str(run_id), str(host or ""), int(pid or 0), int(started_at))
        for run_id, host, pid, started_at in rows
    ]


def mark_abandoned(
    conn: sqlite3.Connection, reasons: Mapping[str, str], *, openlineage: bool
) -> int:
    """Mark running runs ``abandoned``, each with its reason as a warning; what they
    recorded stays. Returns how many were marked."""
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
        if openlineage:
            outbox.queue_event(conn, run_id, "end")  # an ABORT event
        marked += 1
    return marked


def link_reproduction(conn: sqlite3.Connection, run_id: str, original_run_id: str, at: int) -> None:
    """Record that ``run_id`` re-ran ``original_run_id`` (``lineage reproduce``)."""
    row_id, _, _ = _run_row_id(conn, run_id)
    original_id, _, _ = _run_row_id(conn, original_run_id)
    if row_id == original_id:
        raise InvalidArgument("a run cannot reproduce itself")
    conn.execute(
        "INSERT INTO reproductions(run_id, original_id, linked_at) VALUES (?,?,?) "
        "ON CONFLICT(run_id) DO UPDATE SET original_id=excluded.original_id, "
        "linked_at=excluded.linked_at",
        (row_id, original_id, at),
    )


# --- reads (any thread) -------------------------------------------------------------------


def get_run(conn: sqlite3.Connection, checker: RowChecker, run_id: str) -> Run:
    """One run by id, or by a unique prefix of at least 8 characters (one snapshot)."""
    runs = _runs_where(conn, checker, "r.run_id=?", (run_id,))
    if not runs and len(run_id) >= MIN_DIGEST_PREFIX:
        runs = _runs_where(
            conn,
            checker,
            "r.run_id >= ? AND r.run_id < ?",
            (run_id, run_id + "\uffff"),
            "LIMIT 3",
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
            (diff,) = row
            run = dataclasses.replace(run, code=dataclasses.replace(run.code, diff=bytes(diff)))
    return run


def list_runs(
    conn: sqlite3.Connection,
    checker: RowChecker,
    *,
    limit: int,
    name: str = "",
    status: RunStatus | None = None,
    since: int | None = None,
    until: int | None = None,
    before_id: int | None = None,
    parent_run_id: str = "",
) -> list[Run]:
    """Runs newest first, filtered by name, status, start time and parent run (one snapshot)."""
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
    return _runs_where(conn, checker, " AND ".join(clauses), params, "ORDER BY r.id DESC LIMIT ?")


def _runs_where(
    conn: sqlite3.Connection,
    checker: RowChecker,
    where: str,
    params: Sequence[Any],
    tail: str = "",
) -> list[Run]:
    rows = conn.execute(
        f"SELECT {RUN_COLUMNS} FROM runs r LEFT JOIN envs e ON e.id=r.env_id WHERE {where} {tail}",
        params,
    ).fetchall()
    if not rows:
        return []
    sources = _sources(conn, checker, [RunRecord._make(row).id for row in rows])
    return decode_runs(rows, sources)


def _sources(
    conn: sqlite3.Connection, checker: RowChecker, run_row_ids: Sequence[int]
) -> dict[int, tuple[SourceFile, ...]]:
    """Each run's code inputs (``CodeState.sources``), by run row id."""
    found: dict[int, list[SourceFile]] = {}
    for chunk in chunks(run_row_ids, 500):
        marks = ",".join("?" * len(chunk))
        for (
            run_row_id,
            path,
            digest,
            version_id,
            size,
            mtime_ns,
            valid_from,
            checksum,
        ) in conn.execute(
            "SELECT e.run_id, a.path, v.digest, v.id, v.size, v.mtime_ns, v.valid_from, "
            "v.checksum FROM edges e JOIN versions v ON v.id=e.version_id "
            f"JOIN artifacts a ON a.id=v.artifact_id WHERE e.run_id IN ({marks}) "
            "AND e.kind='read' AND e.role='code' ORDER BY a.path",
            list(chunk),
        ):
            checker.verify(version_id, path, digest, size, mtime_ns, valid_from, checksum)
            found.setdefault(run_row_id, []).append(SourceFile(path, digest.hex()))
    return {run_row_id: tuple(files) for run_row_id, files in found.items()}


def run_datasets(
    conn: sqlite3.Connection, checker: RowChecker, run_id: str
) -> list[tuple[EdgeKind, bool, Version]]:
    """A run's data edges (not code) as (kind, changed_during_run, version), by path."""
    row_id, _, _ = _run_row_id(conn, run_id)
    rows = conn.execute(
        f"SELECT e.kind, e.changed_during_run, {VERSION_COLUMNS} FROM edges e "
        "JOIN versions v ON v.id=e.version_id JOIN artifacts a ON a.id=v.artifact_id "
        "WHERE e.run_id=? AND coalesce(e.role, 'data') <> 'code' ORDER BY a.path, e.kind",
        (row_id,),
    ).fetchall()
    return [
        (EDGE_KINDS[kind], bool(changed), checker.version(version))
        for kind, changed, *version in rows
    ]


def reproductions_of(conn: sqlite3.Connection, run_row_id: int) -> list[str]:
    """The run ids of every recorded reproduction of a run (by row id), oldest first."""
    rows = conn.execute(
        "SELECT r.run_id FROM reproductions p JOIN runs r ON r.id=p.run_id "
        "WHERE p.original_id=? ORDER BY p.run_id",
        (run_row_id,),
    ).fetchall()
    return [run_id for (run_id,) in rows]


def reproduces(conn: sqlite3.Connection, run_row_id: int) -> str:
    """The run id the run with this row id reproduces, or ""."""
    row = conn.execute(
        "SELECT r.run_id FROM reproductions p JOIN runs r ON r.id=p.original_id WHERE p.run_id=?",
        (run_row_id,),
    ).fetchone()
    return str(row[0]) if row else ""

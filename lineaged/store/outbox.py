"""The OpenLineage outbox: one row per event a run owes the configured consumer, queued in
the transaction that begins or ends the run, marked delivered once the transport took it
(``ol_delivery`` sends them; the event is built from the run at delivery)."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    """An OpenLineage event a run owes: its run, ``phase`` "start" or "end", tries so far."""

    id: int
    run_id: str
    phase: str
    attempts: int
    queued_at: int


def queue_event(conn: sqlite3.Connection, run_id: str, phase: str) -> None:
    """Queue the event ``phase`` ("start" or "end") of a run (in the transaction that
    began or ended it)."""
    conn.execute(
        "INSERT INTO openlineage_outbox(run_id, phase, queued_at) "
        "SELECT id, ?, ? FROM runs WHERE run_id=?",
        (phase, time.time_ns(), run_id),
    )


def pending(conn: sqlite3.Connection, limit: int) -> list[OutboxEntry]:
    """The oldest undelivered outbox entries, in the order they were queued."""
    rows = conn.execute(
        "SELECT o.id, r.run_id, o.phase, o.attempts, o.queued_at FROM openlineage_outbox o "
        "JOIN runs r ON r.id=o.run_id WHERE o.delivered_at IS NULL ORDER BY o.id LIMIT ?",
        (limit,),
    ).fetchall()
    return [OutboxEntry(*row) for row in rows]


def backlog(conn: sqlite3.Connection) -> tuple[int, str]:
    """How many outbox entries wait, and the error the oldest of them last failed with."""
    count = conn.execute(
        "SELECT count(*) FROM openlineage_outbox WHERE delivered_at IS NULL"
    ).fetchone()[0]
    row = conn.execute(
        "SELECT last_error FROM openlineage_outbox WHERE delivered_at IS NULL ORDER BY id LIMIT 1"
    ).fetchone()
    return int(count), (row[0] or "") if row else ""


def delivered(conn: sqlite3.Connection, entry_ids: Sequence[int], at: int) -> None:
    """Mark outbox entries delivered (writer thread)."""
    conn.executemany(
        "UPDATE openlineage_outbox SET delivered_at=?, attempts=attempts+1, last_error=NULL "
        "WHERE id=?",
        [(at, entry_id) for entry_id in entry_ids],
    )


def failed(conn: sqlite3.Connection, entry_id: int, error: str) -> None:
    """Count a failed delivery of an outbox entry and keep its error (writer thread)."""
    conn.execute(
        "UPDATE openlineage_outbox SET attempts=attempts+1, last_error=? WHERE id=?",
        (error[:4096], entry_id),
    )


def runs_since(conn: sqlite3.Connection, since: int | None) -> list[str]:
    """The ids of runs started at or after ``since`` (all when None), oldest first."""
    rows = conn.execute(
        "SELECT run_id FROM runs WHERE started_at >= ? ORDER BY id",
        (since if since is not None else -(2**63),),
    ).fetchall()
    return [row[0] for row in rows]

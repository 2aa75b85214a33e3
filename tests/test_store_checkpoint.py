"""WAL checkpoints beside the writer: commits never run SQLite's automatic checkpoint (it ran
inside the commit that crossed its threshold); a background connection copies the WAL into
the database, and the writer bounds the WAL itself when writes never pause.

Real SQLite files throughout: what reached the database file is read with ``immutable=1``,
which ignores the WAL.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from lineage_core.models import RunStart

from lineaged.store import Store, Writer
from tests.helpers import wait_for


def _runs_in_database_file(db: Path) -> set[str]:
    """Run names in the database file itself, without the WAL (what checkpoints copied)."""
    try:
        with sqlite3.connect(f"file:{db}?immutable=1", uri=True) as conn:
            names = {row[0] for row in conn.execute("SELECT name FROM runs")}
        conn.close()
        return names
    except sqlite3.DatabaseError:  # a page caught mid-copy: not there yet
        return set()


def test_commits_reach_the_database_file_through_the_background_checkpoint(
    tmp_path: Path,
) -> None:
    db = tmp_path / "lineaged.db"
    store = Store.open(db)
    writer = Writer(store)
    writer.start()
    try:
        # SQLite's own checkpoint is off while the writer runs: only ours copies the WAL.
        assert store._wc.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
        writer.call(lambda s: s.begin_run(RunStart(name="first", started_at=1)))
        assert "first" in {r.name for r in store.list_runs(limit=10)}
        wait_for(lambda: "first" in _runs_in_database_file(db), what="the checkpoint")
    finally:
        writer.stop()
    # Stopped: SQLite's default is back for whoever writes next on this connection.
    assert store._wc.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 1000
    store.close()
    assert not (tmp_path / "lineaged.db-wal").exists()  # the last close copied the rest
    assert _runs_in_database_file(db) == {"first"}


def test_the_wal_stays_bounded_when_writes_never_pause(tmp_path: Path) -> None:
    db = tmp_path / "lineaged.db"
    store = Store.open(db)
    # The background checkpoint never comes: only the writer's own bound keeps the WAL small.
    limit = 1 << 20
    writer = Writer(store, checkpoint_delay=3600, wal_force_bytes=limit)
    writer.start()
    wal = tmp_path / "lineaged.db-wal"
    sizes = []
    argv = tuple("x" * 1000 for _ in range(20))  # 20 kB a run
    try:
        for number in range(300):  # 6 MB in all
            writer.call(lambda s, n=number: s.begin_run(RunStart(name=f"r{n}", argv=argv)))
            sizes.append(os.stat(wal).st_size)
    finally:
        writer.stop()
    # One commit's frames past the limit at most (each call above is one commit).
    assert max(sizes) < limit + (256 << 10), max(sizes)
    assert len(store.list_runs(limit=1000)) == 300  # nothing lost
    store.close()
    assert len(_runs_in_database_file(db)) == 300

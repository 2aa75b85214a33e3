"""Issue 13, failure 6: corruption is found, never served, and a vanished WAL is reported."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from lineage_core.errors import CorruptStore, DamagedRow
from lineage_core.models import ChangeKind, Role, StatKey

from lineaged.store import DB_NAME, Store, VersionWrite, version_checksum
from lineaged.store import connection as store_connection
from tests.conftest import REPO, DaemonProcess, short_tmp_dir
from tests.helpers import b3, wait_for


def _flip_stored_digest(db: Path, digest_hex: str) -> str:
    """Flip one byte of a stored digest in the database file itself, as a bad sector or a
    stray write would: every copy in the versions table and its digest index, not the stat
    cache's copy (which sits right after the packed stat key). Returns the flipped digest."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        (cache_key,) = conn.execute("SELECT cache_key FROM artifacts LIMIT 1").fetchone()
    conn.close()
    digest = bytes.fromhex(digest_hex)
    flipped = digest[:5] + bytes([digest[5] ^ 0x01]) + digest[6:]
    raw = bytearray(db.read_bytes())
    found = 0
    at = raw.find(digest)
    while at >= 0:
        if raw[at - len(cache_key) : at] != cache_key:
            raw[at : at + len(digest)] = flipped
            found += 1
        at = raw.find(digest, at + 1)
    assert found >= 1
    mtime = db.stat().st_mtime_ns
    db.write_bytes(bytes(raw))
    os.utime(db, ns=(mtime, mtime))  # the damage hides its mtime
    return flipped.hex()


def test_a_flipped_digest_is_refused_reported_and_hashed_again(tmp_path: Path) -> None:
    base = short_tmp_dir()
    try:
        daemon = DaemonProcess(base)
        daemon.wait_serving()
        content = b"the real bytes\n" * 100
        target = daemon.data / "a.bin"
        target.write_bytes(content)
        truth = b3(content)
        client = daemon.client()
        wait_for(lambda: _known(client, truth), what="the file recorded")
        assert daemon.stop() == 0
        db = daemon.state_dir / DB_NAME
        assert not Path(f"{db}-wal").exists()
        flipped = _flip_stored_digest(db, truth)
        # SQLite's own page check cannot see a wrong value in a well-formed row.
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
            assert conn.execute("PRAGMA quick_check").fetchall() == [("ok",)]
        conn.close()

        daemon = DaemonProcess(base)
        daemon.wait_serving()
        log = daemon.run_cli("log", str(target))
        where = daemon.run_cli("where", flipped)
        for done in (log, where):
            assert done.returncode == 1, done
            assert "damaged in the store" in done.stderr
            assert flipped not in done.stdout + done.stderr  # never the wrong digest
        status = daemon.client().status()
        assert any("damaged version rows" in d and "a.bin" in d for d in status.degraded)
        assert "fails its checksum" in daemon.log_text()
        # The stat cache no longer vouches for the file: it is hashed again and its true
        # digest is the current version, whatever its unchanged stat key says.
        wait_for(lambda: _known(daemon.client(), truth), what="the file hashed again")
        current = daemon.client().find_digest(truth)
        assert [v.path for v in current] == [str(target)]
        daemon.finish()
        # `lineaged check` names the damaged row.
        check = subprocess.run(
            [sys.executable, "-m", "lineaged", "check", "--state-dir", str(daemon.state_dir)],
            capture_output=True,
            text=True,
            cwd=REPO,
            check=False,
        )
        assert check.returncode == 1
        assert "fails its checksum" in check.stdout and "a.bin" in check.stdout
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _known(client: object, digest: str) -> bool:
    from lineage_core.errors import NotFound

    try:
        client.find_digest(digest)  # type: ignore[attr-defined]
    except NotFound:
        return False
    return True


def _write(store: Store, path: str, digest: str, at: int = 1_000) -> None:
    store.begin()
    root = store.ensure_root("/r", Role.DATA)
    store.record_versions(
        [
            VersionWrite(
                path=path,
                root_id=root,
                digest=digest,
                stat_key=StatKey(1, 2, 3, at, at),
                seen=ChangeKind.SCAN,
                observed_at=at,
            )
        ],
        1,
    )
    store.commit()


def test_any_change_after_a_clean_stop_brings_the_full_check_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / DB_NAME
    store = Store.open(db)
    _write(store, "/r/a", "ab" * 32)
    store.close()
    assert Path(f"{db}-clean").read_text().startswith("blake3 ")
    checks: list[Path] = []
    real = store_connection._check_pages

    def counting(path: Path, conn: sqlite3.Connection) -> None:
        checks.append(path)
        real(path, conn)

    monkeypatch.setattr(store_connection, "_check_pages", counting)
    # Same bytes, new times (a backup tool's touch): the check is not needed.
    os.utime(db)
    Store.open(db).close()
    assert checks == []
    # A page damaged after the stop, its mtime put back: the marker no longer matches.
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        (page_size,) = conn.execute("PRAGMA page_size").fetchone()
        (root_page,) = conn.execute(
            "SELECT rootpage FROM sqlite_master WHERE name='versions'"
        ).fetchone()
    conn.close()
    mtime = db.stat().st_mtime_ns
    raw = bytearray(db.read_bytes())
    start = (root_page - 1) * page_size
    raw[start : start + 64] = b"\xff" * 64  # the versions table's page header
    db.write_bytes(bytes(raw))
    os.utime(db, ns=(mtime, mtime))
    with pytest.raises(CorruptStore, match="refusing to start"):
        Store.open(db)
    assert checks == [db]


def test_schema_1_rows_get_checksums_and_a_changed_digest_is_refused(tmp_path: Path) -> None:
    db = tmp_path / DB_NAME
    store = Store.open(db)
    _write(store, "/r/a", "cd" * 32)
    store.close()
    with sqlite3.connect(db) as conn:  # a store as schema 1 left it
        conn.execute("ALTER TABLE versions DROP COLUMN checksum")
        conn.execute("DROP TABLE openlineage_outbox")  # made by a later migration
        conn.execute("PRAGMA user_version=1")
    conn.close()
    store = Store.open(db)
    try:
        row = store._rc.execute(
            "SELECT digest, size, mtime_ns, valid_from, checksum FROM versions"
        ).fetchone()
        assert row[4] == version_checksum("/r/a", row[0], row[1], row[2], row[3])
        assert store.current_version("/r/a") is not None
        damaged: list[tuple[int, str]] = []
        store.on_damage = lambda vid, path: damaged.append((vid, path))
        store._wc.execute("UPDATE versions SET size = size + 1")
        with pytest.raises(DamagedRow, match="damaged in the store"):
            store.current_version("/r/a")
        with pytest.raises(DamagedRow):
            store.history("/r/a", limit=10)
        assert damaged == [(1, "/r/a")]  # reported once
        assert store.damaged_rows() == {1: "/r/a"}
        assert store.checksum_problems() == ["version 1 of '/r/a' fails its checksum"]
    finally:
        store.close()


def test_a_wal_deleted_after_kill_9_is_reported_loudly(tmp_path: Path) -> None:
    base = short_tmp_dir()
    try:
        daemon = DaemonProcess(base)
        daemon.wait_serving()
        (daemon.data / "f.txt").write_bytes(b"x")
        client = daemon.client()
        wait_for(lambda: _known(client, b3(b"x")))
        client.close()
        wal = daemon.state_dir / f"{DB_NAME}-wal"
        assert wal.exists()
        daemon.proc.send_signal(signal.SIGKILL)
        daemon.proc.wait()
        wal.unlink()
        again = DaemonProcess(base)
        try:
            again.wait_serving()
            log = again.log_text()
            assert "ERROR" in log and f"write-ahead log {wal} vanished after an unclean stop" in log
            status = again.client().status()
            assert any("vanished after an unclean stop" in d for d in status.degraded)
        finally:
            again.finish()
        # A clean stop and start: nothing to report any more.
        third = DaemonProcess(base)
        try:
            third.wait_serving()
            assert "vanished" not in third.log_text()
        finally:
            third.finish()
    finally:
        shutil.rmtree(base, ignore_errors=True)

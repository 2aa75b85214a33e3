"""The ``lineaged`` process: one-shot mode, graceful stop, the state lock, refusing a bad
database, ``check`` and ``backup``. Every test runs the real command in a subprocess."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lineaged.store import DB_NAME
from tests.helpers import b3, ground_truth, live_digests, wait_for

HOUR_AGO_NS = (time.time() - 3600) * 1e9


def lineaged(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lineaged", *args], capture_output=True, text=True, timeout=timeout
    )


def make_tree(root: Path, count: int) -> None:
    for i in range(count):
        p = root / f"d{i % 4}" / f"f{i}.csv"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(f"{i},{i * i}\n".encode() * (i + 1))
        # Old mtimes: outside the racy window, so an unchanged tree is provably unchanged.
        os.utime(p, ns=(int(HOUR_AGO_NS), int(HOUR_AGO_NS)))


class Daemon:
    def __init__(self, tmp: Path, *extra: str) -> None:
        self.state = tmp / "state"
        self.socket = tmp / "run" / "lineaged.sock"
        self.data = tmp / "data"
        self.data.mkdir(exist_ok=True)
        self.args = [
            "--state-dir", str(self.state), "--socket", str(self.socket),
            "--watch", f"{self.data}:data", "--settle-ms", "50", *extra,
        ]  # fmt: skip
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lineaged", *self.args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        wait_for(lambda: self.socket.exists() or self.proc.poll() is not None, what="the socket")
        assert self.proc.poll() is None, self.proc.communicate()

    def stop(self) -> tuple[int, str]:
        self.proc.send_signal(signal.SIGTERM)
        _, err = self.proc.communicate(timeout=30)
        return self.proc.returncode, err


@pytest.fixture
def daemon_proc(tmp_path: Path) -> Iterator[Daemon]:
    d = Daemon(tmp_path)
    yield d
    if d.proc.poll() is None:
        d.stop()


def test_once_indexes_then_hashes_nothing(tmp_path: Path) -> None:
    data = tmp_path / "data"
    make_tree(data, 40)
    args = ["--once", "--state-dir", str(tmp_path / "s"), "--watch", f"{data}:data"]
    first = lineaged(*args)
    assert first.returncode == 0, first.stderr
    assert "40 files, 40 hashed" in first.stdout
    assert live_digests(tmp_path / "s" / DB_NAME) == ground_truth(data)
    second = lineaged(*args)
    assert second.returncode == 0, second.stderr
    assert "40 files, 0 hashed" in second.stdout and "0 new versions" in second.stdout


def test_start_prints_where_once_and_sigterm_stops_cleanly(daemon_proc: Daemon) -> None:
    (daemon_proc.data / "x.csv").write_bytes(b"1,2\n")
    db = daemon_proc.state / DB_NAME
    wait_for(lambda: live_digests(db).get(str(daemon_proc.data / "x.csv")) == b3(b"1,2\n"))
    code, err = daemon_proc.stop()
    assert code == 0, err
    assert err.count("watching") == 1 and str(daemon_proc.state) in err
    assert "stopped cleanly" in err
    assert not daemon_proc.socket.exists()
    # The lock is released: the same state can be served again.
    again = Daemon(daemon_proc.state.parent)
    assert again.stop()[0] == 0


def test_second_daemon_on_the_same_state_is_refused(daemon_proc: Daemon, tmp_path: Path) -> None:
    other = lineaged(
        "--state-dir", str(daemon_proc.state), "--socket", str(tmp_path / "other.sock"),
        "--watch", str(daemon_proc.data),
    )  # fmt: skip
    assert other.returncode == 1
    assert f"already running (pid {daemon_proc.proc.pid})" in other.stderr
    assert daemon_proc.proc.poll() is None


@pytest.mark.parametrize("kind", ["garbage", "foreign-sqlite"])
def test_bad_database_is_refused_and_left_untouched(tmp_path: Path, kind: str) -> None:
    state = tmp_path / "state"
    state.mkdir()
    db = state / DB_NAME
    if kind == "garbage":
        db.write_bytes(b"this is not a database\n" * 100)
    else:
        with sqlite3.connect(db) as conn:
            conn.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
            conn.execute("INSERT INTO customers(name) VALUES ('ada')")
        conn.close()
    before = db.read_bytes()
    result = lineaged("--once", "--state-dir", str(state), "--watch", str(tmp_path))
    assert result.returncode != 0
    assert "untouched" in result.stderr and "Traceback" not in result.stderr
    assert db.read_bytes() == before
    assert not (state / (DB_NAME + "-wal")).exists()


def test_check_and_backup_of_a_live_store(daemon_proc: Daemon, tmp_path: Path) -> None:
    make_tree(daemon_proc.data, 25)
    db = daemon_proc.state / DB_NAME
    wait_for(lambda: live_digests(db) == ground_truth(daemon_proc.data), what="indexing")
    check = lineaged("check", "--state-dir", str(daemon_proc.state))
    assert check.returncode == 0, check.stderr
    assert "ok" in check.stdout
    dest = tmp_path / "backup.db"
    backup = lineaged("backup", str(dest), "--state-dir", str(daemon_proc.state))
    assert backup.returncode == 0, backup.stderr
    assert live_digests(dest) == live_digests(db)
    with sqlite3.connect(dest) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()
    again = lineaged("backup", str(dest), "--state-dir", str(daemon_proc.state))
    assert again.returncode == 2 and "already exists" in again.stderr


def test_usage_errors_are_one_line(tmp_path: Path) -> None:
    nothing = lineaged("--state-dir", str(tmp_path / "s"))
    assert nothing.returncode == 2 and "nothing to watch" in nothing.stderr
    bad_role = lineaged("--state-dir", str(tmp_path / "s"), "--watch", f"{tmp_path}:weights")
    assert bad_role.returncode == 2 and "unknown role 'weights'" in bad_role.stderr
    tcp = lineaged(
        "--watch", str(tmp_path), "--state-dir", str(tmp_path / "s"), "--listen", "127.0.0.1:0"
    )
    assert tcp.returncode == 2 and "without authentication" in tcp.stderr
    for result in (nothing, bad_role, tcp):
        assert "Traceback" not in result.stderr

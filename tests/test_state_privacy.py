"""Issue 13, failure 5: the state directory and every store file are private to the daemon."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from lineaged.store import DB_NAME, Store
from tests.conftest import REPO, DaemonProcess, short_tmp_dir, umask


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_an_existing_0755_state_dir_and_0644_store_are_made_private(tmp_path: Path) -> None:
    base = short_tmp_dir()
    try:
        _check_made_private(base)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _check_made_private(base: Path) -> None:
    state = base / "state"
    with umask(0o022):
        state.mkdir(mode=0o755)
        Store.open(state / DB_NAME).close()  # a store made by an earlier, careless start
        (state / "notes.txt").write_text("not ours to change\n")
    assert _mode(state) == 0o755
    assert _mode(state / DB_NAME) == 0o644
    with umask(0o022):  # the daemon's own umask wins over the one it inherits
        daemon = DaemonProcess(base)
    try:
        daemon.wait_serving()
        (daemon.data / "f.csv").write_bytes(b"a,b\n")
        daemon.client().status()
        _check_files(daemon, state)
    finally:
        daemon.finish()
    # Files made after the start are private too (umask 077): a backup, for one.
    backup = base / "copy.db"
    done = subprocess.run(
        [sys.executable, "-m", "lineaged", "backup", str(backup), "--state-dir", str(state)],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert _mode(backup) == 0o600


def _check_files(daemon: DaemonProcess, state: Path) -> None:
    files = [p for p in state.iterdir() if p.name != "notes.txt"]
    assert {p.name for p in files} >= {DB_NAME, f"{DB_NAME}-wal", f"{DB_NAME}-shm"}
    assert _mode(state) == 0o700
    for path in files:
        assert _mode(path) & 0o077 == 0, f"{path.name} is {_mode(path):04o}"
    assert _mode(state / "notes.txt") == 0o644  # only the store's own files are touched
    log = daemon.log_text()
    assert f"{state} was open to group or others (mode 0755); made private (mode 0700)" in log
    assert f"{state / DB_NAME} was open to group or others (mode 0644)" in log


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give the directory to another user")
def test_a_state_dir_owned_by_another_user_is_refused_in_one_line(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    os.chown(state, 65534, 65534)
    root = tmp_path / "data"
    root.mkdir()
    command = [sys.executable, "-m", "lineaged", "--once", "--state-dir", str(state)]
    done = subprocess.run(
        [*command, "--watch", f"{root}:data"],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        f"lineaged: error: state directory {state} belongs to uid 65534, not to the daemon's "
        "user (uid 0): refusing to keep the store where another user can change it"
    ]
    assert not (state / DB_NAME).exists()

"""Hashing can never take the daemon hostage (issue 13, failure 3).

Real daemon processes and real sparse files (``os.truncate``): reads naming 1 TiB files do
not starve ``status``; a 40 GB (here: 1 TiB) file does not stall other files; SIGTERM and
``kill -9`` leave no hashing helper behind, nor does ``lineaged --once``. Processes are
found by a marker in their environment, which every child inherits.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
from lineage_core import hasher
from lineage_core.models import Access, AccessMode, Role, Root, RunStart

from lineaged.config import Config
from lineaged.engine import Engine
from lineaged.store import DB_NAME, Store
from tests.conftest import DaemonProcess, short_tmp_dir
from tests.helpers import EngineHarness, b3, live_digests, wait_for

TIB = 1 << 40
MARK = "LINEAGED_TEST_MARK"


def _marked(mark: str, *, besides: int = -1) -> list[int]:
    """Pids of live processes (zombies aside) whose environment carries ``mark``."""
    found = []
    needle = f"{MARK}={mark}".encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in (os.getpid(), besides):
            continue
        try:
            environ = Path(f"/proc/{entry}/environ").read_bytes()
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if needle in environ.split(b"\0") and state != "Z":
            found.append(int(entry))
    return found


@pytest.fixture
def mark(monkeypatch: pytest.MonkeyPatch) -> str:
    """A marker every process started from now on inherits."""
    value = uuid.uuid4().hex
    monkeypatch.setenv(MARK, value)
    return value


def _sparse(path: Path, size: int) -> Path:
    with open(path, "wb") as f:
        os.truncate(f.fileno(), size)
    return path


def _helpers_of(daemon_pid: int, mark: str) -> list[int]:
    return _marked(mark, besides=daemon_pid)


def test_reads_of_huge_files_do_not_starve_status_and_sigterm_kills_the_helper(
    mark: str,
) -> None:
    base = short_tmp_dir()
    daemon = DaemonProcess(base)
    try:
        daemon.wait_serving()
        huge = [_sparse(daemon.data / f"huge-{i:02d}.bin", TIB) for i in range(20)]
        client = daemon.client(timeout=120)
        run = client.begin_run(RunStart(name="hostage", cwd=str(daemon.data)))
        now = time.time_ns()
        reads = [Access(path=str(p), mode=AccessMode.READ, first_at=now, last_at=now) for p in huge]
        answered: list[int] = []
        errors: list[BaseException] = []

        def record() -> None:
            try:
                answered.append(client.record_accesses(run.run_id, reads))
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=record) for _ in range(20)]
        for thread in threads:
            thread.start()
        # While twenty calls name 1 TiB files, status answers (the CLI's own deadline).
        status = daemon.run_cli("status")
        assert status.returncode == 0, status.stderr
        for thread in threads:
            thread.join(timeout=120)
        assert not errors, errors
        assert answered == [20] * 20
        # A 1 TiB file is being hashed in a helper process right now.
        wait_for(lambda: _helpers_of(daemon.proc.pid, mark), what="the mmap hashing helper")
        assert daemon.run_cli("status").returncode == 0
        # SIGTERM: the daemon stops (within systemd's TimeoutStopSec=30s: DaemonProcess.stop
        # waits that long, then fails) and takes its helper with it.
        assert daemon.stop() == 0
        wait_for(
            lambda: not _marked(mark), timeout=10, what="no hashing process left after SIGTERM"
        )
    finally:
        if daemon.alive():
            daemon.proc.kill()
            daemon.proc.wait()


def test_kill_9_during_a_large_hash_leaves_no_process(mark: str) -> None:
    base = short_tmp_dir()
    daemon = DaemonProcess(base)
    try:
        daemon.wait_serving()
        _sparse(daemon.data / "checkpoint.bin", TIB)
        wait_for(
            lambda: _helpers_of(daemon.proc.pid, mark),
            what="a helper hashing the 1 TiB file",
        )
        daemon.proc.kill()
        daemon.proc.wait()
        wait_for(lambda: not _marked(mark), timeout=10, what="no process left after kill -9")
    finally:
        if daemon.alive():
            daemon.proc.kill()
            daemon.proc.wait()


def test_once_leaves_no_process_behind(tmp_path: Path, mark: str) -> None:
    data = tmp_path / "data"
    for folder in range(3):
        (data / f"d{folder}").mkdir(parents=True)
        for i in range(1000):  # more than POOL_MIN_PATHS: worker processes hash them
            (data / f"d{folder}" / f"f{i}").write_bytes(b"%d %d" % (folder, i))
    big = data / "big.bin"
    big.write_bytes(os.urandom(1 << 20) * 20)  # over LARGE_FILE: the mmap helper hashes it
    assert big.stat().st_size >= hasher.LARGE_FILE
    time.sleep(0.1)  # leave the racy window: otherwise the hasher waits anyway
    result = subprocess.run(
        [sys.executable, "-m", "lineaged", "--once", "--watch", str(data),
         "--state-dir", str(tmp_path / "state")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "3001 files" in result.stdout
    wait_for(lambda: not _marked(mark), timeout=10, what="no process left after --once")
    live = live_digests(tmp_path / "state" / DB_NAME)
    assert live[str(big)] == b3(big.read_bytes())


def test_a_huge_file_does_not_stall_other_files(tmp_path: Path) -> None:
    h = EngineHarness(tmp_path).start()
    try:
        huge = _sparse(h.data / "huge.bin", TIB)
        wait_for(lambda: h.engine.large_lane.current == str(huge), what="the huge file hashing")
        for i in range(20):
            (h.data / f"small-{i}.csv").write_bytes(b"small %d\n" % i)
        for i in range(20):
            h.expect(h.data / f"small-{i}.csv", b"small %d\n" % i)
        # Still hashing the huge file: the small ones did not wait for it.
        assert h.engine.large_lane.current == str(huge)
        assert str(huge) not in live_digests(h.db)
    finally:
        h.stop()


def test_a_huge_file_found_by_the_scan_goes_to_the_large_lane(tmp_path: Path) -> None:
    h = EngineHarness(tmp_path)
    huge = _sparse(h.data / "huge.bin", TIB)
    for i in range(5):
        (h.data / f"small-{i}.csv").write_bytes(b"scan %d\n" % i)
    h.start()  # the initial scan completes while the huge file is still hashing
    try:
        for i in range(5):
            assert live_digests(h.db)[str(h.data / f"small-{i}.csv")] == b3(b"scan %d\n" % i)
        assert h.engine.large_lane.current == str(huge) or h.engine.large_lane.depth
    finally:
        h.stop()


def test_max_hash_size_reports_too_large_and_clears(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    state = tmp_path / "state"
    state.mkdir()
    big = data / "big.bin"
    big.write_bytes(b"x" * (2 << 20))
    small = data / "small.csv"
    small.write_bytes(b"ok\n")
    config = Config(
        roots=(Root(str(data), Role.DATA, max_hash_size=1 << 20),),
        state_dir=state,
        socket=tmp_path / "s",
        settle_ms=50,
        scan_interval=0,
    )
    store = Store.open(state / DB_NAME)
    engine = Engine(config, store)
    engine.start()
    try:
        wait_for(lambda: engine.serving, what="initial scan")
        root = engine.status().roots[0]
        assert "not hashed: too large" in root.health and str(big) in root.health
        assert any("too large" in d for d in engine.status().degraded)
        live = live_digests(state / DB_NAME)
        assert str(big) not in live and live[str(small)] == b3(b"ok\n")
        big.write_bytes(b"y" * 1000)
        wait_for(
            lambda: live_digests(state / DB_NAME).get(str(big)) == b3(b"y" * 1000),
            what="the shrunk file hashed",
        )
        engine.request_scan("test")
        wait_for(lambda: engine.status().roots[0].health == "ok", what="health cleared")
    finally:
        engine.stop()
        store.close()


def test_max_hash_size_in_the_config(tmp_path: Path) -> None:
    from argparse import Namespace

    from lineage_core.errors import ConfigError

    from lineaged.config import load_config

    def load(value: str) -> int:
        toml = tmp_path / "c.toml"
        toml.write_text(f'[[roots]]\npath = "{tmp_path}"\nmax_hash_size = {value}\n')
        args = Namespace(config=str(toml), watch=None, state_dir=str(tmp_path / "s"))
        return load_config(args, environ={}).roots[0].max_hash_size

    assert load('"500G"') == 500 << 30
    assert load('"1TiB"') == 1 << 40
    assert load("4096") == 4096
    assert load("0") == 0
    with pytest.raises(ConfigError, match="max_hash_size"):
        load('"lots"')
    with pytest.raises(ConfigError, match="max_hash_size"):
        load("-1")


def test_helper_dies_with_its_parent_even_when_killed(tmp_path: Path, mark: str) -> None:
    """The mmap helper of a process that is SIGKILLed mid-hash does not hash on."""
    big = _sparse(tmp_path / "big.bin", TIB)
    script = "import sys; from lineage_core.hasher import hash_file; hash_file(sys.argv[1])"
    parent = subprocess.Popen([sys.executable, "-c", script, str(big)])
    try:
        wait_for(lambda: _marked(mark, besides=parent.pid), what="the helper started")
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        wait_for(lambda: not _marked(mark), timeout=10, what="the helper gone with its parent")
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()

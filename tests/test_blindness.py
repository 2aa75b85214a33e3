"""Blindness: every way the daemon can stop seeing part of a root is reported in
``engine.status()`` and the log, covered by polling or the reconcile scan, and never silent.

Kernel limits and filesystems without inotify cannot be produced safely in a test (no global
sysctl changes), so they are forced at watchdog's ctypes wrappers of ``inotify_init`` and
``inotify_add_watch``: the fault then travels through watchdog's real error handling. Tests
run as root, so an unreadable directory is forced at ``os.scandir`` in the scanner; a real
variant runs the daemon as ``nobody`` over a ``chmod 000`` directory.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import pwd
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from lineage_core import dirfd
from watchdog.observers import inotify_c

from lineaged.store import DB_NAME
from lineaged.watching import watcher as watcher_module
from tests.helpers import EngineHarness, b3, ground_truth, history, live_digests, wait_for

REPO = Path(__file__).resolve().parent.parent


class Harness(EngineHarness):
    """The shared engine harness, polling every 0.2 s when it polls."""

    def __init__(self, tmp_path: Path, *, settle_ms: int = 50, scan_interval: float = 0) -> None:
        super().__init__(
            tmp_path, settle_ms=settle_ms, scan_interval=scan_interval, poll_interval=0.2
        )

    def assert_working(self) -> None:
        """The engine still records changes and still scans: nothing died."""
        probe = self.models / f"probe-{time.monotonic_ns()}.bin"
        probe.write_bytes(b"still watching")
        self.expect(probe, b"still watching")
        before = self.scans()
        self.engine.request_scan("test")
        wait_for(lambda: self.scans() > before, what="a reconcile scan")


@pytest.fixture
def make_harness(tmp_path: Path) -> Iterator[Callable[..., Harness]]:
    started: list[Harness] = []

    def make(**options: object) -> Harness:
        h = Harness(tmp_path, **options)  # type: ignore[arg-type]
        started.append(h)
        return h.start()

    yield make
    for h in started:
        if h.engine.supervision._scan_thread.is_alive() or h.store._write_conn is not None:
            h.stop()


def fail_add_watch(monkeypatch: pytest.MonkeyPatch, code: int, under: Path) -> list[str]:
    """Make ``inotify_add_watch`` fail with ``code`` for ``under`` and below; returns the
    list of paths it failed for."""
    real = inotify_c.inotify_add_watch
    prefix = os.fsencode(under)
    failed: list[str] = []

    def add_watch(fd: int, path: bytes, mask: int) -> int:
        if path == prefix or path.startswith(prefix + b"/"):
            failed.append(os.fsdecode(path))
            ctypes.set_errno(code)
            return -1
        return int(real(fd, path, mask))

    monkeypatch.setattr(inotify_c, "inotify_add_watch", add_watch)
    return failed


def record_changes_through(h: Harness, folder: Path) -> None:
    """Create, modify and delete a file under ``folder``; each must be recorded."""
    target = folder / "train.csv"
    target.write_bytes(b"a,b\n1,2\n")
    h.expect(target, b"a,b\n1,2\n")
    target.write_bytes(b"a,b\n1,2\n3,4\n")
    h.expect(target, b"a,b\n1,2\n3,4\n")
    target.unlink()
    h.expect(target, None)


# --- inotify cannot watch: limits, filesystems without inotify ------------------------------


@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        ("watch-limit", "inotify watch limit reached (raise fs.inotify.max_user_watches)"),
        ("instance-limit", "inotify instance limit reached (raise fs.inotify.max_user_instances)"),
        ("no-inotify", "inotify unavailable (Operation not supported)"),
    ],
)
def test_inotify_failing_at_start_falls_back_to_polling(
    make_harness: Callable[..., Harness],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    fault: str,
    reason: str,
) -> None:
    caplog.set_level(logging.WARNING)
    if fault == "instance-limit":
        # inotify_init itself fails: no root can use inotify.
        def no_instance() -> int:
            ctypes.set_errno(errno.EMFILE)
            return -1

        monkeypatch.setattr(inotify_c, "inotify_init", no_instance)
        blind = [tmp_path / "data", tmp_path / "models"]
    else:
        code = errno.ENOSPC if fault == "watch-limit" else errno.EOPNOTSUPP
        fail_add_watch(monkeypatch, code, tmp_path / "data")
        blind = [tmp_path / "data"]
    h = make_harness()
    for root in (h.data, h.models):
        status = h.root(root)
        if root in blind:
            assert status.polling
            assert status.health == f"{reason}; polling instead"
            assert f"{root}: {reason}; polling instead" in h.engine.status().degraded
            assert f"root {root}: {reason}" in caplog.text
        else:
            assert (status.health, status.polling) == ("ok", False)
    # scan_interval is 0: only the polling observer can see these changes.
    record_changes_through(h, h.data)
    h.assert_working()


def test_watch_limit_below_the_root_is_not_silent(
    make_harness: Callable[..., Harness],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A subdirectory inotify cannot watch at start makes the whole root polled, and says so."""
    caplog.set_level(logging.WARNING)
    deep = tmp_path / "data" / "deep" / "er"
    deep.mkdir(parents=True)
    failed = fail_add_watch(monkeypatch, errno.ENOSPC, tmp_path / "data" / "deep")
    h = make_harness()
    assert failed, "the fault was not reached"
    status = h.root(h.data)
    assert status.polling
    assert status.health == (
        "inotify watch limit reached (raise fs.inotify.max_user_watches); polling instead"
    )
    assert f"root {h.data}: inotify watch limit reached" in caplog.text
    assert not h.root(h.models).polling
    record_changes_through(h, deep)
    h.assert_working()


def test_watch_limit_reached_later_switches_to_polling(
    make_harness: Callable[..., Harness],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A directory created after start that inotify cannot watch turns the root to polling,
    and a rescan records what was written before polling began."""
    caplog.set_level(logging.WARNING)
    h = make_harness()
    assert not h.root(h.data).polling
    later = h.data / "later"
    failed = fail_add_watch(monkeypatch, errno.ENOSPC, later)
    later.mkdir()
    early = later / "early.csv"
    early.write_bytes(b"written before anyone polled")
    wait_for(lambda: h.root(h.data).polling, what="the root switched to polling")
    assert failed
    assert h.root(h.data).health.startswith(f"inotify watch limit reached at {later}")
    assert f"root {h.data}: inotify watch limit reached at {later}" in caplog.text
    h.expect(early, b"written before anyone polled")
    record_changes_through(h, later)
    assert not h.root(h.models).polling
    h.assert_working()


def test_a_root_polled_for_the_watch_limit_is_watched_again_when_it_no_longer_bites(
    make_harness: Callable[..., Harness],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The health message clears when the condition does: inotify is tried again."""
    caplog.set_level(logging.INFO)
    monkeypatch.setattr("lineaged.engine.supervision.LIMIT_RETRY_SECONDS", 0.2)
    deep = tmp_path / "data" / "deep"
    deep.mkdir(parents=True)
    real = inotify_c.inotify_add_watch
    failed = fail_add_watch(monkeypatch, errno.ENOSPC, deep)
    h = make_harness()
    assert failed and h.root(h.data).polling
    assert h.root(h.data).health.startswith("inotify watch limit reached")
    before = len(failed)
    h.engine.request_scan("look again")  # the retry is tried, and still fails
    wait_for(lambda: len(failed) > before, what="inotify tried again")
    assert h.root(h.data).polling
    monkeypatch.setattr(inotify_c, "inotify_add_watch", real)  # the limit was raised
    wait_for(
        lambda: not h.root(h.data).polling and h.root(h.data).health == "ok",
        what="the root watched by inotify again",
    )
    assert f"{h.data}: inotify watches the whole root again" in caplog.text
    assert not any(d.startswith(str(h.data)) for d in h.engine.status().degraded)
    record_changes_through(h, deep)
    h.assert_working()


def test_network_filesystem_is_polled(
    make_harness: Callable[..., Harness],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On NFS inotify works but misses other machines' writes: the root is polled."""
    real = watcher_module.filesystem_type
    data = str(tmp_path / "data")
    monkeypatch.setattr(
        watcher_module,
        "filesystem_type",
        lambda path: "nfs4" if path.startswith(data) else real(path),
    )
    h = make_harness()
    status = h.root(h.data)
    assert status.polling and "network filesystem (nfs4)" in status.health
    assert "polling instead" in status.health
    assert h.root(h.models).health == "ok"
    record_changes_through(h, h.data)


def test_filesystem_type_reads_mountinfo(tmp_path: Path) -> None:
    assert watcher_module.filesystem_type("/proc") == "proc"
    assert watcher_module.filesystem_type("/proc/self/fd") == "proc"
    assert watcher_module.filesystem_type(str(tmp_path)) not in ("", "proc")
    assert watcher_module.filesystem_type(str(tmp_path / "does-not-exist")) != ""


# --- unreadable directories -------------------------------------------------------------------


def test_unreadable_directory_is_reported_and_its_files_are_kept(
    make_harness: Callable[..., Harness],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    locked = tmp_path / "data" / "locked"
    (locked / "sub").mkdir(parents=True)
    kept = {
        locked / "a.csv": b"locked a",
        locked / "sub" / "b.csv": b"locked b",
        tmp_path / "data" / "open.csv": b"open v1",
    }
    for path, data in kept.items():
        path.write_bytes(data)
    first = make_harness()  # its startup scan indexes everything
    assert live_digests(first.db) == ground_truth(first.data, first.models)
    first.stop()
    # While the daemon is down: a change it can see and one it cannot.
    (tmp_path / "data" / "open.csv").write_bytes(b"open v2")
    (locked / "new.csv").write_bytes(b"new while locked")

    # The walk opens each directory from its parent's descriptor (lineage_core/dirfd.py): refusing
    # that open is how an unreadable directory looks to it (as root, modes do not refuse).
    blocked = {locked.name}
    real_open_dir_at = dirfd.open_dir_at

    def open_dir_at(dir_fd: int, name: str) -> int:
        if name in blocked:
            raise PermissionError(errno.EACCES, "Permission denied", name)
        return real_open_dir_at(dir_fd, name)

    monkeypatch.setattr(dirfd, "open_dir_at", open_dir_at)
    h = make_harness(scan_interval=1.0)
    live = live_digests(h.db)
    assert live[str(locked / "a.csv")] == b3(b"locked a")
    assert live[str(locked / "sub" / "b.csv")] == b3(b"locked b")
    assert live[str(h.data / "open.csv")] == b3(b"open v2")
    assert str(locked / "new.csv") not in live
    assert history(h.db, locked / "a.csv")[-1][2] is None  # not closed as deleted
    status = h.root(h.data)
    assert status.health.startswith(f"cannot read {locked}")
    assert any(d.startswith(f"{h.data}: cannot read {locked}") for d in h.engine.status().degraded)
    assert f"cannot read directory {locked}" in caplog.text
    assert h.root(h.models).health == "ok"
    # Everything else is still indexed as it changes.
    fresh = h.data / "fresh" / "f.csv"
    fresh.parent.mkdir()
    fresh.write_bytes(b"fresh")
    h.expect(fresh, b"fresh")
    # Readable again: the periodic reconcile scan finds what it missed and clears the report.
    blocked.clear()
    h.expect(locked / "new.csv", b"new while locked")
    wait_for(lambda: h.root(h.data).health == "ok", what="the report cleared")
    h.assert_working()


def _nobody() -> tuple[int, int] | None:
    try:
        entry = pwd.getpwnam("nobody")
    except KeyError:
        return None
    return entry.pw_uid, entry.pw_gid


def _python_for(uid: int) -> tuple[str, dict[str, str]] | None:
    """An interpreter ``uid`` can run with lineaged and its dependencies importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST", "COV"))}
    site = next(p for p in sys.path if p.endswith("site-packages"))
    candidates = [sys.executable, f"/usr/bin/python{sys.version_info[0]}.{sys.version_info[1]}"]
    for python in candidates:
        try:
            probe = subprocess.run(
                [python, "-c", "import blake3, grpc, watchdog, lineaged.daemon"],
                env={**env, "PYTHONPATH": f"{REPO}:{REPO}/clients:{site}"},
                user=uid,
                capture_output=True,
                cwd="/",
            )
        except OSError:  # it cannot even execute the interpreter (e.g. under /root)
            continue
        if probe.returncode == 0:
            return python, {**env, "PYTHONPATH": f"{REPO}:{REPO}/clients:{site}", "HOME": "/"}
    return None


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to start a daemon as nobody")
def test_unreadable_directory_for_real_as_nobody() -> None:
    ids = _nobody()
    if ids is None:
        pytest.skip("no user 'nobody' on this system")
    uid, gid = ids
    found = _python_for(uid)
    if found is None:
        pytest.skip("no Python interpreter that 'nobody' can run with lineaged importable")
    python, env = found
    base = Path(tempfile.mkdtemp(prefix="lg-nobody-", dir="/tmp"))
    try:
        base.chmod(0o755)
        data, state = base / "data", base / "state"
        locked = data / "locked"
        locked.mkdir(parents=True)
        private = data / "private.csv"
        private.write_bytes(b"private v1")
        (locked / "secret.csv").write_bytes(b"secret")
        state.mkdir()
        for path in (data, locked, state):
            os.chown(path, uid, gid)
        for path in (private, locked / "secret.csv"):
            os.chown(path, uid, gid)
        db = state / DB_NAME
        logs = [base / "first.log", base / "second.log"]
        args = [
            python, "-m", "lineaged", "--state-dir", str(state),
            "--socket", str(base / "run" / "s.sock"), "--watch", f"{data}:data",
            "--settle-ms", "50", "--scan-interval", "0",
        ]  # fmt: skip
        (base / "run").mkdir()
        os.chown(base / "run", uid, gid)

        def start(log: Path) -> subprocess.Popen[bytes]:
            with open(log, "wb") as out:
                return subprocess.Popen(
                    args, env=env, cwd="/", stdout=out, stderr=out, user=uid, group=gid,
                    extra_groups=[],
                )  # fmt: skip

        def stop(proc: subprocess.Popen[bytes], log: Path) -> None:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0, log.read_text()

        proc = start(logs[0])
        try:
            wait_for(lambda: len(_live(db)) == 2, what="both files indexed as nobody")
        finally:
            stop(proc, logs[0])
        # While it is down: a directory and a changed file become unreadable to it.
        locked.chmod(0)
        private.write_bytes(b"private v2")
        private.chmod(0)
        (data / "later.csv").write_bytes(b"later")
        os.chown(data / "later.csv", uid, gid)
        log = logs[1]
        proc = start(log)
        try:
            wait_for(lambda: "reconcile scan (startup) done" in log.read_text(), what="scan")
            text = log.read_text()
            assert f"cannot read directory {locked}" in text
            assert f"cannot hash {private}" in text
            reported = f"cannot read {locked}, {private}; what is there keeps its last"
            assert f"root {data}: {reported}" in text
            live = _live(db)
            assert live[str(locked / "secret.csv")] == b3(b"secret")  # kept, not deleted
            assert live[str(private)] == b3(b"private v1")  # its last readable state
            assert live[str(data / "later.csv")] == b3(b"later")
            from lineage_client import Client

            with Client(socket=base / "run" / "s.sock") as client:
                (root,) = client.status().roots
            assert root.health.startswith(reported)
            assert proc.poll() is None
        finally:
            stop(proc, log)
    finally:
        locked_path = base / "data" / "locked"
        if locked_path.exists():
            locked_path.chmod(stat.S_IRWXU)
        shutil.rmtree(base, ignore_errors=True)


def _live(db: Path) -> dict[str, str]:
    if not db.exists():
        return {}
    try:
        return live_digests(db)
    except sqlite3.OperationalError:  # the schema is not there yet
        return {}


# --- a root that disappears ------------------------------------------------------------------


def test_vanished_root_keeps_its_history_and_is_watched_again(
    make_harness: Callable[..., Harness], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """rm -rf of a watched root: nothing is marked deleted (a deleted directory cannot be told
    from an unmounted disk); when it comes back it is watched and rescanned."""
    caplog.set_level(logging.WARNING)
    # A settle delay longer than the rm -rf below takes: its per-file deletions settle after
    # the root is gone (what settles while the root still exists is recorded as deleted).
    data = tmp_path / "data"
    files = {
        data / "train.csv": b"train v1",
        data / "sub" / "deep" / "x.bin": b"x" * 1000,
        data / "sub" / "y.bin": b"y",
    }
    for path, content in files.items():  # indexed by the startup scan
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    h = make_harness(settle_ms=500)
    for path, content in files.items():
        h.expect(path, content)
    shutil.rmtree(h.data)
    wait_for(
        lambda: "root does not exist" in h.root(h.data).health, what="the root reported missing"
    )
    assert "its files keep their last versions, not marked deleted" in h.root(h.data).health
    assert any("root does not exist" in d for d in h.engine.status().degraded)
    assert f"root {h.data}: root does not exist" in caplog.text
    h.engine.wait_idle()
    time.sleep(0.6)  # past the settle delay: late deletion events must not be recorded either
    h.engine.wait_idle()
    live = live_digests(h.db)
    for path, content in files.items():
        assert live.get(str(path)) == b3(content), f"{path} was closed while its root was missing"
        assert history(h.db, path)[-1][2] is None
    h.assert_working()  # the rest of the daemon carries on (and scans skip the missing root)
    # The root comes back with other content.
    (h.data / "sub").mkdir(parents=True)
    (h.data / "train.csv").write_bytes(b"train v2")
    (h.data / "sub" / "y.bin").write_bytes(b"y")
    (h.data / "new.csv").write_bytes(b"new")
    h.expect(h.data / "new.csv", b"new")
    h.expect(h.data / "train.csv", b"train v2")
    h.expect(h.data / "sub" / "deep" / "x.bin", None)  # absent after the return: deleted now
    wait_for(lambda: h.root(h.data).health == "ok", what="the root reported back")
    assert [r[0] for r in history(h.db, h.data / "sub" / "y.bin")] == [b3(b"y")]
    # Watched again, not just rescanned.
    record_changes_through(h, h.data / "sub")


def test_root_replaced_at_once_is_watched_again(make_harness: Callable[..., Harness]) -> None:
    """A root deleted and recreated before any periodic check: the old watch saw the old
    directory only, so the new one must be watched and scanned."""
    h = make_harness()
    (h.data / "old.csv").write_bytes(b"old")
    h.expect(h.data / "old.csv", b"old")
    shutil.rmtree(h.data)
    h.data.mkdir()
    (h.data / "new.csv").write_bytes(b"new")
    h.expect(h.data / "new.csv", b"new", timeout=10)
    h.expect(h.data / "old.csv", None)
    wait_for(lambda: h.root(h.data).health == "ok", what="healthy again")
    record_changes_through(h, h.data)


# --- a watchdog that cannot tell of lost events ----------------------------------------------


@pytest.mark.parametrize(
    ("version", "tested"),
    [("7.1.1", True), ("7.9.0", True), ("7.1.0", False), ("6.0.0", False), ("8.0.0", False)],
)
def test_lost_event_problem_names_untested_watchdog_releases(version: str, tested: bool) -> None:
    problem = watcher_module.lost_event_problem(version)
    assert (problem == "") is tested
    if not tested:
        assert f"watchdog {version}" in problem and "rescanned every 60 s" in problem


def test_installed_watchdog_is_a_tested_release() -> None:
    """The bounds in pyproject.toml keep the installed watchdog inside the tested range."""
    assert watcher_module.lost_event_problem() == ""


def test_untested_watchdog_is_reported_and_rescanned_often(
    make_harness: Callable[..., Harness], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Installing watchdog outside the bounds is forced here: the daemon must say so."""
    real = watcher_module.lost_event_problem
    monkeypatch.setattr(watcher_module, "lost_event_problem", lambda: real("6.0.0"))
    monkeypatch.setattr("lineaged.engine.supervision.lost_event_problem", lambda: real("6.0.0"))
    h = make_harness()
    degraded = h.engine.status().degraded
    assert any(d.startswith("watcher: watchdog 6.0.0 is not a release") for d in degraded)
    assert h.engine.config.scan_interval == watcher_module.BLIND_SCAN_INTERVAL
    h.assert_working()

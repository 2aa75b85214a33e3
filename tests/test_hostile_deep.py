"""Deep trees (issue 13, failure 2): a tree 1,000 levels deep is indexed and watched.

watchdog 7.1.1's recursive watch (and its polling snapshot) recurse once per level on
Python 3.11 and raise ``RecursionError``; such roots are watched by ``DeepWatcher``. The
kernel's watch limit is produced for real in a user namespace of our own
(``/proc/sys/user/max_inotify_watches`` there is ours to lower, and only counts there).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from lineaged.store import DB_NAME
from lineaged.watching.deepwatch import DeepWatcher, deeper_than
from tests.conftest import REPO, DaemonProcess, health_status, short_tmp_dir
from tests.helpers import EngineHarness, b3, live_digests, wait_for


def make_deep(top: Path, levels: int) -> Path:
    """``top/d/d/.../d`` ``levels`` deep, made iteratively (os.makedirs recurses)."""
    top.mkdir(exist_ok=True)
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(levels):
            with contextlib.suppress(FileExistsError):
                os.mkdir("d", dir_fd=fd)
            child = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = child
    finally:
        os.close(fd)
    return top.joinpath(*(["d"] * levels))


def remove_deep(top: Path) -> None:
    """``rm -rf``: shutil.rmtree recurses once per level too."""
    subprocess.run(["rm", "-rf", "--", str(top)], check=True)


@pytest.fixture(autouse=True)
def no_deep_leftovers(tmp_path: Path) -> Iterator[None]:
    """Deep trees must go before pytest's own cleanup, whose rmtree would recurse."""
    yield
    remove_deep(tmp_path)


def test_deeper_than_is_iterative(tmp_path: Path) -> None:
    make_deep(tmp_path / "t", 1500)
    assert deeper_than(str(tmp_path), 1000)
    assert not deeper_than(str(tmp_path), 1501)


def test_a_tree_1000_levels_deep_is_indexed_and_watched(tmp_path: Path) -> None:
    h = EngineHarness(tmp_path)
    bottom = make_deep(h.data / "deep", 1000)
    (bottom / "old.csv").write_bytes(b"at the bottom\n")
    h.start()
    try:
        live = live_digests(h.db)
        assert live[str(bottom / "old.csv")] == b3(b"at the bottom\n")
        watcher = h.engine.supervision._watchers[str(h.data)]
        assert isinstance(watcher, DeepWatcher)
        assert h.root(h.data).health == "ok" and not h.root(h.data).polling
        # Watched, not found by a later scan (periodic scans are off in the harness).
        (bottom / "new.csv").write_bytes(b"new at the bottom\n")
        h.expect(bottom / "new.csv", b"new at the bottom\n")
        (h.data / "top.csv").write_bytes(b"top\n")
        h.expect(h.data / "top.csv", b"top\n")
        # Shallow again: back to watchdog.
        remove_deep(h.data / "deep")
        h.expect(bottom / "new.csv", None)
        h.engine.supervision._scan_wanted.set()
        wait_for(
            lambda: not isinstance(h.engine.supervision._watchers.get(str(h.data)), DeepWatcher),
            what="the root back on watchdog",
        )
        (h.data / "after.csv").write_bytes(b"after\n")
        h.expect(h.data / "after.csv", b"after\n")
    finally:
        h.stop()


def test_a_deep_tree_made_while_watching_is_watched(tmp_path: Path) -> None:
    h = EngineHarness(tmp_path).start()
    try:
        # Made elsewhere and moved in at once: watchdog's dispatcher thread dies of the
        # RecursionError (its observer still looks alive); the engine notices, watches the
        # root with DeepWatcher and rescans it.
        outside = make_deep(tmp_path / "outside", 1000)
        (outside / "f.csv").write_bytes(b"one\n")
        (tmp_path / "outside" / "d").rename(h.data / "d")
        bottom = h.data.joinpath(*(["d"] * 1000))
        h.expect(bottom / "f.csv", b"one\n", timeout=60)
        wait_for(
            lambda: isinstance(h.engine.supervision._watchers.get(str(h.data)), DeepWatcher),
            timeout=30,
            what="the deep-tree watcher",
        )
        (bottom / "f.csv").write_bytes(b"two\n")
        h.expect(bottom / "f.csv", b"two\n")
        assert h.root(h.data).health == "ok"
    finally:
        h.stop()


def _unshare_works() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "-U", "-r", "sh", "-c", "echo 50 > /proc/sys/user/max_inotify_watches"],
        capture_output=True,
    )
    return probe.returncode == 0


@pytest.fixture
def limited_daemon() -> Iterator[DaemonProcess]:
    if not _unshare_works():
        pytest.skip("needs unshare(1) and user namespaces to lower the inotify watch limit")
    base = short_tmp_dir()
    daemon = DaemonProcess.__new__(DaemonProcess)
    # The fixture's Popen, wrapped in a user namespace with 300 watches.
    daemon.base = base
    daemon.socket = base / "run" / "lineaged.sock"
    daemon.state_dir = base / "state"
    daemon.roots = {"data": base / "data"}
    daemon.data.mkdir(parents=True)
    daemon.log = base / "daemon.log"
    daemon._clients = []
    daemon.args = [
        "--state-dir", str(daemon.state_dir), "--socket", str(daemon.socket),
        "--watch", f"{daemon.data}:data", "--settle-ms", "50", "--log-level", "debug",
    ]  # fmt: skip
    script = 'echo 300 > /proc/sys/user/max_inotify_watches && exec "$@"'
    with open(daemon.log, "wb") as log:
        daemon.proc = subprocess.Popen(
            ["unshare", "-U", "-r", "sh", "-c", script, "sh",
             sys.executable, "-m", "lineaged", *daemon.args],
            stdout=log, stderr=log, cwd=REPO,
        )  # fmt: skip
    try:
        daemon.wait_serving()
        yield daemon
        daemon.finish()
    finally:
        if daemon.alive():
            daemon.proc.kill()
            daemon.proc.wait()
        remove_deep(base)


def test_watch_limit_polls_only_the_part_it_cannot_watch_and_clears(
    limited_daemon: DaemonProcess,
) -> None:
    daemon = limited_daemon
    client = daemon.client()
    bottom = make_deep(daemon.data / "deep", 1000)
    (bottom / "f.csv").write_bytes(b"polled\n")

    def health() -> str:
        return client.status().roots[0].health

    try:
        wait_for(lambda: "watch limit reached:" in health(), timeout=60, what="the limit reported")
    except AssertionError:
        print(daemon.log_text()[-6000:])
        raise
    text = health()
    # Which part: a directory inside the deep tree, with everything below it.
    polled = re.search(r"inotify watch limit reached: (\S+) ", text)
    assert polled is not None, text
    assert polled.group(1).startswith(str(daemon.data / "deep" / "d")), text
    assert client.status().roots[0].polling
    wait_for(
        lambda: (
            live_digests(daemon.state_dir / DB_NAME).get(str(bottom / "f.csv")) == b3(b"polled\n")
        ),
        timeout=60,
        what="the file at the bottom found by polling",
    )
    # The rest of the root is still watched by inotify.
    (daemon.data / "top.csv").write_bytes(b"top\n")
    wait_for(
        lambda: str(daemon.data / "top.csv") in live_digests(daemon.state_dir / DB_NAME),
        what="a file at the top",
    )
    remove_deep(daemon.data / "deep")
    wait_for(lambda: health() == "ok", timeout=60, what="the health message cleared")
    assert not client.status().roots[0].polling
    (daemon.data / "after.csv").write_bytes(b"after\n")
    wait_for(
        lambda: str(daemon.data / "after.csv") in live_digests(daemon.state_dir / DB_NAME),
        what="a file after the deep tree went",
    )


def test_a_500_level_tree_does_not_flood_the_log(
    make_daemon: Callable[..., DaemonProcess],
) -> None:
    daemon = make_daemon()
    try:
        before = daemon.log_text().count(" INFO ")
        bottom = make_deep(daemon.data / "deep", 500)
        (bottom / "f.csv").write_bytes(b"deep\n")
        wait_for(
            lambda: (
                live_digests(daemon.state_dir / DB_NAME).get(str(bottom / "f.csv")) == b3(b"deep\n")
            ),
            timeout=60,
            what="the file 500 levels down",
        )
        assert health_status(daemon.socket) is not None
        lines = daemon.log_text().count(" INFO ") - before
        assert lines < 50, f"{lines} INFO lines for one 500-level tree"
    finally:
        remove_deep(daemon.data / "deep")

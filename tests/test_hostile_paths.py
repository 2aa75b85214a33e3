"""Paths that try to leave a root: ``../``, absolute paths elsewhere, links out of a root, a
link loop. The daemon must never open anything outside its roots on a client's behalf, and
must say why it refused.

"Never opened" is observed, not assumed: an inotify watch on the outside directory reports
every open of the secret file while the daemon handles the requests.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from lineage_core.errors import InvalidArgument, NotFound, PathOutsideRoots
from lineage_core.models import Access, AccessMode, RunStart, RunStatus
from watchdog.events import FileOpenedEvent, FileSystemEvent, FileSystemEventHandler
from watchdog.observers.inotify import InotifyObserver

from tests.conftest import DaemonProcess, short_tmp_dir
from tests.helpers import wait_for


class OpenSpy(FileSystemEventHandler):
    """Counts opens of files in a directory (IN_OPEN), whoever opens them."""

    def __init__(self) -> None:
        self.opened: list[str] = []
        self.lock = threading.Lock()

    def on_any_event(self, event: FileSystemEvent) -> None:
        if isinstance(event, FileOpenedEvent):
            with self.lock:
                self.opened.append(str(event.src_path))


@pytest.fixture
def outside() -> Iterator[tuple[Path, OpenSpy]]:
    base = short_tmp_dir()
    secret = base / "secret.txt"
    secret.write_bytes(b"not yours\n")
    spy = OpenSpy()
    observer = InotifyObserver()
    observer.schedule(spy, str(base), recursive=False)
    observer.start()
    try:
        # Prove the spy sees opens before relying on it seeing none.
        with open(secret, "rb"):
            pass
        wait_for(lambda: spy.opened, what="the spy to see an open")
        spy.opened.clear()
        yield base, spy
    finally:
        observer.stop()
        observer.join()
        shutil.rmtree(base, ignore_errors=True)


def _access(path: str, mode: AccessMode = AccessMode.READ) -> Access:
    now = time.time_ns()
    return Access(path=path, mode=mode, first_at=now, last_at=now)


def test_paths_that_escape_a_root_are_never_opened(
    daemon: DaemonProcess, outside: tuple[Path, OpenSpy]
) -> None:
    base, spy = outside
    secret = base / "secret.txt"
    data = daemon.data
    (data / "link").symlink_to(secret)
    (data / "dirlink").symlink_to(base, target_is_directory=True)
    (data / "loop").symlink_to(data / "loop")
    client = daemon.client()
    run = client.begin_run(RunStart(name="hostile", cwd=str(data)))

    refused = {
        str(data / "link"): "symbolic link",
        str(data / "dirlink" / "secret.txt"): "symbolic link",
    }
    for path, reason in refused.items():
        for mode in AccessMode:
            with pytest.raises(PathOutsideRoots, match=reason):
                client.record_accesses(run.run_id, [_access(path, mode)])

    # `../` is refused at the edge with the path it would name; an absolute path outside the
    # roots is recorded only with a digest the client computed, never by opening it.
    climbing = str(data) + "/../" + os.path.relpath(secret, data.parent)
    with pytest.raises(InvalidArgument, match="normalised"):
        client.record_accesses(run.run_id, [_access(climbing)])
    with pytest.raises(InvalidArgument, match="absolute"):
        client.record_accesses(run.run_id, [_access("data/../secret.txt")])
    client.record_accesses(
        run.run_id, [_access(str(secret)), _access(str(secret), AccessMode.WRITE)]
    )
    client.record_accesses(run.run_id, [_access(str(data / "loop"))])
    client.end_run(run.run_id, status=RunStatus.SUCCEEDED, exit_code=0)

    # The watcher sees the links being created; it must not follow them either.
    (data / "late-link").symlink_to(secret)
    marker = data / "marker.txt"
    marker.write_bytes(b"after the links\n")

    def indexed() -> bool:
        try:
            return bool(client.history(str(marker)).items)
        except NotFound:
            return False

    wait_for(indexed, what="the marker to be indexed")
    graph = client.trace(str(marker))
    assert graph.versions

    shown = client.get_run(run.run_id)
    assert shown.status is RunStatus.SUCCEEDED
    # inotify delivers events in order: once our own open of a sentinel is seen, any open
    # the daemon made of the secret before it has been seen too.
    sentinel = base / "sentinel"
    sentinel.write_bytes(b"")
    with open(sentinel, "rb"):
        pass
    wait_for(lambda: str(sentinel) in spy.opened, what="the sentinel's open event")
    assert [p for p in spy.opened if p != str(sentinel)] == [], (
        f"the daemon opened files outside its roots: {spy.opened}"
    )
    assert daemon.alive()

"""Reading files under a root costs the daemon nothing: the watcher asks inotify only for
events that can change content or names, so opens and no-write closes never reach it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import ClassVar

import pytest
from lineage_core.models import ChangeKind, Role, Root
from watchdog.events import FileSystemEvent

from lineaged.config import DEFAULT_IGNORE
from lineaged.watching import watcher as watcher_module
from lineaged.watching.indexer import IgnoreRules, WatchedRoot
from lineaged.watching.watcher import Change, RootWatcher
from tests.helpers import wait_for

FILES = 300


class _Recording(watcher_module._Handler):
    """The real handler, plus a note of every event watchdog delivered to it."""

    delivered: ClassVar[list[FileSystemEvent]] = []

    def on_any_event(self, event: FileSystemEvent) -> None:
        self.delivered.append(event)
        super().on_any_event(event)


def _watch(path: Path, put: list[Change]) -> RootWatcher:
    root = Root(path=str(path), role=Role.DATA, id=1)
    return RootWatcher(WatchedRoot(root, 1, IgnoreRules(DEFAULT_IGNORE)), put.append)


def test_a_burst_of_reads_under_a_root_delivers_no_events(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    delivered: ClassVar[list[FileSystemEvent]] = []
    monkeypatch.setattr(_Recording, "delivered", delivered)
    monkeypatch.setattr(watcher_module, "_Handler", _Recording)
    files = [tmp_path / f"f{index:04d}.bin" for index in range(FILES)]
    for file in files:
        file.write_bytes(b"x" * 256)
    changes: list[Change] = []
    with _watch(tmp_path, changes) as watcher:
        assert watcher.problem == "" and not watcher.polling
        for file in files:
            with open(file, "rb") as stream:
                stream.read()
        for file in files[:10]:
            fd = os.open(file, os.O_RDONLY)  # a raw descriptor too: IN_OPEN, IN_CLOSE_NOWRITE
            os.close(fd)
        # inotify keeps its queue in order, and watchdog its dispatch: once the sentinel's
        # creation is delivered, every event the reads caused has been delivered before it.
        sentinel = tmp_path / "sentinel"
        sentinel.write_bytes(b"done")
        wait_for(lambda: any(c.path == str(sentinel) for c in changes), what="the sentinel's event")
    read = {str(file) for file in files}
    assert [e for e in delivered if e.src_path in read] == []
    assert {c.path for c in changes} == {str(sentinel)}
    assert changes[0].seen is ChangeKind.CREATED


def test_writes_renames_and_deletes_are_still_delivered(tmp_path: Path) -> None:
    kept = tmp_path / "kept.txt"
    kept.write_bytes(b"v1")
    changes: list[Change] = []
    with _watch(tmp_path, changes):
        kept.write_bytes(b"v2")  # IN_MODIFY and IN_CLOSE_WRITE
        (tmp_path / "tmp").write_bytes(b"new")
        os.replace(tmp_path / "tmp", tmp_path / "renamed.txt")
        (tmp_path / "sub").mkdir()
        (tmp_path / "sub" / "inner.txt").write_bytes(b"inner")
        kept.unlink()
        expected = {
            (str(kept), ChangeKind.MODIFIED),
            (str(tmp_path / "tmp"), ChangeKind.MOVED),
            (str(tmp_path / "renamed.txt"), ChangeKind.MOVED),
            (str(tmp_path / "sub"), ChangeKind.CREATED),
            (str(tmp_path / "sub" / "inner.txt"), ChangeKind.CREATED),
            (str(kept), ChangeKind.DELETED),
        }
        wait_for(lambda: expected <= {(c.path, c.seen) for c in changes}, what="every change seen")

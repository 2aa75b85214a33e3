"""The daemon core end to end, in process: real watchdog observers on real directories, the
real pipeline, hasher and SQLite store. Every expectation waits for a condition with a deadline."""

from __future__ import annotations

import os
import subprocess
import tarfile
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from lineage_core import hasher
from watchdog.observers import inotify_c

from lineaged.engine import Engine
from tests.helpers import B3SUM, EngineHarness, b3, history, live_digests, wait_for

Harness = EngineHarness


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    h = Harness(tmp_path).start()
    yield h
    h.stop()


def test_b3sum_cross_check_is_available(tmp_path: Path) -> None:
    """The digests the other tests compare with come from b3sum itself, and agree with ours."""
    if not B3SUM:
        pytest.skip(
            "b3sum not installed: digests are cross-checked against the blake3 package only"
        )
    sample = tmp_path / "sample.bin"
    sample.write_bytes(bytes(range(256)) * 4099)  # crosses BLAKE3's 1 KiB chunks unevenly
    printed = subprocess.run(
        [B3SUM, "--no-names", str(sample)], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert printed == hasher.hash_file(str(sample)).digest


def test_create_modify_delete(harness: Harness) -> None:
    target = harness.data / "train.csv"
    target.write_bytes(b"a,b\n1,2\n")
    harness.expect(target, b"a,b\n1,2\n")
    target.write_bytes(b"a,b\n1,2\n3,4\n")
    harness.expect(target, b"a,b\n1,2\n3,4\n")
    target.unlink()
    harness.expect(target, None)
    rows = history(harness.db, target)
    assert [r[0] for r in rows] == [b3(b"a,b\n1,2\n"), b3(b"a,b\n1,2\n3,4\n")]
    assert rows[0][1] == "created" and rows[0][2] == "modified"
    assert rows[1][2] == "deleted"


def test_same_size_rewrite_with_mtime_put_back(harness: Harness) -> None:
    target = harness.data / "weights.bin"
    target.write_bytes(b"A" * 4096)
    harness.expect(target, b"A" * 4096)
    st = target.stat()
    with open(target, "r+b") as f:
        f.write(b"B" * 4096)
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert target.stat().st_size == st.st_size and target.stat().st_mtime_ns == st.st_mtime_ns
    harness.expect(target, b"B" * 4096)


def test_rename_inside_root_and_moves_across_the_boundary(harness: Harness) -> None:
    b = harness.data / "sub" / "b.csv"
    b.parent.mkdir()  # before the file, so its watch exists when the rename happens
    a = harness.data / "a.csv"
    a.write_bytes(b"alpha")
    harness.expect(a, b"alpha")
    a.rename(b)
    harness.expect(b, b"alpha")
    harness.expect(a, None)
    assert history(harness.db, a)[-1][2] == "moved"
    assert history(harness.db, b)[-1][1] == "moved"

    outside = harness.tmp / "outside.csv"
    b.rename(outside)  # out of the root
    harness.expect(b, None)
    incoming = harness.tmp / "incoming.csv"
    incoming.write_bytes(b"from elsewhere")
    dest = harness.models / "incoming.csv"
    incoming.rename(dest)  # into a root
    harness.expect(dest, b"from elsewhere")
    assert str(outside) not in live_digests(harness.db)


def test_atomic_save_records_one_version_and_nothing_for_the_temp_file(harness: Harness) -> None:
    target = harness.models / "model.pkl"
    target.write_bytes(b"v1")
    harness.expect(target, b"v1")
    # tempfile's random names match no ignore pattern: the settle logic must handle it.
    fd, temp = tempfile.mkstemp(dir=harness.models, prefix=".model-")
    with os.fdopen(fd, "wb") as f:
        f.write(b"v2" * 1000)
    os.replace(temp, target)
    harness.expect(target, b"v2" * 1000)
    assert [r[0] for r in history(harness.db, target)] == [b3(b"v1"), b3(b"v2" * 1000)]
    assert history(harness.db, temp) == []


def test_editor_style_save(harness: Harness) -> None:
    target = harness.data / "notes.txt"
    target.write_bytes(b"first draft\n")
    harness.expect(target, b"first draft\n")
    backup = harness.data / "notes.txt~"
    target.rename(backup)
    target.write_bytes(b"second draft\n")
    backup.unlink()
    harness.expect(target, b"second draft\n")
    assert [r[0] for r in history(harness.db, target)] == [
        b3(b"first draft\n"),
        b3(b"second draft\n"),
    ]
    assert history(harness.db, backup) == []


def test_tree_extracted_at_once(harness: Harness) -> None:
    source = harness.tmp / "src"
    for i in range(300):
        p = source / f"d{i % 7}" / f"e{i % 3}" / f"f{i}.txt"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(f"row {i}\n".encode() * (i + 1))
    archive = harness.tmp / "tree.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(source, arcname="tree")
    with tarfile.open(archive) as tar:
        tar.extractall(harness.data, filter="data")
    harness.expect_truth()
    assert len(live_digests(harness.db)) == 300


def test_directory_moved_in_and_deleted(harness: Harness) -> None:
    source = harness.tmp / "batch"
    (source / "inner").mkdir(parents=True)
    for i in range(20):
        (source / "inner" / f"{i}.bin").write_bytes(os.urandom(100 + i))
    source.rename(harness.data / "batch")
    harness.expect_truth()
    assert len(live_digests(harness.db)) == 20
    for p in (harness.data / "batch" / "inner").iterdir():
        p.unlink()
    (harness.data / "batch" / "inner").rmdir()
    harness.expect_truth()
    assert live_digests(harness.db) == {}


@pytest.mark.parametrize(
    "size",
    [0, 1, 1023, 1024, 1025, 65535, 65536, 65537, (1 << 20) + 1, hasher.MT_THRESHOLD + 1],
)
def test_sizes_at_the_boundaries(harness: Harness, size: int) -> None:
    data = os.urandom(size)
    target = harness.data / f"blob-{size}"
    target.write_bytes(data)
    harness.expect(target, data)


def test_racy_stat_is_caught(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Same stat key, different content: the racy window makes the next look hash again."""
    h = Harness(tmp_path)
    target = h.data / "racy.bin"
    target.write_bytes(b"X" * 64)
    h.engine.run_once()
    first = live_digests(h.db)[str(target)]
    key_before = os.stat(target)
    # Rewrite in place and force every stat to report the old key: a write in the same
    # timestamp tick that the filesystem could not tell apart.
    with open(target, "r+b") as f:
        f.write(b"Y" * 64)
    real_stat = os.stat

    class Lying:
        def __init__(self, st: os.stat_result) -> None:
            self._st = st

        def __getattr__(self, name: str) -> object:
            return getattr(self._st, name)

    def lying_fstat(fd: int) -> object:
        st = real_stat(fd)
        return Lying(key_before) if st.st_ino == key_before.st_ino else st

    monkeypatch.setattr(hasher.os, "fstat", lying_fstat)
    monkeypatch.setattr(
        "lineaged.watching.scanner.os.scandir", _scandir_with_stat(key_before, os.scandir)
    )
    h.engine = Engine(h.config, h.store)
    h.engine.run_once()
    assert first == b3(b"X" * 64)
    assert live_digests(h.db)[str(target)] == b3(b"Y" * 64)
    h.store.close()


def _scandir_with_stat(fake: os.stat_result, real_scandir):  # type: ignore[no-untyped-def]
    class Entry:
        def __init__(self, entry: os.DirEntry[str]) -> None:
            self._entry = entry
            self.name = entry.name
            self.path = entry.path

        def is_dir(self, *, follow_symlinks: bool = True) -> bool:
            return self._entry.is_dir(follow_symlinks=follow_symlinks)

        def is_file(self, *, follow_symlinks: bool = True) -> bool:
            return self._entry.is_file(follow_symlinks=follow_symlinks)

        def stat(self, *, follow_symlinks: bool = True) -> os.stat_result:
            st = self._entry.stat(follow_symlinks=follow_symlinks)
            return fake if st.st_ino == fake.st_ino else st

    class Wrapper:
        def __init__(self, path: str) -> None:
            self._it = real_scandir(path)

        def __enter__(self) -> Iterator[Entry]:
            return (Entry(e) for e in self._it.__enter__())

        def __exit__(self, *exc: object) -> None:
            self._it.__exit__(*exc)

    return Wrapper


def test_changes_while_down_are_found_at_startup(tmp_path: Path) -> None:
    h = Harness(tmp_path).start()
    keep, change, drop = h.data / "keep", h.data / "change", h.data / "drop"
    for p in (keep, change, drop):
        p.write_bytes(p.name.encode())
    h.expect_truth()
    h.stop()
    change.write_bytes(b"changed while down")
    drop.unlink()
    (h.models / "new").write_bytes(b"new while down")
    h2 = Harness(tmp_path).start()
    try:
        h2.expect_truth()
        assert history(h2.db, drop)[-1][2] == "deleted"
        assert [r[1] for r in history(h2.db, change)] == ["created", "scan"]
    finally:
        h2.stop()


def test_unchanged_rescan_hashes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    h = Harness(tmp_path)
    for i in range(50):
        (h.data / f"{i}.txt").write_bytes(b"x" * i)
    first = h.engine.run_once()
    assert first.hashed == 50
    # Age the cache so no entry is inside the racy window.
    h.store._wc.execute("UPDATE artifacts SET checked_at = checked_at + 10000000000")
    second = Engine(h.config, h.store).run_once()
    assert second.files == 50 and second.hashed == 0 and second.new_versions == 0
    h.store.close()


def test_queue_overflow_is_reconciled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Stall inotify reading so the kernel queue overflows, then check against ground truth.

    The stall is the one fault injected (into watchdog's reader, which has no public seam);
    the overflow itself is the kernel's, and watchdog reports it as an EventsLostEvent.
    """
    gate = threading.Event()
    stalls: list[int] = []
    real_read = inotify_c.InotifyFD._read_event_buffer

    def stalled(self: inotify_c.InotifyFD, *args: int, **kwargs: int) -> bytes:
        if not gate.is_set():
            stalls.append(1)
            gate.wait()
        return real_read(self, *args, **kwargs)

    monkeypatch.setattr(inotify_c.InotifyFD, "_read_event_buffer", stalled)
    h = Harness(tmp_path)
    h.engine.start()
    try:
        wait_for(lambda: h.engine.serving, what="initial scan")
        limit = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
        # Each created file queues at least three events (create, modify, close-write).
        count = limit // 3 + 500
        for i in range(count):
            (h.data / f"f{i:06d}").write_bytes(b"%d" % i)
        scans_before = h.engine.status().scan.scans_completed
        assert stalls, "the reader stall was not reached: watchdog reads inotify another way"
        gate.set()
        wait_for(
            lambda: h.engine.status().scan.scans_completed > scans_before,
            timeout=60,
            what="a reconcile scan after the overflow",
        )
        h.expect_truth()
        assert len(live_digests(h.db)) == count
    finally:
        gate.set()
        h.stop()


def test_names_that_are_not_utf8_are_skipped_not_fatal(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    bad = os.path.join(os.fsencode(harness.data), b"bad-\xff-name.csv")
    with open(bad, "wb") as f:
        f.write(b"undecodable name\n")
    os.mkdir(os.path.join(os.fsencode(harness.data), b"dir-\xfe"))
    good = harness.data / "good.csv"
    good.write_bytes(b"fine\n")
    harness.expect(good, b"fine\n")
    stats = harness.engine.scanner.scan(harness.engine.roots.roots[0])
    assert stats.files == 1
    assert "not valid UTF-8" in caplog.text
    assert "Traceback" not in caplog.text
    assert set(live_digests(harness.db)) == {str(good)}

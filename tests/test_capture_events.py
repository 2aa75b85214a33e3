"""resolve_accesses: the rules that turn raw traced events into a run's accesses."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from blake3 import blake3
from lineage_client.capture import hash_external
from lineage_client.capture.events import (
    RawEvents,
    build_accesses,
    excluded_prefixes,
    is_excluded,
    resolve_accesses,
)
from lineage_core.models import Access, AccessMode

R, W = AccessMode.READ, AccessMode.WRITE


def keys(events: RawEvents, excluded: tuple[str, ...] = ()) -> set[tuple[str, AccessMode]]:
    """(path, mode) of the accesses resolved from ``events``."""
    accesses, _ = resolve_accesses(events, excluded=excluded)
    return {(access.path, access.mode) for access in accesses}


def test_temp_file_renamed_over_the_target_is_a_write_of_the_target(tmp_path: Path) -> None:
    target = tmp_path / "model.pkl"
    target.write_text("new")
    events = RawEvents()
    events.add_read(str(target), 1, 1)  # the old version, read before it was replaced
    events.add_write(str(tmp_path / "model.pkl.tmp"), 2, 3)
    events.add_rename(4, str(tmp_path / "model.pkl.tmp"), str(target))
    events.add_read(str(target), 5, 6)  # reading back its own output: not an input
    accesses, _ = resolve_accesses(events)
    assert [(a.path, a.mode, a.first_at, a.last_at) for a in accesses] == [
        (str(target), R, 1, 4),  # ends when the run replaced it
        (str(target), W, 2, 4),
    ]


def test_a_folder_renamed_into_place_carries_its_files(tmp_path: Path) -> None:
    final = tmp_path / "ckpt"
    final.mkdir()
    (final / "weights.bin").write_text("w")
    events = RawEvents()
    events.add_write(str(tmp_path / "ckpt.partial" / "weights.bin"), 1, 2)
    events.add_rename(3, str(tmp_path / "ckpt.partial"), str(final))
    assert keys(events) == {(str(final / "weights.bin"), W)}


def test_created_then_deleted_is_no_access(tmp_path: Path) -> None:
    events = RawEvents()
    events.add_write(str(tmp_path / "scratch"), 1, 1)
    events.add_read(str(tmp_path / "scratch"), 2, 2)
    events.add_remove(3, str(tmp_path / "scratch"))
    assert keys(events) == set()


def test_failed_opens_are_dropped_but_consumed_inputs_stay(tmp_path: Path) -> None:
    events = RawEvents()
    events.add_read(str(tmp_path / "never-existed.cfg"), 1, 1)
    events.add_read(str(tmp_path / "inbox.csv"), 2, 2)
    events.add_remove(3, str(tmp_path / "inbox.csv"))  # read, then deleted by the run
    assert keys(events) == {(str(tmp_path / "inbox.csv"), R)}


def test_directories_and_system_paths_are_not_accesses(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("a")
    (tmp_path / "__pycache__").mkdir()
    (tmp_path / "__pycache__" / "m.cpython-311.pyc").write_text("")
    state = tmp_path / "state"
    state.mkdir()
    (state / "db").write_text("")
    events = RawEvents()
    for path in (
        str(tmp_path),  # a directory
        "/etc/hostname",
        "/usr/lib/os-release",
        "/proc/self/status",
        str(tmp_path / "__pycache__" / "m.cpython-311.pyc"),
        str(state / "db"),
        str(tmp_path / "a.csv"),
    ):
        events.add_read(path, 1, 1)
    assert keys(events, excluded=(str(state),)) == {(str(tmp_path / "a.csv"), R)}
    prefixes = excluded_prefixes()
    assert is_excluded("/lib64/ld-linux-x86-64.so.2", prefixes)
    assert is_excluded("/tmp/pymp-abc/listener", prefixes)
    assert not is_excluded("/usrdata/a.csv", prefixes)


def test_paths_are_canonical_and_merge(tmp_path: Path) -> None:
    real_dir = tmp_path / "real"
    real_dir.mkdir()
    (real_dir / "a.csv").write_text("a")
    (tmp_path / "link").symlink_to(real_dir)
    (tmp_path / "alias.csv").symlink_to(real_dir / "a.csv")
    events = RawEvents()
    events.add_read(str(tmp_path / "link" / "a.csv"), 5, 6)
    events.add_read(str(tmp_path / "alias.csv"), 1, 2)
    events.add_read(f"{tmp_path}/real/../real/./a.csv", 3, 9)
    accesses, _ = resolve_accesses(events)
    assert [(a.path, a.mode, a.first_at, a.last_at) for a in accesses] == [
        (os.path.realpath(real_dir / "a.csv"), R, 1, 9)
    ]


def test_sources_are_existing_files_outside_excluded_dirs(tmp_path: Path) -> None:
    (tmp_path / "train.py").write_text("")
    events = RawEvents()
    events.add_source(str(tmp_path / "train.py"), 7)
    events.add_source(str(tmp_path / "train.py"), 3)
    events.add_source(str(tmp_path / "deleted.py"), 1)
    events.add_source("/usr/lib/python3/dist-packages/six.py", 1)
    _, sources = resolve_accesses(events)
    assert sources == {str(tmp_path / "train.py"): 3}


def test_built_accesses_equal_plain_ones(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("a")
    (tmp_path / "b.csv").write_text("b")
    events = RawEvents()
    events.add_read(str(tmp_path / "a.csv"), 1, 2)
    events.add_write(str(tmp_path / "b.csv"), 3, 4)
    events.add_read(str(tmp_path / "b.csv"), 0, 1)
    accesses, _ = resolve_accesses(events)
    assert accesses == [
        Access(str(tmp_path / "a.csv"), R, 1, 2),
        Access(str(tmp_path / "b.csv"), R, 0, 1),
        Access(str(tmp_path / "b.csv"), W, 3, 4),
    ]
    assert hash(accesses[0]) == hash(Access(str(tmp_path / "a.csv"), R, 1, 2))
    assert [a.role for a in accesses] == ["data"] * 3


def test_hash_external_fills_digest_size_and_mtime(tmp_path: Path) -> None:
    target = tmp_path / "outside.bin"
    target.write_bytes(b"\x00\x01" * 5000)
    access = Access(str(target), R, 1, 2)
    hashed = hash_external(access)
    assert hashed.digest == blake3(target.read_bytes()).hexdigest()
    assert (hashed.size, hashed.mtime_ns) == (10000, target.stat().st_mtime_ns)
    assert (hashed.path, hashed.mode, hashed.first_at, hashed.last_at) == (str(target), R, 1, 2)
    if shutil.which("b3sum"):
        done = subprocess.run(["b3sum", "--no-names", str(target)], capture_output=True, text=True)
        assert done.stdout.strip() == hashed.digest
    gone = Access(str(tmp_path / "gone.bin"), R, 1, 2)
    assert hash_external(gone) == gone


def test_a_folder_of_many_paths_is_listed_with_the_same_rules(tmp_path: Path) -> None:
    # Enough paths in one folder for the one-listing survey: it must decide as lstat would.
    data = tmp_path / "data"
    data.mkdir()
    events = RawEvents()
    expected: set[tuple[str, AccessMode]] = set()
    for index in range(100):
        path = data / f"f{index:03d}.csv"
        path.write_text("x")
        events.add_read(str(path), index, index + 1)
        expected.add((str(path), R))
    (data / "sub").mkdir()
    os.mkfifo(data / "pipe")
    (data / "alias.csv").symlink_to(data / "f000.csv")
    (data / "dangling.csv").symlink_to(data / "nowhere.csv")
    for name in ("sub", "pipe", "alias.csv", "dangling.csv", "missing.csv"):
        events.add_read(str(data / name), 200, 201)
    events.add_write(str(data / "written.csv"), 300, 301)
    (data / "written.csv").write_text("w")
    expected.add((str(data / "written.csv"), W))
    accesses, _ = resolve_accesses(events)
    # The symlink is canonical as its target, merged with the target's own read.
    assert {(a.path, a.mode) for a in accesses} == expected
    first = next(a for a in accesses if a.path == str(data / "f000.csv"))
    assert (first.first_at, first.last_at) == (0, 201)


def test_code_reads_merge_with_data_reads_and_keep_their_place(tmp_path: Path) -> None:
    spans = {
        R: {"/p/a.py": [5, 6], "/p/b.csv": [1, 2]},
        W: {"/p/a.py": [7, 8], "/p/0.csv": [3, 4]},
    }
    code = {"/p/a.py": (2, "d" * 64, 10, 11), "/p/c.py": (9, "e" * 64, 12, 13)}
    accesses = build_accesses(spans, code)
    assert accesses == [
        Access("/p/0.csv", W, 3, 4),
        Access("/p/a.py", R, 2, 6, "traced", "code", "d" * 64, 10, 11),
        Access("/p/a.py", W, 7, 8),
        Access("/p/b.csv", R, 1, 2),
        Access("/p/c.py", R, 9, 9, "traced", "code", "e" * 64, 12, 13),
    ]
    assert spans[R] == {"/p/a.py": [5, 6], "/p/b.csv": [1, 2]}  # not changed in place

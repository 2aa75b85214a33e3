"""lineage_core.hasher on real files: digests cross-checked, races forced through the test seam."""

from __future__ import annotations

import multiprocessing
import os
import shutil
import signal
import subprocess
import time
import types
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import pytest
from blake3 import blake3
from lineage_core import hasher
from lineage_core.errors import HashError, UnstableFile
from lineage_core.hasher import HashResult, hash_bytes, hash_file, hash_many
from lineage_core.models import StatKey

EMPTY_DIGEST = "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
B3SUM = shutil.which("b3sum")

Reference = Callable[[Path], str]


def _b3sum(path: Path) -> str:
    assert B3SUM is not None
    printed = subprocess.run(
        [B3SUM, "--no-names", str(path)], capture_output=True, text=True, check=True
    )
    return printed.stdout.strip()


def _package_digest(path: Path) -> str:
    return str(blake3(path.read_bytes(), max_threads=blake3.AUTO).hexdigest())


@pytest.fixture(scope="session")
def reference() -> Reference:
    """The independent digest: b3sum when installed, else the blake3 package on all bytes."""
    return _b3sum if B3SUM is not None else _package_digest


@pytest.fixture
def hook() -> Iterator[Callable[[Callable[[int], None]], None]]:
    """Install an ``_after_read_hook`` for one test and always remove it."""

    def install(function: Callable[[int], None]) -> None:
        hasher._after_read_hook = function

    yield install
    hasher._after_read_hook = None


# Not all zeros, not periodic at BLAKE3's 1 KiB chunk size, so chunking bugs change the digest.
_BLOCK = bytes((i * 7 + i // 251) % 256 for i in range(65521))


def _pattern(size: int, seed: int = 0) -> bytes:
    block = _BLOCK[seed % len(_BLOCK) :] + _BLOCK[: seed % len(_BLOCK)]
    return (block * (size // len(block) + 1))[:size]


def test_cross_check_uses_b3sum(tmp_path: Path) -> None:
    if B3SUM is None:
        pytest.skip("b3sum not installed; cross-checked against blake3 package only")
    path = tmp_path / "empty"
    path.write_bytes(b"")
    assert _b3sum(path) == EMPTY_DIGEST
    assert hash_file(path).digest == EMPTY_DIGEST


@pytest.mark.parametrize(
    "size",
    [
        0,
        1,
        1023,
        1024,
        1025,
        64 * 1024 - 1,
        64 * 1024,
        64 * 1024 + 1,
        hasher.MT_THRESHOLD - 1,
        hasher.MT_THRESHOLD,
        (1 << 20) + 1,
        hasher._CHUNK * 3 + 5,
        hasher._READ_AHEAD_MIN + hasher._CHUNK // 2 + 1,
    ],
)
def test_digest_matches_reference(tmp_path: Path, reference: Reference, size: int) -> None:
    path = tmp_path / f"file-{size}"
    path.write_bytes(_pattern(size))
    result = hash_file(path)
    assert result.digest == reference(path)
    assert result.digest == hash_bytes(path.read_bytes())
    assert result.stat_key == StatKey.from_stat(os.stat(path))
    assert len(result.digest) == 64 and result.digest == result.digest.lower()


def test_hash_bytes_known_values() -> None:
    assert hash_bytes(b"") == EMPTY_DIGEST
    # BLAKE3's official test vector for a 1-byte input (byte 0).
    assert hash_bytes(b"\x00") == "2d3adedff11b61f14c886e35afa036736dcd87a74d27b5c1510225d0f592e213"
    big = _pattern(hasher.MT_THRESHOLD * 2 + 3)
    assert hash_bytes(big) == blake3(big).hexdigest()


def test_sparse_file_hashes_its_zeros(tmp_path: Path, reference: Reference) -> None:
    path = tmp_path / "sparse"
    size = 40 << 20
    with path.open("wb") as out:
        out.truncate(size)
        out.seek(size // 3)
        out.write(b"data in the middle of a hole")
    result = hash_file(path)
    assert result.stat_key.size == size
    assert result.digest == reference(path)
    expected = bytearray(size)
    expected[size // 3 : size // 3 + 28] = b"data in the middle of a hole"
    assert result.digest == blake3(bytes(expected)).hexdigest()


@pytest.mark.parametrize("size", [3000, (1 << 20) + 7, hasher._READ_AHEAD_MIN + 11])
@pytest.mark.parametrize("rewrite", ["same size in place", "shorter", "longer"])
def test_rewritten_mid_hash_gives_a_complete_state(
    tmp_path: Path, hook: Callable[[Callable[[int], None]], None], size: int, rewrite: str
) -> None:
    path = tmp_path / "moving"
    first = _pattern(size, seed=1)
    second = {
        "same size in place": _pattern(size, seed=2),
        "shorter": _pattern(size // 2, seed=3),
        "longer": _pattern(size + 4097, seed=4),
    }[rewrite]
    path.write_bytes(first)
    calls: list[int] = []

    def rewrite_once(fd: int) -> None:
        calls.append(fd)
        assert os.fstat(fd).st_ino == os.stat(path).st_ino  # the seam sees our descriptor
        if len(calls) == 1:
            if rewrite == "same size in place":
                # No truncate: only the mtime/ctime can tell the hasher (same size, inode).
                writer = os.open(path, os.O_WRONLY)
                try:
                    os.pwrite(writer, second, 0)
                finally:
                    os.close(writer)
            else:
                path.write_bytes(second)

    hook(rewrite_once)
    result = hash_file(path)
    assert len(calls) == 2  # the first read was refused, the second one kept
    assert result.digest == blake3(second).hexdigest()
    assert result.stat_key == StatKey.from_stat(os.stat(path))


def test_same_size_write_within_one_timestamp_tick_is_not_missed(
    tmp_path: Path, hook: Callable[[Callable[[int], None]], None], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Kernels before 6.13 stamp files with a coarse clock (one tick = 4-10 ms), so a write
    # right after the hasher's first fstat can leave mtime and ctime as they were. This
    # kernel may stamp finer, so an fstat that lies (times cut to 10 ms) recreates that.
    path = tmp_path / "weights"
    first, second = _pattern(5000, seed=5), _pattern(5000, seed=6)
    path.write_bytes(first)
    real_fstat = os.fstat
    tick = 10_000_000

    def coarse_fstat(fd: int) -> object:
        st = real_fstat(fd)
        return types.SimpleNamespace(
            st_mode=st.st_mode,
            st_nlink=st.st_nlink,
            st_dev=st.st_dev,
            st_ino=st.st_ino,
            st_size=st.st_size,
            st_mtime_ns=st.st_mtime_ns // tick * tick,
            st_ctime_ns=st.st_ctime_ns // tick * tick,
        )

    def rewrite_in_place_once(fd: int) -> None:
        if path.read_bytes() == first:
            writer = os.open(path, os.O_WRONLY)
            try:
                os.pwrite(writer, second, 0)
            finally:
                os.close(writer)

    monkeypatch.setattr(os, "fstat", coarse_fstat)
    hook(rewrite_in_place_once)
    result = hash_file(path)
    assert result.digest == blake3(second).hexdigest()


def test_replaced_by_rename_hashes_what_the_path_holds(
    tmp_path: Path, hook: Callable[[Callable[[int], None]], None]
) -> None:
    path = tmp_path / "model.bin"
    path.write_bytes(b"old weights")
    replacement = tmp_path / "model.bin.tmp"
    replacement.write_bytes(b"new weights, saved atomically")

    def replace_once(fd: int) -> None:
        if replacement.exists():
            os.replace(replacement, path)

    hook(replace_once)
    result = hash_file(path)
    assert result.digest == blake3(b"new weights, saved atomically").hexdigest()
    assert result.stat_key == StatKey.from_stat(os.stat(path))


def test_file_changing_every_time_is_unstable(
    tmp_path: Path, hook: Callable[[Callable[[int], None]], None]
) -> None:
    path = tmp_path / "log.txt"
    path.write_bytes(b"line\n")
    calls: list[int] = []

    def append(fd: int) -> None:
        calls.append(fd)
        with path.open("ab") as out:
            out.write(b"another line\n")

    hook(append)
    with pytest.raises(UnstableFile):
        hash_file(path, retries=3)
    assert len(calls) == 3


def test_vanished_file(tmp_path: Path, hook: Callable[[Callable[[int], None]], None]) -> None:
    with pytest.raises(FileNotFoundError):
        hash_file(tmp_path / "never-there")
    path = tmp_path / "doomed"
    path.write_bytes(b"soon gone")
    hook(lambda fd: path.unlink())
    with pytest.raises(FileNotFoundError):
        hash_file(path)


def test_directory_symlink_and_fifo_are_refused(tmp_path: Path) -> None:
    with pytest.raises(IsADirectoryError):
        hash_file(tmp_path)
    target = tmp_path / "target"
    target.write_bytes(b"outside")
    link = tmp_path / "link"
    link.symlink_to(target)
    with pytest.raises(OSError) as refused:
        hash_file(link)
    assert not isinstance(refused.value, FileNotFoundError)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(OSError):  # must not block waiting for a writer
        hash_file(fifo)


def test_unreadable_file_raises_permission_error(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root reads files whatever their mode")
    path = tmp_path / "secret"
    path.write_bytes(b"x")
    path.chmod(0)
    with pytest.raises(PermissionError):
        hash_file(path)


def _make_tree(root: Path, count: int) -> list[str]:
    paths = []
    for i in range(count):
        folder = root / f"d{i % 20}"
        folder.mkdir(exist_ok=True)
        path = folder / f"f{i}"
        path.write_bytes(_pattern(i % 5000, seed=i))
        paths.append(str(path))
    return paths


def test_hash_many_with_pool_matches_hash_file(tmp_path: Path) -> None:
    paths = _make_tree(tmp_path, 2000)
    big = tmp_path / "big.bin"
    big.write_bytes(_pattern(hasher.MT_THRESHOLD + 5))
    missing = str(tmp_path / "missing")
    paths[10:10] = [str(big), missing, str(tmp_path / "d0")]

    # A generator, as the scan's walk: chunks go to the pool while it still produces paths.
    found = list(hash_many(iter(paths), workers=2, pool_min_paths=100, chunk_paths=500))
    outcomes = dict(found)

    assert sorted(path for path, _ in found) == sorted(paths)  # each path exactly once
    assert isinstance(outcomes[missing], FileNotFoundError)
    assert isinstance(outcomes[str(tmp_path / "d0")], IsADirectoryError)
    for path in paths:
        if path in (missing, str(tmp_path / "d0")):
            continue
        outcome = outcomes[path]
        assert isinstance(outcome, HashResult), (path, outcome)
        assert outcome == hash_file(path)


@pytest.mark.parametrize(
    "failure",
    [OSError(11, "Resource temporarily unavailable"), BrokenProcessPool("a worker died")],
    ids=["cannot-start", "worker-died"],
)
def test_hash_many_hashes_in_process_when_the_workers_fail(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    failure: Exception,
) -> None:
    # Faults that cannot be produced on demand: the third chunk's worker cannot be started
    # (task limits, a sandbox), or the pool broke while the walk went on (the OOM killer).
    # Chunks already sent are taken back; nothing is lost or doubled.
    paths = _make_tree(tmp_path, 500)
    submit = ProcessPoolExecutor.submit
    calls = 0

    def failing_submit(self: ProcessPoolExecutor, *args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise failure
        return submit(self, *args, **kwargs)

    monkeypatch.setattr(ProcessPoolExecutor, "submit", failing_submit)
    found = list(hash_many(iter(paths), workers=2, pool_min_paths=100, chunk_paths=100))

    assert sorted(path for path, _ in found) == sorted(paths)
    for path, outcome in found:
        assert outcome == hash_file(path)
    assert "hashing in process: the worker processes failed" in caplog.text


def test_hash_many_survives_a_worker_killed_during_the_walk(tmp_path: Path) -> None:
    # For real: SIGKILL one of the pool's workers once the walk has sent it work.
    paths = _make_tree(tmp_path, 600)
    killed: list[int] = []

    def walk() -> Iterator[str]:
        for index, path in enumerate(paths):
            if index == 250:  # two chunks of 100 are with the pool by now
                deadline = time.monotonic() + 60
                while not multiprocessing.active_children():
                    assert time.monotonic() < deadline, "no worker process started"
                    time.sleep(0.01)
                worker = multiprocessing.active_children()[0]
                os.kill(worker.pid, signal.SIGKILL)
                killed.append(worker.pid)
            yield path

    found = list(hash_many(walk(), workers=2, pool_min_paths=100, chunk_paths=100))

    assert killed
    assert sorted(path for path, _ in found) == sorted(paths)
    for path, outcome in found:
        assert outcome == hash_file(path)


def test_hash_many_in_process(tmp_path: Path, reference: Reference) -> None:
    paths = _make_tree(tmp_path, 30)
    missing = str(tmp_path / "missing")
    outcomes = list(hash_many([*paths, missing]))
    assert [path for path, _ in outcomes] == [*paths, missing]
    assert isinstance(outcomes[-1][1], FileNotFoundError)
    for path, outcome in outcomes[:3]:
        assert isinstance(outcome, HashResult)
        assert outcome.digest == reference(Path(path))


def test_hash_many_reports_unstable_files(
    tmp_path: Path, hook: Callable[[Callable[[int], None]], None]
) -> None:
    path = tmp_path / "growing"
    path.write_bytes(b"a")

    def append(fd: int) -> None:
        with path.open("ab") as out:
            out.write(b"b")

    hook(append)
    [(_, outcome)] = list(hash_many([str(path)], retries=2))
    assert isinstance(outcome, HashError)


def _helper_pid() -> int | None:
    process = hasher._mapping_helper._process
    return None if process is None else process.pid


def test_big_file_survives_its_mmap_helper_dying(tmp_path: Path) -> None:
    # A file truncated under the helper's mapping kills the helper with SIGBUS; here the
    # signal is sent by hand, which is what the helper's death looks like to us.
    path = tmp_path / "checkpoint.pt"
    content = _pattern(hasher._READ_AHEAD_MIN + 12345, seed=9)
    path.write_bytes(content)
    expected = blake3(content).hexdigest()
    assert hash_file(path).digest == expected
    first_pid = _helper_pid()
    if first_pid is None:
        pytest.fail(
            "the mmap helper did not start (see the warning log): big files read in process"
        )
    os.kill(first_pid, signal.SIGBUS)
    assert hash_file(path).digest == expected  # helper found dead: read in process
    assert hash_file(path).digest == expected  # and a new helper started
    assert _helper_pid() not in (None, first_pid)


def test_mmap_helper_reports_a_file_shorter_than_asked(tmp_path: Path) -> None:
    path = tmp_path / "shrunk"
    path.write_bytes(_pattern(hasher._READ_AHEAD_MIN, seed=10))
    fd = os.open(path, os.O_RDONLY)
    try:
        assert hasher._mapping_helper.digest(fd, hasher._READ_AHEAD_MIN + 4096) == ("", -1)
        assert hasher._mapping_helper.digest(fd, hasher._READ_AHEAD_MIN) == (
            blake3(path.read_bytes()).hexdigest(),
            hasher._READ_AHEAD_MIN,
        )
    finally:
        os.close(fd)

"""BLAKE3 digests of files, each one of a complete content state the file really had.

Every read for hashing in lineaged goes through this module. A file is hashed through one
open descriptor: ``fstat`` before and after the read must agree on (dev, ino, size,
mtime_ns, ctime_ns) and the bytes read must equal the size, else the file changed while it
was read and the hash is retried (a bounded number of times, then ``UnstableFile``).

A hash only starts once the file's mtime and ctime are older than the timestamp
granularity (``RACY_WINDOW_NS``): otherwise a same-size write in the same timestamp tick
would leave the stat unchanged and a torn read could pass for a real state. So a
returned ``stat_key`` changes on any later write; a file written in the last 50 ms is
waited for (2 s on file systems with whole-second timestamps).

Symlinks are refused (``O_NOFOLLOW``: ``OSError`` with ``ELOOP``), so a link inside a
watched root can never make the daemon read a file outside it; callers pass real file
paths. Only the last path component is checked: callers must not walk through symlinked
directories. Other non-regular files (FIFOs, devices) raise ``OSError`` with ``EINVAL``;
a FIFO is opened non-blocking so it cannot hang the hasher. A file unlinked or renamed
over while it was read is hashed again from its path (``FileNotFoundError`` if gone).

Big files (16 MiB and more) are hashed through ``mmap`` with all cores, as ``b3sum``
does, but never in this process: a file truncated while mapped raises SIGBUS, which would
kill the whole daemon, and the daemon watches files that jobs are still writing. A helper
child process gets our descriptor over a Unix socket (SCM_RIGHTS), maps it and answers
the digest; if it dies, the file is read here instead and the helper is started again on
the next big file. The fallback ``preadv``-s 2 MiB chunks into page-aligned buffers, a
reader thread filling one while the Rust core hashes the other (files of 1-16 MiB: the
same chunks, read and hashed in turn); it pays a copy that ``mmap`` does not, measured
~25% slower on a 1 GiB file (``bench/bench_hash.py`` times both).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import errno
import itertools
import logging
import mmap
import os
import queue
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import CancelledError, Future, wait
from dataclasses import dataclass

from blake3 import blake3

from lineage_core import dirfd
from lineage_core.errors import HashCancelled, HashError, TooLarge, UnstableFile
from lineage_core.models import StatKey

__all__ = [
    "CHUNK_PATHS",
    "HASH_FORMAT",
    "LARGE_FILE",
    "MT_THRESHOLD",
    "POOL_MIN_PATHS",
    "RACY_WINDOW_NS",
    "Deferred",
    "HashResult",
    "StreamDigest",
    "die_with_parent",
    "hash_bytes",
    "hash_file",
    "hash_many",
    "hash_own_file",
    "hash_while_copying",
    "kill_helpers",
]

HASH_FORMAT: int = 1
"""Bump when the digest or the cache format changes; the store keeps it per cache entry."""

MT_THRESHOLD: int = 1 << 20
"""Files at least this big are hashed by the multithreaded Rust core (``max_threads=AUTO``)."""

RACY_WINDOW_NS: int = 50_000_000
"""A file whose mtime/ctime is younger than this is waited for before it is hashed."""

POOL_MIN_PATHS: int = 2000
"""``hash_many`` with fewer paths than this loops in process (a pool costs ~0.1 s to start)."""

CHUNK_PATHS: int = 1000
"""Paths per task sent to a ``hash_many`` worker process."""

LARGE_FILE: int = 16 << 20
"""Files at least this big are hashed on the daemon's large-file lane (one at a time, off the
threads that index small files and answer clients); the same size sends them to the mmap helper."""

# 2 MiB chunks stay in the CPU cache between the read and the hash (16 MiB ones measured
# ~25% slower); the same size is the per-thread buffer, which covers every small file.
_CHUNK = 2 << 20
# Below this, starting a reader thread costs more than overlapping reads with hashing wins.
_READ_AHEAD_MIN = 16 << 20
# File systems with whole-second timestamps (FAT has 2 s mtimes) need a longer wait.
_COARSE_WINDOW_NS = 2_000_000_000
_OPEN_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK

log = logging.getLogger(__name__)

_after_read_hook: Callable[[int], None] | None = None
"""Test seam: called with the descriptor after the read, before the second ``fstat``."""

_before_open_hook: Callable[[str], None] | None = None
"""Test seam: called with the path just before a file under a root is opened."""


@dataclass(frozen=True, slots=True)
class HashResult:
    """A file's BLAKE3 digest and the stat key of the content state that was hashed."""

    digest: str
    stat_key: StatKey
    kept: str = ""  # hash_many(keep_into=...): how the hashed bytes were kept, "" if they were not


class _Deferred(Exception):
    """A file at least ``defer_at`` bytes: the caller hashes it elsewhere."""

    def __init__(self, size: int) -> None:
        super().__init__(size)
        self.size = size


@dataclass(frozen=True, slots=True)
class Deferred:
    """``hash_many`` did not hash this file: it is ``size`` bytes, at least ``defer_at``."""

    size: int


Outcome = HashResult | OSError | HashError | Deferred
"""What ``hash_many`` yields for each path."""


class _Buffers(threading.local):
    """Two page-aligned read buffers per thread (a fresh bytearray is 3-4x slower to fill)."""

    def __init__(self) -> None:
        self.maps = (mmap.mmap(-1, _CHUNK), mmap.mmap(-1, _CHUNK))
        self.views = (memoryview(self.maps[0]), memoryview(self.maps[1]))


_buffers = _Buffers()


def hash_bytes(data: bytes) -> str:
    """The BLAKE3 digest of ``data`` as 64 lowercase hex characters."""
    threads = blake3.AUTO if len(data) >= MT_THRESHOLD else 1
    return str(blake3(data, max_threads=threads).hexdigest())


def hash_file(
    path: str | os.PathLike[str],
    *,
    retries: int = 5,
    root: str | None = None,
    max_size: int = 0,
    cancel: threading.Event | None = None,
) -> HashResult:
    """Hash one regular file; raise ``OSError`` as is, ``UnstableFile`` if it keeps changing.

    With ``root``, the file is opened through descriptors from the root down (``dirfd``):
    no link anywhere on its path is followed. ``max_size`` (0: none) raises ``TooLarge``
    for a bigger file without reading it; ``cancel`` set stops a long hash (``HashCancelled``).
    """
    text = os.fspath(path)
    if root is None:
        return _hash_path(text, retries, _path_opener(text), max_size=max_size, cancel=cancel)
    with dirfd.FolderDescriptors(root, limit=4) as folders:
        return _hash_path(
            text, retries, _beneath_opener(folders, text), max_size=max_size, cancel=cancel
        )


def _path_opener(path: str) -> Callable[[], int]:
    return lambda: os.open(path, _OPEN_FLAGS)


def _beneath_opener(folders: dirfd.FolderDescriptors, path: str) -> Callable[[], int]:
    def opener() -> int:
        hook = _before_open_hook
        if hook is not None:
            hook(path)
        return folders.open_file(path)

    return opener


def hash_own_file(fd: int) -> tuple[str, int]:
    """Digest and length of a file only lineaged writes (a kept object, a copy being made).

    No settling wait and no stat comparison: nobody else writes it, and what matters is the
    digest of exactly the bytes it holds, which the caller compares with the name it expects.
    """
    size = os.fstat(fd).st_size
    digest, nread = _hash_fd(fd, size)
    if nread != size:
        return "", nread
    return digest, nread


def hash_while_copying(target_fd: int, copy_step: Callable[[int], int]) -> tuple[str, int]:
    """Digest and length of the bytes ``copy_step`` writes into ``target_fd``.

    ``copy_step(offset)`` copies the next piece at ``offset`` and returns its length (0 at the
    end); it runs in a thread of its own while this one reads each finished piece back (from
    the page cache) and hashes it, so the copy and the hash overlap. What is hashed is what
    was written, whatever the source did meanwhile.
    """
    pieces: queue.SimpleQueue[tuple[int, int] | BaseException | None] = queue.SimpleQueue()

    def copier() -> None:
        offset = 0
        try:
            while (n := copy_step(offset)) > 0:
                pieces.put((offset, n))
                offset += n
            pieces.put(None)
        except BaseException as exc:  # handed over: the hashing thread must not wait forever
            pieces.put(exc)

    thread = threading.Thread(target=copier, name="lineaged-keep-copy", daemon=True)
    thread.start()
    view = _buffers.views[0]
    digest = blake3(max_threads=blake3.AUTO)
    total = 0
    try:
        while (item := pieces.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            offset, length = item
            end = offset + length
            while offset < end:
                n = os.preadv(target_fd, [view[: min(_CHUNK, end - offset)]], offset)
                if n == 0:
                    raise OSError(errno.EIO, "the copy is shorter than what was written")
                digest.update(view[:n])
                offset += n
            total = end
    finally:
        thread.join()
    return str(digest.hexdigest()), total


class StreamDigest:
    """BLAKE3 of bytes handed over piece by piece (a kept object as it is streamed out)."""

    def __init__(self) -> None:
        self._hasher = blake3(max_threads=blake3.AUTO)

    def update(self, data: bytes | memoryview) -> None:
        """Add the next piece."""
        self._hasher.update(data)

    def hexdigest(self) -> str:
        """The digest of every piece so far, as 64 hex characters."""
        return str(self._hasher.hexdigest())


def hash_many(
    paths: Iterable[str],
    *,
    workers: int | None = None,
    retries: int = 5,
    pool_min_paths: int = POOL_MIN_PATHS,
    chunk_paths: int = CHUNK_PATHS,
    root: str | None = None,
    defer_at: int = 0,
    max_size: int = 0,
    cancel: threading.Event | None = None,
    keep_into: str | None = None,
) -> Iterator[tuple[str, Outcome]]:
    """Hash many files, yielding ``(path, result or the error)`` for each path in any order.

    Small files go to a pool of worker processes in chunks of ``chunk_paths`` (threads
    measured 5-7x slower than a plain loop: per-call overhead and GIL hand-offs); files of
    ``MT_THRESHOLD`` bytes or more come back to this process for the multithreaded core.
    With fewer than ``pool_min_paths`` paths, or one worker, it just loops in process.

    With ``root``, every file is opened through directory descriptors from the root down
    (``dirfd``; worker processes do the same): a link swapped in for a directory is never
    followed. Files of ``defer_at`` bytes or more (0: none) are not hashed: ``Deferred``
    says so and the caller hashes them on its own lane; files over ``max_size`` (0: no
    limit) give ``TooLarge``.

    ``paths`` may be a generator (a directory walk): each chunk is sent to the pool as soon
    as it is full, and results are handed back while the rest is still being produced, so
    the walk and the hashing overlap.

    ``keep_into`` (a content store folder): the bytes of each file smaller than
    ``MT_THRESHOLD`` are kept there as soon as they are hashed, from the very buffer that was
    hashed (one read; ``HashResult.kept`` says how), without being synced: the caller syncs
    the batch before it records it. Bigger files are left to the caller.
    """
    if workers is None:
        workers = len(os.sched_getaffinity(0))
    remaining = iter(paths)
    first = list(itertools.islice(remaining, pool_min_paths))
    local = _Local(root, retries, defer_at, max_size, cancel, keep_into)
    try:
        if len(first) < pool_min_paths or workers <= 1:
            for path in itertools.chain(first, remaining):
                yield path, local.outcome(path)
            return
        yield from _hash_in_pool(
            itertools.chain(first, remaining), local, workers, chunk_paths, root, retries, keep_into
        )
    finally:
        local.close()


class _Local:
    """Hashes files in this process, opening them through cached folder descriptors."""

    def __init__(
        self,
        root: str | None,
        retries: int,
        defer_at: int,
        max_size: int,
        cancel: threading.Event | None,
        keep_into: str | None = None,
    ) -> None:
        self.folders = dirfd.FolderDescriptors(root) if root is not None else None
        self.keep_into = keep_into
        self.retries = retries
        self.defer_at = defer_at
        self.max_size = max_size
        self.cancel = cancel

    def outcome(self, path: str) -> Outcome:
        opener = _path_opener(path) if self.folders is None else _beneath_opener(self.folders, path)
        try:
            result = _hash_path(
                path,
                self.retries,
                opener,
                defer_at=self.defer_at,
                max_size=self.max_size,
                cancel=self.cancel,
            )
        except _Deferred as deferred:
            return Deferred(deferred.size)
        except (OSError, HashError) as exc:
            return exc
        kept = _keep_hashed(self.keep_into, result.digest, result.stat_key.size)
        return HashResult(result.digest, result.stat_key, kept) if kept else result

    def close(self) -> None:
        if self.folders is not None:
            self.folders.close()


def _hash_in_pool(
    paths: Iterator[str],
    local: _Local,
    workers: int,
    chunk_paths: int,
    root: str | None,
    retries: int,
    keep_into: str | None = None,
) -> Iterator[tuple[str, Outcome]]:
    # Deferred (e): the process pool's machinery (multiprocessing: 5 ms) serves a first index
    # of many files only, not a rescan or a client; tests/test_client_surface.py holds this.
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool
    from multiprocessing import get_context

    # spawn, not fork: the daemon has threads (gRPC, watchdog), and a forked child inherits
    # their locks in whatever state they were in. Each worker dies with this process.
    pool = ProcessPoolExecutor(
        max_workers=workers,
        mp_context=get_context("spawn"),
        initializer=die_with_parent,
        initargs=(os.getpid(),),
    )
    pending: dict[Future[list[_Packed | OSError | HashError | None]], list[str]] = {}
    with pool:
        try:
            chunks = _chunks_of(paths, chunk_paths)
            for chunk in chunks:
                if local.cancel is not None and local.cancel.is_set():
                    return
                try:
                    pending[
                        pool.submit(_hash_chunk, chunk, retries, root, local.max_size, keep_into)
                    ] = chunk
                except (OSError, BrokenProcessPool) as exc:
                    # No processes allowed (task limits, a sandbox), or a worker died (the
                    # OOM killer) while the walk went on: slower, but complete. Chunks already
                    # sent are taken back too: a worker may never run them.
                    log.warning("hashing in process: the worker processes failed: %s", exc)
                    for future in pending:
                        future.cancel()
                    taken_back = [path for sent in pending.values() for path in sent]
                    pending.clear()
                    for path in itertools.chain(taken_back, chunk, *chunks):
                        yield path, local.outcome(path)
                    break
                for future in [f for f in pending if f.done()]:
                    yield from _chunk_outcomes(future, pending.pop(future), local)
            while pending:
                done, _ = wait(pending, return_when="FIRST_COMPLETED")
                for future in done:
                    yield from _chunk_outcomes(future, pending.pop(future), local)
        finally:
            # The consumer may stop early: do not make it wait for chunks it will not read.
            for future in pending:
                future.cancel()


def die_with_parent(parent_pid: int) -> None:
    """In a child process: be killed (SIGKILL) when the parent dies, even by ``kill -9``.

    ``PR_SET_PDEATHSIG`` fires when the thread that started the child exits; lineaged starts
    its helpers from long-lived threads (the scan thread, the large-file lane). A parent
    that died before the call is caught by comparing ``getppid``.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the helpers still exit on EOF
        return
    if os.getppid() != parent_pid:
        os._exit(1)


_PR_SET_PDEATHSIG = 1


def _chunks_of(paths: Iterator[str], size: int) -> Iterator[list[str]]:
    while chunk := list(itertools.islice(paths, size)):
        yield chunk


def _chunk_outcomes(
    future: Future[list[_Packed | OSError | HashError | None]], chunk: list[str], local: _Local
) -> Iterator[tuple[str, Outcome]]:
    """The outcomes of one finished worker task, in the order of its paths."""
    from concurrent.futures.process import BrokenProcessPool  # loaded with the pool (e)

    try:
        packed = future.result()
    except (BrokenProcessPool, CancelledError):
        # A worker died (OOM killer, a signal): this chunk is hashed here instead.
        for path in chunk:
            yield path, local.outcome(path)
        return
    for path, outcome in zip(chunk, packed, strict=True):
        if outcome is None:
            yield path, local.outcome(path)
        elif isinstance(outcome, tuple):
            digest, dev, ino, size, mtime_ns, ctime_ns, kept = outcome
            yield path, HashResult(digest, StatKey(dev, ino, size, mtime_ns, ctime_ns), kept)
        else:
            yield path, outcome


# What a worker sends back for a hashed file: plain tuples pickle several times faster than
# frozen slotted dataclasses (measured: dataclass pickling was a third of a bulk scan).
_Packed = tuple[str, int, int, int, int, int, str]


def _hash_chunk(
    paths: list[str],
    retries: int,
    root: str | None = None,
    max_size: int = 0,
    keep_into: str | None = None,
) -> list[_Packed | OSError | HashError | None]:
    """Worker-process task: hash the small files of ``paths``, in order; ``None`` marks a
    big file left to the caller's multithreaded core."""
    outcomes: list[_Packed | OSError | HashError | None] = []
    folders = dirfd.FolderDescriptors(root) if root is not None else None
    try:
        for path in paths:
            opener = _path_opener(path) if folders is None else _beneath_opener(folders, path)
            try:
                result = _hash_path(path, retries, opener, defer_at=MT_THRESHOLD, max_size=max_size)
            except _Deferred:
                outcomes.append(None)
            except (OSError, HashError) as exc:
                outcomes.append(exc)
            else:
                key = result.stat_key
                kept = _keep_hashed(keep_into, result.digest, key.size)
                outcomes.append(
                    (result.digest, key.dev, key.ino, key.size, key.mtime_ns, key.ctime_ns, kept)
                )
    finally:
        if folders is not None:
            folders.close()
    return outcomes


def _keep_hashed(keep_into: str | None, digest: str, size: int) -> str:
    """Keep the bytes of a small file just hashed, still in this thread's read buffer (what
    was hashed is what is written: one read, no second hash); "" when not kept."""
    if keep_into is None or size >= MT_THRESHOLD or size >= _CHUNK:
        return ""
    from lineage_core.objects import keep_bytes  # (d) cycle: objects imports this module

    try:
        return keep_bytes(keep_into, digest, _buffers.views[0][:size])
    except OSError as exc:
        log.warning("cannot keep the bytes of %s: %s", digest, exc)
        return ""


def _hash_path(
    path: str,
    retries: int,
    opener: Callable[[], int],
    *,
    defer_at: int = 0,
    max_size: int = 0,
    cancel: threading.Event | None = None,
) -> HashResult:
    fd = opener()
    try:
        for _ in range(max(1, retries)):
            before = _settled_stat(fd, path)
            if before is None:
                continue  # it changed while we waited for its timestamps to age
            if max_size and before.st_size > max_size:
                raise TooLarge(
                    f"{path}: not hashed: too large ({before.st_size} bytes, "
                    f"max_hash_size {max_size})"
                )
            if defer_at and before.st_size >= defer_at:
                raise _Deferred(before.st_size)
            digest, nread = _hash_fd(fd, before.st_size, cancel)
            hook = _after_read_hook
            if hook is not None:
                hook(fd)
            after = os.fstat(fd)
            if after.st_nlink == 0:
                # Unlinked or replaced (an atomic save renames over it): what the path
                # holds now is another inode, or nothing, so start again from the path
                # (through the same descriptors: still no link followed).
                os.close(fd)
                fd = -1
                fd = opener()
                continue
            if (
                nread == before.st_size
                and after.st_size == before.st_size
                and after.st_mtime_ns == before.st_mtime_ns
                and after.st_ctime_ns == before.st_ctime_ns
                and after.st_ino == before.st_ino
                and after.st_dev == before.st_dev
            ):
                return HashResult(digest, StatKey.from_stat(after))
        raise UnstableFile(f"{path} kept changing while it was hashed ({max(1, retries)} tries)")
    finally:
        if fd >= 0:
            os.close(fd)


def _settled_stat(fd: int, path: str) -> os.stat_result | None:
    """``fstat`` once the timestamps are older than their granularity; None if it changed."""
    now = time.time_ns()
    before = os.fstat(fd)
    if not stat.S_ISREG(before.st_mode):
        if stat.S_ISDIR(before.st_mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
        raise OSError(errno.EINVAL, "not a regular file", path)
    if before.st_nlink == 0:
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path)
    wait_ns = _racy_wait_ns(now, before)
    if wait_ns <= 0:
        return before
    time.sleep(wait_ns / 1e9)
    settled = os.fstat(fd)
    if StatKey.from_stat(settled) != StatKey.from_stat(before):
        return None
    return settled


def _racy_wait_ns(now: int, st: os.stat_result) -> int:
    """How long until a write to this file is sure to move its mtime or ctime."""
    newest = max(st.st_mtime_ns, st.st_ctime_ns)
    window = _COARSE_WINDOW_NS if st.st_ctime_ns % 1_000_000_000 == 0 else RACY_WINDOW_NS
    age = now - newest
    # A timestamp in the future (clock skew) will differ from any write made now.
    if age < 0 or age >= window:
        return 0
    return window - age


def _hash_fd(fd: int, size: int, cancel: threading.Event | None = None) -> tuple[str, int]:
    """Hash from offset 0 to EOF; return the digest and the bytes read (stops past ``size``)."""
    if size < MT_THRESHOLD and size < _CHUNK:
        return _hash_small(fd, size)
    with contextlib.suppress(OSError):  # only a read-ahead hint
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
    if size < _READ_AHEAD_MIN:
        return _hash_chunked(fd, size, cancel)
    mapped = _mapping_helper.digest(fd, size, cancel)
    if mapped is not None:
        return mapped
    return _hash_read_ahead(fd, size, cancel)


def _check_cancel(cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise HashCancelled("hashing stopped: lineaged is stopping")


def _hash_small(fd: int, size: int) -> tuple[str, int]:
    view = _buffers.views[0]
    # One byte more than the size tells a file that grew from one that did not.
    want = size + 1
    got = 0
    while got < want:
        asked = want - got
        n = os.preadv(fd, [view[got:want]], got)
        got += n
        if n < asked:
            break  # a short read of a regular file is its end: no second call to see 0
    if got != size:
        return "", got
    return str(blake3(view[:got]).hexdigest()), got


def _hash_chunked(fd: int, size: int, cancel: threading.Event | None = None) -> tuple[str, int]:
    view = _buffers.views[0]
    hasher = blake3(max_threads=blake3.AUTO)
    offset = 0
    while offset <= size:
        _check_cancel(cancel)
        n = os.preadv(fd, [view], offset)
        if n == 0:
            break
        offset += n
        if offset > size:
            break
        hasher.update(view[:n])
    return str(hasher.hexdigest()), offset


def _hash_read_ahead(fd: int, size: int, cancel: threading.Event | None = None) -> tuple[str, int]:
    """Read the next chunk in a thread while the Rust core hashes this one."""
    views = _buffers.views
    filled: queue.SimpleQueue[tuple[int, int] | BaseException] = queue.SimpleQueue()
    free: queue.SimpleQueue[int | None] = queue.SimpleQueue()

    def read_ahead() -> None:
        offset = 0
        try:
            while (index := free.get()) is not None:
                n = os.preadv(fd, [views[index]], offset)
                filled.put((index, n))
                offset += n
                if n == 0 or offset > size:
                    return
        except BaseException as exc:  # handed over: the hashing thread must not wait forever
            filled.put(exc)

    free.put(0)
    free.put(1)
    reader = threading.Thread(target=read_ahead, name="lineaged-hash-read-ahead", daemon=True)
    reader.start()
    hasher = blake3(max_threads=blake3.AUTO)
    total = 0
    try:
        while True:
            item = filled.get()
            if isinstance(item, BaseException):
                raise item
            index, n = item
            total += n
            if n == 0 or total > size:
                break
            _check_cancel(cancel)
            hasher.update(views[index][:n])
            free.put(index)
    finally:
        free.put(None)
        reader.join()
    return str(hasher.hexdigest()), total


# Runs in the helper process: only the standard library and blake3, so it starts fast.
_HELPER_SOURCE = """
import ctypes, mmap, os, signal, socket, sys
from blake3 import blake3
# Killed with its parent, even by kill -9 (PR_SET_PDEATHSIG = 1); a parent already gone: exit.
ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)
if os.getppid() != int(sys.argv[2]):
    sys.exit(1)
channel = socket.socket(fileno=int(sys.argv[1]))
while True:
    message, fds, _, _ = socket.recv_fds(channel, 8, 1)
    if not fds:
        break
    try:
        with mmap.mmap(fds[0], int.from_bytes(message, "little"), access=mmap.ACCESS_READ) as mapped:
            hasher = blake3(max_threads=blake3.AUTO)
            hasher.update(mapped)
            reply = hasher.hexdigest().encode()
    except (OSError, ValueError):
        reply = b"-" * 64
    finally:
        os.close(fds[0])
    channel.sendall(reply)
"""


class _MappingHelper:
    """A child process that hashes big files through ``mmap``: a SIGBUS kills it, not us."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self._channel: socket.socket | None = None
        self._answered = False
        self._disabled = False

    def digest(
        self, fd: int, size: int, cancel: threading.Event | None = None
    ) -> tuple[str, int] | None:
        """Digest and size of the file's first ``size`` bytes, or None to read it here."""
        with self._lock:
            if self._disabled:
                return None
            _check_cancel(cancel)
            try:
                channel = self._channel or self._start()
                socket.send_fds(channel, [size.to_bytes(8, "little")], [fd])
                reply = _receive(channel, 64)
            except OSError as exc:
                log.info("mmap hashing helper unusable: %s", exc)
                reply = b""
            if len(reply) != 64 and cancel is not None and cancel.is_set():
                # Killed because the daemon is stopping (kill_helpers), not broken.
                self._stop()
                raise HashCancelled("hashing stopped: lineaged is stopping")
            if len(reply) != 64:
                # It died: most likely a SIGBUS, the file truncated under its mapping.
                if not self._answered:
                    log.warning("mmap hashing helper does not work: reading big files here")
                    self._disabled = True
                self._stop()
                return None
            self._answered = True
            if reply == b"-" * 64:
                return "", -1  # shorter than ``size`` when mapped: it changed
            return reply.decode("ascii"), size

    def close(self) -> None:
        """Stop the helper process (it also stops by itself when this process exits)."""
        with self._lock:
            self._stop()

    def kill(self) -> None:
        """SIGKILL the helper now, even mid-hash (without the lock its caller holds)."""
        process = self._process
        if process is not None:
            with contextlib.suppress(OSError):
                process.kill()

    def _start(self) -> socket.socket:
        ours, theirs = socket.socketpair()
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-c", _HELPER_SOURCE, str(theirs.fileno()), str(os.getpid())],
                pass_fds=[theirs.fileno()],
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # a Ctrl-C meant for the daemon must not kill it
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self._channel = ours
        return ours

    def _stop(self) -> None:
        if self._channel is not None:
            self._channel.close()  # the helper reads EOF and exits
            self._channel = None
        if self._process is not None:
            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None


def _receive(channel: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        part = channel.recv(size - len(data))
        if not part:
            break
        data += part
    return data


_mapping_helper = _MappingHelper()
atexit.register(_mapping_helper.close)


def kill_helpers() -> None:
    """Kill the mmap helper mid-hash (stopping): the hash waiting on it raises if cancelled."""
    _mapping_helper.kill()

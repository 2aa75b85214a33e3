"""The reconcile scan: compare a tree with the store and record every difference.

It runs at startup (changes made while the daemon was down), periodically, and whenever the
watcher may have lost events. On an unchanged tree it costs one ``os.scandir`` walk plus one
read of the stat cache: nothing is hashed.
"""

from __future__ import annotations

import logging
import os
import struct
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from lineage_core import dirfd, hasher
from lineage_core.errors import TooLarge
from lineage_core.models import ChangeKind

from lineaged.store import Store, VersionWrite, Writer
from lineaged.watching.indexer import (
    RACY_NS,
    Publish,
    Recorded,
    RootSet,
    WatchedRoot,
    publish_when_committed,
)

if TYPE_CHECKING:
    from lineaged.retention import Keeper

__all__ = ["ScanStats", "Scanner"]

log = logging.getLogger(__name__)

WRITE_BATCH = 5000
FLUSH_SECONDS = 5.0  # at most one syncfs per this while a keep = "all" root is scanned
_PACK = struct.Struct("<5q").pack  # the same layout as store.pack_stat_key
PROGRESS_SECONDS = 2.0


@dataclass(slots=True)
class ScanStats:
    """What one scan saw and did."""

    files: int = 0
    hashed: int = 0
    bytes_hashed: int = 0
    new_versions: int = 0
    gone: int = 0
    seconds: float = 0.0
    unreadable: list[str] = field(default_factory=list)
    too_large: list[str] = field(default_factory=list)  # over the root's max_hash_size
    deferred: int = 0  # big files handed to the large-file lane
    max_depth: int = 0  # the deepest directory seen, in levels below the root

    def add(self, other: ScanStats) -> None:
        """Fold another scan's numbers into this one."""
        self.files += other.files
        self.hashed += other.hashed
        self.bytes_hashed += other.bytes_hashed
        self.new_versions += other.new_versions
        self.gone += other.gone
        self.seconds += other.seconds
        self.unreadable.extend(other.unreadable)
        self.too_large.extend(other.too_large)
        self.deferred += other.deferred
        self.max_depth = max(self.max_depth, other.max_depth)

    def summary(self) -> str:
        """One line for the log."""
        rate = self.bytes_hashed / self.seconds / 1e6 if self.seconds else 0.0
        return (
            f"{self.files} files, {self.hashed} hashed ({self.bytes_hashed / 1e6:.1f} MB, "
            f"{rate:.1f} MB/s), {self.new_versions} new versions, {self.gone} gone, "
            f"{self.seconds:.2f}s"
        )


class Scanner:
    """Walks roots with ``os.scandir`` and records what differs from the store."""

    def __init__(
        self,
        store: Store,
        writer: Writer,
        roots: RootSet,
        *,
        progress: Callable[[ScanStats], None] | None = None,
        stop: threading.Event | None = None,
        large_lane: Callable[[WatchedRoot, str, ChangeKind], None] | None = None,
        publish: Publish | None = None,
    ) -> None:
        self.store = store
        self.writer = writer
        self.roots = roots
        self.publish = publish  # handed the versions each write committed
        self.progress = progress
        self.stop = stop or threading.Event()
        # Files of hasher.LARGE_FILE bytes or more go there (hashed one at a time off this
        # thread, so a 40 GB file does not hold the rest of the scan); None: hashed here.
        self.large_lane = large_lane
        self.keeper: Keeper | None = None  # set by the engine: keeps bytes where roots want all

    def scan(
        self,
        root: WatchedRoot,
        directory: str | None = None,
        *,
        seen: ChangeKind = ChangeKind.SCAN,
        report: bool = True,
    ) -> ScanStats:
        """Reconcile ``directory`` (default: the whole root) with the store; waits for commit.

        ``report=False``: the progress callback is not called (a watcher's directory scan)."""
        progress = self.progress if report else None
        started = time.monotonic()
        stats = ScanStats()
        top = directory or root.path
        trusted = self.store.trusted_keys(root.root_id, hasher.HASH_FORMAT, RACY_NS)
        if directory is not None:
            prefix = top.rstrip("/") + "/"
            trusted = {p: k for p, k in trusted.items() if p.startswith(prefix)}
        unseen = dict(trusted)  # the walk pops what it finds: what remains has gone
        futures: list[Future[Recorded]] = []
        writes: list[VersionWrite] = []
        keeper = (
            self.keeper if self.keeper is not None and self.keeper.wants_all(root.root_id) else None
        )
        kept: list[tuple[str, int, str]] = []
        not_kept: list[tuple[str, str, str]] = []
        scan_started_at = time.time_ns()
        last_progress = time.monotonic()
        # The walk is a generator: files are hashed while it goes on (a first index of
        # 100,000 files spent 0.7 s walking before the first hash).
        keep_into = str(keeper.objects.root) if keeper is not None else None
        last_flush = time.monotonic()
        if keep_into is not None:
            os.makedirs(keep_into, mode=0o700, exist_ok=True)
        outcomes = hasher.hash_many(
            self._walk(root, top, stats, unseen, progress),
            root=root.path,
            defer_at=hasher.LARGE_FILE if self.large_lane is not None else 0,
            max_size=root.root.max_hash_size,
            cancel=self.stop,
            keep_into=keep_into,
        )
        for path, result in outcomes:
            if self.stop.is_set():
                break
            if isinstance(result, FileNotFoundError):
                if path in trusted:
                    unseen[path] = None  # vanished since the walk: recorded as gone below
                continue
            if isinstance(result, hasher.Deferred):
                if self.large_lane is not None:
                    stats.deferred += 1
                    self.large_lane(root, path, seen)
                continue
            if isinstance(result, OSError) and result.errno in dirfd.SWAPPED_ERRNOS:
                # A directory on its way became a link (or a file) since the walk: never
                # followed; the path no longer holds the file.
                log.info("not hashing %s: a directory on its path is no longer one", path)
                if path in trusted:
                    unseen[path] = None
                continue
            if isinstance(result, TooLarge):
                stats.too_large.append(path)  # reported; its last version is kept
                continue
            if not isinstance(result, hasher.HashResult):
                log.warning("cannot hash %s: %s", path, result)
                if isinstance(result, PermissionError):
                    stats.unreadable.append(path)  # reported; its last version is kept
                continue
            stats.hashed += 1
            stats.bytes_hashed += result.stat_key.size
            # Content moved here arrived before the scan began; other content began at its
            # mtime, and no later than now, when its hash is in (a file rewritten while the
            # walk went on must not be dated back to the start of the walk).
            observed_at = scan_started_at if seen is ChangeKind.MOVED else time.time_ns()
            # Unchanged content only refreshes the stat cache: record_versions decides.
            writes.append(
                VersionWrite(path, root.root_id, result.digest, result.stat_key, seen, observed_at)
            )
            if keeper is not None and result.kept:
                # Small files were kept by the hasher from the buffer it hashed; all are
                # synced (below) before the store says they are kept.
                kept.append((result.digest, result.stat_key.size, result.kept))
            elif keeper is not None:
                outcome = keeper.put(path, result.digest, sync=False)
                if outcome.kept:
                    kept.append((outcome.digest, outcome.size, outcome.method))
                else:
                    not_kept.append((path, result.digest, outcome.reason))
            if len(writes) >= WRITE_BATCH:
                if keeper is not None and time.monotonic() - last_flush >= FLUSH_SECONDS:
                    # One syncfs per few seconds, not per batch: it flushes the whole file
                    # system, and other writers' dirty pages with ours.
                    keeper.objects.flush()
                    last_flush = time.monotonic()
                    futures.append(self._submit(_record_job(writes, kept, not_kept)))
                    kept, not_kept = [], []
                else:
                    futures.append(self._submit(_record_job(writes, [], [])))
                writes = []
                if progress and time.monotonic() - last_progress > PROGRESS_SECONDS:
                    last_progress = time.monotonic()
                    stats.seconds = time.monotonic() - started
                    progress(stats)
        if progress:
            progress(stats)
        # The scan waits for what follows: it is committed without waiting for more jobs.
        if writes or kept or not_kept:
            if keeper is not None and kept:
                keeper.objects.flush()
            futures.append(self._submit(_record_job(writes, kept, not_kept), urgent=True))
        gone = [p for p in unseen if not _under_any(p, stats.unreadable)]
        if gone and not self.stop.is_set():
            at = time.time_ns()
            how = ChangeKind.DELETED

            def gone_job(store: Store) -> Recorded:
                if not os.path.isdir(root.path):
                    # The root vanished during the scan: a deleted root cannot be told from
                    # an unmounted one, so nothing below it is closed (see engine.supervision).
                    return Recorded([])
                return Recorded([], store.record_gone(gone, at, how))

            futures.append(self._submit(gone_job, urgent=True))
        for future in futures:
            recorded = future.result()
            stats.gone += len(recorded.gone)
            stats.new_versions += len(recorded.versions)
        stats.seconds = time.monotonic() - started
        return stats

    def _submit(
        self, job: Callable[[Store], Recorded], *, urgent: bool = False
    ) -> Future[Recorded]:
        """Queue a recording job; its new versions are published once committed."""
        future = self.writer.submit(job, urgent=urgent)
        publish_when_committed(future, self.publish)
        return future

    def _walk(
        self,
        root: WatchedRoot,
        top: str,
        stats: ScanStats,
        unseen: dict[str, bytes | None],
        progress: Callable[[ScanStats], None] | None,
    ) -> Iterator[str]:
        """Walk every regular, not ignored file below ``top`` (symlinks are not followed),
        popping each from ``unseen``; yields those whose packed stat key differs from the
        trusted one.

        Every directory is opened relative to its parent's descriptor (``dirfd``: the name
        checked in the listing is the one opened, with ``O_NOFOLLOW|O_DIRECTORY``), never
        by its path: a directory swapped for a link mid-walk fails to open and is treated
        as gone, so the walk can never leave the root. The walk is iterative (no depth
        limit) and keeps at most ``MAX_OPEN_DIRS`` descriptors open.

        This loop is the whole cost of a rescan, so it does the least per entry: one
        compiled pattern per name, one ``stat``, one pack, one dict lookup.
        """
        prefix_len = len(root.path.rstrip("/")) + 1
        excluded = self.roots.excluded
        rules = root.rules
        ignores_name = rules.ignores_name
        name_pattern = rules.name_pattern
        path_patterns = rules.has_path_patterns
        pack = _PACK
        pop = unseen.pop
        files = 0
        last_progress = time.monotonic()
        try:
            top_fd = dirfd.open_dir_beneath(root.path, top)
        except FileNotFoundError:
            stats.unreadable.append(top)
            return
        except OSError as exc:
            if exc.errno in dirfd.SWAPPED_ERRNOS and top != root.path:
                return  # no longer a directory: what was below it is gone
            log.warning("cannot read directory %s: %s", top, exc)
            stats.unreadable.append(top)
            return
        dirs = _OpenDirs(top_fd)
        stack: list[_Pending] = [_Pending(None, "", top)]
        root_level = root.path.rstrip("/").count("/")
        max_level = root_level
        try:
            while stack:
                pending = stack.pop()
                directory = pending.path
                try:
                    fd = dirs.open(pending)
                except FileNotFoundError:
                    continue  # removed since it was listed: its files are gone
                except OSError as exc:
                    if exc.errno in dirfd.SWAPPED_ERRNOS:
                        # Swapped for a link (or a file) since it was listed: never followed;
                        # what was below it is gone from the root.
                        log.info("not entering %s: no longer a directory", directory)
                        continue
                    log.warning("cannot read directory %s: %s", directory, exc)
                    stats.unreadable.append(directory)
                    continue
                below: list[_Pending] = []
                base = directory.rstrip("/") + "/"
                level = base.count("/") - 1
                if level > max_level:
                    max_level = level
                try:
                    with os.scandir(fd) as entries:
                        for entry in entries:
                            name = entry.name
                            try:
                                if entry.is_dir(follow_symlinks=False):
                                    if ignores_name(name, is_dir=True):
                                        continue
                                    path = base + name
                                    if excluded and any(
                                        path == e or path.startswith(e + "/") for e in excluded
                                    ):
                                        continue
                                    if not name.isascii() and not _utf8(path):
                                        continue
                                    below.append(_Pending(pending, name, path))
                                elif entry.is_file(follow_symlinks=False):
                                    if name_pattern is not None and name_pattern(name):
                                        continue
                                    path = base + name
                                    if not name.isascii() and not _utf8(path):
                                        continue
                                    if path_patterns and rules.ignores(path[prefix_len:]):
                                        continue
                                    # fstatat(fd, name, AT_SYMLINK_NOFOLLOW): relative to fd.
                                    st = entry.stat(follow_symlinks=False)
                                    files += 1
                                    key = pack(
                                        st.st_dev,
                                        st.st_ino,
                                        st.st_size,
                                        st.st_mtime_ns,
                                        st.st_ctime_ns,
                                    )
                                    if pop(path, None) != key:
                                        yield path
                            except FileNotFoundError:
                                continue
                except OSError as exc:
                    log.warning("cannot read directory %s: %s", directory, exc)
                    stats.unreadable.append(directory)
                dirs.listed(pending, len(below))
                below.reverse()  # popped in listing order
                stack.extend(below)
                if progress and time.monotonic() - last_progress > PROGRESS_SECONDS:
                    last_progress = time.monotonic()
                    stats.files = files
                    progress(stats)
        finally:
            dirs.close()
        stats.files = files
        stats.max_depth = max(stats.max_depth, max_level - root_level)


_before_open_hook: Callable[[str], None] | None = None
"""Test seam: called with a directory's path after its listing said it is a directory and
before it is opened (a swap made here is the race the descriptors close)."""

MAX_OPEN_DIRS = 128
"""Directory descriptors one walk keeps open at most (a deep tree cannot exhaust them)."""


class _Pending:
    """A directory to walk: its parent, its name there, its path; its descriptor once open."""

    __slots__ = ("children", "fd", "name", "parent", "path")

    def __init__(self, parent: _Pending | None, name: str, path: str) -> None:
        self.parent = parent
        self.name = name
        self.path = path
        self.fd = -1
        self.children = 0  # subdirectories listed but not opened yet


class _OpenDirs:
    """The descriptors of a walk: a parent's stays open while children of it wait to be
    opened (a chain 1,000 deep holds one at a time); beyond ``MAX_OPEN_DIRS`` the oldest is
    closed and opened again, from its nearest open ancestor, when a child needs it."""

    def __init__(self, top_fd: int) -> None:
        self.top_fd = top_fd
        self.open_dirs: dict[int, _Pending] = {}  # id -> directory, oldest first

    def open(self, pending: _Pending) -> int:
        if pending.parent is None:
            pending.fd = self.top_fd
            return self.top_fd
        parent = pending.parent
        parent_fd = self._reopen(parent)
        hook = _before_open_hook
        if hook is not None:
            hook(pending.path)
        try:
            pending.fd = dirfd.open_dir_at(parent_fd, pending.name)
        finally:
            parent.children -= 1
            if parent.children <= 0:
                self._close(parent)
        self.open_dirs[id(pending)] = pending
        self._evict(pending)
        return pending.fd

    def listed(self, pending: _Pending, children: int) -> None:
        pending.children = children
        if children == 0:
            self._close(pending)

    def _reopen(self, directory: _Pending) -> int:
        """``directory``'s descriptor, opened again through its ancestors if it was closed."""
        chain: list[_Pending] = []
        node: _Pending | None = directory
        while node is not None and node.fd < 0:
            chain.append(node)
            node = node.parent
        fd = self.top_fd if node is None else node.fd
        for item in reversed(chain):
            item.fd = dirfd.open_dir_at(fd, item.name)
            self.open_dirs[id(item)] = item
            fd = item.fd
        return directory.fd

    def _evict(self, keep: _Pending) -> None:
        while len(self.open_dirs) > MAX_OPEN_DIRS:
            oldest = next(iter(self.open_dirs.values()))
            if oldest is keep:
                break
            self._close(oldest)

    def _close(self, directory: _Pending) -> None:
        if directory.fd == self.top_fd:
            return  # closed with the walk
        if directory.fd >= 0:
            os.close(directory.fd)
        directory.fd = -1
        self.open_dirs.pop(id(directory), None)

    def close(self) -> None:
        for directory in list(self.open_dirs.values()):
            self._close(directory)
        os.close(self.top_fd)


def _record_job(
    writes: list[VersionWrite],
    kept: list[tuple[str, int, str]],
    not_kept: list[tuple[str, str, str]],
) -> Callable[[Store], Recorded]:
    def job(store: Store) -> Recorded:
        recorded = Recorded(store.record_versions(writes, hasher.HASH_FORMAT))
        if kept:
            store.record_objects(kept, time.time_ns())
        if not_kept:
            store.mark_not_kept_current(not_kept)
        return recorded

    return job


def _utf8(path: str) -> bool:
    """Whether a path can be stored: names that are not UTF-8 are skipped, and said so."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        log.warning(
            "skipping %r: its name is not valid UTF-8 (lineaged stores paths as text)",
            path.encode("utf-8", "surrogateescape"),
        )
        return False
    return True


def _under_any(path: str, directories: list[str]) -> bool:
    return any(path.startswith(d.rstrip("/") + "/") for d in directories)

"""The reconcile scan: compare a tree with the store and record every difference.

It runs at startup (changes made while the daemon was down), periodically, and whenever the
watcher may have lost events. On an unchanged tree it costs one ``os.scandir`` walk plus one
read of the stat cache: nothing is hashed.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from lineaged import hasher
from lineaged.indexer import RootSet, WatchedRoot, row_needs_hash
from lineaged.models import ChangeKind, StatKey
from lineaged.store import Store, VersionWrite, Writer

__all__ = ["ScanStats", "Scanner"]

log = logging.getLogger(__name__)

WRITE_BATCH = 5000
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

    def add(self, other: ScanStats) -> None:
        """Fold another scan's numbers into this one."""
        self.files += other.files
        self.hashed += other.hashed
        self.bytes_hashed += other.bytes_hashed
        self.new_versions += other.new_versions
        self.gone += other.gone
        self.seconds += other.seconds
        self.unreadable.extend(other.unreadable)

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
    ) -> None:
        self.store = store
        self.writer = writer
        self.roots = roots
        self.progress = progress
        self.stop = stop or threading.Event()

    def scan(
        self,
        root: WatchedRoot,
        directory: str | None = None,
        *,
        seen: ChangeKind = ChangeKind.SCAN,
    ) -> ScanStats:
        """Reconcile ``directory`` (default: the whole root) with the store; waits for commit."""
        started = time.monotonic()
        stats = ScanStats()
        top = directory or root.path
        cache = self.store.cache_for_root(root.root_id)
        if directory is not None:
            prefix = top.rstrip("/") + "/"
            cache = {p: e for p, e in cache.items() if p.startswith(prefix)}
        pending: list[str] = []
        seen_paths: set[str] = set()
        last_progress = time.monotonic()
        for path, key in self._walk(root, top, stats):
            stats.files += 1
            seen_paths.add(path)
            if row_needs_hash(cache.get(path), key):
                pending.append(path)
            if self.progress and time.monotonic() - last_progress > PROGRESS_SECONDS:
                last_progress = time.monotonic()
                self.progress(stats)
        futures = []
        writes: list[VersionWrite] = []
        touched: list[tuple[str, StatKey, int]] = []
        observed_at = time.time_ns()
        for path, result in hasher.hash_many(pending):
            if self.stop.is_set():
                break
            if isinstance(result, FileNotFoundError):
                seen_paths.discard(path)  # vanished since the walk: recorded as gone below
                continue
            if not isinstance(result, hasher.HashResult):
                log.warning("cannot hash %s: %s", path, result)
                continue
            stats.hashed += 1
            stats.bytes_hashed += result.stat_key.size
            entry = cache.get(path)
            if entry is not None and entry[1].hex() == result.digest:
                touched.append((path, result.stat_key, observed_at))
            else:
                writes.append(
                    VersionWrite(
                        path=path,
                        root_id=root.root_id,
                        digest=result.digest,
                        stat_key=result.stat_key,
                        seen=seen,
                        observed_at=observed_at,
                    )
                )
            if len(writes) + len(touched) >= WRITE_BATCH:
                futures.append(self.writer.submit(_record_job(writes, touched)))
                writes, touched = [], []
            if self.progress and time.monotonic() - last_progress > PROGRESS_SECONDS:
                last_progress = time.monotonic()
                stats.seconds = time.monotonic() - started
                self.progress(stats)
        if writes or touched:
            futures.append(self.writer.submit(_record_job(writes, touched)))
        gone = [p for p in cache if p not in seen_paths and not _under_any(p, stats.unreadable)]
        if gone and not self.stop.is_set():
            at = time.time_ns()
            how = ChangeKind.DELETED

            def gone_job(store: Store) -> list[Any]:
                return [("gone", p, how) for p in store.record_gone(gone, at, how)]

            futures.append(self.writer.submit(gone_job))
        for future in futures:
            for item in future.result():
                if isinstance(item, tuple):
                    stats.gone += 1
                else:
                    stats.new_versions += 1
        stats.seconds = time.monotonic() - started
        return stats

    def _walk(
        self, root: WatchedRoot, top: str, stats: ScanStats
    ) -> Iterator[tuple[str, tuple[int, int, int, int, int]]]:
        """Every regular, not ignored file below ``top`` with its stat key (no symlinks)."""
        stack = [top]
        prefix_len = len(root.path.rstrip("/")) + 1
        excluded = self.roots.excluded
        while stack:
            directory = stack.pop()
            try:
                with os.scandir(directory) as entries:
                    for entry in entries:
                        try:
                            if entry.is_dir(follow_symlinks=False):
                                if root.rules.ignores_name(entry.name, is_dir=True):
                                    continue
                                if excluded and any(
                                    entry.path == e or entry.path.startswith(e + "/")
                                    for e in excluded
                                ):
                                    continue
                                stack.append(entry.path)
                            elif entry.is_file(follow_symlinks=False):
                                if root.rules.ignores_name(entry.name, is_dir=False):
                                    continue
                                rel = entry.path[prefix_len:]
                                if root.rules.has_path_patterns and root.rules.ignores(rel):
                                    continue
                                st = entry.stat(follow_symlinks=False)
                                yield (
                                    entry.path,
                                    (
                                        st.st_dev,
                                        st.st_ino,
                                        st.st_size,
                                        st.st_mtime_ns,
                                        st.st_ctime_ns,
                                    ),
                                )
                        except FileNotFoundError:
                            continue
            except FileNotFoundError:
                if directory == top:
                    stats.unreadable.append(directory)
                continue
            except (PermissionError, NotADirectoryError, OSError) as exc:
                log.warning("cannot read directory %s: %s", directory, exc)
                stats.unreadable.append(directory)


def _record_job(
    writes: list[VersionWrite], touched: list[tuple[str, StatKey, int]]
) -> Callable[[Store], list[Any]]:
    def job(store: Store) -> list[Any]:
        for path, key, checked_at in touched:
            store.touch_stat(path, key, checked_at)
        return list(store.record_versions(writes, hasher.HASH_FORMAT))

    return job


def _under_any(path: str, directories: list[str]) -> bool:
    return any(path.startswith(d.rstrip("/") + "/") for d in directories)

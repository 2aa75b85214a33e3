"""Turn paths into recorded versions: stat, decide with the stat cache, hash, record.

Both the watcher's pipeline and the run-end resolution go through ``Indexer.observe``; the
reconcile scan (``scanner.py``) uses the same rules in bulk.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat as stat_module
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from lineage_core import hasher
from lineage_core.errors import HashCancelled, HashError, TooLarge
from lineage_core.models import ChangeKind, Root, StatKey, Version

from lineaged.config import IgnoreRules
from lineaged.store import CacheEntry, Store, VersionWrite, Writer

if TYPE_CHECKING:
    from lineaged.retention import Keeper
    from lineaged.watching.lanes import HashLane, Ticket

__all__ = [
    "RACY_NS",
    "Indexer",
    "Publish",
    "Recorded",
    "RootSet",
    "WatchedRoot",
    "needs_hash",
    "publish_when_committed",
]

log = logging.getLogger(__name__)

# An entry whose mtime is this close to when it was hashed may hide a later same-size write
# in the same timestamp tick (git's "racy git" problem): it is hashed again on the next look.
RACY_NS = 2_000_000_000


# Where committed versions are announced: the engine's event bus (``EventBus.publish_versions``).
Publish = Callable[[Sequence[Version]], None]


@dataclass(frozen=True, slots=True)
class Recorded:
    """What one writer job of the indexer or the scanner recorded."""

    versions: list[Version]  # new versions (unchanged content only refreshes the stat cache)
    gone: list[str] = field(default_factory=list)  # paths closed: deleted, or moved away


def publish_when_committed(future: Future[Recorded], publish: Publish | None) -> None:
    """Hand ``publish`` the versions ``future``'s job recorded once the writer has committed
    them; a job that failed, or a batch the store gave up on, publishes nothing."""
    if publish is None:
        return

    def committed(done: Future[Recorded]) -> None:
        if done.cancelled() or done.exception() is not None:
            return
        versions = done.result().versions
        if versions:
            publish(versions)

    future.add_done_callback(committed)


def needs_hash(entry: CacheEntry | None, key: StatKey) -> bool:
    """Whether a file with stat ``key`` must be hashed given what the cache remembers."""
    if entry is None or entry.hash_format != hasher.HASH_FORMAT:
        return True
    if entry.stat_key != key:
        return True
    return key.mtime_ns >= entry.checked_at - RACY_NS


@dataclass(frozen=True, slots=True)
class WatchedRoot:
    """A root as the daemon runs it: its id in the store and its ignore rules."""

    root: Root
    root_id: int
    rules: IgnoreRules

    @property
    def path(self) -> str:
        """The root's absolute path."""
        return self.root.path

    def relpath(self, path: str) -> str | None:
        """``path`` relative to the root, or None when it is not under it."""
        if path == self.root.path:
            return ""
        prefix = self.root.path.rstrip("/") + "/"
        return path[len(prefix) :] if path.startswith(prefix) else None


class RootSet:
    """The watched roots; answers which root a path is under and whether it is ignored."""

    def __init__(self, roots: Iterable[WatchedRoot], *, excluded: Sequence[str] = ()) -> None:
        self.roots = list(roots)
        self.excluded = [e.rstrip("/") for e in excluded]

    def root_for(self, path: str) -> WatchedRoot | None:
        """The root ``path`` is under, or None."""
        for root in self.roots:
            if root.relpath(path) is not None:
                return root
        return None

    def tracked(self, path: str, *, is_dir: bool = False) -> WatchedRoot | None:
        """The root of ``path`` when the path is under a root and not ignored."""
        root = self.root_for(path)
        if root is None:
            return None
        rel = root.relpath(path)
        if not rel:
            return root if is_dir else None
        if any(path == e or path.startswith(e + "/") for e in self.excluded):
            return None
        return None if root.rules.ignores(rel, is_dir=is_dir) else root

    def folder(self, folder: str) -> tuple[WatchedRoot | None, bool]:
        """A folder's root, and whether files directly in it can be tracked: the folder is
        not excluded and no directory on the way from the root is ignored.

        With :meth:`file_in_folder_tracked`, what :meth:`tracked` answers for a file, split so
        a batch of paths in few folders pays for each folder once.
        """
        root = self.root_for(folder)
        if root is None:
            return None, False
        if any(folder == e or folder.startswith(e + "/") for e in self.excluded):
            return root, False
        rel = root.relpath(folder) or ""
        ignored = any(root.rules.ignores_name(part, is_dir=True) for part in rel.split("/") if part)
        return root, not ignored

    @staticmethod
    def file_in_folder_tracked(root: WatchedRoot, path: str, name: str) -> bool:
        """Whether the file ``path`` (named ``name``), in a folder :meth:`folder` says can hold
        tracked files, is tracked: its own name and path patterns."""
        rules = root.rules
        if rules.has_path_patterns:
            return not rules.ignores(path[len(root.path.rstrip("/")) + 1 :])
        match = rules.name_pattern
        return match is None or match(name) is None


class Indexer:
    """Observe paths under the roots and record what they hold now.

    With lanes set (the daemon), files of ``hasher.LARGE_FILE`` bytes or more are hashed on
    the large lane, never on the calling thread; ``observe_within`` (client calls) hands
    what is not hashed by its deadline to a lane. Without (``--once``, tools), all inline.
    """

    def __init__(
        self,
        store: Store,
        writer: Writer,
        roots: RootSet,
        *,
        cancel: threading.Event | None = None,
        on_too_large: Callable[[WatchedRoot, str], None] | None = None,
        publish: Publish | None = None,
    ) -> None:
        self.store = store
        self.writer = writer
        self.roots = roots
        self.cancel = cancel
        self.on_too_large = on_too_large
        self.publish = publish  # handed the versions each write committed
        self.large_lane: HashLane | None = None
        self.small_lane: HashLane | None = None
        self.keeper: Keeper | None = None  # set by the engine: keeps bytes where roots want all

    def observe(
        self, hints: dict[str, ChangeKind], *, wait: bool = False
    ) -> Future[Recorded] | None:
        """Stat each path and record its present state: a new version, or gone.

        ``hints`` maps paths to how the change was seen. Paths not under a root or ignored
        are skipped. Returns the writer's future (None when there was nothing to write).
        Big files go to the large lane (not waited for).
        """
        future, _ = self._observe(hints, wait=wait, deadline=None, use_lanes=True)
        return future

    def observe_within(self, hints: dict[str, ChangeKind], deadline: float) -> dict[str, Ticket]:
        """``observe`` for a client's call: wait until ``deadline`` (``time.monotonic``) at
        most; returns the lanes' tickets of the files still being hashed then."""
        _, tickets = self._observe(hints, wait=True, deadline=deadline, use_lanes=True)
        pending: dict[str, Ticket] = {}
        for path, ticket in tickets.items():
            if not ticket.wait(deadline - time.monotonic()):
                pending[path] = ticket
        return pending

    def hash_and_record(self, root: WatchedRoot, path: str, seen: ChangeKind) -> bool:
        """A lane's work: index one path on this thread; whether its state is recorded."""
        future, _ = self._observe({path: seen}, wait=True, deadline=None, use_lanes=False)
        return future is None or future.done()

    def _observe(
        self,
        hints: dict[str, ChangeKind],
        *,
        wait: bool,
        deadline: float | None,
        use_lanes: bool,
    ) -> tuple[Future[Recorded] | None, dict[str, Ticket]]:
        tickets: dict[str, Ticket] = {}
        writes: list[VersionWrite] = []
        gone: dict[ChangeKind, list[str]] = {}
        touched: list[tuple[str, StatKey, int]] = []
        kept: list[tuple[str, int, str]] = []
        not_kept: list[tuple[str, str, str]] = []
        keeper = self.keeper
        for path, seen in hints.items():
            root = self.roots.tracked(path)
            if root is None:
                continue
            if not path.isascii():
                try:
                    path.encode("utf-8")
                except UnicodeEncodeError:
                    log.warning("skipping %r: its name is not valid UTF-8", os.fsencode(path))
                    continue
            parent = os.path.dirname(path)
            if os.path.realpath(parent) != parent:
                # A directory on the way is a link (roots are resolved): what it leads to is
                # not ours to open. The scan does not follow links either.
                log.warning("not indexing %s: a directory on its path is a symbolic link", path)
                continue
            observed_at = time.time_ns()
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                gone.setdefault(
                    ChangeKind.MOVED if seen is ChangeKind.MOVED else ChangeKind.DELETED, []
                ).append(path)
                continue
            except OSError as exc:
                log.warning("cannot stat %s: %s", path, exc)
                continue
            if not stat_module.S_ISREG(st.st_mode):
                # A symlink or a special file is not content we version; if a regular
                # file used to be here, it is gone.
                gone.setdefault(ChangeKind.DELETED, []).append(path)
                continue
            key = StatKey.from_stat(st)
            entry = self.store.cache_entry(path)
            if not needs_hash(entry, key):
                continue
            lane = None
            if use_lanes:
                if st.st_size >= hasher.LARGE_FILE:
                    lane = self.large_lane
                elif deadline is not None and time.monotonic() >= deadline:
                    lane = self.small_lane
            if lane is not None:
                tickets[path] = lane.submit(root, path, seen)
                continue
            try:
                result = hasher.hash_file(
                    path, root=root.path, max_size=root.root.max_hash_size, cancel=self.cancel
                )
            except FileNotFoundError:
                gone.setdefault(ChangeKind.DELETED, []).append(path)
                continue
            except TooLarge:
                if self.on_too_large is not None:
                    self.on_too_large(root, path)
                continue
            except HashCancelled:
                continue
            except (OSError, HashError) as exc:
                log.warning("cannot hash %s: %s", path, exc)
                continue
            if entry is not None and entry.digest == result.digest:
                touched.append((path, result.stat_key, observed_at))
                continue
            if entry is None and seen is ChangeKind.MODIFIED:
                seen = ChangeKind.CREATED
            if keeper is not None and keeper.wants_all(root.root_id):
                # Copied now, before the version is recorded: a later change cannot lose it.
                outcome = keeper.put(path, result.digest)
                if outcome.kept:
                    kept.append((outcome.digest, outcome.size, outcome.method))
                else:
                    not_kept.append((path, result.digest, outcome.reason))
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
        if not writes and not gone and not touched:
            return None, tickets
        at = time.time_ns()

        def job(store: Store) -> Recorded:
            for path, key, checked_at in touched:
                store.touch_stat(path, key, checked_at)
            recorded = Recorded(store.record_versions(writes, hasher.HASH_FORMAT))
            if kept:
                store.record_objects(kept, at)
            if not_kept:
                store.mark_not_kept_current(not_kept)
            for how, paths in gone.items():
                recorded.gone.extend(store.record_gone(paths, at, how))
            return recorded

        # A caller that waits (a run ending, a verify) is not kept for the writer's batching.
        future = self.writer.submit(job, urgent=wait)
        publish_when_committed(future, self.publish)
        if wait:
            if deadline is None:
                future.result(timeout=120)
            else:
                # Past the deadline the write still lands; the caller answers without it.
                with contextlib.suppress(TimeoutError):
                    future.result(timeout=max(0.0, deadline - time.monotonic()))
        return future, tickets

    def observe_gone_tree(self, directory: str, how: ChangeKind) -> Future[Recorded] | None:
        """Every live path at or below ``directory`` is gone (a directory deleted or moved)."""
        paths = self.store.live_paths_under(directory)
        if not paths:
            return None
        at = time.time_ns()

        def job(store: Store) -> Recorded:
            return Recorded([], list(store.record_gone(paths, at, how)))

        return self.writer.submit(job)

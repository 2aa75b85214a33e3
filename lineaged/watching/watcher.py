"""Watching: a watchdog observer per root whose handler only enqueues, and the pipeline
thread that settles bursts per path and hands them to the indexer.

Events are hints, not facts: after a path has been quiet for the settle delay, the pipeline
looks at what the path holds *now* and records that. An atomic save (temp file renamed over
the target) therefore records one version of the target and nothing for the temp file, and
a burst of writes records the final state once.

A root the watcher cannot fully see is never watched silently: when inotify fails (watch or
instance limit, a filesystem without inotify) or cannot see other machines' changes (a
network filesystem), the root is polled instead and ``RootWatcher.problem`` says why; the
engine reports it in its status and the reconcile scan covers whatever polling misses.
"""

from __future__ import annotations

import errno
import logging
import os
import queue
import re
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from lineage_core.models import ChangeKind
from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    EventsLostEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers.api import BaseObserver
from watchdog.observers.inotify import InotifyObserver
from watchdog.observers.polling import PollingObserver

from lineaged.watching.indexer import Indexer, WatchedRoot

__all__ = [
    "BLIND_SCAN_INTERVAL",
    "NETWORK_FILESYSTEMS",
    "POLL_SECONDS",
    "Change",
    "Pipeline",
    "RootWatcher",
    "WatchFailures",
    "filesystem_type",
    "lost_event_problem",
    "root_identity",
]

log = logging.getLogger(__name__)

POLL_SECONDS = 2.0  # between snapshots of a polled root

# Filesystems where inotify reports only the changes made through this machine's kernel:
# another client's writes to the share are invisible, so these roots are polled.
NETWORK_FILESYSTEMS = frozenset(
    {
        "nfs",
        "nfs4",
        "cifs",
        "smb3",
        "smbfs",
        "9p",
        "ceph",
        "afs",
        "lustre",
        "gpfs",
        "glusterfs",
        "beegfs",
        "fuse.sshfs",
        "fuse.rclone",
        "fuse.s3fs",
        "fuse.gcsfuse",
        "fuse.glusterfs",
        "fuse.juicefs",
    }
)

# The events the handler acts on, given to watchdog as its event_filter: opens and no-write
# closes say nothing about content, directory-modified events only echo their children's
# events, and attribute changes leave the bytes alone. watchdog 7.1 builds the inotify mask
# from this list: IN_CREATE, IN_MOVED_FROM/TO, IN_DELETE, IN_MODIFY, IN_ATTRIB, IN_CLOSE_WRITE
# and IN_DELETE_SELF (with IN_DONT_FOLLOW), never IN_OPEN or IN_CLOSE_NOWRITE, so a job
# reading thousands of files under a root costs the daemon nothing (the default mask queued
# two events per file read).
_WANTED_EVENTS: list[type[FileSystemEvent]] = [
    FileCreatedEvent,
    FileModifiedEvent,
    FileClosedEvent,
    FileDeletedEvent,
    FileMovedEvent,
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    # watchdog >= 7.1.1 queues this when the kernel's inotify queue overflowed.
    EventsLostEvent,
]


@dataclass(frozen=True, slots=True)
class Change:
    """A path that may have changed, and how it was seen."""

    path: str
    seen: ChangeKind
    is_dir: bool = False
    gone_tree: bool = False  # a directory deleted or moved away: everything below is gone


class _Handler(FileSystemEventHandler):
    """Runs on watchdog's thread: translate and enqueue, nothing else."""

    def __init__(
        self, put: Callable[[Change], None], on_lost: Callable[[str], None] | None = None
    ) -> None:
        self.put = put
        self.on_lost = on_lost

    def on_any_event(self, event: FileSystemEvent) -> None:
        src = _text(event.src_path)
        if isinstance(event, EventsLostEvent):
            if self.on_lost is not None:
                self.on_lost(f"inotify queue overflowed below {src}")
        elif isinstance(event, DirMovedEvent):
            self.put(Change(src, ChangeKind.MOVED, is_dir=True, gone_tree=True))
            self.put(Change(_text(event.dest_path), ChangeKind.MOVED, is_dir=True))
        elif isinstance(event, FileMovedEvent):
            self.put(Change(src, ChangeKind.MOVED))
            self.put(Change(_text(event.dest_path), ChangeKind.MOVED))
        elif isinstance(event, DirDeletedEvent):
            self.put(Change(src, ChangeKind.DELETED, is_dir=True, gone_tree=True))
        elif isinstance(event, DirCreatedEvent):
            self.put(Change(src, ChangeKind.CREATED, is_dir=True))
        elif isinstance(event, FileCreatedEvent):
            self.put(Change(src, ChangeKind.CREATED))
        elif isinstance(event, FileDeletedEvent):
            self.put(Change(src, ChangeKind.DELETED))
        elif isinstance(event, FileModifiedEvent | FileClosedEvent):
            self.put(Change(src, ChangeKind.MODIFIED))


def _below_any(path: str, directories: set[str]) -> bool:
    """Whether a directory above ``path`` is in ``directories`` (iterative: trees are deep)."""
    parent = path
    while True:
        parent, sep, _ = parent.rpartition("/")
        if not sep or not parent:
            return False
        if parent in directories:
            return True


def _text(path: str | bytes) -> str:
    return path.decode("utf-8", "surrogateescape") if isinstance(path, bytes) else path


def root_identity(path: str) -> tuple[int, int] | None:
    """(st_dev, st_ino) of the directory at ``path``, or None when there is none."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino) if stat.S_ISDIR(st.st_mode) else None


def _unescape_mount(field: str) -> str:
    # mountinfo writes space, tab, newline and backslash in a mount point as \ooo (octal).
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def filesystem_type(path: str) -> str:
    """The type of the filesystem ``path`` is on, from /proc/self/mountinfo ("" if unknown)."""
    try:
        real = os.path.realpath(path)
        with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
            lines = f.read().splitlines()
    except OSError:
        return ""
    best, best_type = "", ""
    for line in lines:
        before, sep, after = line.partition(" - ")
        fields = before.split()
        if not sep or len(fields) < 5 or not after:
            continue
        mount_point = _unescape_mount(fields[4])
        inside = real == mount_point or real.startswith(mount_point.rstrip("/") + "/")
        # Later lines are mounted over earlier ones at the same point: >= keeps the last.
        if inside and len(mount_point) >= len(best):
            best, best_type = mount_point, after.split()[0]
    return best_type


class RootWatcher:
    """One observer on one root: inotify, or polling when inotify cannot see everything.

    ``problem`` says why the root is polled or not watched ("" when inotify watches all of
    it). ``wants_polling`` gets the reason when inotify later runs out of watches for a new
    subdirectory; ``on_trouble`` is then called (from watchdog's thread, so it must only
    set a flag) and the owner restarts the watcher with ``force_polling=wants_polling``.
    The owner reports and logs ``problem`` (this class logs at info level only).
    ``on_lost`` is called (from watchdog's thread) when the kernel dropped events of this
    root; ``failures`` tells the watcher of subdirectories inotify could not watch later.
    """

    def __init__(
        self,
        root: WatchedRoot,
        put: Callable[[Change], None],
        *,
        force_polling: str = "",
        poll_interval: float = POLL_SECONDS,
        on_trouble: Callable[[str], None] | None = None,
        on_lost: Callable[[str], None] | None = None,
        failures: WatchFailures | None = None,
    ) -> None:
        self.root = root
        self.put = put
        self.polling = bool(force_polling)
        self.problem = force_polling
        self.identity: tuple[int, int] | None = None
        self.wants_polling = ""
        self._poll_interval = poll_interval
        self._on_trouble = on_trouble
        self._on_lost = on_lost
        self._failures = failures
        self._observer: BaseObserver | None = None
        self._watch_failures: list[str] = []

    def start(self) -> None:
        """Start watching; fall back to polling when inotify cannot watch all of this root."""
        self.identity = root_identity(self.root.path)
        if self.identity is None:
            self.problem = "root does not exist; waiting for it to appear"
            return
        if not self.polling:
            fs_type = filesystem_type(self.root.path)
            if fs_type in NETWORK_FILESYSTEMS:
                self._fall_back(
                    f"on a network filesystem ({fs_type}) where inotify misses other "
                    "machines' changes; polling instead"
                )
            else:
                self._start_inotify()
        if self.polling:
            self._start_polling()

    def _start_inotify(self) -> None:
        observer: BaseObserver | None = None
        if self._failures is not None:
            self._failures.add(self)
        try:
            # schedule() creates the inotify instance and watches the whole tree: the limits
            # (EMFILE, and ENOSPC anywhere in the tree) are raised here.
            observer = InotifyObserver()
            observer.schedule(
                _Handler(self.put, self._on_lost),
                self.root.path,
                recursive=True,
                event_filter=_WANTED_EVENTS,
            )
            observer.start()
        except OSError as exc:
            if self._failures is not None:
                self._failures.remove(self)
            if observer is not None:
                _stop_quietly(observer)
            if exc.errno == errno.ENOENT or root_identity(self.root.path) is None:
                self.problem = "root does not exist; waiting for it to appear"
                return
            self._fall_back(_inotify_problem(exc.errno, exc.strerror or str(exc)))
            return
        except Exception as exc:  # an unexpected watchdog failure must not stop the daemon
            if self._failures is not None:
                self._failures.remove(self)
            if observer is not None:
                _stop_quietly(observer)
            log.exception("%s: inotify failed", self.root.path)
            self._fall_back(f"inotify failed ({exc}); polling instead")
            return
        self._observer = observer
        self.problem = ""

    def _fall_back(self, problem: str) -> None:
        self.problem = problem
        self.polling = True
        log.info("%s: %s", self.root.path, problem)

    def _limit_problem(self) -> str:
        where = self._watch_failures[0]
        more = len(self._watch_failures) - 1
        return (
            f"inotify watch limit reached at {where}"
            + (f" and {more} more directories" if more else "")
            + " (raise fs.inotify.max_user_watches); polling instead"
        )

    def watch_failed(self, path: str, problem: str = "") -> None:
        """inotify could not watch ``path`` (a directory made after start): poll instead.

        Called from watchdog's thread, through ``WatchFailures``: only notes and signals.
        ``problem`` replaces the watch-limit wording when the cause is another.
        """
        self._watch_failures.append(path)
        if self._observer is not None and not self.wants_polling:
            self.wants_polling = problem or self._limit_problem()
            if self._on_trouble is not None:
                self._on_trouble(self.root.path)

    def _start_polling(self) -> None:
        observer = PollingObserver(timeout=self._poll_interval)
        try:
            observer.schedule(
                _Handler(self.put), self.root.path, recursive=True, event_filter=_WANTED_EVENTS
            )
            observer.start()
        except Exception as exc:
            _stop_quietly(observer)
            if root_identity(self.root.path) is None:
                self.problem = "root does not exist; waiting for it to appear"
            else:
                self.problem = f"cannot watch: {_reason(exc)}"
                log.info("%s: %s", self.root.path, self.problem)
            return
        self._observer = observer

    @property
    def alive(self) -> bool:
        """Whether the observer and its threads are running.

        watchdog's emitter stops by itself when the root is deleted (its observer runs on,
        blind), and a directory recreated at the same path may even get the same inode.
        """
        observer = self._observer
        if observer is None or not observer.is_alive():
            return False
        return all(emitter.is_alive() for emitter in list(observer.emitters))

    @property
    def started(self) -> bool:
        """Whether an observer was started (it may have died since: see ``alive``)."""
        return self._observer is not None

    def stop(self) -> None:
        """Stop and join the observer."""
        if self._failures is not None:
            self._failures.remove(self)
        if self._observer is not None:
            _stop_quietly(self._observer)
            self._observer = None

    def __enter__(self) -> RootWatcher:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _inotify_problem(code: int | None, text: str) -> str:
    if code == errno.ENOSPC:
        return "inotify watch limit reached (raise fs.inotify.max_user_watches); polling instead"
    if code == errno.EMFILE:
        return (
            "inotify instance limit reached (raise fs.inotify.max_user_instances); polling instead"
        )
    return f"inotify unavailable ({text}); polling instead"


def _reason(exc: BaseException) -> str:
    return (exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)) or type(
        exc
    ).__name__


def _stop_quietly(observer: BaseObserver) -> None:
    try:
        # Even an observer that never started owns threads and descriptors (inotify's
        # reader starts when the observer is constructed): stop() releases them.
        observer.stop()
        if observer.is_alive():
            observer.join(timeout=10)
    except Exception:  # stopping must never fail shutdown
        log.debug("observer stop failed", exc_info=True)


# Where lost events cannot be detected, the reconcile scan is what finds them: this often.
BLIND_SCAN_INTERVAL = 60.0
# The watchdog releases whose lost-event and watch-failure reports were tested: pyproject.toml
# allows these only; an install forced outside them is reported, never silently trusted.
_TESTED_WATCHDOG = ((7, 1, 1), (8, 0, 0))


def lost_event_problem(version: str | None = None) -> str:
    """Why this watchdog may lose events without telling us ("" when it is a tested one)."""
    if version is None:
        # Deferred (e): importlib.metadata and the email package it loads (18 ms) serve this
        # check only, made when watching starts: `lineaged --once` never needs them.
        from importlib.metadata import PackageNotFoundError
        from importlib.metadata import version as installed

        try:
            version = installed("watchdog")
        except PackageNotFoundError:
            version = "unknown"
    numbers = tuple(int(part) for part in re.findall(r"\d+", version)[:3])
    low, high = _TESTED_WATCHDOG
    if len(numbers) == 3 and low <= numbers < high:
        return ""
    return (
        f"watchdog {version} is not a release lineaged was tested with (>=7.1.1,<8): lost "
        f"events may go unnoticed, so every root is rescanned every {BLIND_SCAN_INTERVAL:.0f} s"
    )


class WatchFailures(logging.Handler):
    """Route watchdog's "cannot watch this directory" reports to the root watcher concerned.

    watchdog 7.1.1 tells of a subdirectory it could not watch after start (inotify's watch
    or instance limit) only as a WARNING on its ``watchdog.observers.inotify`` logger, and of
    a tree it could not rewatch after an overflow only as an ERROR there; that directory
    would then be blind. Each record names the path: the watcher of the root holding it
    switches to polling. The messages are pinned by tests/test_blindness.py, and
    pyproject.toml allows only the watchdog releases that were tested (<8).
    """

    LOGGER = "watchdog.observers.inotify"
    _MESSAGES = ("Unable to watch", "Unable to rebuild recursive inotify watches")

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self._watchers: list[RootWatcher] = []
        self._watchers_lock = threading.Lock()

    def add(self, watcher: RootWatcher) -> None:
        """Send ``watcher`` the failures below its root."""
        with self._watchers_lock:
            if watcher not in self._watchers:
                self._watchers.append(watcher)

    def remove(self, watcher: RootWatcher) -> None:
        """Stop sending ``watcher`` failures."""
        with self._watchers_lock:
            if watcher in self._watchers:
                self._watchers.remove(watcher)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            if not isinstance(record.msg, str) or not record.msg.startswith(self._MESSAGES):
                return
            args = record.args if isinstance(record.args, tuple) else ()
            if not args or not isinstance(args[0], bytes | str):
                return
            path = _text(args[0])
            problem = ""
            if record.msg.startswith(self._MESSAGES[1]):
                problem = f"inotify could not rewatch {path} after lost events; polling instead"
            with self._watchers_lock:
                watchers = list(self._watchers)
            for watcher in watchers:
                root = watcher.root.path.rstrip("/")
                if path == root or path.startswith(root + "/"):
                    watcher.watch_failed(path, problem)
        except Exception:  # a logging handler must not raise
            self.handleError(record)

    def __enter__(self) -> WatchFailures:
        logger = logging.getLogger(self.LOGGER)
        logger.addHandler(self)
        if logger.getEffectiveLevel() > logging.WARNING:
            logger.setLevel(logging.WARNING)
        return self

    def __exit__(self, *exc: object) -> None:
        logging.getLogger(self.LOGGER).removeHandler(self)


class Pipeline:
    """The worker: coalesce changes per path, wait for them to settle, then index them.

    Changes under a root that no longer exists are dropped, and the root's own deletion is
    handed to ``on_root_gone`` instead of being recorded: a vanished root may be an unmounted
    disk, so its files keep their current versions (the engine reports the root missing and
    rescans it when it is back). Only what settles while the root still exists is recorded.
    """

    def __init__(
        self,
        indexer: Indexer,
        *,
        settle: float = 0.2,
        scan_directory: Callable[[str, ChangeKind], None],
        on_root_gone: Callable[[str], None] | None = None,
    ) -> None:
        self.indexer = indexer
        self.settle = settle
        self.scan_directory = scan_directory
        self.on_root_gone = on_root_gone
        self._queue: queue.SimpleQueue[Change | None] = queue.SimpleQueue()
        self._pending: dict[str, tuple[float, Change]] = {}
        self._thread = threading.Thread(target=self._loop, name="lineaged-pipeline", daemon=True)
        self._stop = threading.Event()
        self._idle = threading.Event()
        self._idle.set()

    def put(self, change: Change) -> None:
        """Enqueue a change (called from watchdog's thread)."""
        self._idle.clear()
        self._queue.put(change)

    @property
    def depth(self) -> int:
        """Changes waiting to settle or to be read."""
        return self._queue.qsize() + len(self._pending)

    def start(self) -> None:
        """Start the worker thread."""
        self._thread.start()

    def stop(self) -> None:
        """Process what is pending (without waiting for it to settle) and stop."""
        if self._thread.is_alive():
            self._stop.set()
            self._queue.put(None)
            self._thread.join()

    def __enter__(self) -> Pipeline:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wait_idle(self, timeout: float) -> bool:
        """Block until nothing is queued or pending (tests and shutdown)."""
        return self._idle.wait(timeout)

    def _loop(self) -> None:
        while True:
            timeout = None
            if self._pending:
                timeout = max(0.0, min(d for d, _ in self._pending.values()) - time.monotonic())
            try:
                change = self._queue.get(timeout=timeout)
            except queue.Empty:
                change = None
                if self._stop.is_set():
                    break
            else:
                if change is None and self._stop.is_set():
                    self._drain()
                    self._flush(everything=True)
                    break
            if change is not None:
                self._add(change)
                self._drain()
            self._flush(everything=False)
            if not self._pending and self._queue.empty():
                self._idle.set()

    def _drain(self) -> None:
        while True:
            try:
                change = self._queue.get_nowait()
            except queue.Empty:
                return
            if change is None:
                self._queue.put(None)  # keep the stop marker for the loop
                return
            self._add(change)

    def _add(self, change: Change) -> None:
        deadline = time.monotonic() + self.settle
        previous = self._pending.get(change.path)
        if previous is not None:
            old = previous[1]
            # A move or a delete is remembered over a later plain modification, so the
            # version says how the path changed.
            seen = old.seen if old.seen in (ChangeKind.MOVED, ChangeKind.CREATED) else change.seen
            change = Change(
                change.path,
                seen,
                is_dir=change.is_dir or old.is_dir,
                gone_tree=change.gone_tree or old.gone_tree,
            )
        self._pending[change.path] = (deadline, change)

    def _flush(self, *, everything: bool) -> None:
        now = time.monotonic()
        due = [c for d, c in self._pending.values() if everything or d <= now]
        if not due:
            return
        for change in due:
            del self._pending[change.path]
        roots = self.indexer.roots
        present: dict[str, bool] = {}
        dropped = 0
        # A directory scan covers everything below it: a tree made at once (mkdir -p, a
        # 500-level tree) is one scan of its top, not one per level.
        scans = {c.path for c in due if c.is_dir and not c.gone_tree}
        files: dict[str, ChangeKind] = {}
        for change in due:
            root = roots.root_for(change.path)
            if root is not None:
                if root.path not in present:
                    present[root.path] = os.path.isdir(root.path)
                if change.path == root.path:
                    # The root itself went away (inotify reports its deletion as a file's):
                    # the engine's root check decides, never a recorded deletion of
                    # everything below it.
                    gone = change.seen in (ChangeKind.DELETED, ChangeKind.MOVED)
                    if gone and self.on_root_gone is not None:
                        self.on_root_gone(root.path)
                    continue
                if not present[root.path]:
                    dropped += 1
                    continue
            try:
                if change.gone_tree:
                    self.indexer.observe_gone_tree(change.path, change.seen)
                if change.is_dir and not change.gone_tree:
                    if len(scans) > 1 and _below_any(change.path, scans):
                        continue
                    self.scan_directory(change.path, change.seen)
                elif not change.is_dir:
                    files[change.path] = change.seen
            except Exception:
                log.exception("failed to index %s", change.path)
        if dropped:
            log.info(
                "%d changes under vanished roots not recorded: their files keep their versions",
                dropped,
            )
        if files:
            try:
                self.indexer.observe(files)
            except Exception:
                log.exception("failed to index %d changed paths", len(files))

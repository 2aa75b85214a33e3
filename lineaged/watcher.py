"""Watching: a watchdog observer per root whose handler only enqueues, and the pipeline
thread that settles bursts per path and hands them to the indexer.

Events are hints, not facts: after a path has been quiet for the settle delay, the pipeline
looks at what the path holds *now* and records that. An atomic save (temp file renamed over
the target) therefore records one version of the target and nothing for the temp file, and
a burst of writes records the final state once.
"""

from __future__ import annotations

import errno
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirModifiedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileClosedNoWriteEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileOpenedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers.api import BaseObserver
from watchdog.observers.inotify import InotifyObserver
from watchdog.observers.polling import PollingObserver

from lineaged.indexer import Indexer, WatchedRoot
from lineaged.models import ChangeKind

__all__ = ["Change", "OverflowDetector", "Pipeline", "RootWatcher"]

log = logging.getLogger(__name__)

# Opens and no-write closes say nothing about content; directory-modified events only echo
# their children's events.
_IGNORED_EVENTS = (FileOpenedEvent, FileClosedNoWriteEvent, DirModifiedEvent)


@dataclass(frozen=True, slots=True)
class Change:
    """A path that may have changed, and how it was seen."""

    path: str
    seen: ChangeKind
    is_dir: bool = False
    gone_tree: bool = False  # a directory deleted or moved away: everything below is gone


class _Handler(FileSystemEventHandler):
    """Runs on watchdog's thread: translate and enqueue, nothing else."""

    def __init__(self, put: Callable[[Change], None]) -> None:
        self.put = put

    def on_any_event(self, event: FileSystemEvent) -> None:
        if isinstance(event, _IGNORED_EVENTS):
            return
        src = _text(event.src_path)
        if isinstance(event, DirMovedEvent):
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


def _text(path: str | bytes) -> str:
    return path.decode("utf-8", "surrogateescape") if isinstance(path, bytes) else path


class RootWatcher:
    """One observer on one root: inotify, or polling when inotify is not available."""

    def __init__(
        self,
        root: WatchedRoot,
        put: Callable[[Change], None],
        *,
        force_polling: bool = False,
        poll_interval: float = 2.0,
    ) -> None:
        self.root = root
        self.put = put
        self.polling = force_polling
        self.problem = ""
        self._poll_interval = poll_interval
        self._observer: BaseObserver | None = None

    def start(self) -> None:
        """Start watching; fall back to polling when inotify cannot watch this root."""
        handler = _Handler(self.put)
        if not self.polling:
            observer: BaseObserver = InotifyObserver()
            try:
                observer.schedule(handler, self.root.path, recursive=True)
                observer.start()
                self._observer = observer
                return
            except OSError as exc:
                _stop_quietly(observer)
                if exc.errno == errno.ENOSPC:
                    self.problem = (
                        "inotify watch limit reached (raise fs.inotify.max_user_watches); "
                        "polling instead"
                    )
                elif exc.errno == errno.EMFILE:
                    self.problem = (
                        "inotify instance limit reached (raise fs.inotify.max_user_instances); "
                        "polling instead"
                    )
                elif exc.errno == errno.ENOENT:
                    self.problem = "root does not exist; waiting for it to appear"
                    return
                else:
                    self.problem = f"inotify unavailable ({exc.strerror}); polling instead"
                log.warning("%s: %s", self.root.path, self.problem)
                self.polling = True
        observer = PollingObserver(timeout=self._poll_interval)
        try:
            observer.schedule(handler, self.root.path, recursive=True)
            observer.start()
        except OSError as exc:
            _stop_quietly(observer)
            self.problem = f"cannot watch: {exc.strerror}"
            log.warning("%s: %s", self.root.path, self.problem)
            return
        self._observer = observer

    @property
    def alive(self) -> bool:
        """Whether the observer thread is running."""
        return self._observer is not None and self._observer.is_alive()

    def stop(self) -> None:
        """Stop and join the observer."""
        if self._observer is not None:
            _stop_quietly(self._observer)
            self._observer = None

    def __enter__(self) -> RootWatcher:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _stop_quietly(observer: BaseObserver) -> None:
    try:
        if observer.is_alive():
            observer.stop()
            observer.join(timeout=10)
        else:
            observer.unschedule_all()
    except Exception:  # stopping must never fail shutdown
        log.debug("observer stop failed", exc_info=True)


class OverflowDetector(logging.Handler):
    """watchdog reports a lost-event overflow only as a WARNING log line: catch it.

    watchdog 7.1 logs "Inotify queue overflowed" (and "Unable to rebuild recursive inotify
    watches") on the ``watchdog.observers.inotify*`` loggers and delivers no event; the
    callback asks for a reconcile scan.
    """

    LOGGERS = ("watchdog.observers.inotify_c", "watchdog.observers.inotify")

    def __init__(self, on_overflow: Callable[[str], None]) -> None:
        super().__init__(level=logging.WARNING)
        self.on_overflow = on_overflow

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "overflow" in message.lower() or "unable to" in message.lower():
            try:
                self.on_overflow(message)
            except Exception:  # a logging handler must not raise
                self.handleError(record)

    def __enter__(self) -> OverflowDetector:
        for name in self.LOGGERS:
            logger = logging.getLogger(name)
            logger.addHandler(self)
            if logger.getEffectiveLevel() > logging.WARNING:
                logger.setLevel(logging.WARNING)
        return self

    def __exit__(self, *exc: object) -> None:
        for name in self.LOGGERS:
            logging.getLogger(name).removeHandler(self)


class Pipeline:
    """The worker: coalesce changes per path, wait for them to settle, then index them."""

    def __init__(
        self,
        indexer: Indexer,
        *,
        settle: float = 0.2,
        scan_directory: Callable[[str, ChangeKind], None],
    ) -> None:
        self.indexer = indexer
        self.settle = settle
        self.scan_directory = scan_directory
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
        files: dict[str, ChangeKind] = {}
        for change in due:
            try:
                if change.gone_tree:
                    self.indexer.observe_gone_tree(change.path, change.seen)
                if change.is_dir and not change.gone_tree:
                    self.scan_directory(change.path, change.seen)
                elif not change.is_dir:
                    files[change.path] = change.seen
            except Exception:
                log.exception("failed to index %s", change.path)
        if files:
            try:
                self.indexer.observe(files)
            except Exception:
                log.exception("failed to index %d changed paths", len(files))

"""Watching trees too deep for watchdog: lineaged's own iterative inotify walker.

watchdog 7.1.1 sets up a recursive watch with ``os.walk``, which on Python 3.11 recurses
once per directory level (as does its polling snapshot): a tree 1,000 levels deep raises
``RecursionError``, and the root used to be left unwatched. Raising the interpreter's
recursion limit would only move the cliff (and risk the C stack), and watchdog's private
attributes are not ours to patch. So a root whose tree is deeper than ``WATCHDOG_MAX_DEPTH``
is watched by ``DeepWatcher`` instead:

- directories are walked iteratively and opened through descriptors (``dirfd``), and each
  is watched through ``/proc/self/fd/N``: no recursion, no path length limit, no link
  followed;
- a directory the kernel refuses a watch for (``ENOSPC``: ``fs.inotify.max_user_watches``)
  is *polled*, with everything below it, and only that part: the root's health names it,
  the watcher tries to watch it again at every poll, and the message clears by itself once
  the condition does (the deep tree removed, or the limit raised);
- events become the same ``Change`` hints as watchdog's, and a queue overflow asks for a
  reconcile scan.

When the tree is shallow again and fully watched, the engine goes back to watchdog.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import select
import struct
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

from lineage_core import dirfd
from lineage_core.models import ChangeKind

from lineaged.watching.indexer import WatchedRoot
from lineaged.watching.watcher import POLL_SECONDS, Change, root_identity

__all__ = ["WATCHDOG_MAX_DEPTH", "DeepWatcher", "WatchdogCrashes", "deeper_than"]

log = logging.getLogger(__name__)

WATCHDOG_MAX_DEPTH = 300
"""Trees deeper than this (levels below the root) are watched by ``DeepWatcher``: Python
3.11's ``os.walk`` in watchdog recurses once per level against a limit of 1,000 frames."""

_IN_MODIFY = 0x2
_IN_ATTRIB = 0x4
_IN_CLOSE_WRITE = 0x8
_IN_MOVED_FROM = 0x40
_IN_MOVED_TO = 0x80
_IN_CREATE = 0x100
_IN_DELETE = 0x200
_IN_DELETE_SELF = 0x400
_IN_MOVE_SELF = 0x800
_IN_Q_OVERFLOW = 0x4000
_IN_IGNORED = 0x8000
_IN_ONLYDIR = 0x1000000
_IN_ISDIR = 0x40000000
_IN_NONBLOCK = os.O_NONBLOCK
_IN_CLOEXEC = os.O_CLOEXEC
_MASK = (
    _IN_MODIFY
    | _IN_ATTRIB
    | _IN_CLOSE_WRITE
    | _IN_MOVED_FROM
    | _IN_MOVED_TO
    | _IN_CREATE
    | _IN_DELETE
    | _IN_DELETE_SELF
    | _IN_MOVE_SELF
    | _IN_ONLYDIR
)
_EVENT = struct.Struct("iIII")

_libc: Any = None


def _c() -> Any:
    """libc through ctypes, loaded on first use (``lineaged --once`` never needs it)."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    return _libc


def _errno() -> int:
    return ctypes.get_errno()


def deeper_than(path: str, limit: int) -> bool:
    """Whether the directory tree at ``path`` has directories more than ``limit`` levels
    below it: an iterative walk of directories only, through descriptors, that stops at
    the first one too deep."""
    with dirfd.FolderDescriptors(path) as folders:
        stack: list[tuple[str, int]] = [(path, 0)]
        while stack:
            directory, depth = stack.pop()
            try:
                names = _subdirectories(folders.folder(directory))
            except OSError:
                continue
            if names and depth + 1 > limit:
                return True
            base = directory.rstrip("/") + "/"
            stack.extend((base + name, depth + 1) for name in names)
    return False


def _subdirectories(fd: int) -> list[str]:
    with os.scandir(fd) as entries:
        return [entry.name for entry in entries if entry.is_dir(follow_symlinks=False)]


class DeepWatcher:
    """One root watched by lineaged's own inotify walker (see the module docstring).

    It answers the engine like ``RootWatcher`` does: ``start``/``stop``, ``alive``,
    ``identity``, ``polling`` and ``problem`` (which changes as parts become polled or
    watched again), ``wants_polling`` (always "": it never needs a restart to poll).
    """

    def __init__(
        self,
        root: WatchedRoot,
        put: Callable[[Change], None],
        *,
        poll_interval: float = POLL_SECONDS,
        on_overflow: Callable[[str], None] | None = None,
        force_polling: str = "",
    ) -> None:
        self.root = root
        self.forced = force_polling  # a network filesystem: poll it all, by scans
        self.put = put
        self.poll_interval = poll_interval
        self.on_overflow = on_overflow
        self.identity: tuple[int, int] | None = None
        self.wants_polling = ""
        self.started = False
        self._fd = -1
        self._wake_read, self._wake_write = -1, -1
        self._paths: dict[int, str] = {}  # watch descriptor -> directory
        self._polled: set[str] = set()  # directories (with all below) inotify could not watch
        self._root_gone = False
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.last_failure = ""
        self._failed_start = ""

    # -- what the engine reads

    @property
    def polling(self) -> bool:
        """Whether some part of the root is polled (the inotify watch limit was reached)."""
        with self._lock:
            return bool(self._polled)

    @property
    def problem(self) -> str:
        """Which part is polled and why ("" when inotify watches the whole tree)."""
        if self._failed_start:
            return self._failed_start
        if self.forced:
            return self.forced
        with self._lock:
            polled = sorted(self._polled)
        if self._fd < 0 and self.started:
            return f"inotify unavailable ({self.last_failure}); polling the whole root instead"
        if not polled:
            return ""
        shown = ", ".join(polled[:3])
        more = f" and {len(polled) - 3} more" if len(polled) > 3 else ""
        return (
            f"inotify watch limit reached: {shown}{more} (with everything below) polled every "
            f"{self.poll_interval:g} s instead; the rest is watched "
            "(raise fs.inotify.max_user_watches)"
        )

    @problem.setter
    def problem(self, reason: str) -> None:
        self._failed_start = reason  # start() raised: the engine words it

    @property
    def alive(self) -> bool:
        """Whether the reader thread runs and the root is still the one watched."""
        thread = self._thread
        return thread is not None and thread.is_alive() and not self._root_gone

    @property
    def max_depth(self) -> int:
        """The deepest watched directory, in levels below the root."""
        base = self.root.path.rstrip("/").count("/")
        with self._lock:
            paths = list(self._paths.values()) + list(self._polled)
        return max((p.count("/") - base for p in paths), default=0)

    # -- lifecycle

    def start(self) -> None:
        """Watch every directory of the root it can; poll the rest."""
        self.identity = root_identity(self.root.path)
        self.started = True
        if self.identity is None:
            return
        self._wake_read, self._wake_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        fd = -1 if self.forced else _c().inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
        if self.forced:
            with self._lock:
                self._polled.add(self.root.path)
        elif fd < 0:
            code = _errno()
            self.last_failure = os.strerror(code)
            with self._lock:
                self._polled.add(self.root.path)
        else:
            self._fd = fd
            self._add_tree(self.root.path)
        self._thread = threading.Thread(target=self._loop, name="lineaged-deepwatch", daemon=True)
        self._thread.start()
        log.info(
            "%s: deeper than %d levels: watched by lineaged's own inotify walker",
            self.root.path,
            WATCHDOG_MAX_DEPTH,
        )

    def stop(self) -> None:
        """Stop the reader thread and close the inotify instance."""
        self._stop.set()
        if self._wake_write >= 0:
            with contextlib.suppress(OSError):
                os.write(self._wake_write, b"x")
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        for fd in (self._fd, self._wake_read, self._wake_write):
            if fd >= 0:
                os.close(fd)
        self._fd = self._wake_read = self._wake_write = -1

    def __enter__(self) -> DeepWatcher:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- watches

    def _add_tree(self, top: str) -> None:
        """Watch ``top`` and every directory below it, iteratively, through descriptors."""
        try:
            folders = dirfd.FolderDescriptors(self.root.path)
        except OSError:
            return
        with folders:
            stack = [top]
            while stack:
                directory = stack.pop()
                try:
                    fd = folders.folder(directory)
                except OSError:
                    continue  # gone, or no longer a directory: never followed
                wd = _c().inotify_add_watch(self._fd, f"/proc/self/fd/{fd}".encode(), _MASK)
                if wd < 0:
                    code = _errno()
                    if code in (errno.ENOSPC, errno.ENOMEM):
                        with self._lock:
                            if not any(_under(directory, p) for p in self._polled):
                                self._polled.add(directory)
                        continue  # everything below is polled with it
                    log.debug("cannot watch %s: %s", directory, os.strerror(code))
                    continue
                with self._lock:
                    self._paths[wd] = directory
                    self._polled.discard(directory)
                try:
                    names = _subdirectories(fd)
                except OSError:
                    continue
                base = directory.rstrip("/") + "/"
                stack.extend(base + name for name in reversed(names))

    def _forget_tree(self, top: str) -> None:
        """Stop watching ``top`` and everything below (moved away or deleted)."""
        with self._lock:
            wds = [wd for wd, path in self._paths.items() if _under(path, top) or path == top]
            for wd in wds:
                del self._paths[wd]
            self._polled = {p for p in self._polled if not (_under(p, top) or p == top)}
        for wd in wds:
            _c().inotify_rm_watch(self._fd, wd)

    def _retry_polled(self) -> None:
        """Poll what inotify cannot watch, and try to watch it again (it clears itself)."""
        with self._lock:
            polled = sorted(self._polled)
        for directory in polled:
            if self._stop.is_set():
                return
            if self._fd < 0:
                self.put(Change(directory, ChangeKind.MODIFIED, is_dir=True))
                continue
            try:
                still_there = dirfd.open_dir_beneath(self.root.path, directory)
            except OSError:
                with self._lock:
                    self._polled.discard(directory)  # gone: nothing left to poll
                log.info("%s: %s is gone; no longer polled", self.root.path, directory)
                continue
            os.close(still_there)
            with self._lock:
                self._polled.discard(directory)
            self._add_tree(directory)
            with self._lock:
                failed = any(_under(directory, p) or p == directory for p in self._polled)
            # What changed since the last poll is found by scanning the part again; a
            # directory watched again now is scanned once for what it missed.
            self.put(Change(directory, ChangeKind.MODIFIED, is_dir=True))
            if not failed:
                log.info("%s: %s is watched by inotify again", self.root.path, directory)

    # -- events

    def _loop(self) -> None:
        watched = [self._wake_read] + ([self._fd] if self._fd >= 0 else [])
        last_poll = time.monotonic()
        while not self._stop.is_set():
            try:
                ready, _, _ = select.select(watched, [], [], self.poll_interval)
            except InterruptedError:
                continue
            if self._stop.is_set():
                return
            if self._fd in ready:
                try:
                    data = os.read(self._fd, 1 << 16)
                except BlockingIOError:
                    data = b""
                except OSError:
                    log.exception("%s: reading inotify events failed", self.root.path)
                    return
                try:
                    self._handle(data)
                except Exception:  # one bad event must not blind the root
                    log.exception("%s: handling inotify events failed", self.root.path)
            # Polled parts are looked at every poll interval, however busy the events are.
            if self.polling and time.monotonic() - last_poll >= self.poll_interval:
                last_poll = time.monotonic()
                self._retry_polled()

    def _handle(self, data: bytes) -> None:
        offset = 0
        while offset + _EVENT.size <= len(data):
            wd, mask, _cookie, length = _EVENT.unpack_from(data, offset)
            raw = data[offset + _EVENT.size : offset + _EVENT.size + length].rstrip(b"\0")
            offset += _EVENT.size + length
            if mask & _IN_Q_OVERFLOW:
                if self.on_overflow is not None:
                    self.on_overflow("inotify queue overflowed (lineaged's deep-tree watcher)")
                continue
            with self._lock:
                directory = self._paths.get(wd)
            if directory is None:
                continue
            if mask & _IN_IGNORED:
                with self._lock:
                    self._paths.pop(wd, None)
                if directory == self.root.path:
                    self._root_gone = True
                continue
            if mask & (_IN_DELETE_SELF | _IN_MOVE_SELF):
                if directory == self.root.path:
                    self._root_gone = True
                    self.put(Change(directory, ChangeKind.DELETED))
                continue
            if not raw:
                continue
            path = directory.rstrip("/") + "/" + raw.decode("utf-8", "surrogateescape")
            is_dir = bool(mask & _IN_ISDIR)
            if is_dir:
                self._directory_event(path, mask)
            elif mask & _IN_CREATE:
                self.put(Change(path, ChangeKind.CREATED))
            elif mask & _IN_DELETE:
                self.put(Change(path, ChangeKind.DELETED))
            elif mask & (_IN_MOVED_FROM | _IN_MOVED_TO):
                self.put(Change(path, ChangeKind.MOVED))
            elif mask & (_IN_MODIFY | _IN_CLOSE_WRITE | _IN_ATTRIB):
                self.put(Change(path, ChangeKind.MODIFIED))

    def _directory_event(self, path: str, mask: int) -> None:
        if mask & _IN_CREATE:
            self._add_tree(path)
            self.put(Change(path, ChangeKind.CREATED, is_dir=True))
        elif mask & _IN_MOVED_TO:
            self._add_tree(path)
            self.put(Change(path, ChangeKind.MOVED, is_dir=True))
        elif mask & _IN_MOVED_FROM:
            self._forget_tree(path)
            self.put(Change(path, ChangeKind.MOVED, is_dir=True, gone_tree=True))
        elif mask & _IN_DELETE:
            self._forget_tree(path)
            self.put(Change(path, ChangeKind.DELETED, is_dir=True, gone_tree=True))


def _under(path: str, directory: str) -> bool:
    return path.startswith(directory.rstrip("/") + "/")


class WatchdogCrashes:
    """Notice a watchdog thread dying of an uncaught exception (``threading.excepthook``).

    watchdog 7.1.1's event dispatcher thread dies of the ``RecursionError`` when a deep
    tree is moved into a root at once, and its observer and emitter still look alive: the
    root would be blind with nothing said. The callback is told (the engine restarts the
    watchers, a deep root then on ``DeepWatcher``); other threads' exceptions go to the
    hook that was there before.
    """

    def __init__(self, on_crash: Callable[[BaseException | None], None]) -> None:
        self.on_crash = on_crash
        self._previous: Callable[[threading.ExceptHookArgs], object] | None = None

    def _hook(self, args: threading.ExceptHookArgs) -> None:
        if _from_watchdog(args.exc_traceback):
            log.error(
                "a watchdog thread (%s) died: %s: %s; restarting the watchers",
                args.thread.name if args.thread is not None else "?",
                args.exc_type.__name__,
                args.exc_value,
            )
            self.on_crash(args.exc_value)
            return
        previous = self._previous or threading.__excepthook__
        previous(args)

    def __enter__(self) -> WatchdogCrashes:
        self._previous = threading.excepthook
        threading.excepthook = self._hook
        return self

    def __exit__(self, *exc: object) -> None:
        if threading.excepthook == self._hook and self._previous is not None:
            threading.excepthook = self._previous


def _from_watchdog(tb: TracebackType | None) -> bool:
    while tb is not None:
        if tb.tb_frame.f_globals.get("__name__", "").startswith("watchdog."):
            return True
        tb = tb.tb_next
    return False

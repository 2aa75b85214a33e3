"""Hash lanes: threads that hash files off the threads that must keep moving.

A file of ``hasher.LARGE_FILE`` bytes or more is hashed on the *large* lane, one file at a
time: a 40 GB file (or a 1 TiB sparse one) then holds that lane only, while the pipeline
and the reconcile scan go on with small files. A client call (``RecordAccesses``,
``EndRun``, ``Verify``) never waits on hashing without a deadline: what is not hashed by
then is handed to a lane (the *small* lane for small files, so they do not queue behind a
big one), and the call answers with what is known; the run's edge to that file is added
when its hash lands (``Ticket.add_done_callback``).

Each lane is a stoppable thread; ``stop`` cancels the hash in progress (the cancel event
the hasher checks between chunks, and the mmap helper killed) so the daemon stops in
seconds whatever it was hashing.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from lineage_core import hasher

if TYPE_CHECKING:
    from lineage_core.models import ChangeKind

    from lineaged.watching.indexer import WatchedRoot

__all__ = ["HashLane", "Ticket"]

log = logging.getLogger(__name__)


class Ticket:
    """One file queued on a lane: wait for it with a deadline, or be called when it is done."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._done = threading.Event()
        self._lock = threading.Lock()
        self._callbacks: list[Callable[[bool], None]] = []
        self.recorded = False  # the file's state was hashed and is in the store

    def wait(self, timeout: float) -> bool:
        """Whether the file was hashed and recorded (or failed) within ``timeout`` seconds."""
        return self._done.wait(max(0.0, timeout))

    @property
    def done(self) -> bool:
        """Whether the lane is finished with this file."""
        return self._done.is_set()

    def add_done_callback(self, callback: Callable[[bool], None]) -> None:
        """Call ``callback(recorded)`` (on the lane's thread) once done; now if done already."""
        with self._lock:
            if not self._done.is_set():
                self._callbacks.append(callback)
                return
        callback(self.recorded)

    def finish(self, recorded: bool) -> None:
        """Mark done and run the callbacks (the lane calls this)."""
        with self._lock:
            self.recorded = recorded
            self._done.set()
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            try:
                callback(recorded)
            except Exception:
                log.exception("after hashing %s", self.path)


Work = Callable[["WatchedRoot", str, "ChangeKind"], bool]


class HashLane:
    """A thread that runs ``work(root, path, seen)`` for one queued file at a time
    (``work`` answers whether the file's present state is now recorded).

    A path queued again before its turn shares the waiting ticket (a burst of events on a
    growing file is one hash).
    """

    def __init__(self, name: str, work: Work, cancel: threading.Event) -> None:
        self.name = name
        self.work = work
        self.cancel = cancel
        self._queue: queue.SimpleQueue[tuple[WatchedRoot, str, ChangeKind, Ticket] | None] = (
            queue.SimpleQueue()
        )
        self._waiting: dict[str, Ticket] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.current = ""  # the path being hashed now ("" when idle)

    def submit(self, root: WatchedRoot, path: str, seen: ChangeKind) -> Ticket:
        """Queue ``path``; the returned ticket is done once it is recorded (or failed)."""
        with self._lock:
            ticket = self._waiting.get(path)
            if ticket is not None:
                return ticket
            ticket = self._waiting[path] = Ticket(path)
            if self._thread is None:
                # Started on first use, from a long-lived thread's call: helper processes
                # die with the thread that started them (PR_SET_PDEATHSIG), so they are
                # started from this lane's own thread, which lives as long as the lane.
                self._thread = threading.Thread(
                    target=self._loop, name=f"lineaged-hash-{self.name}", daemon=True
                )
                self._thread.start()
        self._queue.put((root, path, seen, ticket))
        return ticket

    @property
    def depth(self) -> int:
        """Files queued or being hashed."""
        with self._lock:
            return len(self._waiting)

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            root, path, seen, ticket = item
            with self._lock:
                self._waiting.pop(path, None)
            if self.cancel.is_set():
                ticket.finish(False)
                continue
            self.current = path
            recorded = False
            try:
                recorded = self.work(root, path, seen)
            except Exception:
                log.exception("hashing %s on the %s lane failed", path, self.name)
            finally:
                self.current = ""
                ticket.finish(recorded)

    def stop(self) -> None:
        """Cancel the hash in progress, drop what is queued, join the thread."""
        self.cancel.set()
        hasher.kill_helpers()
        thread = self._thread
        if thread is not None:
            self._queue.put(None)
            thread.join()
        with self._lock:
            waiting = list(self._waiting.values())
            self._waiting.clear()
        for ticket in waiting:
            ticket.finish(False)

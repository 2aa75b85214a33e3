"""Reads sent to the daemon while the command still runs (``lineage run``).

Without this, every access is resolved and recorded after the command exits, so a run that
reads many files waits for the daemon at its end. While the command runs, each poll of the
traces (every 50 ms) hands the reads it found to :meth:`ReadStreamer.offer`; those whose
answer can no longer change are sent by a thread of their own. At the end the wrapper sends
the rest — and again any read whose final form differs from what was sent (a later last
access, a read the rules made code): the daemon merges a repeated read into its edge.

A read is final when all of these hold, so the rules of ``events.resolve_spans`` cannot turn
it into anything else once the command ends:

- it was first opened before the poll began: every trace record older than that is in the
  files the poll read (the hook writes a record as the file is opened), so no write, rename
  or removal the run made earlier is still unseen;
- the run has not written, renamed or removed the path (reading back its own output is no
  input, and a file it moved away is decided at the end);
- it lies under a watched root (files elsewhere are hashed here at the end), outside the
  excluded folders, and is not a source file (those are code inputs with a digest: ``.py``
  and friends are left to the end);
- it is a regular file now, in a folder without symlinks (the daemon refuses link paths).

Sending stops at the first error; whatever was not confirmed is sent at the end, as before.
"""

from __future__ import annotations

import itertools
import queue
import threading
from collections.abc import Callable, Sequence

from lineage_core.models import Access, AccessMode

from lineage_client.capture.events import FileSurvey, excluded_prefixes
from lineage_client.capture.raw import RawEvents

__all__ = ["ReadStreamer", "unsent"]

# Files a run executes or imports: they become code inputs (with a digest) at the end.
_CODE_SUFFIXES = (".py", ".pyc", ".pyo", ".pyw", ".pyx", ".pxd", ".so", ".pth", ".sh", ".ipynb")


class ReadStreamer:
    """Picks the final reads out of each poll and sends them from a thread of its own."""

    def __init__(
        self,
        send: Callable[[Sequence[Access]], object],
        roots: Sequence[str],
        excluded: Sequence[str] = (),
    ) -> None:
        self._send = send
        self._roots = tuple(root.rstrip("/") + "/" for root in roots)
        self._excluded_dirs = tuple(excluded)
        self._excluded: tuple[str, ...] | None = None
        self._files = FileSurvey()
        self._seen = 0  # reads of events.reads looked at (it only grows, in order)
        self._pending: list[tuple[str, list[int]]] = []  # opened too late for the last poll
        self._queue: queue.Queue[list[Access] | None] = queue.Queue()
        self._sent: dict[str, int] = {}  # path -> first access, confirmed by the daemon
        self._lock = threading.Lock()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._loop, name="lineage-stream", daemon=True)
        self._thread.start()

    def offer(self, events: RawEvents, polled_at: int, excluded: Sequence[str]) -> None:
        """Queue the reads of ``events`` that became final by ``polled_at`` (see module doc)."""
        if self.error is not None:
            return
        if self._excluded is None:
            self._excluded = excluded_prefixes([*excluded, *self._excluded_dirs])
        reads = events.reads
        if len(reads) > self._seen:
            self._pending += itertools.islice(reads.items(), self._seen, None)
            self._seen = len(reads)
        if not self._pending:
            return
        blocked = set(events.writes)
        blocked.update(path for _, path in events.removes)
        for _, source, target in events.renames:
            blocked.update((source, target))
        roots, prefixes = self._roots, self._excluded
        later: list[tuple[str, list[int]]] = []
        candidates: dict[str, int] = {}
        for path, span in self._pending:
            first = span[0]
            if first >= polled_at:
                later.append((path, span))
            elif (
                path.startswith(roots)
                and not path.startswith(prefixes)
                and not path.endswith(_CODE_SUFFIXES)
                and "/__pycache__/" not in path
                and path not in blocked
            ):
                candidates[path] = first
        self._pending = later
        if not candidates:
            return
        files = self._files
        regular = files.survey(candidates)
        batch = [
            Access(path, AccessMode.READ, first, first)
            for path, first in candidates.items()
            if path in regular and files.is_canonical(path)
        ]
        if batch:
            self._queue.put(batch)

    def finish(self) -> dict[str, int]:
        """Stop once what is queued is sent; the reads the daemon confirmed, path -> first."""
        self._queue.put(None)
        self._thread.join()
        with self._lock:
            return dict(self._sent)

    def _loop(self) -> None:
        while True:
            batch = self._queue.get()
            if batch is None:
                return
            if self.error is not None:
                continue  # drained unsent: the end of the run sends these
            try:
                self._send(batch)
            except BaseException as exc:  # reported by the end of the run, which sends all
                self.error = exc
                continue
            with self._lock:
                self._sent.update((access.path, access.first_at) for access in batch)


def unsent(accesses: Sequence[Access], sent: dict[str, int]) -> list[Access]:
    """``accesses`` without the reads the streamer sent in exactly this form."""
    if not sent:
        return list(accesses)
    read = AccessMode.READ
    return [
        access
        for access in accesses
        if not (
            access.mode is read
            and access.role == "data"
            and not access.digest
            and access.last_at == access.first_at
            and sent.get(access.path) == access.first_at
        )
    ]

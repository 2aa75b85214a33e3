"""Read or write, decided by what happened to the bytes rather than by open flags.

SQLite opens its database ``O_RDWR|O_CREAT`` even for a query; many libraries open for
writing "just in case". A path the run opened for writing counts as written only if its
content or identity changed during the run:

- with the interposer's record of the path just before the first write-open
  (``dev:ino:size:mtime_ns:ctime_ns``, or ``-`` when it did not exist), the path is
  unchanged when it exists now with exactly that identity;
- without one (strace, the audit hook), the path is unchanged when its inode was last
  changed (ctime) before the run started, by more than the kernel's timestamp granularity
  (timestamps come from a coarse clock and may lag the real time by a tick).

An unchanged path becomes a read over the same span; renames and removals keep their rules
(a renamed or removed path changed by definition).
"""

from __future__ import annotations

import os

from lineage_client.capture.raw import RawEvents, widen

__all__ = ["CTIME_SLACK_NS", "identity", "settle_unchanged_writes"]

# Coarse kernel timestamps lag real time by at most a tick (4 ms at HZ=250, 10 ms at 100).
CTIME_SLACK_NS = 50_000_000


def identity(info: os.stat_result) -> str:
    """The interposer's identity string of a stat result."""
    return f"{info.st_dev}:{info.st_ino}:{info.st_size}:{info.st_mtime_ns}:{info.st_ctime_ns}"


def settle_unchanged_writes(events: RawEvents, started_at: int) -> list[str]:
    """Turn the writes of ``events`` that changed nothing into reads; return those paths."""
    moved = {source for _, source, _ in events.renames}
    moved.update(target for _, _, target in events.renames)
    moved.update(path for _, path in events.removes)
    settled: list[str] = []
    for path, span in list(events.writes.items()):
        if path in moved:
            continue
        try:
            now = os.stat(path)
        except OSError:
            continue
        before = events.identities.get(path)
        if before is not None:
            unchanged = before[1] == identity(now)
        else:
            unchanged = now.st_ctime_ns < started_at - CTIME_SLACK_NS
        if unchanged:
            del events.writes[path]
            widen(events.reads, path, span[0], span[1])
            settled.append(path)
    return settled

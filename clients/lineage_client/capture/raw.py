"""What tracers saw of a run, before the rules of ``events.resolve_spans`` apply.

Apart from ``events`` (which builds ``lineage_core.models`` values) so that the tracers, which
start before the command does, import nothing heavy.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["RawEvents", "widen"]


@dataclass(slots=True)
class RawEvents:
    """What tracers saw, before the rules of :func:`resolve_accesses` (a builder, not a value)."""

    reads: dict[str, list[int]] = field(default_factory=dict)
    writes: dict[str, list[int]] = field(default_factory=dict)
    renames: list[tuple[int, str, str]] = field(default_factory=list)
    removes: list[tuple[int, str]] = field(default_factory=list)
    sources: dict[str, int] = field(default_factory=dict)
    # Interpreters that ran the hook, and programs a traced Python process started.
    executables: set[str] = field(default_factory=set)
    programs: set[str] = field(default_factory=set)
    # The interposer's view of a path just before the run first opened it for writing
    # (first seen, "dev:ino:size:mtime_ns:ctime_ns" or "-" when absent), and the programs it
    # could not follow (path -> "static", "setuid", "32-bit").
    identities: dict[str, tuple[int, str]] = field(default_factory=dict)
    escaped: dict[str, str] = field(default_factory=dict)
    # Programs the interposer handed over to strace: (strace's output file, cwd at exec).
    straced: list[tuple[str, str]] = field(default_factory=list)

    def add_read(self, path: str, first: int, last: int) -> None:
        """Note that ``path`` was opened for reading between ``first`` and ``last``."""
        widen(self.reads, path, first, last)

    def add_write(self, path: str, first: int, last: int) -> None:
        """Note that ``path`` was opened for writing between ``first`` and ``last``."""
        widen(self.writes, path, first, last)

    def add_rename(self, when: int, source: str, target: str) -> None:
        """Note a rename of ``source`` to ``target``."""
        self.renames.append((when, source, target))

    def add_remove(self, when: int, path: str) -> None:
        """Note a removal of ``path``."""
        self.removes.append((when, path))

    def add_identity(self, path: str, when: int, identity: str) -> None:
        """Note what ``path`` was before a write-open at ``when`` (the earliest one is kept)."""
        previous = self.identities.get(path)
        if previous is None or when < previous[0]:
            self.identities[path] = (when, identity)

    def add_source(self, path: str, when: int) -> None:
        """Note a source file (script, module, executed program) first used at ``when``."""
        previous = self.sources.get(path)
        if previous is None or when < previous:
            self.sources[path] = when


def widen(table: dict[str, list[int]], path: str, first: int, last: int) -> None:
    """Make ``table[path]`` (a [first, last] span) cover ``first`` to ``last``."""
    span = table.get(path)
    if span is None:
        table[path] = [first, max(first, last)]
    else:
        span[0] = min(span[0], first)
        span[1] = max(span[1], last)

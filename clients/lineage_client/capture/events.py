"""Raw file events of a traced run, and how they become the run's accesses.

Both tracers (the audit hook and strace) fill one :class:`RawEvents`; :func:`resolve_accesses`
then applies the rules of ``lineage run``: a temp file renamed over a target is a write of
the target, a file created and deleted within the run is no access, a file the run read only
after writing it itself is its own output (not an input), system paths and directories are
not accesses, and paths are made canonical (symlinks resolved) so two spellings of one file
merge.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from lineaged.models import Access, AccessMode

__all__ = [
    "SYSTEM_PREFIXES",
    "RawEvents",
    "Spans",
    "build_accesses",
    "excluded_prefixes",
    "is_excluded",
    "resolve_accesses",
    "resolve_spans",
]

# Where nothing a run reads is data: the OS, its libraries and its configuration.
SYSTEM_PREFIXES: tuple[str, ...] = (
    "/proc",
    "/sys",
    "/dev",
    "/usr",
    "/etc",
    "/bin",
    "/sbin",
    "/run",
    "/var/lib",
)
# Matched as plain string prefixes, not folders: /lib, /lib64, /libx32 ...; and
# multiprocessing's scratch folders.
_NAME_PREFIXES: tuple[str, ...] = ("/lib", "/tmp/pymp-")


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

    def add_read(self, path: str, first: int, last: int) -> None:
        """Note that ``path`` was opened for reading between ``first`` and ``last``."""
        _widen(self.reads, path, first, last)

    def add_write(self, path: str, first: int, last: int) -> None:
        """Note that ``path`` was opened for writing between ``first`` and ``last``."""
        _widen(self.writes, path, first, last)

    def add_rename(self, when: int, source: str, target: str) -> None:
        """Note a rename of ``source`` to ``target``."""
        self.renames.append((when, source, target))

    def add_remove(self, when: int, path: str) -> None:
        """Note a removal of ``path``."""
        self.removes.append((when, path))

    def add_source(self, path: str, when: int) -> None:
        """Note a source file (script, module, executed program) first used at ``when``."""
        previous = self.sources.get(path)
        if previous is None or when < previous:
            self.sources[path] = when


def _widen(table: dict[str, list[int]], path: str, first: int, last: int) -> None:
    span = table.get(path)
    if span is None:
        table[path] = [first, max(first, last)]
    else:
        span[0] = min(span[0], first)
        span[1] = max(span[1], last)


def _normalize_prefixes(prefixes: Iterable[str]) -> tuple[str, ...]:
    cleaned = {os.path.normpath(p) for p in prefixes if p and os.path.isabs(p)}
    cleaned.discard("/")
    return tuple(sorted(p + "/" for p in cleaned)) + _NAME_PREFIXES


def is_excluded(path: str, prefixes: tuple[str, ...]) -> bool:
    """Whether ``path`` (absolute, normalized) is a system, interpreter or excluded path.

    ``prefixes`` come from :func:`excluded_prefixes`.
    """
    return path.startswith(prefixes) or path.endswith((".pyc", ".pyo")) or "/__pycache__/" in path


def excluded_prefixes(excluded: Iterable[str] = ()) -> tuple[str, ...]:
    """The prefixes :func:`is_excluded` tests: system folders plus ``excluded`` folders."""
    return _normalize_prefixes([*SYSTEM_PREFIXES, *excluded])


_MISSING, _FILE, _OTHER = 0, 1, 2
_S_IFMT, _S_IFREG, _S_IFLNK = 0o170000, 0o100000, 0o120000
# Above this many paths in one folder, one directory listing beats one lstat per path.
_LISTING_MIN = 64


class _Files:
    """What each path is now (file, missing, other) and its canonical form, cached.

    About one system call per path; for folders holding many of the paths, a single
    ``scandir`` answers for all of them.
    """

    def __init__(self) -> None:
        self._kinds: dict[str, int] = {}
        self._links: set[str] = set()
        self._real_dirs: dict[str, str] = {}

    def survey(self, paths: Iterable[str]) -> dict[str, int]:
        """Learn the kind of many paths at once (listing folders that hold many of them).

        Returns the cache of kinds, which then holds every one of ``paths``.
        """
        by_dir: dict[str, list[str]] = {}
        for path in paths:
            if path not in self._kinds:
                by_dir.setdefault(path[: path.rfind("/")] or "/", []).append(path)
        for directory, members in by_dir.items():
            if len(members) >= _LISTING_MIN and self._list(directory, members):
                continue
            for path in members:
                self.kind(path)
        return self._kinds

    def _list(self, directory: str, members: list[str]) -> bool:
        try:
            # A listing costs per entry: only worth it when most entries are ours (an ext4
            # or tmpfs entry takes 12 to 300 bytes of the folder's size).
            if os.stat(directory).st_size > len(members) * 256:
                return False
            entries: dict[str, int] = {}
            with os.scandir(directory) as listing:
                for entry in listing:
                    # Symlinks are left out, to be decided one by one below; for the rest
                    # is_file() needs no system call (the listing carries the type).
                    if not entry.is_symlink():
                        entries[entry.name] = _FILE if entry.is_file() else _OTHER
        except (OSError, ValueError):
            return False
        start = len(directory) + 1 if directory != "/" else 1
        for path in members:
            found = entries.get(path[start:])
            if found is None:
                self.kind(path)  # a symlink, or created since the listing
            else:
                self._kinds[path] = found
        return True

    def kind(self, path: str) -> int:
        """_FILE, _OTHER or _MISSING, following symlinks."""
        found = self._kinds.get(path)
        if found is None:
            try:
                mode = os.lstat(path).st_mode
                if mode & _S_IFMT == _S_IFLNK:
                    self._links.add(path)
                    mode = os.stat(path).st_mode
                found = _FILE if mode & _S_IFMT == _S_IFREG else _OTHER
            except (OSError, ValueError):
                found = _MISSING
            self._kinds[path] = found
        return found

    def real(self, path: str) -> str:
        """The canonical path: symlinks resolved, in the folders and in the name."""
        cut = path.rfind("/")
        directory = path[:cut] or "/"
        real_dir = self._real_dirs.get(directory)
        if real_dir is None:
            real_dir = os.path.realpath(directory)
            self._real_dirs[directory] = real_dir
        if path in self._links:
            return os.path.realpath(path)
        if real_dir == directory:
            return path
        return real_dir.rstrip("/") + path[cut:]


def _norm(path: str) -> str:
    # normpath is costly per call and almost never changes a traced path.
    if "/." in path or "//" in path or path.endswith("/"):
        return os.path.normpath(path)
    return path


def _normalized(events: RawEvents) -> RawEvents:
    """``events`` with normalized paths; tables that need no change are reused, not copied."""
    out = RawEvents(executables=set(events.executables), programs=set(events.programs))
    for name in ("reads", "writes"):
        table: dict[str, list[int]] = getattr(events, name)
        if any(_norm(path) is not path for path in table):
            clean: dict[str, list[int]] = {}
            for path, (first, last) in table.items():
                _widen(clean, _norm(path), first, last)
            table = clean
        setattr(out, name, table)
    out.renames = sorted((t, _norm(a), _norm(b)) for t, a, b in events.renames)
    out.removes = sorted((t, _norm(p)) for t, p in events.removes)
    for path, when in events.sources.items():
        out.add_source(_norm(path), when)
    return out


def _apply_renames(events: RawEvents) -> tuple[set[str], dict[str, int]]:
    """Move writes along renames.

    Returns the paths the run renamed away and, for each path something was renamed onto,
    the first time that happened.
    """
    renamed_away: set[str] = set()
    arrived: dict[str, int] = {}
    writes = events.writes
    for when, source, target in events.renames:
        renamed_away.add(source)
        arrived.setdefault(target, when)
        moved = False
        span = writes.get(source)
        if span is not None and span[0] <= when:
            del writes[source]
            _widen(writes, target, span[0], max(span[1], when))
            moved = True
        # A folder renamed into place (checkpoint dirs) carries the files written in it.
        inside = source + "/"
        for path in [p for p in writes if p.startswith(inside)]:
            span = writes.pop(path)
            moved_to = target + "/" + path[len(inside) :]
            _widen(writes, moved_to, span[0], max(span[1], when))
            arrived.setdefault(moved_to, when)
            moved = True
        if not moved:
            # The run made the target hold this content even if it never wrote the bytes.
            _widen(writes, target, when, when)
    return renamed_away, arrived


Spans = dict[AccessMode, dict[str, list[int]]]
"""mode -> canonical path -> [first access, last access]. Not keyed by (path, mode):
hashing such a tuple calls Enum.__hash__, in Python, for every lookup."""


def resolve_spans(
    events: RawEvents, *, excluded: Sequence[str] = ()
) -> tuple[Spans, dict[str, int]]:
    """Apply the rules to raw events: the run's data accesses as spans, and its sources.

    Returns ``{(path, mode): [first, last]}`` and the source files as
    ``{canonical path: first use}``, both without excluded paths.
    """
    prefixes = excluded_prefixes(excluded)
    events = _normalized(events)
    own_output_since = {path: span[0] for path, span in events.writes.items()}
    renamed_away, arrived = _apply_renames(events)
    for path, when in arrived.items():
        own_output_since[path] = min(when, own_output_since.get(path, when))
    removed = {path for _, path in events.removes} | renamed_away

    writes = {p: span for p, span in events.writes.items() if not is_excluded(p, prefixes)}
    # Reading back what the run itself wrote is not an input (and would make a cycle): a
    # read counts only from before the run's own writing of that path, and ends there.
    reads: dict[str, list[int]] = {}
    for path, span in events.reads.items():
        if is_excluded(path, prefixes):
            continue
        since = own_output_since.get(path)
        if since is None:
            reads[path] = span
        elif span[0] < since:
            reads[path] = [span[0], min(span[1], since)]

    files = _Files()
    kinds = files.survey([*writes, *reads])
    real_of = files.real
    spans: Spans = {AccessMode.WRITE: {}, AccessMode.READ: {}}
    for mode, table in ((AccessMode.WRITE, writes), (AccessMode.READ, reads)):
        kept = spans[mode]
        for path, (first, last) in table.items():
            kind = kinds[path]
            # A write that left no file was deleted within the run (or made a folder). A
            # read of a missing path was a failed open, unless the run itself consumed the
            # file (read it, then moved or deleted it): that is still an input.
            if kind != _FILE and not (
                kind == _MISSING and mode is AccessMode.READ and path in removed
            ):
                continue
            real = real_of(path)
            if real is not path and is_excluded(real, prefixes):
                continue
            known = kept.get(real)
            if known is None:
                kept[real] = [first, last]
            else:
                known[0], known[1] = min(known[0], first), max(known[1], last)

    sources: dict[str, int] = {}
    for path, when in events.sources.items():
        if is_excluded(path, prefixes) or files.kind(path) != _FILE:
            continue
        real = real_of(path)
        if is_excluded(real, prefixes):
            continue
        if real not in sources or when < sources[real]:
            sources[real] = when
    return spans, sources


def _access_factory() -> Callable[[str, AccessMode, int, int], Access]:
    """A fast constructor of data accesses, equal to ``Access(path, mode, first, last)``.

    A frozen dataclass's ``__init__`` goes through ``object.__setattr__`` once per field,
    which made building 10,000 accesses cost as much as tracing them. Here the slots are
    filled through their descriptors, with the defaults taken from the dataclass itself so
    a new field cannot be missed.
    """
    defaults = [
        (Access.__dict__[f.name].__set__, f.default)
        for f in dataclasses.fields(Access)
        if f.name not in ("path", "mode", "first_at", "last_at")
    ]
    if any(value is dataclasses.MISSING for _, value in defaults):
        return Access  # a new required field: take the plain road
    set_path, set_mode, set_first, set_last = (
        Access.__dict__[name].__set__ for name in ("path", "mode", "first_at", "last_at")
    )
    new = object.__new__

    def make(path: str, mode: AccessMode, first: int, last: int) -> Access:
        access: Access = new(Access)
        set_path(access, path)
        set_mode(access, mode)
        set_first(access, first)
        set_last(access, last)
        for setter, value in defaults:
            setter(access, value)
        return access

    return make


_new_access = _access_factory()


def build_accesses(
    spans: Spans, code: Mapping[str, tuple[int, str, int, int]] | None = None
) -> list[Access]:
    """Accesses sorted by path and mode, from spans and hashed sources.

    ``code`` maps a source path to (first use, digest, size, mtime_ns): it becomes a read
    with role "code" (merged with a data read of the same path, if any).
    """
    reads = dict(spans.get(AccessMode.READ, {}))
    digests: dict[str, tuple[str, int, int]] = {}
    for path, (when, digest, size, mtime_ns) in (code or {}).items():
        span = reads.setdefault(path, [when, when])
        reads[path] = [min(span[0], when), max(span[1], when)]
        digests[path] = (digest, size, mtime_ns)
    # (path, mode name) is unique, so the sort never compares the rest of a row.
    rows = [(path, "read", AccessMode.READ, span) for path, span in reads.items()]
    for mode, table in spans.items():
        if mode is not AccessMode.READ:
            rows += [(path, mode.value, mode, span) for path, span in table.items()]
    rows.sort()
    make = _new_access
    accesses: list[Access] = []
    append = accesses.append
    for path, _, mode, (first, last) in rows:
        hashed = digests.get(path) if digests and mode is AccessMode.READ else None
        if hashed is None:
            append(make(path, mode, first, last))
        else:
            digest, size, mtime_ns = hashed
            append(Access(path, mode, first, last, "traced", "code", digest, size, mtime_ns))
    return accesses


def resolve_accesses(
    events: RawEvents, *, excluded: Sequence[str] = ()
) -> tuple[list[Access], dict[str, int]]:
    """:func:`resolve_spans`, with the spans as data accesses (role "data", no digests)."""
    spans, sources = resolve_spans(events, excluded=excluded)
    return build_accesses(spans), sources

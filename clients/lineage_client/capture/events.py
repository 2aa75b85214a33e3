"""Raw file events of a traced run, and how they become the run's accesses.

Both tracers (the audit hook and strace) fill one :class:`RawEvents`; :func:`resolve_accesses`
then applies the rules of ``lineage run``: a temp file renamed over a target is a write of
the target, a file created and deleted within the run is no access, a file the run read only
after writing it itself is its own output (not an input), system paths and directories are
not accesses, and paths are made canonical (symlinks resolved) so two spellings of one file
merge.
"""

from __future__ import annotations

import os
from bisect import bisect_left
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

from lineage_core.models import Access, AccessHow, AccessMode, AccessRole

from lineage_client.capture.raw import RawEvents, widen

__all__ = [
    "SYSTEM_PREFIXES",
    "FileSurvey",
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


_COMPILED = (".pyc", ".pyo")


def _normalize_prefixes(prefixes: Iterable[str]) -> tuple[str, ...]:
    cleaned = {os.path.normpath(p) for p in prefixes if p and os.path.isabs(p)}
    cleaned.discard("/")
    # A prefix inside a shorter one adds nothing but a comparison for every path.
    kept: list[str] = []
    for prefix in sorted([p + "/" for p in cleaned] + list(_NAME_PREFIXES), key=len):
        if not prefix.startswith(tuple(kept)):
            kept.append(prefix)
    return tuple(kept)


def is_excluded(path: str, prefixes: tuple[str, ...]) -> bool:
    """Whether ``path`` (absolute, normalized) is a system, interpreter or excluded path.

    ``prefixes`` come from :func:`excluded_prefixes`.
    """
    return path.startswith(prefixes) or path.endswith(_COMPILED) or "/__pycache__/" in path


def excluded_prefixes(excluded: Iterable[str] = ()) -> tuple[str, ...]:
    """The prefixes :func:`is_excluded` tests: system folders plus ``excluded`` folders."""
    return _normalize_prefixes([*SYSTEM_PREFIXES, *excluded])


_MISSING, _FILE, _OTHER = 0, 1, 2
_S_IFMT, _S_IFREG, _S_IFLNK = 0o170000, 0o100000, 0o120000
# Above this many paths in one folder, one directory listing beats one lstat per path.
_LISTING_MIN = 64


class FileSurvey:
    """What each path is now (file, missing, other) and its canonical form, cached.

    About one system call per path; for folders holding many of the paths, a single
    ``scandir`` answers for all of them.
    """

    def __init__(self) -> None:
        self._kinds: dict[str, int] = {}
        # Regular files (not symlinks) that a folder listing showed.
        self._listed: set[str] = set()
        self._links: set[str] = set()
        self._real_dirs: dict[str, str] = {}
        self._folders: set[str] = set()

    def survey(self, paths: Iterable[str]) -> set[str]:
        """Learn the kind of many paths at once (listing folders that hold many of them).

        Returns the set of those that are regular files (symlinks to one included).
        """
        pending = list(paths)
        # Comprehensions and Counter rather than a loop per path: this runs on every
        # path a run opened.
        counts = Counter([path[: path.rfind("/")] or "/" for path in pending])
        self._folders.update(counts)
        for directory, count in counts.items():
            if count >= _LISTING_MIN:
                self._list(directory, count)
        listed = self._listed
        regular = {path for path in pending if path in listed}
        if len(regular) < len(pending):
            # Not in a listing: a symlink, a folder, missing, or in a folder not listed.
            kind = self.kind
            regular.update(path for path in pending if path not in listed and kind(path) == _FILE)
        return regular

    def _list(self, directory: str, count: int) -> None:
        try:
            # A listing costs per entry: only worth it when most entries are ours (an ext4
            # or tmpfs entry takes 12 to 300 bytes of the folder's size).
            if os.stat(directory).st_size > count * 256:
                return
            prefix = directory + "/" if directory != "/" else "/"
            with os.scandir(directory) as listing:
                # The listing carries the type: is_file() without following symlinks
                # makes no system call, and leaves symlinks to be decided one by one.
                files = {
                    prefix + entry.name for entry in listing if entry.is_file(follow_symlinks=False)
                }
            self._listed |= files
        except (OSError, ValueError):
            return

    def kind(self, path: str) -> int:
        """_FILE, _OTHER or _MISSING, following symlinks."""
        if path in self._listed:
            return _FILE
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

    def canonical(self) -> bool:
        """Whether every surveyed path is canonical already: no symlink in it.

        One ``realpath`` per folder, not per path.
        """
        if self._links:
            return False
        return all(self._real_dir(folder) == folder for folder in self._folders)

    def _real_dir(self, directory: str) -> str:
        real_dir = self._real_dirs.get(directory)
        if real_dir is None:
            real_dir = os.path.realpath(directory)
            self._real_dirs[directory] = real_dir
        return real_dir

    def is_canonical(self, path: str) -> bool:
        """Whether ``path`` is its own canonical form: no symlink in its folders or its name
        (for a path :meth:`survey` saw)."""
        if path in self._links:
            return False
        cut = path.rfind("/")
        directory = path[:cut] or "/"
        return self._real_dir(directory) == directory

    def real(self, path: str) -> str:
        """The canonical path: symlinks resolved, in the folders and in the name."""
        cut = path.rfind("/")
        directory = path[:cut] or "/"
        real_dir = self._real_dir(directory)
        if path in self._links:
            return os.path.realpath(path)
        if real_dir == directory:
            return path
        return real_dir.rstrip("/") + path[cut:]


def _unnormal(text: str) -> bool:
    """Whether normpath may change an absolute path in ``text`` (paths joined by NULs).

    Precise, not just any "/.": a folder such as ``.work`` or ``.venv`` is normal.
    """
    return (
        "//" in text
        or "/./" in text
        or "/../" in text
        or "/\0" in text
        or "/.\0" in text
        or "/..\0" in text
        or text.endswith(("/", "/.", "/.."))
    )


def _norm(path: str) -> str:
    # normpath is costly per call and almost never changes a traced path.
    return os.path.normpath(path) if _unnormal(path) else path


def _normalized(events: RawEvents) -> RawEvents:
    """``events`` with normalized paths; tables that need no change are reused, not copied."""
    out = RawEvents(executables=set(events.executables), programs=set(events.programs))
    for name in ("reads", "writes"):
        table: dict[str, list[int]] = getattr(events, name)
        # One scan of all the paths at once (no path holds a NUL).
        if _unnormal("\0".join(table)) and any(_norm(path) is not path for path in table):
            clean: dict[str, list[int]] = {}
            for path, (first, last) in table.items():
                widen(clean, _norm(path), first, last)
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
            widen(writes, target, span[0], max(span[1], when))
            moved = True
        # A folder renamed into place (checkpoint dirs) carries the files written in it.
        inside = source + "/"
        for path in [p for p in writes if p.startswith(inside)]:
            span = writes.pop(path)
            moved_to = target + "/" + path[len(inside) :]
            widen(writes, moved_to, span[0], max(span[1], when))
            arrived.setdefault(moved_to, when)
            moved = True
        if not moved:
            # The run made the target hold this content even if it never wrote the bytes.
            widen(writes, target, when, when)
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

    # is_excluded() inlined: comprehensions, not a call per path.
    writes = {
        p: span
        for p, span in events.writes.items()
        if not (p.startswith(prefixes) or p.endswith(_COMPILED) or "/__pycache__/" in p)
    }
    reads = {
        p: span
        for p, span in events.reads.items()
        if not (p.startswith(prefixes) or p.endswith(_COMPILED) or "/__pycache__/" in p)
    }
    # Reading back what the run itself wrote is not an input (and would make a cycle): a
    # read counts only from before the run's own writing of that path, and ends there.
    for path, since in own_output_since.items():
        span = reads.get(path)
        if span is None:
            continue
        if span[0] < since:
            reads[path] = [span[0], min(span[1], since)]
        else:
            del reads[path]

    files = FileSurvey()
    regular = files.survey([*writes, *reads])
    spans: Spans = {AccessMode.WRITE: {}, AccessMode.READ: {}}
    if files.canonical():
        # The usual case: each path is its own canonical form, so none merge and the
        # spans are kept as they are (a filter, not a loop per path).
        spans[AccessMode.WRITE] = {p: span for p, span in writes.items() if p in regular}
        spans[AccessMode.READ] = {
            p: span
            for p, span in reads.items()
            if p in regular or (p in removed and files.kind(p) == _MISSING)
        }
        return spans, _resolve_sources(events.sources, files, prefixes)
    real_of = files.real
    for mode, table in ((AccessMode.WRITE, writes), (AccessMode.READ, reads)):
        kept = spans[mode]
        for path, (first, last) in table.items():
            kind = _FILE if path in regular else files.kind(path)
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
                kept[real] = [min(known[0], first), max(known[1], last)]
    return spans, _resolve_sources(events.sources, files, prefixes)


def _resolve_sources(
    found: Mapping[str, int], files: FileSurvey, prefixes: tuple[str, ...]
) -> dict[str, int]:
    """Source files that still exist, by canonical path, with their first use."""
    sources: dict[str, int] = {}
    for path, when in found.items():
        if is_excluded(path, prefixes) or files.kind(path) != _FILE:
            continue
        real = files.real(path)
        if is_excluded(real, prefixes):
            continue
        if real not in sources or when < sources[real]:
            sources[real] = when
    return sources


def _new_accesses(
    paths: list[str], modes: list[AccessMode], spans: list[list[int]]
) -> list[Access]:
    """``[Access(path, mode, first, last) ...]``."""
    firsts = [span[0] for span in spans]
    lasts = [span[1] for span in spans]
    return list(map(Access, paths, modes, firsts, lasts))


def build_accesses(
    spans: Spans, code: Mapping[str, tuple[int, str, int, int]] | None = None
) -> list[Access]:
    """Accesses sorted by path and mode, from spans and hashed sources.

    ``code`` maps a source path to (first use, digest, size, mtime_ns): it becomes a read
    with role "code" (merged with a data read of the same path, if any).
    """
    reads = dict(spans.get(AccessMode.READ, {}))
    for path, (when, _, _, _) in (code or {}).items():
        span = reads.get(path)
        reads[path] = [when, when] if span is None else [min(span[0], when), max(span[1], when)]
    tables = [(AccessMode.READ, reads)]
    tables += [(mode, table) for mode, table in spans.items() if mode is not AccessMode.READ]
    tables = [(mode, table) for mode, table in tables if table]
    paths: list[str]
    modes: list[AccessMode]
    if len(tables) == 1:
        # One mode (the usual run only reads, or only writes): plain strings sort fastest.
        mode, table = tables[0]
        paths = sorted(table)
        modes = [mode] * len(paths)
        rows_spans = list(map(table.__getitem__, paths))
    else:
        # (path, mode name) is unique, so the sort never compares the rest of a row.
        rows = sorted(
            (path, mode.value, mode, span) for mode, table in tables for path, span in table.items()
        )
        paths = [row[0] for row in rows]
        modes = [row[2] for row in rows]
        rows_spans = [row[3] for row in rows]
    accesses = _new_accesses(paths, modes, rows_spans)
    for path, (_, digest, size, mtime_ns) in (code or {}).items():
        # A path's read comes first among its rows ("read" sorts before "write").
        index = bisect_left(paths, path)
        first, last = reads[path]
        accesses[index] = Access(
            path,
            AccessMode.READ,
            first,
            last,
            AccessHow.TRACED,
            AccessRole.CODE,
            digest,
            size,
            mtime_ns,
        )
    return accesses


def resolve_accesses(
    events: RawEvents, *, excluded: Sequence[str] = ()
) -> tuple[list[Access], dict[str, int]]:
    """:func:`resolve_spans`, with the spans as data accesses (role "data", no digests)."""
    spans, sources = resolve_spans(events, excluded=excluded)
    return build_accesses(spans), sources

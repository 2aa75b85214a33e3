"""The audit-hook tracer: the child's environment that loads it, and the reader of its files.

The hook itself is ``_boot/sitecustomize.py`` (see its docstring for the trace format); it
runs inside the traced Python processes, so it imports nothing from this package.
"""

from __future__ import annotations

import functools
import gc
import os
import re
import sys
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lineage_client.capture.raw import RawEvents

__all__ = [
    "APPEND_SUFFIX",
    "BOOT_DIR",
    "CHUNK",
    "TRACE_SUFFIX",
    "TraceTail",
    "compile_boot",
    "hook_environment",
    "read_trace_file",
]

BOOT_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_boot")
TRACE_SUFFIX = ".trace"
# The LD_PRELOAD interposer's files: the same records, appended whole by one write(2) each,
# with no chunks and no zero fill (a line may cross a CHUNK boundary).
APPEND_SUFFIX = ".atrace"
CHUNK = 1 << 18  # the hook grows its files by this much: keep equal to _boot's _CHUNK

_UNESCAPED = {"\\": "\\", "n": "\n", "t": "\t"}


@functools.cache
def compile_boot() -> bool:
    """Make sure the hook's bytecode is cached next to it; True when it is.

    Every traced Python process imports the hook at start: without a cached ``.pyc`` (say
    under ``PYTHONDONTWRITEBYTECODE``, with no install step that compiled it) each one
    compiles it again, about 10 ms. Done once per wrapper process; a read-only install is
    left alone (its installer compiled it).
    """
    source = os.path.join(BOOT_DIR, "sitecustomize.py")
    tag = sys.implementation.cache_tag
    if tag is None:
        return False  # this interpreter keeps no bytecode cache
    # importlib.util.cache_from_source's answer, without importing importlib.util.
    level = f".opt-{sys.flags.optimize}" if sys.flags.optimize else ""
    cached = os.path.join(BOOT_DIR, "__pycache__", f"sitecustomize.{tag}{level}.pyc")
    try:
        if os.path.exists(cached) and os.stat(cached).st_mtime_ns >= os.stat(source).st_mtime_ns:
            return True
    except OSError:
        return False
    # (a) `lineage run` start-up: not loaded before the command is exec'd
    import py_compile

    try:
        py_compile.compile(source, cfile=cached, doraise=True)
    except (OSError, py_compile.PyCompileError, NotImplementedError):
        return False
    return True


def hook_environment(
    base: Mapping[str, str], trace_dir: str, excluded: Iterable[str] = ()
) -> dict[str, str]:
    """Return ``base`` plus what makes every Python process under it load the hook."""
    env = dict(base)
    previous = env.get("PYTHONPATH", "")
    env["PYTHONPATH"] = BOOT_DIR + (os.pathsep + previous if previous else "")
    env["LINEAGE_TRACE_DIR"] = trace_dir
    # Lets the hook drop system paths at the source instead of writing them out.
    env["LINEAGE_TRACE_EXCLUDE"] = os.pathsep.join(p for p in excluded if os.pathsep not in p)
    return env


def _unescape(field: str) -> str:
    if "\\" not in field:
        return field

    return re.sub(r"\\(.)", lambda match: _UNESCAPED.get(match.group(1), match.group(1)), field)


def _parse(data: bytes, events: RawEvents) -> None:
    """Add the complete records in ``data`` (whole lines, maybe NUL-padded) to ``events``."""
    reads, writes = events.reads, events.writes
    # Decoded once as a whole: file-system bytes that are not UTF-8 survive as surrogates.
    text = data.rstrip(b"\0").decode("utf-8", "surrogateescape")
    lines = text.split("\n")
    lines.pop()  # after the last newline: zero fill, or a line a kill cut short
    # One scan of the whole text spares a scan of each line (the usual case).
    maybe_nul = "\0" in text
    for line in lines:
        if maybe_nul and "\0" in line:
            # The zero fill left at the end of a chunk precedes the next chunk's first
            # line; a NUL anywhere else means a write a kill interrupted.
            line = line.lstrip("\0")
            if "\0" in line:
                continue
        fields = line.split("\t")
        if len(fields) < 4:
            continue
        kind = fields[0]
        if kind == "r" or kind == "w":
            # The hot loop (one line per file): everything inlined, widened in place.
            try:
                first, last = int(fields[1]), int(fields[2])
            except ValueError:
                continue
            target = fields[3]
            if "\\" in target:
                target = _unescape(target)
            if target[:1] != "/":
                continue
            table = reads if kind == "r" else writes
            span = table.get(target)
            if span is None:
                table[target] = [first, last]
            else:
                span[0], span[1] = min(span[0], first), max(span[1], last)
            continue
        if kind == "h":
            events.executables.add(_unescape(fields[3]))
            continue
        if kind == "x":
            events.programs.add(_unescape(fields[3]))
            continue
        try:
            first = int(fields[1])
        except ValueError:
            continue
        target = _unescape(fields[3])
        if target[:1] != "/":
            continue
        if kind == "d":
            events.add_remove(first, target)
        elif kind == "i" and len(fields) >= 5:
            events.add_identity(target, first, fields[4])
        elif kind == "S" and len(fields) >= 5:
            events.escaped[target] = fields[4]
        elif kind == "T" and len(fields) >= 5:
            events.straced.append((target, _unescape(fields[4])))
        elif kind == "s":
            events.add_source(target, first)
        elif kind == "m" and len(fields) >= 5:
            events.add_rename(first, target, _unescape(fields[4]))


def _parse_chunks(data: bytes, offset: int, events: RawEvents) -> None:
    """Parse ``data``, read from ``offset`` of a trace file, one chunk at a time.

    Lines never cross a chunk boundary, so each chunk's zero fill and a line a kill cut
    short stay within it.
    """
    start = 0
    while start < len(data):
        end = min(len(data), (offset + start) // CHUNK * CHUNK + CHUNK - offset)
        _parse(data[start:end], events)
        start = end


def read_trace_file(path: str, events: RawEvents) -> None:
    """Add the records of one finished hook trace file to ``events``; skip torn lines."""
    with open(path, "rb") as stream:
        _parse_chunks(stream.read(), 0, events)


class TraceTail:
    """Reads the hook's trace files while the run goes on, then finishes them at its end.

    Parsing during the run uses the wrapper's idle time, so little is left when the
    command exits. A file is only read up to its first NUL byte: beyond it the writer may
    still be copying a line in. The exception is a chunk the writer has left (the file
    already extends past it): its NULs are final, a gap or a line a kill cut short.
    """

    def __init__(self, trace_dir: str, events: RawEvents | None = None) -> None:
        self._events = events  # made at the first poll: the command is running by then
        self._dir = trace_dir
        self._offsets: dict[str, int] = {}

    @property
    def events(self) -> RawEvents:
        """What the trace files said so far."""
        if self._events is None:
            # (a) `lineage run` start-up: not loaded before the command is exec'd
            from lineage_client.capture.raw import RawEvents

            self._events = RawEvents()
        return self._events

    def poll(self) -> None:
        """Parse what the running processes have completely written so far."""
        self._each(final=False)

    def finish(self) -> RawEvents:
        """Parse everything left, once every traced process is gone; return the events."""
        self._each(final=True)
        return self.events

    def _each(self, final: bool) -> None:
        try:
            names = sorted(os.listdir(self._dir))
        except FileNotFoundError:
            return
        # A run's records become thousands of containers that are kept, none garbage: a
        # collection would only rescan them (and the caller's whole heap) again and again.
        collecting = gc.isenabled()
        gc.disable()
        try:
            for name in names:
                try:
                    if name.endswith(TRACE_SUFFIX):
                        self._advance(name, final)
                    elif name.endswith(APPEND_SUFFIX):
                        self._advance_appended(name)
                except OSError:
                    continue
        finally:
            if collecting:
                gc.enable()

    def _advance_appended(self, name: str) -> None:
        # Each record is one write(2): whatever ends with a newline is complete, final or not
        # (a process killed mid-write leaves at most one torn line, never followed by more).
        offset = self._offsets.get(name, 0)
        with open(os.path.join(self._dir, name), "rb") as stream:
            stream.seek(offset)
            data = stream.read()
        end = data.rfind(b"\n")
        if end >= 0:
            _parse(data[: end + 1], self.events)
            self._offsets[name] = offset + end + 1

    def _advance(self, name: str, final: bool) -> None:
        offset = self._offsets.get(name, 0)
        with open(os.path.join(self._dir, name), "rb") as stream:
            size = os.fstat(stream.fileno()).st_size
            if size <= offset:
                return
            stream.seek(offset)
            data = stream.read(size - offset)
        if final:
            _parse_chunks(data, offset, self.events)
            self._offsets[name] = offset + len(data)
            return
        position = 0
        while True:
            nul = data.find(b"\0", position)
            end = data.rfind(b"\n", position, len(data) if nul < 0 else nul)
            if end >= position:
                _parse(data[position : end + 1], self.events)
                position = end + 1
            if nul < 0:
                break
            chunk_end = ((offset + nul) // CHUNK + 1) * CHUNK
            if size <= chunk_end:
                break  # the chunk being written: wait for the line to be complete
            position = chunk_end - offset  # a finished chunk: skip its gap or torn line
        self._offsets[name] = offset + position

"""The strace tracer, for commands that are not Python: the command line and the parser.

``strace -f -qq -ttt -y`` writes one line per system call of the command and all its
children to a file. The parser keeps the successful file calls, merges the
``<unfinished ...>`` / ``<... resumed>`` halves of calls that other processes interleaved,
and resolves relative paths: ``-y`` decodes descriptors (``AT_FDCWD</cwd>``,
``3</opened/file>``), and the working directory of every process is followed through
``chdir``/``fchdir`` and inherited across ``clone``/``fork`` for the calls that take a
plain path (``open``, ``rename``, ``unlink``).
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
from collections.abc import Sequence

from lineage_client.capture.raw import RawEvents

__all__ = [
    "STRACE_MISSING_WARNING",
    "find_strace",
    "parse_strace_file",
    "strace_command",
    "strace_problem",
    "supports_seccomp_bpf",
]

STRACE_MISSING_WARNING = "strace not found: only declared I/O was captured for this run"

_SYSCALLS = (
    "open,openat,?openat2,creat,"
    "rename,renameat,?renameat2,unlink,unlinkat,"
    "chdir,fchdir,execve,?execveat,clone,?clone3,fork,vfork,exit_group"
)
_WRITE_FLAGS = ("O_WRONLY", "O_RDWR", "O_CREAT", "O_TRUNC", "O_APPEND")

_LINE = re.compile(r"(\d+)\s+(\d+)\.(\d+)\s+(.*)")
_CALL = re.compile(r"([a-z0-9_]+)\((.*)\)\s+=\s+(-?\d+|\?)(?:<(.*)>)?(?:\s+(E[A-Z0-9]+).*)?$")
_RESUMED = re.compile(r"<\.\.\. ([a-z0-9_]+) resumed>(.*)")
_DECORATED = re.compile(r"(-?\w+)<(.*)>$")
_ESCAPE = re.compile(rb"\\(x[0-9a-fA-F]{2}|[0-7]{1,3}|.)")
_SIMPLE_ESCAPES = {b"n": b"\n", b"t": b"\t", b"r": b"\r", b"v": b"\v", b"f": b"\f", b"a": b"\a"}


def find_strace(path: str | None = None) -> str | None:
    """The strace executable on ``path`` (default: this process's PATH), or None."""
    return shutil.which("strace", path=path)


def _probe(strace: str, *options: str) -> subprocess.CompletedProcess[bytes] | str:
    command = [strace, *options, "-f", "-qq", "-e", "trace=openat", "-o", os.devnull, "--", "true"]
    try:
        return subprocess.run(command, capture_output=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        return str(exc)


@functools.cache
def strace_problem(strace: str) -> str:
    """Why ``strace`` cannot trace here (no ptrace permission, ...); "" when it can."""
    done = _probe(strace)
    if isinstance(done, str):
        return done
    if done.returncode != 0:
        lines = done.stderr.decode(errors="replace").strip().splitlines()
        return lines[0] if lines else f"exit status {done.returncode}"
    return ""


@functools.cache
def supports_seccomp_bpf(strace: str) -> bool:
    """Whether this strace accepts ``--seccomp-bpf`` (strace >= 5.3 on a kernel with seccomp)."""
    done = _probe(strace, "--seccomp-bpf")
    if isinstance(done, str):
        return False
    return done.returncode == 0 and b"seccomp" not in done.stderr.lower()


def strace_command(strace: str, argv: Sequence[str], output: str) -> list[str]:
    """The command line that runs ``argv`` under strace, writing the trace to ``output``."""
    command = [strace, "-f", "-qq", "-ttt", "-y", "-e", "signal=none", "-e", f"trace={_SYSCALLS}"]
    if supports_seccomp_bpf(strace):
        # The kernel filters the calls: the command stops only for traced ones.
        command.append("--seccomp-bpf")
    return [*command, "-o", output, "--", *argv]


def _unquote(text: str) -> str:
    """Decode a C-quoted strace string (without its quotes) to a str path."""
    raw = text.encode("utf-8", "surrogateescape")
    if b"\\" in raw:

        def replace(match: re.Match[bytes]) -> bytes:
            code = match.group(1)
            if code[:1] == b"x" and len(code) == 3:
                return bytes([int(code[1:], 16)])
            if code[:1].isdigit() and code[:1] < b"8":
                return bytes([int(code, 8) & 0xFF])
            return _SIMPLE_ESCAPES.get(code, code)

        raw = _ESCAPE.sub(replace, raw)
    return os.fsdecode(raw)


def _split_args(text: str) -> list[str]:
    """Split a call's argument text at top-level commas (outside quotes, [], {}, (), <>)."""
    args: list[str] = []
    depth = 0
    quoted = False
    start = 0
    index = 0
    length = len(text)
    while index < length:
        char = text[index]
        if quoted:
            if char == "\\":
                index += 1
            elif char == '"':
                quoted = False
        elif char == '"':
            quoted = True
        elif char == "<":
            # A -y decoration: its own "<", ">" are escaped, anything else is literal.
            closing = text.find(">", index)
            index = length if closing < 0 else closing
        elif char in "[{(":
            depth += 1
        elif char in "]})":
            depth -= 1
        elif char == "," and depth == 0:
            args.append(text[start:index].strip())
            start = index + 1
        index += 1
    tail = text[start:].strip()
    if tail:
        args.append(tail)
    return args


def _string_arg(arg: str) -> str | None:
    if len(arg) >= 2 and arg[0] == '"':
        end = arg.rfind('"')
        if end > 0:
            return _unquote(arg[1:end])
    return None


def _decorated_path(arg: str) -> str | None:
    """The path strace's ``-y`` printed after a descriptor: ``AT_FDCWD</x>`` -> "/x"."""
    match = _DECORATED.match(arg)
    return _unquote(match.group(2)) if match else None


class _Cwd:
    """Working directories per pid; threads (CLONE_FS) share one cell."""

    def __init__(self, initial: str) -> None:
        self._cells: dict[int, list[str]] = {}
        self._initial = initial

    def cell(self, pid: int) -> list[str]:
        cell = self._cells.get(pid)
        if cell is None:
            cell = [self._initial]
            self._cells[pid] = cell
        return cell

    def get(self, pid: int) -> str:
        return self.cell(pid)[0]

    def set(self, pid: int, path: str) -> None:
        self.cell(pid)[0] = path

    def fork(self, parent: int, child: int, share: bool) -> None:
        cell = self.cell(parent)
        self._cells[child] = cell if share else [cell[0]]

    def forget(self, pid: int) -> None:
        self._cells.pop(pid, None)


def _resolve(path: str, base: str) -> str:
    return path if path.startswith("/") else os.path.join(base, path)


def _dir_of(arg: str, pid: int, cwd: _Cwd) -> str:
    decorated = _decorated_path(arg)
    if decorated is not None and arg.startswith("AT_FDCWD"):
        cwd.set(pid, decorated)  # a free, exact view of this process's cwd
    return decorated if decorated is not None else cwd.get(pid)


def parse_strace_file(path: str, *, initial_cwd: str, events: RawEvents | None = None) -> RawEvents:
    """Parse a ``strace -f -ttt -y`` output file into ``events`` (a new one by default)."""
    events = RawEvents() if events is None else events
    with open(path, "rb") as stream:
        text = stream.read().decode("utf-8", "surrogateescape")
    records: list[tuple[int, int, str] | None] = []
    unfinished: dict[int, tuple[int, int, str]] = {}
    for line in text.splitlines():
        match = _LINE.match(line)
        if match is None:
            continue
        pid = int(match.group(1))
        when = int(match.group(2)) * 1_000_000_000 + int(match.group(3).ljust(9, "0")[:9])
        body = match.group(4)
        if body.endswith("<unfinished ...>"):
            # Keep the call's place in time: a clone's child may log before it resumes.
            unfinished[pid] = (len(records), when, body[: -len("<unfinished ...>")].rstrip())
            records.append(None)
            continue
        resumed = _RESUMED.match(body)
        if resumed is not None:
            started = unfinished.pop(pid, None)
            if started is None:
                continue
            slot, started_at, head = started
            records[slot] = (pid, started_at, head + resumed.group(2))
            continue
        records.append((pid, when, body))

    # Every pid not seen being cloned is the command itself, which starts in initial_cwd.
    cwd = _Cwd(initial_cwd)
    for record in records:
        if record is not None:
            _apply(record, events, cwd)
    return events


def _apply(record: tuple[int, int, str], events: RawEvents, cwd: _Cwd) -> None:
    pid, when, body = record
    call = _CALL.match(body)
    if call is None:
        return
    name, arg_text, result, result_path, error = call.groups()
    if error is not None or (result == "?" and name != "exit_group"):
        return
    args = _split_args(arg_text)
    if name in ("openat", "openat2", "open", "creat"):
        at = name.startswith("openat")
        path_arg = args[1] if at and len(args) > 1 else (args[0] if args else "")
        raw_path = _string_arg(path_arg)
        if raw_path is None:
            return
        base = _dir_of(args[0], pid, cwd) if at else cwd.get(pid)
        opened = _unquote(result_path) if result_path else _resolve(raw_path, base)
        flags = "O_CREAT|O_WRONLY|O_TRUNC" if name == "creat" else (" ".join(args[2:3]))
        if "O_DIRECTORY" in flags:
            return
        if any(flag in flags for flag in _WRITE_FLAGS):
            events.add_write(opened, when, when)
        else:
            events.add_read(opened, when, when)
    elif name in ("rename", "renameat", "renameat2"):
        if name == "rename" and len(args) >= 2:
            old, new = _string_arg(args[0]), _string_arg(args[1])
            old_base = new_base = cwd.get(pid)
        elif len(args) >= 4:
            old, new = _string_arg(args[1]), _string_arg(args[3])
            old_base, new_base = _dir_of(args[0], pid, cwd), _dir_of(args[2], pid, cwd)
        else:
            return
        if old is not None and new is not None:
            events.add_rename(when, _resolve(old, old_base), _resolve(new, new_base))
    elif name in ("unlink", "unlinkat"):
        if name == "unlinkat":
            if len(args) < 3 or "AT_REMOVEDIR" in args[2]:
                return
            target, base = _string_arg(args[1]), _dir_of(args[0], pid, cwd)
        else:
            target, base = (_string_arg(args[0]) if args else None), cwd.get(pid)
        if target is not None:
            events.add_remove(when, _resolve(target, base))
    elif name == "chdir":
        target = _string_arg(args[0]) if args else None
        if target is not None:
            cwd.set(pid, os.path.normpath(_resolve(target, cwd.get(pid))))
    elif name == "fchdir":
        target = _decorated_path(args[0]) if args else None
        if target is not None:
            cwd.set(pid, target)
    elif name in ("clone", "clone3", "fork", "vfork"):
        child = int(result)
        if child > 0:
            cwd.fork(pid, child, share="CLONE_FS" in arg_text)
    elif name in ("execve", "execveat"):
        program = _string_arg(args[1] if name == "execveat" and len(args) > 1 else args[0])
        if program is not None:
            base = _dir_of(args[0], pid, cwd) if name == "execveat" else cwd.get(pid)
            executed = _resolve(program, base)
            events.executables.add(executed)
            events.add_source(executed, when)
    elif name == "exit_group":
        cwd.forget(pid)

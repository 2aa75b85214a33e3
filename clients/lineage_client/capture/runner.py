"""``lineage run -- CMD``: run a command, trace what it reads and writes, and report it.

Every process of the command is traced by the LD_PRELOAD interposer (``native.py``), which
sees the files native code opens too; Python processes also load the audit hook
(``_boot/sitecustomize.py``), which reports the project's source files. Where the
interposer cannot be built or cannot load, strace follows the command instead; without
either, the capture is partial and the run says why (``plan.py`` chooses).

Signals: the command runs in its own process group. SIGINT, SIGTERM and SIGHUP sent to
the wrapper are forwarded to that group and the run is marked interrupted. When the
wrapper owns the terminal, the command's group gets the terminal for the run (as a shell
gives it to a foreground job), so it can read from it and Ctrl-C reaches it directly;
Ctrl-Z stops the command and then the wrapper, and ``fg`` resumes both.
"""

from __future__ import annotations

import gc
import os
import select
import shutil
import signal
import site
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from typing import TYPE_CHECKING

from lineage_core.errors import CaptureIncomplete, InvalidArgument

from lineage_client.capture.audit import BOOT_DIR, TraceTail, compile_boot, hook_environment
from lineage_client.capture.native import cache_dir, offer_strace, preload_environment
from lineage_client.capture.plan import (
    METHOD_AUDIT_HOOK,
    METHOD_INTERPOSER,
    METHOD_NONE,
    METHOD_STRACE,
    MODES,
    CapturePlan,
    escaped_reasons,
    plan_capture,
    untraced_programs_reason,
)

if TYPE_CHECKING:
    from types import FrameType

    from lineage_core.models import Access, SourceFile

    from lineage_client.capture.raw import RawEvents
    from lineage_client.capture.result import CapturedRun

# Imported where they are used, once the command runs: everything here is on the way from
# `lineage run` to the start of its command (lineage_core.models alone builds its dataclasses
# for tens of milliseconds).

__all__ = [
    "METHOD_AUDIT_HOOK",
    "METHOD_INTERPOSER",
    "METHOD_NONE",
    "METHOD_STRACE",
    "MODES",
    "CapturedRun",
    "capture_command",
    "capture_plan",
    "private_folder",
    "python_interpreter",
    "refuse_partial",
]

_FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
# How often the wait loop wakes up: to read traces as they grow and to notice Ctrl-Z.
_TICK = 0.05


def capture_command(
    argv: Sequence[str],
    *,
    cwd: str | None = None,
    extra_env: Mapping[str, str] | None = None,
    exclude_dirs: Sequence[str] = (),
    mode: str = "auto",
    on_started: Callable[[int], None] | None = None,
    more_excluded: Callable[[], Sequence[str]] | None = None,
    on_poll: Callable[[RawEvents, int, Sequence[str]], None] | None = None,
    require_complete: bool = False,
) -> CapturedRun:
    """Run ``argv`` to completion, tracing the files it reads and writes (see module doc).

    ``on_started(started_at_ns)`` is called once, in this thread, as soon as the command
    runs (or failed to start), so slow work can go on beside it; ``more_excluded()`` is
    called once the command has ended and names more directories that are never data
    (known only then: they are left out after the run rather than by the hook).
    ``on_poll(events, polled_at_ns, excluded)`` is called after each read of the traces
    while the command runs (``lineage run`` sends the reads that are final from there).
    ``require_complete`` raises :class:`CaptureIncomplete` instead of starting a command
    whose capture would be partial.
    """
    if not argv:
        raise InvalidArgument("no command to run")
    if mode not in MODES:
        raise InvalidArgument(f"unknown capture mode {mode!r}: use one of {', '.join(MODES)}")
    workdir = os.path.abspath(cwd if cwd is not None else os.getcwd())
    env = dict(os.environ)
    env.update(extra_env or {})
    started_at = time.time_ns()

    program = _which(argv[0], env, workdir)
    if program is None or not os.access(program, os.X_OK) or os.path.isdir(program):
        missing = program is None
        message = f"command not found: {argv[0]}" if missing else f"cannot execute: {argv[0]}"
        if on_started is not None:
            on_started(started_at)
        # (a) `lineage run` start-up: not loaded before the command is exec'd
        from lineage_client.capture.result import CapturedRun

        return CapturedRun(
            exit_code=127 if missing else 126,
            interrupted=False,
            accesses=(),
            sources=(),
            warnings=(message,),
            method=METHOD_NONE,
            started_at=started_at,
            ended_at=time.time_ns(),
        )

    plan = _plan(mode, argv, program, env)
    if require_complete and plan.reasons:
        raise CaptureIncomplete(_refusal(plan))
    method, strace, warnings = plan.method, plan.strace, plan.warnings
    reasons = list(plan.reasons)
    trace_dir = _trace_dir()
    try:
        excluded = _excluded_dirs(exclude_dirs, trace_dir)
        command = list(argv)
        if method != METHOD_NONE:
            compile_boot()
            env = hook_environment(env, trace_dir, excluded)
        if method == METHOD_INTERPOSER:
            env = preload_environment(env, plan.interposer)
        strace_output = os.path.join(trace_dir, "strace.out")
        if method == METHOD_STRACE and strace is not None:
            # (a) `lineage run` start-up: not loaded before the command is exec'd
            from lineage_client.capture.strace import strace_command

            command = strace_command(strace, argv, strace_output)
        tail = TraceTail(trace_dir)
        notify = _Once(on_started, started_at)
        hook_excluded = excluded
        offers: list[threading.Thread] = []

        def on_start() -> None:
            notify()
            if method == METHOD_INTERPOSER:
                offer = offer_strace(trace_dir, env.get("PATH", os.defpath), cache_dir(env))
                if offer is not None:
                    offers.append(offer)

        def tick() -> None:
            polled_at = time.time_ns()
            tail.poll()
            if on_poll is not None:
                on_poll(tail.events, polled_at, hook_excluded)

        try:
            returncode, forwarded = _run(
                command, cwd=workdir, env=env, on_tick=tick, on_start=on_start
            )
        except OSError as exc:
            returncode, forwarded = 126, False
            warnings.append(f"cannot execute {argv[0]}: {exc.strerror or exc}")
        ended_at = time.time_ns()
        notify()  # the command could not start: the caller still hears of it
        for offer in offers:
            offer.join()
        excluded = _excluded_dirs(
            [*exclude_dirs, *(more_excluded() if more_excluded is not None else ())],
            trace_dir,
            thorough=True,
        )

        events = tail.finish()
        if method == METHOD_STRACE and os.path.exists(strace_output):
            # (a) `lineage run` start-up: not loaded before the command is exec'd
            from lineage_client.capture.strace import parse_strace_file

            parse_strace_file(strace_output, initial_cwd=workdir, events=events)
        elif method == METHOD_AUDIT_HOOK:
            reasons.extend(untraced_programs_reason(sorted(events.programs)))
        if method == METHOD_INTERPOSER:
            reasons.extend(escaped_reasons(events.escaped))
            reasons.extend(_parse_handed_over(events))
        # (a) `lineage run` start-up: not loaded before the command is exec'd
        from lineage_client.capture.settle import settle_unchanged_writes

        settle_unchanged_writes(events, started_at)
        accesses, sources = _collect(events, excluded)
    finally:
        shutil.rmtree(trace_dir, ignore_errors=True)

    # (a) `lineage run` start-up: not loaded before the command is exec'd
    from lineage_client.capture.result import CapturedRun

    killed_by = -returncode if returncode < 0 else 0
    return CapturedRun(
        exit_code=128 + killed_by if killed_by else returncode,
        interrupted=forwarded or killed_by in _FORWARDED,
        accesses=accesses,
        sources=sources,
        warnings=tuple(warnings),
        method=method,
        started_at=started_at,
        ended_at=ended_at,
        killed_by=killed_by,
        capture_reasons=tuple(reasons),
    )


class _Once:
    """Calls ``callback(started_at)`` the first time it is called, never again."""

    def __init__(self, callback: Callable[[int], None] | None, started_at: int) -> None:
        self._callback = callback
        self._started_at = started_at

    def __call__(self) -> None:
        callback, self._callback = self._callback, None
        if callback is not None:
            callback(self._started_at)


# --- choosing the tracer ---------------------------------------------------------------


def _which(program: str, env: Mapping[str, str], cwd: str) -> str | None:
    if "/" in program:
        path = os.path.join(cwd, program)
        return path if os.path.exists(path) else None
    return _on_path(program, env.get("PATH", os.defpath))


def _on_path(program: str, search: str) -> str | None:
    """``shutil.which(program, path=search)`` for a bare name (shutil imports re and fnmatch,
    which `lineage run` need not load before its command starts)."""
    for folder in search.split(os.pathsep):
        candidate = os.path.join(folder or os.curdir, program)
        if os.access(candidate, os.F_OK | os.X_OK) and not os.path.isdir(candidate):
            return candidate
    return None


def _shebang(path: str) -> list[str]:
    try:
        with open(path, "rb") as stream:
            head = stream.read(512)
    except OSError:
        return []
    if not head.startswith(b"#!"):
        return []
    line = head[2:].split(b"\n", 1)[0].decode("utf-8", "replace")
    return line.split()


def _is_python_name(path: str) -> bool:
    return os.path.basename(path).startswith("python")  # fnmatch's "python*"


def _hook_blocked(options: Sequence[str]) -> bool:
    """Whether these interpreter options make Python skip PYTHONPATH or site (-I, -E, -S)."""
    skip_next = False
    for option in options:
        if skip_next:
            skip_next = False
            continue
        if option.startswith("--") and option != "--":
            continue  # --version, --help and the like change nothing here
        if option in ("-", "--") or not option.startswith("-"):
            return False  # the script (or stdin) comes next: options are over
        letters = option[1:]
        for index, letter in enumerate(letters):
            if letter in "IES":
                return True
            if letter in "cm":
                return False  # the rest is the program and its arguments
            if letter in "WX":
                skip_next = index == len(letters) - 1  # "-W arg" rather than "-Warg"
                break
    return False


def _python_launch(argv: Sequence[str], program: str) -> tuple[str, bool] | None:
    """(interpreter, hook can load) when ``argv`` starts a Python interpreter, else None."""
    if _is_python_name(argv[0]) or _same_file(program, sys.executable):
        return program, not _hook_blocked(argv[1:])
    words = _shebang(program)
    if not words:
        return None
    interpreter, options = words[0], words[1:]
    if os.path.basename(interpreter) == "env":
        # "#!/usr/bin/env [-S] [-i] [NAME=VALUE...] python3 [options]"
        while options and (options[0].startswith("-") or "=" in options[0]):
            options = options[1:]
        if not options:
            return None
        interpreter, options = options[0], options[1:]
    if not _is_python_name(interpreter):
        return None
    return interpreter, not _hook_blocked(options)


def _same_file(first: str, second: str) -> bool:
    try:
        return os.path.samefile(first, second)
    except OSError:
        return False


def python_interpreter(
    argv: Sequence[str], *, env: Mapping[str, str] | None = None, cwd: str | None = None
) -> str | None:
    """The Python interpreter ``argv`` runs, directly or through a shebang; None if not Python."""
    if not argv:
        return None
    environment = os.environ if env is None else env
    program = _which(argv[0], environment, os.path.abspath(cwd or os.getcwd()))
    if program is None:
        return None
    launch = _python_launch(argv, program)
    if launch is None:
        return None
    interpreter = launch[0]
    if "/" not in interpreter:
        return _which(interpreter, environment, os.getcwd()) or interpreter
    return interpreter


def _parse_handed_over(events: RawEvents) -> list[str]:
    """Read the strace output of each program the interposer handed over to strace."""
    # (a) `lineage run` start-up: not loaded before the command is exec'd
    from lineage_client.capture.strace import parse_strace_file

    reasons = []
    for output, cwd in events.straced:
        try:
            parse_strace_file(output, initial_cwd=cwd, events=events)
        except OSError as exc:
            reasons.append(
                f"strace's record of a program the interposer handed over to it is missing "
                f"({exc.strerror or exc}): its file accesses were not seen"
            )
    return reasons


def _plan(mode: str, argv: Sequence[str], program: str, env: Mapping[str, str]) -> CapturePlan:
    return plan_capture(mode, argv, program, env, _python_launch(argv, program))


def _refusal(plan: CapturePlan) -> str:
    return "the capture of this command would be partial (--require-complete): " + "; ".join(
        plan.reasons
    )


def capture_plan(
    argv: Sequence[str],
    *,
    cwd: str | None = None,
    extra_env: Mapping[str, str] | None = None,
    mode: str = "auto",
) -> CapturePlan:
    """The tracer ``capture_command`` would choose for ``argv``, and why it would be partial."""
    if not argv:
        raise InvalidArgument("no command to run")
    if mode not in MODES:
        raise InvalidArgument(f"unknown capture mode {mode!r}: use one of {', '.join(MODES)}")
    workdir = os.path.abspath(cwd if cwd is not None else os.getcwd())
    env = {**os.environ, **(extra_env or {})}
    program = _which(argv[0], env, workdir)
    if program is None or not os.access(program, os.X_OK) or os.path.isdir(program):
        return CapturePlan(METHOD_NONE)  # it will not start: nothing to miss
    return _plan(mode, argv, program, env)


def refuse_partial(plan: CapturePlan) -> None:
    """Raise :class:`CaptureIncomplete` naming the reasons when ``plan`` is partial."""
    if plan.reasons:
        raise CaptureIncomplete(_refusal(plan))


# --- what is not data --------------------------------------------------------------------


def private_folder(prefix: str) -> str:
    """A new folder under ``$TMPDIR`` (else /tmp) that only we can enter, named ``prefix`` and
    random hex; "" when none can be made there. (``tempfile.mkdtemp``'s result, without
    importing tempfile before the command starts.)"""
    base = os.environ.get("TMPDIR") or "/tmp"
    for _ in range(16):
        path = os.path.join(base, prefix + os.urandom(6).hex())
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            continue
        except OSError:
            return ""
        return path
    return ""


def _trace_dir() -> str:
    """A new private folder for the hook's trace files."""
    found = private_folder("lineage-trace-")
    if found:
        return found
    # $TMPDIR is not writable: tempfile knows where else to look.
    return tempfile.mkdtemp(prefix="lineage-trace-")


def _excluded_dirs(
    exclude_dirs: Sequence[str], trace_dir: str, *, thorough: bool = False
) -> list[str]:
    """Directories whose files are never data inputs: ours, the interpreter's, the caller's.

    ``thorough`` adds the interpreter's install paths as sysconfig names them; in the usual
    layouts they lie in the prefixes already, so the hook's list, made before the command
    starts, goes without (the wrapper filters with the thorough one after).
    """
    dirs = [os.path.abspath(path) for path in exclude_dirs]
    dirs += [trace_dir, BOOT_DIR, sys.prefix, sys.exec_prefix, sys.base_prefix]
    dirs.append(sys.base_exec_prefix)
    dirs += site.getsitepackages()
    with suppress(Exception):
        dirs.append(site.getusersitepackages())
    if thorough:
        # (a) `lineage run` start-up: not loaded before the command is exec'd
        import sysconfig

        paths = sysconfig.get_paths()
        dirs += [
            paths[name] for name in ("stdlib", "platstdlib", "purelib", "platlib") if name in paths
        ]
    return sorted({os.path.normpath(path) for path in dirs if path}, key=len)


def _collect(
    events: RawEvents, excluded: Sequence[str]
) -> tuple[tuple[Access, ...], tuple[SourceFile, ...]]:
    # Tens of thousands of new containers, none garbage: collections would only rescan
    # them over and over (a fifth of the time, measured on 10,000 paths).
    collecting = gc.isenabled()
    gc.disable()
    try:
        return _collect_now(events, excluded)
    finally:
        if collecting:
            gc.enable()


def _collect_now(
    events: RawEvents, excluded: Sequence[str]
) -> tuple[tuple[Access, ...], tuple[SourceFile, ...]]:
    interpreters = {os.path.realpath(path) for path in events.executables if path}
    for path in list(events.sources):
        if os.path.realpath(path) in interpreters and not path.endswith(".py"):
            del events.sources[path]  # the interpreter binary is not the run's code
    # Imported here: hashing loads blake3, which `lineage run` need not load before its
    # (a) `lineage run` start-up: not loaded before the command is exec'd
    from lineage_core.models import SourceFile

    # (a) `lineage run` start-up: not loaded before the command is exec'd
    from lineage_client.capture.digest import _digest_file

    # (a) `lineage run` start-up: not loaded before the command is exec'd
    from lineage_client.capture.events import build_accesses, resolve_spans

    spans, source_times = resolve_spans(events, excluded=excluded)
    code: dict[str, tuple[int, str, int, int]] = {}
    sources: list[SourceFile] = []
    for path, when in sorted(source_times.items()):
        try:
            digest, size, mtime_ns = _digest_file(path)
        except OSError:
            continue  # vanished or unreadable since: nothing to vouch for
        code[path] = (when, digest, size, mtime_ns)
        sources.append(SourceFile(path=path, digest=digest))
    return tuple(build_accesses(spans, code)), tuple(sources)


# --- running with signals forwarded ---------------------------------------------------------


def _controlling_tty() -> int | None:
    """A descriptor of the terminal when this process group is its foreground, else None."""
    for fd in (0, 1, 2):
        with suppress(OSError):
            if os.isatty(fd) and os.tcgetpgrp(fd) == os.getpgrp():
                return fd
    return None


def _set_foreground(tty: int, pgid: int) -> None:
    # From a background group tcsetpgrp raises SIGTTOU, which would stop us: ignore it.
    previous = signal.signal(signal.SIGTTOU, signal.SIG_IGN)
    try:
        with suppress(OSError):
            os.tcsetpgrp(tty, pgid)
    finally:
        signal.signal(signal.SIGTTOU, previous)


@contextmanager
def _signals_forwarded() -> Iterator[tuple[list[int], int]]:
    """Collect SIGINT/SIGTERM/SIGHUP in a list; yield it and a descriptor that wakes on them."""
    received: list[int] = []

    def note(signum: int, frame: FrameType | None) -> None:
        received.append(signum)  # the waiting loop forwards it

    wake_read, wake_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    previous_wakeup = signal.set_wakeup_fd(wake_write, warn_on_full_buffer=False)
    previous: dict[int, signal._HANDLER] = {}
    try:
        for signum in _FORWARDED:
            handler = signal.getsignal(signum)
            if handler is signal.SIG_IGN or handler is None:
                # Ignored (nohup and friends): the caller chose not to hear it. None: set
                # outside Python, so it could not be put back.
                continue
            previous[signum] = handler
            signal.signal(signum, note)
        yield received, wake_read
    finally:
        for number, handler_before in previous.items():
            signal.signal(number, handler_before)
        signal.set_wakeup_fd(previous_wakeup)
        os.close(wake_read)
        os.close(wake_write)


def _run(
    command: Sequence[str],
    *,
    cwd: str,
    env: Mapping[str, str],
    on_tick: Callable[[], None] = lambda: None,
    on_start: Callable[[], None] = lambda: None,
) -> tuple[int, bool]:
    """Run ``command`` in its own process group; return (returncode, forwarded a signal).

    ``on_start`` is called once the command runs; ``on_tick`` about every ``_TICK``
    seconds while it runs.
    """
    if threading.current_thread() is not threading.main_thread():
        # Only the main thread can take signals; elsewhere just run it.
        with subprocess.Popen(list(command), cwd=cwd, env=dict(env), process_group=0) as proc:
            on_start()
            while True:
                try:
                    return proc.wait(timeout=_TICK), False
                except subprocess.TimeoutExpired:
                    on_tick()

    with _signals_forwarded() as (received, wake_read):
        tty = _controlling_tty()
        proc = subprocess.Popen(list(command), cwd=cwd, env=dict(env), process_group=0)
        forwarded = False
        pidfd = -1
        with suppress(OSError, AttributeError):
            pidfd = os.pidfd_open(proc.pid)
        try:
            if tty is not None:
                _set_foreground(tty, proc.pid)
            on_start()
            while True:
                while received:
                    signum = received.pop(0)
                    forwarded = True
                    with suppress(ProcessLookupError, PermissionError):
                        os.killpg(proc.pid, signum)
                returncode = proc.poll()
                if returncode is not None:
                    return returncode, forwarded
                if tty is not None:
                    _follow_stops(proc.pid, tty)
                watched = [wake_read] + ([pidfd] if pidfd >= 0 else [])
                with suppress(InterruptedError):
                    ready, _, _ = select.select(watched, [], [], _TICK)
                    if not ready:
                        on_tick()
                with suppress(BlockingIOError):
                    os.read(wake_read, 512)
        finally:
            if pidfd >= 0:
                os.close(pidfd)
            if tty is not None:
                _set_foreground(tty, os.getpgrp())
            if proc.returncode is None:
                # We are leaving early (an exception): never leave the command behind.
                with suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGTERM)
                proc.wait()


def _follow_stops(pid: int, tty: int) -> None:
    """Mirror job control: when the command stops (Ctrl-Z), stop too; resume it with us."""
    with suppress(ChildProcessError):
        info = os.waitid(os.P_PID, pid, os.WSTOPPED | os.WNOHANG)
        if info is None or info.si_code != os.CLD_STOPPED:
            return
        if info.si_status in (signal.SIGTTIN, signal.SIGTTOU):
            # It touched the terminal before we handed it over: it has it now.
            os.killpg(pid, signal.SIGCONT)
            return
        _set_foreground(tty, os.getpgrp())
        os.kill(0, signal.SIGTSTP)  # the shell sees this job stop; "fg" continues here
        _set_foreground(tty, pid)
        os.killpg(pid, signal.SIGCONT)


def __getattr__(name: str) -> object:
    # (a) `lineage run` start-up: CapturedRun lives in .result: dataclasses (and inspect, which it imports) load once the
    # command has run, not on the way to starting it.
    if name == "CapturedRun":
        from lineage_client.capture.result import CapturedRun

        return CapturedRun
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

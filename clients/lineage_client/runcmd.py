"""``lineage run [--name N] [--param K=V]... -- CMD [ARGS...]``: run a command and record
what it read, what it wrote, and the code and environment it ran with.

The command starts first: once a cheap connect shows a daemon listens, the run's id is made
here and the command is spawned with it in ``LINEAGE_RUN_ID`` (nested runs and
``client.run()`` calls in the command name it as their parent; the client waits for a parent
that is not recorded yet). While it runs, a thread imports the client (grpc), captures the git
state and the environment and begins the run (started at the spawn). When the command ends,
its file accesses (audit hook for Python, strace otherwise) are recorded and the run ended with
the command's exit status, which ``lineage run`` exits with — also when recording failed.
"""

from __future__ import annotations

import getpass
import os
import socket
import sys
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from lineage_client._reach import PARENT_ENV, find_socket, probe_socket
from lineage_client.capture.runner import (
    capture_command,
    capture_plan,
    python_interpreter,
    refuse_partial,
)
from lineaged.errors import InvalidArgument, LineageError
from lineaged.runid import new_run_id

if TYPE_CHECKING:
    import argparse

    from lineage_client.capture.raw import RawEvents
    from lineage_client.capture.result import CapturedRun
    from lineage_client.capture.stream import ReadStreamer
    from lineage_client.client import Client
    from lineaged.models import Access, CodeState, EnvState, Root, RunStatus, Status

# lineaged.models (tens of milliseconds of dataclass building) and the client (grpc) are
# imported beside the running command, never before it starts.

__all__ = ["PARENT_ENV", "capture_summary", "main_run", "run_name"]

DIFF_CAP_ENV = "LINEAGE_DIFF_CAP"  # bytes of `git diff` stored with a run (default 1 MiB)
ENV_ALLOW_ENV = "LINEAGE_ENV_ALLOW"  # extra comma-separated variable patterns to record
CAPTURE_ENV = "LINEAGE_CAPTURE"  # the default of --capture
REQUIRE_COMPLETE_ENV = "LINEAGE_REQUIRE_COMPLETE"  # "1": the default of --require-complete


def run_name(command: Sequence[str]) -> str:
    """The default run name: the script a Python or shell command runs, else the program."""
    program = os.path.basename(command[0])
    interpreters = ("python", "sh", "bash", "zsh", "dash", "Rscript", "julia", "node", "perl")
    if program.startswith(interpreters):
        args = list(command[1:])
        while args:
            arg = args.pop(0)
            if arg == "-m" and args:
                return args[0]
            if arg in ("-c", "-"):
                break
            if arg.startswith("-"):
                continue
            return os.path.basename(arg)
    return program


def _params(pairs: Sequence[str]) -> dict[str, str]:
    params: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise InvalidArgument(f"--param takes KEY=VALUE, got {pair!r}")
        params[key] = value
    return params


def _diff_cap() -> int:
    from lineage_client.capture.git import DEFAULT_DIFF_CAP

    cap = _check_diff_cap()
    return DEFAULT_DIFF_CAP if cap is None else cap


def _check_diff_cap() -> int | None:
    """``$LINEAGE_DIFF_CAP`` in bytes, None when unset; InvalidArgument when it is not one."""
    raw = os.environ.get(DIFF_CAP_ENV, "")
    if not raw:
        return None
    try:
        cap = int(raw)
    except ValueError:
        raise InvalidArgument(f"{DIFF_CAP_ENV} must be a number of bytes, got {raw!r}") from None
    if cap < 0:
        raise InvalidArgument(f"{DIFF_CAP_ENV} cannot be negative")
    return cap


def _environment(command: Sequence[str], cwd: str, warnings: list[str]) -> EnvState | None:
    # Imported beside the running command (importlib.metadata, blake3), as is git below.
    from lineage_client.capture.environment import DEFAULT_ALLOWLIST, env_state

    extra = [p.strip() for p in os.environ.get(ENV_ALLOW_ENV, "").split(",") if p.strip()]
    allowlist = (*DEFAULT_ALLOWLIST, *extra)
    python = python_interpreter(command, cwd=cwd)
    try:
        return env_state(allowlist, python=python)
    except (OSError, ValueError) as exc:
        warnings.append(f"could not describe the environment of {python}: {exc}")
        return env_state(allowlist)


def _capture_mode(args: argparse.Namespace) -> str:
    """``--capture``, else ``$LINEAGE_CAPTURE``, else auto; InvalidArgument for an unknown one."""
    from lineage_client.capture.plan import MODES

    mode = str(getattr(args, "capture", None) or os.environ.get(CAPTURE_ENV, "") or "auto")
    if mode not in MODES:
        raise InvalidArgument(
            f"unknown capture mode {mode!r} (from {CAPTURE_ENV}): use one of {', '.join(MODES)}"
        )
    return mode


def _require_complete(args: argparse.Namespace) -> bool:
    """``--require-complete``, else ``$LINEAGE_REQUIRE_COMPLETE`` (1/yes/true or 0/no/false)."""
    flag = getattr(args, "require_complete", None)
    if flag is not None:
        return bool(flag)
    raw = os.environ.get(REQUIRE_COMPLETE_ENV, "").strip().lower()
    if raw in ("", "0", "no", "false", "off"):
        return False
    if raw in ("1", "yes", "true", "on"):
        return True
    raise InvalidArgument(f"{REQUIRE_COMPLETE_ENV} must be 1 or 0, got {raw!r}")


def capture_summary(captured: CapturedRun) -> str:
    """``capture: complete`` or ``capture: partial (reason; reason)``, as the summary shows it."""
    if captured.complete:
        return f"capture: complete ({captured.method})"
    return f"capture: partial ({'; '.join(captured.capture_reasons)})"


def _status(captured: CapturedRun) -> RunStatus:
    from lineaged.models import RunStatus

    if captured.interrupted:
        return RunStatus.INTERRUPTED
    return RunStatus.SUCCEEDED if captured.exit_code == 0 else RunStatus.FAILED


def _accesses(roots: Sequence[Root], captured: CapturedRun) -> list[Access]:
    """The traced accesses, with files outside every root hashed here (as the user), and
    the sources the command executed or imported as code inputs."""
    import dataclasses

    from lineage_client.capture.digest import hash_external
    from lineaged.models import Access, AccessMode

    # Traced paths are canonical already (capture resolves links): a prefix test per path,
    # no realpath.
    bases = tuple(root.path.rstrip("/") for root in roots)
    prefixes = tuple(base + "/" for base in bases)
    # Capture reports each (path, mode) once, its sources merged in as code reads already:
    # the list is used as it is, and only what must change is replaced.
    accesses = list(captured.accesses)
    for index, access in enumerate(accesses):
        path = access.path
        if not access.digest and not (path.startswith(prefixes) or path in bases):
            accesses[index] = hash_external(access)
    if not captured.sources:
        return accesses
    code = {source.path: source for source in captured.sources}
    for index, access in enumerate(accesses):
        source = code.get(access.path)
        if source is not None and access.mode is AccessMode.READ:
            del code[access.path]
            if access.role != "code" or not access.digest:
                accesses[index] = dataclasses.replace(
                    access, role="code", digest=access.digest or source.digest
                )
    accesses += [
        Access(
            path=source.path,
            mode=AccessMode.READ,
            first_at=captured.started_at,
            last_at=captured.ended_at,
            how="traced",
            role="code",
            digest=source.digest,
        )
        for source in code.values()
    ]
    return accesses


def _check_daemon(args: argparse.Namespace) -> None:
    """Raise what the first call would when no daemon listens on the Unix socket, before the
    command starts (as when ``lineage run`` connected first); TCP targets are not probed."""
    if getattr(args, "tcp_target", None):
        return
    probe_socket(find_socket(getattr(args, "socket", None)))


class _Begun:
    """What the thread beside the command produced: the client, the daemon's status, the run."""

    __slots__ = ("client", "error", "notes", "status", "streamer", "warnings")

    def __init__(self) -> None:
        self.client: Client | None = None
        self.status: Status | None = None
        self.error: BaseException | None = None
        self.warnings: list[str] = []  # recorded with the run
        self.notes: list[str] = []  # printed once it has ended
        self.streamer: ReadStreamer | None = None  # once the run is begun

    def offer(self, events: RawEvents, polled_at: int, excluded: Sequence[str]) -> None:
        """Hand a poll's reads to the streamer (the main thread, while the command runs)."""
        streamer = self.streamer
        if streamer is None or streamer.error is not None:
            return
        try:
            streamer.offer(events, polled_at, excluded)
        except Exception as exc:  # never let streaming break the run: the end sends all
            streamer.error = exc


def _begin(
    connect: Callable[[], Client], fields: dict[str, Any], command: Sequence[str], begun: _Begun
) -> None:
    """Runs beside the command: connect, capture git and the environment, BeginRun."""
    try:
        import dataclasses

        from lineage_client.capture.git import git_state
        from lineaged.models import RunStart

        start = RunStart(**fields)
        client = begun.client = connect()
        begun.status = client.status()
        code: CodeState | None = git_state(start.cwd, diff_cap=_diff_cap())
        if code is not None and code.diff_truncated:
            note = (
                f"the git diff is {code.diff_size} bytes; only the first {len(code.diff)} were "
                f"stored (raise {DIFF_CAP_ENV})"
            )
            # Printed later: the command may hold the terminal now (a background process
            # group writing to it would be stopped under `stty tostop`).
            begun.warnings.append(note)
            begun.notes.append(note)
        env = _environment(command, start.cwd, begun.warnings)
        client.begin_run(dataclasses.replace(start, code=code, env=env))
        from lineage_client.capture.stream import ReadStreamer

        run_id = start.run_id
        begun.streamer = ReadStreamer(
            lambda batch: client.record_accesses(run_id, batch),
            roots=[root.path for root in begun.status.roots],
            excluded=[begun.status.state_dir],
        )
    except BaseException as exc:  # reported once the command has ended
        begun.error = exc


def main_run(args: argparse.Namespace, connect: Callable[[], Client]) -> int:
    """Run ``args.command`` under capture and record it; returns the command's exit status.

    ``connect()`` opens the client; it is called beside the running command.
    """
    command = list(args.command)
    if not command:
        raise InvalidArgument(
            "nothing to run: give a command after --, e.g. lineage run -- python train.py"
        )
    params = _params(args.param or [])
    _check_diff_cap()  # a bad LINEAGE_DIFF_CAP stops us before the command runs, as it did
    mode = _capture_mode(args)
    strict = _require_complete(args)
    cwd = os.getcwd()
    if strict:
        # Before anything else: a refused command must not look started.
        refuse_partial(capture_plan(command, cwd=cwd, extra_env={PARENT_ENV: ""}, mode=mode))
    _check_daemon(args)
    run_id = new_run_id()
    name = args.name or run_name(command)
    # RunStart's fields: the value itself is built beside the running command.
    start = {
        "name": name,
        "argv": tuple(command),
        "cwd": cwd,
        "host": socket.gethostname(),
        "user": getpass.getuser(),
        "pid": os.getpid(),
        "params": params,
        "parent_run_id": os.environ.get(PARENT_ENV, ""),
        "run_id": run_id,
    }
    begun = _Begun()
    worker: list[threading.Thread] = []

    def started(started_at: int) -> None:
        thread = threading.Thread(
            target=_begin,
            args=(connect, {**start, "started_at": started_at}, command, begun),
            name="lineage-begin-run",
            daemon=True,
        )
        thread.start()
        worker.append(thread)

    def daemon_dirs() -> list[str]:
        for thread in worker:
            thread.join()
        status = begun.status
        return [status.state_dir] if status else []

    print(f"lineage: run {run_id} ({name}) started", file=sys.stderr)
    try:
        captured = capture_command(
            command,
            cwd=cwd,
            extra_env={PARENT_ENV: run_id},
            on_started=started,
            more_excluded=daemon_dirs,
            on_poll=begun.offer,
            mode=mode,
            require_complete=strict,
        )
        daemon_dirs()  # the command could not start: the thread still ran
        for warning in [*begun.notes, *captured.warnings]:
            print(f"lineage: warning: {warning}", file=sys.stderr)
        return _record(run_id, begun, captured)
    finally:
        if begun.client is not None:
            begun.client.close()


def _record(run_id: str, begun: _Begun, captured: CapturedRun) -> int:
    """Record what the command did; the command's exit status whatever happens here."""
    client, status = begun.client, begun.status
    if begun.error is not None or client is None or status is None:
        error = begun.error
        reason = error.message if isinstance(error, LineageError) else repr(error)
        print(
            f"lineage: error: the run was not recorded: {reason} ({capture_summary(captured)})",
            file=sys.stderr,
        )
        return captured.exit_code
    from lineage_client.capture.stream import unsent
    from lineaged.models import Capture

    # What went to the daemon while the command ran, and the daemon confirmed; the rest
    # (and any read whose final form differs) goes now.
    sent = begun.streamer.finish() if begun.streamer is not None else {}
    try:
        accesses = _accesses(status.roots, captured)
        rest = unsent(accesses, sent)
        if rest:
            client.record_accesses(run_id, rest)
        ended = client.end_run(
            run_id,
            status=_status(captured),
            exit_code=captured.exit_code,
            ended_at=captured.ended_at,
            warnings=[*begun.warnings, *captured.warnings],
            capture=Capture(
                complete=captured.complete,
                reasons=captured.capture_reasons,
                method=captured.method,
            ),
        )
    except LineageError as exc:
        # The command ran; its exit status is what the caller's pipeline depends on.
        print(f"lineage: error: the run was not fully recorded: {exc.message}", file=sys.stderr)
        return captured.exit_code
    reads = sum(1 for a in accesses if a.mode == "read" and a.role == "data")
    writes = sum(1 for a in accesses if a.mode == "write")
    print(
        f"lineage: run {ended.run_id} {ended.status.value} (exit {captured.exit_code}): "
        f"{reads} inputs ({len(sent)} recorded while it ran), {writes} outputs, "
        f"{len(captured.sources)} source files, {capture_summary(captured)}",
        file=sys.stderr,
    )
    return captured.exit_code

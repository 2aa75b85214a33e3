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
import shutil
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from lineage_core.errors import DaemonUnavailable, DeadlineExceeded, InvalidArgument, LineageError
from lineage_core.paths import candidate_socket_paths
from lineage_core.runid import new_run_id

from lineage_client._reach import PARENT_ENV, find_socket, probe_socket
from lineage_client._terminal import escape
from lineage_client.capture.runner import (
    capture_command,
    capture_plan,
    private_folder,
    python_interpreter,
    refuse_partial,
)

if TYPE_CHECKING:
    import argparse

    from lineage_core.models import Access, CodeState, EnvState, Root, RunStart, RunStatus, Status

    from lineage_client.capture.raw import RawEvents
    from lineage_client.capture.result import CapturedRun
    from lineage_client.capture.stream import ReadStreamer
    from lineage_client.client import Client

# lineage_core.models (tens of milliseconds of dataclass building) and the client (grpc) are
# imported beside the running command, never before it starts.

__all__ = ["PARENT_ENV", "capture_summary", "main_run", "run_name"]

MLFLOW_NOTES_ENV = "LINEAGE_MLFLOW_NOTES"  # as mlflow_context.NOTES_ENV (which imports MLflow)
# Where nested `lineage run`s leave notes for this one (capture/nested.py; named here so the
# module need not be imported before the command starts).
CHILDREN_ENV = "LINEAGE_CHILD_NOTES"
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
    # (a) `lineage run` start-up: not loaded before the command is exec'd
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
    # (a) `lineage run` start-up: not loaded before the command is exec'd
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
    # (a) `lineage run` start-up: not loaded before the command is exec'd
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
    # (a) `lineage run` start-up: not loaded before the command is exec'd
    from lineage_core.models import RunStatus

    if captured.interrupted:
        return RunStatus.INTERRUPTED
    return RunStatus.SUCCEEDED if captured.exit_code == 0 else RunStatus.FAILED


def _accesses(roots: Sequence[Root], captured: CapturedRun) -> list[Access]:
    """The traced accesses, with files outside every root hashed here (as the user), and
    the sources the command executed or imported as code inputs."""
    # (a) `lineage run` start-up: not loaded before the command is exec'd
    import dataclasses

    # (a) `lineage run` start-up: not loaded before the command is exec'd
    from lineage_core.models import Access, AccessHow, AccessMode, AccessRole

    # (a) `lineage run` start-up: not loaded before the command is exec'd
    from lineage_client.capture.digest import hash_external

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
            if access.role is not AccessRole.CODE or not access.digest:
                accesses[index] = dataclasses.replace(
                    access, role=AccessRole.CODE, digest=access.digest or source.digest
                )
    accesses += [
        Access(
            path=source.path,
            mode=AccessMode.READ,
            first_at=captured.started_at,
            last_at=captured.ended_at,
            how=AccessHow.TRACED,
            role=AccessRole.CODE,
            digest=source.digest,
        )
        for source in code.values()
    ]
    return accesses


def _text_paths(accesses: list[Access]) -> tuple[list[Access], int]:
    """The accesses whose paths are UTF-8 (the others cannot be sent), and how many were not."""
    kept = [a for a in accesses if a.path.isascii() or _is_utf8(a.path)]
    return kept, len(accesses) - len(kept)


def _is_utf8(path: str) -> bool:
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _check_daemon(args: argparse.Namespace) -> None:
    """Raise what the first call would when no daemon listens on the Unix socket, before the
    command starts (as when ``lineage run`` connected first); TCP targets are not probed."""
    if getattr(args, "tcp_target", None):
        return
    probe_socket(find_socket(getattr(args, "socket", None)))


def _daemon_missing(args: argparse.Namespace) -> str:
    """ "" when a daemon listens (TCP targets are not probed), else why not; with
    ``--require-daemon`` the DaemonUnavailable is raised instead (the command never starts)."""
    try:
        _check_daemon(args)
    except DaemonUnavailable as exc:
        if getattr(args, "require_daemon", False):
            raise DaemonUnavailable(
                f"{exc.message}; --require-daemon: the command was not started"
            ) from None
        return exc.message
    return ""


def _target(args: argparse.Namespace) -> str:
    """The daemon this run is meant for, as a client names it (spooled runs carry it)."""
    tcp = getattr(args, "tcp_target", None)
    if tcp:
        return str(tcp)
    try:
        return "unix:" + find_socket(getattr(args, "socket", None))
    except DaemonUnavailable:
        return "unix:" + os.path.abspath(candidate_socket_paths()[0])


class _Begun:
    """What the thread beside the command produced: the client, the daemon's status, the run."""

    __slots__ = (
        "begun",
        "children",
        "client",
        "error",
        "notes",
        "start",
        "status",
        "streamer",
        "warnings",
    )

    def __init__(self) -> None:
        self.client: Client | None = None
        self.status: Status | None = None
        self.start: RunStart | None = None  # with code and environment, once described
        self.begun = False  # BeginRun confirmed
        self.children = ""  # the folder where nested runs leave their notes
        self.error: BaseException | None = None
        self.warnings: list[str] = []  # recorded with the run
        self.notes: list[str] = []  # printed once it has ended
        self.streamer: ReadStreamer | None = None  # once the run is begun

    def offer(self, events: RawEvents, polled_at: int, excluded: Sequence[str]) -> None:
        """Hand a poll's reads to the streamer (the main thread, while the command runs)."""
        streamer = self.streamer
        if streamer is None or streamer.error is not None:
            return
        if self.children and _has_children(self.children):
            return  # reads from now on may be a nested run's: decided once the command ends
        try:
            streamer.offer(events, polled_at, excluded)
        except Exception as exc:  # never let streaming break the run: the end sends all
            streamer.error = exc


def _count_children(folder: str) -> int:
    try:
        return sum(name.endswith(".json") for name in os.listdir(folder)) if folder else 0
    except OSError:
        return 0


def _has_children(folder: str) -> bool:
    try:
        return any(name.endswith(".json") for name in os.listdir(folder))
    except OSError:
        return False


def _children_folder() -> str:
    """A new private folder for the notes of nested runs; "" when none can be made (nested
    runs then go unnoticed)."""
    return private_folder("lineage-children-")


def _tell_parent(run_id: str, started_at: int) -> None:
    """Leave the note a parent ``lineage run`` reads (its start only: the end is written by
    ``nested.note_child`` once this run has ended)."""
    folder = os.environ.get(CHILDREN_ENV, "")
    if not folder:
        return
    final = os.path.join(folder, f"{run_id}.json")
    try:
        with open(f"{final}.tmp", "w", encoding="utf-8") as note:
            note.write(
                f'{{"run_id": "{run_id}", "started_at": {started_at}, "ended_at": null, '
                '"paths": []}'
            )
        os.replace(f"{final}.tmp", final)
    except OSError:
        pass


def _begin(
    connect: Callable[[], Client] | None,
    fields: dict[str, Any],
    command: Sequence[str],
    begun: _Begun,
) -> None:
    """Runs beside the command: capture git and the environment, then (``connect`` given)
    connect, BeginRun, and deliver what the spool holds for this daemon."""
    try:
        # (a) `lineage run` start-up: not loaded before the command is exec'd
        import dataclasses

        # (a) `lineage run` start-up: not loaded before the command is exec'd
        from lineage_core.models import RunStart

        # (a) `lineage run` start-up: not loaded before the command is exec'd
        from lineage_client.capture.git import git_state

        start = RunStart(**fields)
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
        start = begun.start = dataclasses.replace(start, code=code, env=env)
        if connect is None:
            return  # no daemon: the run goes to the spool once the command ends
        client = begun.client = connect()
        begun.status = client.status()
        client.begin_run(start)
        begun.begun = True
        # (a) `lineage run` start-up: not loaded before the command is exec'd
        from lineage_client.capture.stream import ReadStreamer

        run_id = start.run_id
        begun.streamer = ReadStreamer(
            lambda batch: client.record_accesses(run_id, batch),
            roots=[root.path for root in begun.status.roots],
            excluded=[begun.status.state_dir],
        )
    except BaseException as exc:  # reported once the command has ended
        begun.error = exc
        return
    _deliver_spool(client, begun.notes)


def _deliver_spool(client: Client, notes: list[str]) -> None:
    """Deliver the runs spooled for this daemon (older runs, captured while it was away)."""
    # (a) `lineage run` start-up: not loaded before the command is exec'd
    from lineage_client import spool

    if not spool.has_pending():
        return
    try:
        notes.extend(spool.summary(spool.deliver(client)))
    except LineageError as exc:
        notes.append(f"spooled runs stay in the spool: {exc.message}")
    except OSError as exc:
        notes.append(f"spooled runs stay in the spool: {exc}")


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
    missing = _daemon_missing(args)
    wrapper_started = time.time_ns()
    run_id = new_run_id()
    _tell_parent(run_id, wrapper_started)
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
            args=(
                None if missing else connect,
                {**start, "started_at": started_at},
                command,
                begun,
            ),
            name="lineage-begin-run",
            daemon=True,
        )
        thread.start()
        worker.append(thread)

    begun.children = _children_folder()
    extra_env = {PARENT_ENV: run_id}
    if begun.children:
        extra_env[CHILDREN_ENV] = begun.children

    def daemon_dirs() -> list[str]:
        for thread in worker:
            thread.join()
        status = begun.status
        # (a) `lineage run` start-up: not loaded before the command is exec'd
        from lineage_client.spool import spool_dir

        # Never data: the daemon's state, nested runs' notes and spooled captures.
        found = [str(spool_dir())] + ([begun.children] if begun.children else [])
        return found + ([status.state_dir] if status else [])

    print(f"lineage: run {run_id} ({name}) started", file=sys.stderr)
    # Where lineaged's MLflow plugin notes the tracking URIs of MLflow runs the command
    # starts (mlflow_context.py); not data, so never traced.
    notes_dir = tempfile.mkdtemp(prefix="lineage-mlflow-")
    notes = os.path.join(notes_dir, "tracking-uris")
    if missing:
        # (a) `lineage run` start-up: not loaded before the command is exec'd
        from lineage_client.spool import spool_dir

        print(
            f"lineage: {missing}\nlineage: running the command anyway; its capture goes to "
            f"the spool ({spool_dir()}) until `lineage sync` or the next lineage command "
            "reaches the daemon",
            file=sys.stderr,
        )
    try:
        captured = capture_command(
            command,
            cwd=cwd,
            extra_env={**extra_env, MLFLOW_NOTES_ENV: notes},
            exclude_dirs=(notes_dir,),
            on_started=started,
            more_excluded=daemon_dirs,
            on_poll=begun.offer,
            mode=mode,
            require_complete=strict,
        )
        daemon_dirs()  # the command could not start: the thread still ran

        for warning in [*begun.notes, *captured.warnings]:
            print(f"lineage: warning: {escape(warning)}", file=sys.stderr)
        code = _record(run_id, begun, captured, target=_target(args), fields=start)
        _tell_parent_ended(run_id, wrapper_started, begun, captured)
        if os.path.exists(notes) and begun.client is not None:
            _annotate_mlflow(begun.client, run_id, notes)
        return code
    finally:
        shutil.rmtree(notes_dir, ignore_errors=True)
        if begun.children:
            shutil.rmtree(begun.children, ignore_errors=True)
        if begun.client is not None:
            begun.client.close()


def _annotate_mlflow(client: Client, run_id: str, notes: str) -> None:
    """The command started MLflow runs: write the recorded run into them (mlflow_bridge)."""
    try:
        # (a) `lineage run` start-up: not loaded before the command is exec'd
        from lineage_core.models import Direction, StartNode

        # (a) `lineage run` start-up: not loaded before the command is exec'd
        from lineage_client import mlflow_bridge

        run = client.get_run(run_id)
        graph = client.lineage(StartNode(run_id=run_id), Direction.BOTH, max_depth=1)
        for line in mlflow_bridge.annotate(mlflow_bridge.read_notes(notes), run, graph):
            print(f"lineage: {line}", file=sys.stderr)
    except LineageError as exc:
        print(f"lineage: warning: MLflow runs not annotated: {exc.message}", file=sys.stderr)
    except Exception as exc:  # MLflow's own errors: the command's exit status still counts
        print(f"lineage: warning: MLflow runs not annotated: {exc!r}", file=sys.stderr)


def _record(
    run_id: str, begun: _Begun, captured: CapturedRun, *, target: str, fields: dict[str, Any]
) -> int:
    """Record what the command did; the command's exit status whatever happens here.

    What the daemon does not confirm (it was never there, or it went away during the run)
    is journaled to the spool, to be delivered later: nothing of the capture is dropped.
    """
    client, status = begun.client, begun.status
    # (a) `lineage run` start-up: not loaded before the command is exec'd
    from lineage_core.models import Capture

    # (a) `lineage run` start-up: not loaded before the command is exec'd
    from lineage_client.capture.stream import unsent

    # What went to the daemon while the command ran, and the daemon confirmed; the rest
    # (and any read whose final form differs) goes now.
    sent = begun.streamer.finish() if begun.streamer is not None else {}
    accesses, undecodable = _text_paths(
        _own(_accesses(status.roots if status is not None else (), captured), begun, fields)
    )
    if undecodable:
        note = (
            f"{undecodable} accessed files have names that are not UTF-8 and were not "
            "recorded (see docs/security.md)"
        )
        print(f"lineage: warning: {note}", file=sys.stderr)
        begun.warnings.append(note)
    if client is None or status is None or not begun.begun:
        error = begun.error
        if isinstance(error, LineageError) and not _unreachable(error):
            print(f"lineage: error: the run was not recorded: {error.message}", file=sys.stderr)
            return captured.exit_code
        reason = "no daemon was running"
        if error is not None:
            reason = error.message if isinstance(error, LineageError) else repr(error)
        return _spool(run_id, begun, captured, fields, target, accesses, reason)
    rest = unsent(accesses, sent)
    try:
        if rest:
            client.record_accesses(run_id, rest)
    except LineageError as exc:
        if not _unreachable(exc):
            print(f"lineage: error: the run was not fully recorded: {exc.message}", file=sys.stderr)
            return captured.exit_code
        return _spool(run_id, begun, captured, fields, target, rest, exc.message)
    try:
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
        if not _unreachable(exc):
            print(f"lineage: error: the run was not fully recorded: {exc.message}", file=sys.stderr)
            return captured.exit_code
        return _spool(run_id, begun, captured, fields, target, (), exc.message)
    reads = sum(1 for a in accesses if a.mode == "read" and a.role == "data")
    writes = sum(1 for a in accesses if a.mode == "write")
    nested = _count_children(begun.children)
    print(
        f"lineage: run {ended.run_id} {ended.status.value} (exit {captured.exit_code}): "
        f"{reads} inputs ({len(sent)} recorded while it ran), {writes} outputs, "
        f"{len(captured.sources)} source files, {capture_summary(captured)}"
        + (
            f", {nested} nested run{'s' if nested != 1 else ''} (their I/O is theirs)"
            if nested
            else ""
        ),
        file=sys.stderr,
    )
    return captured.exit_code


def _own(accesses: list[Access], begun: _Begun, fields: dict[str, Any]) -> list[Access]:
    """The run's own data and code: without what belongs to the environment or the tools
    (``capture/noise.py``), without what nested runs did (``capture/nested.py``), and with
    the command's script as code even when the tracer saw it only opened (a run killed
    before its hook could report its sources)."""
    # (a) `lineage run` start-up: not loaded before the command is exec'd
    import dataclasses

    # (a) `lineage run` start-up: not loaded before the command is exec'd
    from lineage_core.models import AccessMode, AccessRole

    # (a) `lineage run` start-up: not loaded before the command is exec'd
    from lineage_client.capture import nested

    # (a) `lineage run` start-up: not loaded before the command is exec'd
    from lineage_client.capture.digest import hash_external

    # (a) `lineage run` start-up: not loaded before the command is exec'd
    from lineage_client.capture.noise import noise_filter

    noise = noise_filter()
    own = [access for access in accesses if not noise(access.path)]
    if begun.children:
        own = nested.without_children(own, nested.read_children(begun.children))
    script = _script(fields["argv"], fields["cwd"])
    for index, access in enumerate(own):
        if (
            access.path == script
            and access.mode is AccessMode.READ
            and access.role is AccessRole.DATA
        ):
            code = dataclasses.replace(access, role=AccessRole.CODE)
            own[index] = code if code.digest else hash_external(code)
    return own


def _script(command: Sequence[str], cwd: str) -> str:
    """The script file an interpreter command runs (``python train.py``, ``sh run.sh``),
    resolved; "" when the command names none."""
    name = run_name(command)
    if name == os.path.basename(command[0]):
        return ""
    for arg in command[1:]:
        if os.path.basename(arg) == name and not arg.startswith("-"):
            return os.path.realpath(os.path.join(cwd, arg))
    return ""


def _tell_parent_ended(run_id: str, started_at: int, begun: _Begun, captured: CapturedRun) -> None:
    """Tell a parent ``lineage run`` every path this run (and its own children) touched."""
    if not os.environ.get(CHILDREN_ENV):
        return
    # (a) `lineage run` start-up: not loaded before the command is exec'd
    from lineage_client.capture import nested

    paths = {access.path for access in captured.accesses}
    paths.update(source.path for source in captured.sources)
    if begun.start is not None and begun.start.code is not None:
        paths.update(nested.work_tree_files(begun.start.cwd))
    if begun.children:
        for child in nested.read_children(begun.children):
            paths.update(child.paths)
    nested.note_child(run_id, started_at, ended_at=time.time_ns(), paths=paths)


def _unreachable(error: LineageError) -> bool:
    """Whether the daemon could not be reached (spool and deliver later), rather than it
    refused what it was sent (which a later delivery would not change)."""
    return isinstance(error, (DaemonUnavailable, DeadlineExceeded))


def _spool(
    run_id: str,
    begun: _Begun,
    captured: CapturedRun,
    fields: dict[str, Any],
    target: str,
    accesses: Sequence[Access],
    reason: str,
) -> int:
    """Journal the part of the run the daemon did not confirm; the command's exit status."""
    # (a) `lineage run` start-up: not loaded before the command is exec'd
    from lineage_core.models import Capture, RunStart

    # (a) `lineage run` start-up: not loaded before the command is exec'd
    from lineage_client import spool

    # (a) `lineage run` start-up: not loaded before the command is exec'd
    from lineage_client.capture.digest import hash_external

    start = begun.start or RunStart(**{**fields, "started_at": captured.started_at})
    # No daemon tied these to versions: their bytes, hashed now as the user, say which
    # state the run saw (the daemon finds the version that held them on delivery).
    hashed = [access if access.digest else hash_external(access) for access in accesses]
    try:
        path = spool.write_run(
            target=target,
            start=start,
            accesses=hashed,
            status=_status(captured),
            exit_code=captured.exit_code,
            ended_at=captured.ended_at,
            warnings=[*begun.warnings, *captured.warnings],
            reason=reason,
            capture=Capture(
                complete=captured.complete,
                reasons=captured.capture_reasons,
                method=captured.method,
            ),
        )
    except (OSError, LineageError) as exc:
        message = exc.message if isinstance(exc, LineageError) else str(exc)
        print(
            f"lineage: error: run {run_id} was not recorded ({reason}) and could not be "
            f"spooled: {message}",
            file=sys.stderr,
        )
        return captured.exit_code
    print(
        f"lineage: run {run_id} was not recorded ({reason}): its capture "
        f"({len(hashed)} accesses, exit {captured.exit_code}) is spooled in {path}; "
        "`lineage sync` or the next lineage command that reaches the daemon delivers it",
        file=sys.stderr,
    )
    return captured.exit_code

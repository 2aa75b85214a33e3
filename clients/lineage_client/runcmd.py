"""``lineage run [--name N] [--param K=V]... -- CMD [ARGS...]``: run a command and record
what it read, what it wrote, and the code and environment it ran with.

The run is begun before the command starts (so nested runs and ``client.run()`` calls in
the command can name it as their parent through ``LINEAGE_RUN_ID``), the command's file
accesses are traced (audit hook for Python, strace otherwise), and the run is ended with the
command's exit status, which ``lineage run`` exits with.
"""

from __future__ import annotations

import argparse
import dataclasses
import getpass
import os
import socket
import sys
import time
from collections.abc import Sequence

from lineage_client.capture import (
    DEFAULT_ALLOWLIST,
    DEFAULT_DIFF_CAP,
    CapturedRun,
    capture_command,
    env_state,
    git_state,
    hash_external,
    python_interpreter,
)
from lineage_client.client import Client
from lineaged.errors import InvalidArgument, LineageError
from lineaged.models import (
    Access,
    AccessMode,
    CodeState,
    EnvState,
    Root,
    RunStart,
    RunStatus,
)

__all__ = ["PARENT_ENV", "main_run", "run_name"]

PARENT_ENV = "LINEAGE_RUN_ID"  # set for the command: the run it belongs to
DIFF_CAP_ENV = "LINEAGE_DIFF_CAP"  # bytes of `git diff` stored with a run (default 1 MiB)
ENV_ALLOW_ENV = "LINEAGE_ENV_ALLOW"  # extra comma-separated variable patterns to record


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
    raw = os.environ.get(DIFF_CAP_ENV, "")
    if not raw:
        return DEFAULT_DIFF_CAP
    try:
        cap = int(raw)
    except ValueError:
        raise InvalidArgument(f"{DIFF_CAP_ENV} must be a number of bytes, got {raw!r}") from None
    if cap < 0:
        raise InvalidArgument(f"{DIFF_CAP_ENV} cannot be negative")
    return cap


def _environment(command: Sequence[str], cwd: str, warnings: list[str]) -> EnvState | None:
    extra = [p.strip() for p in os.environ.get(ENV_ALLOW_ENV, "").split(",") if p.strip()]
    allowlist = (*DEFAULT_ALLOWLIST, *extra)
    python = python_interpreter(command, cwd=cwd)
    try:
        return env_state(allowlist, python=python)
    except (OSError, ValueError) as exc:
        warnings.append(f"could not describe the environment of {python}: {exc}")
        return env_state(allowlist)


def _status(captured: CapturedRun) -> RunStatus:
    if captured.interrupted:
        return RunStatus.INTERRUPTED
    return RunStatus.SUCCEEDED if captured.exit_code == 0 else RunStatus.FAILED


def _accesses(roots: Sequence[Root], captured: CapturedRun) -> list[Access]:
    """The traced accesses, with files outside every root hashed here (as the user), and
    the sources the command executed or imported as code inputs."""
    # Traced paths are canonical already (capture resolves links): a prefix test per path,
    # no realpath.
    bases = tuple(root.path.rstrip("/") for root in roots)
    prefixes = tuple(base + "/" for base in bases)
    by_key: dict[tuple[str, AccessMode], Access] = {}
    for access in captured.accesses:
        path = access.path
        if not access.digest and not (path.startswith(prefixes) or path in bases):
            access = hash_external(access)
        by_key[(path, access.mode)] = access
    for source in captured.sources:
        key = (source.path, AccessMode.READ)
        seen = by_key.get(key)
        if seen is not None:
            by_key[key] = dataclasses.replace(
                seen, role="code", digest=seen.digest or source.digest
            )
        else:
            by_key[key] = Access(
                path=source.path,
                mode=AccessMode.READ,
                first_at=captured.started_at,
                last_at=captured.ended_at,
                how="traced",
                role="code",
                digest=source.digest,
            )
    return list(by_key.values())


def main_run(args: argparse.Namespace, client: Client) -> int:
    """Run ``args.command`` under capture and record it; returns the command's exit status."""
    command = list(args.command)
    if not command:
        raise InvalidArgument(
            "nothing to run: give a command after --, e.g. lineage run -- python train.py"
        )
    params = _params(args.param or [])
    cwd = os.getcwd()
    warnings: list[str] = []
    code: CodeState | None = git_state(cwd, diff_cap=_diff_cap())
    if code is not None and code.diff_truncated:
        note = (
            f"the git diff is {code.diff_size} bytes; only the first {len(code.diff)} were stored "
            f"(raise {DIFF_CAP_ENV})"
        )
        warnings.append(note)
        print(f"lineage: warning: {note}", file=sys.stderr)
    status = client.status()
    start = RunStart(
        name=args.name or run_name(command),
        argv=tuple(command),
        cwd=cwd,
        host=socket.gethostname(),
        user=getpass.getuser(),
        pid=os.getpid(),
        started_at=time.time_ns(),
        params=params,
        parent_run_id=os.environ.get(PARENT_ENV, ""),
        code=code,
        env=_environment(command, cwd, warnings),
    )
    run = client.begin_run(start)
    print(f"lineage: run {run.run_id} ({start.name}) started", file=sys.stderr)
    captured = capture_command(
        command,
        cwd=cwd,
        extra_env={PARENT_ENV: run.run_id},
        exclude_dirs=[status.state_dir, os.path.dirname(status.socket)],
    )
    for warning in captured.warnings:
        print(f"lineage: warning: {warning}", file=sys.stderr)
    try:
        accesses = _accesses(status.roots, captured)
        if accesses:
            client.record_accesses(run.run_id, accesses)
        ended = client.end_run(
            run.run_id,
            status=_status(captured),
            exit_code=captured.exit_code,
            ended_at=captured.ended_at,
            warnings=[*warnings, *captured.warnings],
        )
    except LineageError as exc:
        # The command ran; its exit status is what the caller's pipeline depends on.
        print(f"lineage: error: the run was not fully recorded: {exc.message}", file=sys.stderr)
        return captured.exit_code
    reads = sum(1 for a in accesses if a.mode is AccessMode.READ and a.role == "data")
    writes = sum(1 for a in accesses if a.mode is AccessMode.WRITE)
    print(
        f"lineage: run {ended.run_id} {ended.status.value} (exit {captured.exit_code}): "
        f"{reads} inputs, {writes} outputs, {len(captured.sources)} source files, "
        f"traced with {captured.method}",
        file=sys.stderr,
    )
    return captured.exit_code

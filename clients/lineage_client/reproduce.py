"""Restore, checkout and reproduce: the client's half of the content store.

The daemon keeps the bytes and streams them, verified; this side writes them, as the calling
user (invariant 6 of docs/design.md: the daemon opens no path outside its roots on a client's
behalf, and may run as another user). Every file written here is written to a temporary file
beside its destination, hashed while it is written, and renamed over the destination only
when the digest is the recorded one.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import secrets
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import blake3
from lineage_core.errors import (
    CorruptObject,
    FailedPrecondition,
    InvalidArgument,
    LineageError,
)
from lineage_core.models import EnvState, Run, Version
from lineage_core.objects import copy_verified

from lineage_client.client import Client, digest_file, parse_time

__all__ = [
    "EXIT_CANNOT",
    "EXIT_DIFFERS",
    "Checkout",
    "Missing",
    "OutputComparison",
    "Reproduction",
    "Restored",
    "checkout",
    "parse_restore_target",
    "reproduce",
    "restore",
]

EXIT_DIFFERS = 1  # lineage reproduce: an output (or the exit status) differs
EXIT_CANNOT = 3  # lineage reproduce: something the re-run needs is missing
_HEX = re.compile(r"[0-9a-fA-F]{8,64}")
_GIT_TIMEOUT = 600.0


@dataclass(frozen=True, slots=True)
class Restored:
    """What ``restore`` wrote: the version, where, and whether the file held it already."""

    version: Version
    path: str
    size: int
    unchanged: bool = False  # the destination held these bytes already: nothing written


@dataclass(frozen=True, slots=True)
class Missing:
    """Something a checkout could not materialise, and why."""

    path: str
    reason: str


@dataclass(frozen=True, slots=True)
class Checkout:
    """A run materialised: its inputs at the versions it read and its code at its commit."""

    run: Run
    directory: str  # what was given as --to
    workdir: str  # the run's working directory inside it
    files: tuple[tuple[str, str], ...]  # (path written, digest) of every input restored
    code: str  # how the code was materialised ("" when it was not)
    missing: tuple[Missing, ...] = ()
    outside: tuple[str, ...] = ()  # inputs outside the run's tree, used in place (unchanged)


@dataclass(frozen=True, slots=True)
class OutputComparison:
    """One output of the original run against what the re-run left at the same place."""

    path: str  # the original output's path
    old_digest: str
    new_digest: str  # "" when the re-run did not write it

    @property
    def identical(self) -> bool:
        """Whether the re-run wrote the same bytes."""
        return self.old_digest == self.new_digest


@dataclass(frozen=True, slots=True)
class Reproduction:
    """The verdict of ``reproduce``: identical, differs, or cannot (and why)."""

    verdict: str  # "identical", "differs" or "cannot"
    run_id: str
    new_run_id: str = ""
    directory: str = ""
    outputs: tuple[OutputComparison, ...] = ()
    missing: tuple[Missing, ...] = ()
    environment: dict[str, object] = field(default_factory=dict)  # what differs, by aspect
    exit_code: int | None = None
    original_exit_code: int | None = None

    @property
    def exit_status(self) -> int:
        """The CLI's exit status for this verdict: 0, EXIT_DIFFERS or EXIT_CANNOT."""
        return {"identical": 0, "differs": EXIT_DIFFERS}.get(self.verdict, EXIT_CANNOT)


# --- restore -----------------------------------------------------------------------------


def parse_restore_target(text: str) -> tuple[str, int | None, str]:
    """``PATH``, ``PATH@TIME`` or ``PATH@DIGEST`` to (path, time or None, digest or "")."""
    if not text or "\x00" in text:
        raise InvalidArgument("restore needs PATH, PATH@TIME or PATH@DIGEST")
    if "@" not in text or os.path.lexists(text):
        return text, None, ""
    path, _, selector = text.rpartition("@")
    if not path:
        raise InvalidArgument(f"{text!r}: give the path before the @")
    if _HEX.fullmatch(selector):
        return path, None, selector.lower()
    return path, parse_time(selector), ""


def restore(
    client: Client,
    target: str,
    *,
    to: str | os.PathLike[str] | None = None,
    force: bool = False,
) -> Restored:
    """Write a recorded version's bytes to its path (or ``to``); see ``Client.restore``."""
    name, at, digest = parse_restore_target(target)
    version, where = client.locate_version(name, at=at, digest=digest)
    dest = _destination(client, version, to)
    if os.path.lexists(dest) and not os.path.isfile(dest):
        raise InvalidArgument(f"{dest} exists and is not a regular file; not touching it")
    if os.path.isfile(dest):
        current, _, _ = digest_file(dest)
        if current == version.digest:
            return Restored(version, dest, version.size, unchanged=True)
        if not force and client.kept_version(digest=current) is None:
            raise FailedPrecondition(
                f"{dest} holds unsaved changes (lineaged does not keep its content "
                f"{current[:12]}, so it could not give it back); restoring over it would "
                "lose them: use --force to overwrite"
            )
    size = materialise(client, version, where, dest)
    return Restored(version, dest, size)


def materialise(client: Client, version: Version, where: str, dest: str) -> int:
    """Write a kept version's bytes to ``dest``, checked; their length.

    Where this user may read the daemon's object (the daemon runs as the same user), it is
    copied from there (a reflink or an in-kernel copy, hashed as it is copied); otherwise the
    daemon streams the bytes. Either way only a copy whose digest is the version's replaces
    ``dest``.
    """
    mode = _mode_for(dest)
    try:
        source = os.open(where, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW) if where else -1
    except OSError:
        source = -1  # not ours to read (a daemon running as root): streamed instead
    if source >= 0:
        try:
            os.makedirs(os.path.dirname(dest) or ".", exist_ok=True)
            copied = copy_verified(source, Path(dest), version.digest, mode=mode)
        finally:
            os.close(source)
        if not copied.kept:
            raise CorruptObject(
                f"the kept object {where} no longer holds the bytes of {version.digest}; "
                f"nothing was written to {dest}"
            )
        return copied.size
    _, chunks = client.read_version_bytes(version.path, digest=version.digest)
    try:
        return write_verified(dest, chunks, version.digest)
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()


def _mode_for(dest: str) -> int:
    """An existing file's permissions, else what a new file gets under the umask."""
    try:
        return os.stat(dest).st_mode & 0o7777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def _destination(client: Client, version: Version, to: str | os.PathLike[str] | None) -> str:
    if to is None:
        return version.path
    dest = os.path.abspath(os.path.expanduser(os.fspath(to)))
    if os.path.isdir(dest):
        dest = os.path.join(dest, os.path.basename(version.path))
    return dest


def write_verified(dest: str, chunks: Iterable[bytes], digest: str) -> int:
    """Write ``chunks`` to ``dest`` atomically when they hash to ``digest``; their length.

    A temporary file beside ``dest`` gets the bytes and is renamed over it only once the
    digest matches; an existing file's permissions are kept.
    """
    folder = os.path.dirname(dest) or "."
    os.makedirs(folder, exist_ok=True)
    mode = None
    with contextlib.suppress(FileNotFoundError):
        mode = os.stat(dest).st_mode & 0o7777
    temporary = os.path.join(folder, f".{os.path.basename(dest)}.restore-{secrets.token_hex(4)}")
    hasher = blake3.blake3(max_threads=blake3.blake3.AUTO)
    size = 0
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
    try:
        try:
            for chunk in chunks:
                hasher.update(chunk)
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view) :]
                size += len(chunk)
            if hasher.hexdigest() != digest:
                raise CorruptObject(
                    f"the bytes received for {dest} hash to {hasher.hexdigest()}, not "
                    f"{digest}; nothing was written"
                )
            if mode is not None:
                os.fchmod(fd, mode)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    return size


# --- checkout ----------------------------------------------------------------------------


def checkout(client: Client, run_id: str, to: str) -> Checkout:
    """Materialise a run under ``to``: its code at the recorded commit with the recorded diff
    applied, and every file it read at the version it read, in the run's layout."""
    run = client.get_run(run_id)
    files = client.run_files(run.run_id).files
    directory = os.path.abspath(os.path.expanduser(to))
    if os.path.isdir(directory) and os.listdir(directory):
        raise InvalidArgument(f"{directory} is not empty: check out into a new directory")
    os.makedirs(directory, exist_ok=True)
    missing: list[Missing] = []
    top = _repository_top(run.cwd) if run.code is not None and run.code.commit else ""
    base = top or run.cwd
    workdir = os.path.normpath(os.path.join(directory, os.path.relpath(run.cwd, base)))
    os.makedirs(workdir, exist_ok=True)
    how = ""
    if run.code is None or not run.code.commit:
        missing.append(Missing(run.cwd, "no git commit was recorded for this run's code"))
    elif not top:
        missing.append(
            Missing(run.cwd, f"the repository of commit {run.code.commit} is not at {run.cwd}")
        )
    else:
        how, problem = _materialise_code(top, run, directory)
        if problem:
            missing.append(Missing(top, problem))
    written_by_run = {(f.version.path, f.version.digest) for f in files if f.kind == "wrote"}
    for path, _ in written_by_run:
        # The run's outputs go where it wrote them: their folders are part of its layout.
        relative = os.path.relpath(os.path.dirname(path), base)
        if not relative.startswith(".."):
            os.makedirs(os.path.join(directory, relative), exist_ok=True)
    restored: list[tuple[str, str]] = []
    outside: list[str] = []
    for item in files:
        version = item.version
        if item.kind != "read" or (version.path, version.digest) in written_by_run:
            continue
        relative = os.path.relpath(version.path, base)
        if relative.startswith(".."):
            # Outside the run's tree (the interpreter's files, a shared dataset): used where
            # it is, which is only the same input while it holds the same bytes.
            problem = _check_in_place(version.path, version.digest)
            if problem:
                missing.append(
                    Missing(version.path, f"outside the run's directory {base}: {problem}")
                )
            else:
                outside.append(version.path)
            continue
        dest = os.path.join(directory, relative)
        if item.role == "code" and how:
            problem = _check_code_file(dest, version.digest)
            if problem:
                missing.append(Missing(version.path, problem))
            continue
        if not item.kept:
            reason = item.not_kept or "the keep policy did not keep them"
            missing.append(Missing(version.path, f"its bytes were not kept: {reason}"))
            continue
        try:
            _, where = client.locate_version(version.path, digest=version.digest)
            materialise(client, version, where, dest)
        except LineageError as exc:
            missing.append(Missing(version.path, exc.message))
            continue
        restored.append((dest, version.digest))
    return Checkout(
        run=run,
        directory=directory,
        workdir=workdir,
        files=tuple(restored),
        code=how,
        missing=tuple(missing),
        outside=tuple(outside),
    )


def _git(top: str, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0", "GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C"}
    return subprocess.run(
        ["git", "-C", top, *args],
        input=stdin,
        capture_output=True,
        env=env,
        timeout=_GIT_TIMEOUT,
        check=False,
    )


def _repository_top(cwd: str) -> str:
    """The top of the git work tree holding ``cwd``, or "" (gone, or not a repository)."""
    if not os.path.isdir(cwd) or shutil.which("git") is None:
        return ""
    done = _git(cwd, "rev-parse", "--show-toplevel")
    return done.stdout.decode().strip() if done.returncode == 0 else ""


def _materialise_code(top: str, run: Run, directory: str) -> tuple[str, str]:
    """``git archive`` of the recorded commit into ``directory``, then the recorded diff
    applied; returns (how, problem)."""
    code = run.code
    assert code is not None
    if _git(top, "cat-file", "-e", f"{code.commit}^{{commit}}").returncode != 0:
        return "", f"commit {code.commit} is not in the repository at {top}"
    archive = _git(top, "archive", "--format=tar", code.commit)
    if archive.returncode != 0:
        return "", f"git archive of {code.commit} failed: {archive.stderr.decode().strip()}"

    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(directory, filter="data")
    how = f"git archive {code.commit[:12]}"
    if not code.dirty or not code.diff:
        return how, ""
    if code.diff_truncated:
        return how, (
            f"the recorded diff was cut at {len(code.diff)} of {code.diff_size} bytes; "
            "the code is at the commit without it"
        )
    applied = subprocess.run(
        ["git", "apply", "--whitespace=nowarn", "-"],
        input=code.diff,
        capture_output=True,
        cwd=directory,
        timeout=_GIT_TIMEOUT,
        check=False,
    )
    if applied.returncode != 0:
        return how, f"the recorded diff does not apply: {applied.stderr.decode().strip()}"
    return how + " + recorded diff", ""


def _check_in_place(path: str, digest: str) -> str:
    """ "" when ``path`` still holds the bytes the run read, else why it cannot be used."""
    problem = _check_code_file(path, digest)
    if not problem:
        return ""
    if "neither in the commit" in problem:
        return "it is gone"
    return problem.replace("the checked-out source file", "it now")


def _check_code_file(path: str, digest: str) -> str:
    """ "" when the checked-out source file holds the bytes the run read, else why not."""
    try:
        found, _, _ = digest_file(path)
    except FileNotFoundError:
        return "a source file the run read is neither in the commit nor in its diff (untracked?)"
    except OSError as exc:
        return f"cannot read the checked-out source file: {exc}"
    if found != digest:
        return f"the checked-out source file holds {found[:12]}, the run read {digest[:12]}"
    return ""


# --- reproduce ---------------------------------------------------------------------------


def reproduce(
    client: Client, run_id: str, *, in_dir: str | None = None, output: int | None = None
) -> Reproduction:
    """Check a run out, run its command again under ``lineage run`` and compare outputs."""
    run = client.get_run(run_id)
    if not run.argv:
        raise FailedPrecondition(f"run {run.run_id} recorded no command to run again")
    directory = in_dir or tempfile.mkdtemp(prefix="lineage-reproduce-")
    done = checkout(client, run.run_id, directory)
    if done.missing:
        return Reproduction(
            verdict="cannot",
            run_id=run.run_id,
            directory=done.directory,
            missing=done.missing,
            original_exit_code=run.exit_code,
        )
    started = time.time_ns()
    exit_code = _run_again(client, run, done.workdir, output)
    again = _find_rerun(client, run, done.workdir, started)
    if again is not None:
        client.link_reproduction(again.run_id, run.run_id)
    top = _repository_top(run.cwd) if run.code is not None and run.code.commit else ""
    layout_base = top or run.cwd

    comparisons: list[OutputComparison] = []
    for item in client.run_files(run.run_id).files:
        if item.kind != "wrote":
            continue
        relative = os.path.relpath(item.version.path, layout_base)
        new_path = os.path.join(done.directory, relative) if not relative.startswith("..") else ""
        try:
            new_digest = digest_file(new_path)[0] if new_path else ""
        except OSError:
            new_digest = ""
        comparisons.append(OutputComparison(item.version.path, item.version.digest, new_digest))
    environment = _environment_changes(run.env, again.env if again is not None else None)
    same = all(c.identical for c in comparisons) and exit_code == run.exit_code
    return Reproduction(
        verdict="identical" if same else "differs",
        run_id=run.run_id,
        new_run_id=again.run_id if again is not None else "",
        directory=done.directory,
        outputs=tuple(comparisons),
        environment=environment,
        exit_code=exit_code,
        original_exit_code=run.exit_code,
    )


def _run_again(client: Client, run: Run, workdir: str, output: int | None) -> int:
    """The recorded command under ``lineage run``, with the recorded parameters and the
    recorded (allow-listed) variables; its exit status."""
    command = [sys.executable, "-m", "lineage_client.cli"]
    if client.socket:
        command += ["--socket", client.socket]
    else:
        command += ["--target", client.target]
    command += ["run", "--name", run.name]
    for key, value in sorted(run.params.items()):
        command += ["--param", f"{key}={value}"]
    command += ["--", *run.argv]
    env = dict(os.environ)
    if run.env is not None:
        env.update(run.env.variables)
    env.pop("LINEAGE_RUN_ID", None)  # a reproduction is no child of whatever runs us
    done = subprocess.run(command, cwd=workdir, env=env, stdout=output, check=False)
    return done.returncode


def _find_rerun(client: Client, run: Run, workdir: str, started: int) -> Run | None:
    """The run ``lineage run`` recorded for the re-run: same name, started in ``workdir``."""
    for candidate in client.iter_runs(limit=50, name=run.name, since=started - 1_000_000_000):
        if candidate.cwd == os.path.realpath(workdir) and candidate.run_id != run.run_id:
            return client.get_run(candidate.run_id)
    return None


def _environment_changes(old: EnvState | None, new: EnvState | None) -> dict[str, object]:
    """What differs between two environments: Python, platform, packages."""
    if old is None or new is None:
        return {} if old is new else {"recorded": "the environment of one run is unknown"}
    changes: dict[str, object] = {}
    for aspect in ("python_version", "implementation", "platform"):
        before, after = getattr(old, aspect), getattr(new, aspect)
        if before != after:
            changes[aspect] = {"old": before, "new": after}
    added = sorted(set(new.packages) - set(old.packages))
    removed = sorted(set(old.packages) - set(new.packages))
    if added or removed:
        changes["packages"] = {"added": added, "removed": removed}
    return changes

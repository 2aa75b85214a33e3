"""The spool: runs captured while no daemon could take them, kept until one can.

``lineage run`` never drops a capture. When no daemon listens (or it dies during the run),
the wrapper journals what the daemon did not confirm — the run's start with its code and
environment, its accesses with the BLAKE3 digests the client computed, and its end — as one
file per run in the user's state directory, and the next ``lineage`` command that reaches
the daemon (or ``lineage sync``) delivers it. See ``docs/capture-reliability.md``.

Rules:

- **Where**: ``$XDG_STATE_HOME/lineage/spool``, else ``~/.local/state/lineage/spool``; the
  folder is private (0700), each file too (0600), written whole under a temporary name and
  renamed into place, so a reader never sees half a run.
- **Which daemon**: an entry names the socket (or TCP target) it was meant for; it is
  delivered only through a client of that target (``lineage sync --all``: through any).
- **Order**: oldest start first, each entry completely before the next; a run whose parent
  the daemon does not know yet waits (its parent's entry, or its parent's own end, comes
  later), for at most ``PARENT_WAIT_NS``, then it is delivered without the link.
- **Exactly once**: delivery holds an exclusive ``flock`` on the entry; a run the daemon
  already ended is not sent again; BeginRun answering AlreadyExists means it was begun;
  accesses are merged into edges by the daemon, so sending them twice adds nothing; the
  file is removed only once EndRun (or the run's end) is confirmed.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import stat
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lineage_core.errors import (
    AlreadyExists,
    DaemonUnavailable,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    LineageError,
    NotFound,
)

if TYPE_CHECKING:
    from lineage_core._proto.lineage.v1 import lineage_pb2 as pb
    from lineage_core.models import Access, Capture, RunStart, RunStatus

    from lineage_client.client import Client

__all__ = [
    "FORMAT",
    "FORMAT_V1",
    "PARENT_WAIT_NS",
    "Delivery",
    "SpooledRun",
    "deliver",
    "has_pending",
    "pending",
    "spool_dir",
    "summary",
    "write_run",
]

FORMAT = "lineage-spool/2"  # accesses as Access messages
# Earlier entries hold their accesses column by column (the AccessColumns message the wire
# had then). They are still read: runs spooled across an upgrade (the daemon is down then,
# which is when the spool fills) are delivered.
FORMAT_V1 = "lineage-spool/1"
SUFFIX = ".run.json"
# How long a spooled run whose parent the daemon does not know waits for that parent.
PARENT_WAIT_NS = 7 * 24 * 3600 * 1_000_000_000


def spool_dir(environ: Mapping[str, str] | None = None) -> Path:
    """``$XDG_STATE_HOME/lineage/spool``, else ``~/.local/state/lineage/spool``."""
    env = os.environ if environ is None else environ
    if env.get("XDG_STATE_HOME"):
        return Path(env["XDG_STATE_HOME"]) / "lineage" / "spool"
    return Path(env.get("HOME") or Path.home()) / ".local" / "state" / "lineage" / "spool"


def _private_dir(folder: Path) -> Path:
    """Create ``folder`` (0700) if needed; refuse one another user owns or others can enter."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = folder.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise InvalidArgument(f"the spool {folder} is not a folder of yours: refusing to use it")
    if info.st_mode & 0o077:
        os.chmod(folder, 0o700)
    return folder


@dataclass(frozen=True, slots=True)
class SpooledRun:
    """One spooled run, as read back from its file."""

    path: Path
    run_id: str
    target: str
    started_at: int
    start: RunStart
    accesses: tuple[Access, ...]
    status: RunStatus
    exit_code: int | None
    ended_at: int
    warnings: tuple[str, ...]
    reason: str
    capture: Capture | None = None  # how completely lineage run saw the run


@dataclass(slots=True)
class Delivery:
    """What one delivery pass did: run ids delivered, waiting (with why), failed (with why)."""

    delivered: list[str] = field(default_factory=list)
    waiting: list[tuple[str, str]] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)


def _entry_name(started_at: int, run_id: str) -> str:
    # Names sort by start time, then run id: the order of delivery.
    return f"{started_at:020d}-{run_id}{SUFFIX}"


def write_run(
    *,
    target: str,
    start: RunStart,
    accesses: Sequence[Access],
    status: RunStatus,
    exit_code: int | None,
    ended_at: int,
    warnings: Sequence[str],
    reason: str,
    capture: Capture | None = None,
    folder: Path | None = None,
) -> Path:
    """Journal one run (atomically, mode 0600) and return its file.

    ``start`` carries the run id the wrapper chose; the entry holds everything a daemon
    needs to record the run from nothing, even when part of it reached one already.
    """
    # (a) `lineage run` start-up: without a daemon, runcmd imports this module before the exec
    from google.protobuf import json_format

    # (a) `lineage run` start-up: without a daemon, runcmd imports this module before the exec
    from lineage_core import wire

    # (a) `lineage run` start-up: without a daemon, runcmd imports this module before the exec
    from lineage_client.client import client_redactor

    # Secrets never reach the disk, not even the user's own private spool (docs/security.md).
    redactor = client_redactor()
    start = redactor.run_start(start)
    warnings = redactor.texts(warnings)
    body = {
        "format": FORMAT,
        "run_id": start.run_id,
        "target": target,
        "started_at": start.started_at,
        "spooled_at": time.time_ns(),
        "reason": reason,
        "begin": json_format.MessageToDict(wire.begin_run_to_pb(start)),
        "accesses": [json_format.MessageToDict(wire.access_to_pb(access)) for access in accesses],
        "end": {
            "status": str(status),
            "exit_code": exit_code,
            "ended_at": ended_at,
            "warnings": list(warnings),
            "capture": None
            if capture is None
            else {
                "complete": capture.complete,
                "reasons": list(capture.reasons),
                "method": capture.method,
            },
        },
    }
    spool = _private_dir(folder or spool_dir())
    final = spool / _entry_name(start.started_at, start.run_id)
    temporary = spool / f".{final.name}.{os.getpid()}.tmp"
    data = json.dumps(body, sort_keys=True).encode()
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, final)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    with contextlib.suppress(OSError):
        dir_fd = os.open(spool, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)  # the rename survives a crash too
        finally:
            os.close(dir_fd)
    return final


def _read(path: Path, data: bytes) -> SpooledRun:
    # (a) `lineage run` start-up: without a daemon, runcmd imports this module before the exec
    from google.protobuf import json_format

    # (a) `lineage run` start-up: without a daemon, runcmd imports this module before the exec
    from lineage_core import gate

    # (a) `lineage run` start-up: without a daemon, runcmd imports this module before the exec
    from lineage_core._proto.lineage.v1 import lineage_pb2 as pb

    # (a) `lineage run` start-up: without a daemon, runcmd imports this module before the exec
    from lineage_core.models import Capture, RunStatus

    try:
        body = json.loads(data)
        if body.get("format") == FORMAT:
            messages = [json_format.ParseDict(a, pb.Access()) for a in body["accesses"]]
        elif body.get("format") == FORMAT_V1:
            messages = _v1_accesses(body["accesses"])
        else:
            raise ValueError(f"unknown format {body.get('format')!r}")
        begin = json_format.ParseDict(body["begin"], pb.BeginRunRequest())
        end = body["end"]
        now = int(body["started_at"]) or time.time_ns()
        start = gate.parse_begin_run(begin, now=now)
        return SpooledRun(
            path=path,
            run_id=str(body["run_id"]),
            target=str(body["target"]),
            started_at=int(body["started_at"]),
            start=start,
            accesses=tuple(
                gate.parse_access(message, f"accesses[{index}]", now=now)
                for index, message in enumerate(messages)
            ),
            status=RunStatus(end["status"]),
            exit_code=None if end["exit_code"] is None else int(end["exit_code"]),
            ended_at=int(end["ended_at"]),
            warnings=tuple(str(w) for w in end["warnings"]),
            reason=str(body.get("reason", "")),
            capture=None
            if end.get("capture") is None
            else Capture(
                complete=bool(end["capture"]["complete"]),
                reasons=tuple(str(r) for r in end["capture"]["reasons"]),
                method=str(end["capture"]["method"]),
            ),
        )
    except (ValueError, KeyError, TypeError, json_format.ParseError) as exc:
        raise InvalidArgument(f"spooled run {path} cannot be read: {exc}") from None


def _v1_accesses(columns: Mapping[str, Any]) -> list[pb.Access]:
    """The accesses of a ``lineage-spool/1`` entry: protobuf's JSON form of the former
    ``AccessColumns`` (element i of each column is access i; an optional column left out
    means its default for every access), as ``Access`` messages."""
    # (a) `lineage run` start-up: without a daemon, runcmd imports this module before the exec
    from lineage_core._proto.lineage.v1 import lineage_pb2 as pb

    paths = columns.get("path", [])

    def column(name: str, default: Any) -> list[Any]:
        values = columns.get(name) or [default] * len(paths)
        if len(values) != len(paths):
            raise ValueError(f"accesses.{name} has {len(values)} entries for {len(paths)} paths")
        return list(values)

    firsts = column("firstAtNs", 0)
    rows = zip(
        paths,
        column("mode", 0),
        firsts,
        columns.get("lastAtNs") or firsts,
        column("how", 0),
        column("role", 0),
        column("digest", ""),
        column("size", 0),
        column("mtimeNs", 0),
        strict=True,
    )
    messages = []
    for path, mode, first_at, last_at, how, role, digest, size, mtime_ns in rows:
        message = pb.Access(path=path, mode=mode, how=how, role=role, digest=digest, size=int(size))
        message.first_at.FromNanoseconds(int(first_at))
        message.last_at.FromNanoseconds(int(last_at))
        if int(mtime_ns):
            message.mtime.FromNanoseconds(int(mtime_ns))
        messages.append(message)
    return messages


def has_pending(folder: Path | None = None) -> bool:
    """Whether any run waits in the spool (one directory listing, nothing imported)."""
    try:
        return any(name.endswith(SUFFIX) for name in os.listdir(folder or spool_dir()))
    except OSError:
        return False


def _entries(folder: Path) -> list[Path]:
    try:
        names = sorted(n for n in os.listdir(folder) if n.endswith(SUFFIX) and n[:1] != ".")
    except OSError:
        return []
    return [folder / name for name in names]


def pending(folder: Path | None = None) -> list[SpooledRun]:
    """Every spooled run, in delivery order (unreadable entries left out)."""
    runs: list[SpooledRun] = []
    for path in _entries(folder or spool_dir()):
        with contextlib.suppress(OSError, InvalidArgument):
            runs.append(_read(path, path.read_bytes()))
    return runs


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[bytes | None]:
    """The entry's bytes under an exclusive lock; None when another process holds it or it
    was delivered (and removed) meanwhile."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        yield None
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield None
            return
        if os.fstat(fd).st_nlink == 0:
            yield None  # delivered and removed by another process after we opened it
            return
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        yield b"".join(chunks)
    finally:
        os.close(fd)


def deliver(client: Client, *, every_target: bool = False, folder: Path | None = None) -> Delivery:
    """Deliver the spooled runs meant for ``client``'s daemon, oldest first (see module doc)."""
    report = Delivery()
    for path in _entries(folder or spool_dir()):
        with _locked(path) as data:
            if data is None:
                continue
            try:
                entry = _read(path, data)
            except InvalidArgument as exc:
                report.failed.append((path.name, exc.message))
                continue
            if not every_target and entry.target not in (client.target, client.socket):
                continue
            try:
                outcome = _deliver_one(client, entry)
            except (DaemonUnavailable, DeadlineExceeded):
                raise  # no daemon to deliver to: the rest waits too
            except LineageError as exc:
                # Kept for a later try (a fix of the daemon's roots, say); the others go on.
                report.failed.append((entry.run_id, exc.message))
                continue
            if outcome:
                report.waiting.append((entry.run_id, outcome))
                continue
            path.unlink()
            report.delivered.append(entry.run_id)
    return report


def _deliver_one(client: Client, entry: SpooledRun) -> str:
    """Send one entry; "" once the daemon holds the whole run, else why it must wait.

    Daemon errors other than the expected ones propagate: the entry stays for next time.
    """
    # (a) `lineage run` start-up: without a daemon, runcmd imports this module before the exec
    import dataclasses

    # (a) `lineage run` start-up: without a daemon, runcmd imports this module before the exec
    from lineage_core.models import RunStatus, run_id_time_ns

    note = f"delivered late from the spool ({entry.reason})" if entry.reason else ""
    warnings = [*entry.warnings, *([note] if note else [])]
    try:
        run = client.get_run(entry.run_id)
    except NotFound:
        run = None
    if run is not None and run.status not in (RunStatus.RUNNING, RunStatus.ABANDONED):
        return ""  # delivered before: only the removal of the file was lost
    if run is None:
        start = entry.start
        try:
            client.begin_run(start, wait_for_parent=False)
        except AlreadyExists:
            pass  # begun by an earlier delivery that was cut short
        except NotFound:
            parent = start.parent_run_id
            made = run_id_time_ns(parent) or 0
            if parent and time.time_ns() - made < PARENT_WAIT_NS:
                return f"its parent run {parent} is not recorded yet"
            warnings.append(f"its parent run {parent} was never recorded")
            with contextlib.suppress(AlreadyExists):
                client.begin_run(
                    dataclasses.replace(start, parent_run_id=""), wait_for_parent=False
                )
    if entry.accesses:
        client.record_accesses(entry.run_id, list(entry.accesses))
    with contextlib.suppress(FailedPrecondition):  # ended meanwhile by another delivery
        client.end_run(
            entry.run_id,
            status=entry.status,
            exit_code=entry.exit_code,
            ended_at=entry.ended_at,
            warnings=warnings[:100],
            capture=entry.capture,
        )
    return ""


def summary(report: Delivery) -> list[str]:
    """Lines for stderr about a delivery pass (none when nothing happened)."""
    lines: list[str] = []
    if report.delivered:
        count = len(report.delivered)
        lines.append(
            f"delivered {count} spooled run{'s' if count != 1 else ''}: "
            + ", ".join(report.delivered)
        )
    lines += [f"spooled run {run_id} waits: {why}" for run_id, why in report.waiting]
    lines += [f"spooled run {run_id} not delivered: {why}" for run_id, why in report.failed]
    return lines

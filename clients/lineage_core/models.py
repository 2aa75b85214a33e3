"""Domain values: frozen dataclasses shared by the store, the service and the client.

Times are integers of nanoseconds since the Unix epoch (``time.time_ns()``). Digests are
64 lowercase hex characters of BLAKE3-256, exactly what ``b3sum`` prints.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from lineage_core.runid import is_new_run_id, new_run_id, run_id_time_ns

__all__ = [
    "Access",
    "AccessHow",
    "AccessMode",
    "AccessRole",
    "Capture",
    "ChangeKind",
    "CodeState",
    "Counts",
    "Direction",
    "Edge",
    "EdgeKind",
    "EnvState",
    "Event",
    "EventKind",
    "GcReport",
    "Graph",
    "Keep",
    "PinReport",
    "Role",
    "Root",
    "Run",
    "RunFile",
    "RunStart",
    "RunStatus",
    "ScanState",
    "SourceFile",
    "StartNode",
    "StatKey",
    "Status",
    "VerifyItem",
    "VerifyState",
    "Version",
    "is_new_run_id",
    "new_run_id",
    "run_id_time_ns",
    "run_node_id",
    "version_node_id",
]


class Role(StrEnum):
    """What a watched root holds."""

    DATA = "data"
    MODEL = "model"
    CODE = "code"
    OTHER = "other"


class ChangeKind(StrEnum):
    """How a version (or the end of one) was seen."""

    CREATED = "created"
    MODIFIED = "modified"
    MOVED = "moved"
    DELETED = "deleted"
    SCAN = "scan"
    RUN = "run"  # hashed at a run's end, before the watcher settled
    EXTERNAL = "external"  # outside every root, hashed and reported by a client


class AccessMode(StrEnum):
    """Whether a run read or wrote a file."""

    READ = "read"
    WRITE = "write"


class AccessHow(StrEnum):
    """How a run's access to a file became known."""

    DECLARED = "declared"  # the program said so (RunRecorder.input/output)
    TRACED = "traced"  # a tracer saw it
    DIGEST = "digest"  # graph edges only: a version with the same bytes as another


class AccessRole(StrEnum):
    """What a file a run read was to it."""

    DATA = "data"
    CODE = "code"  # a source the run executed or imported


class EdgeKind(StrEnum):
    """What a lineage graph edge says."""

    READ = "read"  # run -> version it read
    WROTE = "wrote"  # run -> version it wrote
    SAME_DIGEST = "same_digest"  # version -> a version elsewhere with the same bytes


class EventKind(StrEnum):
    """What a streamed event carries."""

    VERSION = "version"
    RUN = "run"
    UNKNOWN = "unknown"  # a kind of event this client does not know (from a newer daemon)


class RunStatus(StrEnum):
    """The state of a run."""

    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    INTERRUPTED = "interrupted"
    ABANDONED = "abandoned"  # the wrapper went away without ending it (capture-reliability.md)


class Direction(StrEnum):
    """Which way a lineage walk goes."""

    UPSTREAM = "upstream"
    DOWNSTREAM = "downstream"
    BOTH = "both"


class VerifyState(StrEnum):
    """What a recorded input's path holds now compared with the recorded digest."""

    MATCH = "match"
    CHANGED = "changed"
    MISSING = "missing"
    UNKNOWN = "unknown"  # outside every root: only the client can look


@dataclass(frozen=True, slots=True)
class StatKey:
    """The stat fields that decide whether a file must be re-hashed."""

    dev: int
    ino: int
    size: int
    mtime_ns: int
    ctime_ns: int

    @classmethod
    def from_stat(cls, st: os.stat_result) -> StatKey:
        """Build the key from an ``os.stat_result``."""
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class Keep(StrEnum):
    """Which versions of a root's files the content store keeps the bytes of."""

    LINEAGE = "lineage"  # every version a recorded run read or wrote, nothing else
    ALL = "all"  # every version, when it is first recorded
    NONE = "none"  # none (pins still protect what is kept already)


@dataclass(frozen=True, slots=True)
class Root:
    """A watched directory and its role."""

    path: str
    role: Role
    ignore: tuple[str, ...] = ()
    id: int | None = None
    health: str = "ok"  # "ok", or a short reason it cannot see everything
    polling: bool = False
    max_hash_size: int = 0  # bytes; bigger files are not hashed ("too large"); 0: no limit
    keep: Keep = Keep.LINEAGE


@dataclass(frozen=True, slots=True)
class Version:
    """One content state of a path: ``[valid_from, valid_until)``; ``None`` until = current."""

    id: int
    path: str
    digest: str
    size: int
    mtime_ns: int
    valid_from: int
    valid_until: int | None
    seen: ChangeKind
    closed_by: ChangeKind | None = None
    external: bool = False


@dataclass(frozen=True, slots=True)
class Counts:
    """How much the store holds."""

    roots: int
    artifacts: int
    versions: int
    runs: int
    edges: int


@dataclass(frozen=True, slots=True)
class SourceFile:
    """A source file a run executed or imported, with its digest."""

    path: str
    digest: str


@dataclass(frozen=True, slots=True)
class CodeState:
    """The code a run ran with: git state plus the digests of the sources it executed."""

    commit: str = ""
    branch: str = ""
    remote: str = ""
    dirty: bool = False
    diff: bytes = b""
    diff_digest: str = ""
    diff_size: int = 0
    diff_truncated: bool = False
    untracked: tuple[str, ...] = ()
    sources: tuple[SourceFile, ...] = ()


@dataclass(frozen=True, slots=True)
class EnvState:
    """The environment fingerprint of a run."""

    python_version: str = ""
    implementation: str = ""
    platform: str = ""
    packages: tuple[str, ...] = ()
    packages_digest: str = ""
    variables: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RunStart:
    """What a client says when it begins a run."""

    name: str
    argv: tuple[str, ...] = ()
    cwd: str = ""
    host: str = ""
    user: str = ""
    pid: int = 0
    started_at: int = 0
    params: Mapping[str, str] = field(default_factory=dict)
    parent_run_id: str = ""
    code: CodeState | None = None
    env: EnvState | None = None
    run_id: str = ""  # chosen by the client (see BeginRunRequest.run_id); "" = the daemon's


@dataclass(frozen=True, slots=True)
class Capture:
    """How completely ``lineage run`` saw a run's file accesses.

    ``complete``: every process of the run was traced; otherwise each of ``reasons`` says
    what was missed and why. ``method`` names the tracer: ``lineage run`` says "interposer",
    "strace", "audit-hook" or "none", but it is plain text, not an enum, because the daemon
    records whatever short text a client reports (another client may name its own tracer).
    """

    complete: bool
    reasons: tuple[str, ...] = ()
    method: str = ""


@dataclass(frozen=True, slots=True)
class Run:
    """One execution: who ran what, when, with which code and environment."""

    run_id: str
    name: str
    argv: tuple[str, ...]
    cwd: str
    host: str
    user: str
    pid: int
    started_at: int
    ended_at: int | None
    status: RunStatus
    exit_code: int | None
    params: Mapping[str, str]
    parent_run_id: str
    code: CodeState | None
    env: EnvState | None
    warnings: tuple[str, ...] = ()
    id: int = 0
    capture: Capture | None = None  # None: not known (declared runs, older records)


@dataclass(frozen=True, slots=True)
class Access:
    """A file access a client reports for a run.

    ``digest``/``size``/``mtime_ns`` are set by the client for files outside every root
    (the daemon never opens those); for files under a root the daemon resolves the
    version from its own history. ``how`` is declared or traced (never digest).
    """

    path: str
    mode: AccessMode
    first_at: int
    last_at: int
    how: AccessHow = AccessHow.TRACED
    role: AccessRole = AccessRole.DATA
    digest: str = ""
    size: int = 0
    mtime_ns: int = 0


@dataclass(frozen=True, slots=True)
class Edge:
    """A run read a version, or wrote one. ``source``/``target`` are graph node ids."""

    source: str
    target: str
    kind: EdgeKind
    how: AccessHow = AccessHow.TRACED
    role: AccessRole = AccessRole.DATA
    changed_during_run: bool = False


@dataclass(frozen=True, slots=True)
class StartNode:
    """Where a lineage walk starts: exactly one field is set."""

    path: str = ""
    at: int | None = None  # with path: the version at this time
    digest: str = ""  # full digest or a prefix of at least 8 hex characters
    version_id: int = 0
    run_id: str = ""


@dataclass(frozen=True, slots=True)
class Graph:
    """A lineage subgraph: version nodes, run nodes, typed edges."""

    versions: tuple[Version, ...]
    runs: tuple[Run, ...]
    edges: tuple[Edge, ...]
    truncated: bool
    start: tuple[str, ...] = ()  # node ids the walk started from


@dataclass(frozen=True, slots=True)
class VerifyItem:
    """One input on a version's upstream closure and what its path holds now."""

    path: str
    recorded_digest: str
    state: VerifyState
    current_digest: str = ""
    version_id: int = 0
    run_id: str = ""
    changed_during_run: bool = False


def version_node_id(version_id: int) -> str:
    """The graph node id of a version."""
    return f"version:{version_id}"


def run_node_id(run_id: str) -> str:
    """The graph node id of a run."""
    return f"run:{run_id}"


@dataclass(frozen=True, slots=True)
class ScanState:
    """Progress of the reconcile scan."""

    running: bool = False
    initial_done: bool = False
    files_seen: int = 0
    files_hashed: int = 0
    bytes_hashed: int = 0
    started_at: int = 0
    finished_at: int = 0
    scans_completed: int = 0


@dataclass(frozen=True, slots=True)
class Status:
    """What ``lineage status`` shows."""

    version: str
    pid: int
    started_at: int
    state_dir: str
    socket: str
    roots: tuple[Root, ...]
    counts: Counts
    scan: ScanState
    queue_depth: int
    serving: bool
    degraded: tuple[str, ...] = ()  # human reasons the daemon cannot see everything
    openlineage: str = ""  # the transport OpenLineage events go through; "" = off
    openlineage_backlog: int = 0  # events waiting in the outbox
    openlineage_error: str = ""  # why the last delivery failed; "" after a success


@dataclass(frozen=True, slots=True)
class Event:
    """A new version or a run event, as streamed to subscribers."""

    kind: EventKind
    version: Version | None = None
    run: Run | None = None


@dataclass(frozen=True, slots=True)
class RunFile:
    """A version a run read or wrote, and whether its bytes are kept."""

    version: Version
    kind: EdgeKind  # read or wrote
    role: AccessRole = AccessRole.DATA
    kept: bool = False
    not_kept: str = ""  # why the bytes are not kept, when known


@dataclass(frozen=True, slots=True)
class PinReport:
    """What ``lineage pin`` protected: the pinned versions and everything upstream."""

    pinned: tuple[Version, ...]
    upstream_versions: int  # distinct digests upstream of the pins (the pins included)
    upstream_kept: int  # how many of those have their bytes kept


@dataclass(frozen=True, slots=True)
class GcReport:
    """What ``lineage gc`` freed (or would free, on a dry run) and what it kept."""

    dry_run: bool
    freed_objects: int
    freed_bytes: int
    kept_objects: int
    kept_bytes: int
    protected_objects: int  # kept because a pin is downstream of them
    freed: tuple[str, ...] = ()  # digests freed (at most 1000 listed)

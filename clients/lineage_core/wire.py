"""The wire codecs: ``lineage_core.models`` values <-> protobuf messages.

``*_to_pb`` build messages from values; ``*_from_pb`` read answers back (trusting the daemon).
Requests a daemon receives are read by ``lineage_core.gate``, which checks them; the maps from
wire enum numbers to model enums (``*_FROM_PB``) are shared with it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

from google.protobuf import timestamp_pb2

from lineage_core._proto.lineage.v1 import lineage_pb2 as pb
from lineage_core.errors import InvalidArgument
from lineage_core.models import (
    Access,
    AccessHow,
    AccessMode,
    AccessRole,
    Capture,
    ChangeKind,
    CodeState,
    Counts,
    Direction,
    Edge,
    EdgeKind,
    EnvState,
    Event,
    EventKind,
    GcReport,
    Graph,
    PinReport,
    Role,
    Root,
    Run,
    RunFile,
    RunStart,
    RunStatus,
    ScanState,
    SourceFile,
    StartNode,
    Status,
    VerifyItem,
    VerifyState,
    Version,
)

__all__ = [
    "ACCESS_ROLE_FROM_PB",
    "DIRECTION_FROM_PB",
    "ERROR_CLASS_KEY",
    "MODE_FROM_PB",
    "REPORTED_HOW_FROM_PB",
    "STATUS_FROM_PB",
    "access_to_pb",
    "begin_run_to_pb",
    "capture_to_pb",
    "direction_to_pb",
    "event_from_pb",
    "event_to_pb",
    "gc_report_from_pb",
    "gc_report_to_pb",
    "graph_from_pb",
    "graph_to_pb",
    "ns_from_ts",
    "ns_to_ts",
    "pin_report_from_pb",
    "pin_report_to_pb",
    "run_file_from_pb",
    "run_file_to_pb",
    "run_from_pb",
    "run_status_to_pb",
    "run_to_pb",
    "start_to_pb",
    "status_from_pb",
    "status_to_pb",
    "verify_item_from_pb",
    "verify_item_to_pb",
    "version_from_pb",
    "version_to_pb",
    "versions_to_pb",
]

ERROR_CLASS_KEY = "lineage-error-class"  # trailing metadata: the lineage_core.errors class name

_ROLE_TO_PB = {
    Role.DATA: pb.ROLE_DATA,
    Role.MODEL: pb.ROLE_MODEL,
    Role.CODE: pb.ROLE_CODE,
    Role.OTHER: pb.ROLE_OTHER,
}
_CHANGE_TO_PB = {
    ChangeKind.CREATED: pb.CHANGE_KIND_CREATED,
    ChangeKind.MODIFIED: pb.CHANGE_KIND_MODIFIED,
    ChangeKind.MOVED: pb.CHANGE_KIND_MOVED,
    ChangeKind.DELETED: pb.CHANGE_KIND_DELETED,
    ChangeKind.SCAN: pb.CHANGE_KIND_SCAN,
    ChangeKind.RUN: pb.CHANGE_KIND_RUN,
    ChangeKind.EXTERNAL: pb.CHANGE_KIND_EXTERNAL,
}
_MODE_TO_PB = {AccessMode.READ: pb.ACCESS_MODE_READ, AccessMode.WRITE: pb.ACCESS_MODE_WRITE}
_HOW_TO_PB = {
    AccessHow.DECLARED: pb.ACCESS_HOW_DECLARED,
    AccessHow.TRACED: pb.ACCESS_HOW_TRACED,
    AccessHow.DIGEST: pb.ACCESS_HOW_DIGEST,
}
_ACCESS_ROLE_TO_PB = {AccessRole.DATA: pb.ACCESS_ROLE_DATA, AccessRole.CODE: pb.ACCESS_ROLE_CODE}
_STATUS_TO_PB = {
    RunStatus.RUNNING: pb.RUN_STATUS_RUNNING,
    RunStatus.SUCCEEDED: pb.RUN_STATUS_SUCCEEDED,
    RunStatus.FAILED: pb.RUN_STATUS_FAILED,
    RunStatus.INTERRUPTED: pb.RUN_STATUS_INTERRUPTED,
    RunStatus.ABANDONED: pb.RUN_STATUS_ABANDONED,
}
_DIRECTION_TO_PB = {
    Direction.UPSTREAM: pb.DIRECTION_UPSTREAM,
    Direction.DOWNSTREAM: pb.DIRECTION_DOWNSTREAM,
    Direction.BOTH: pb.DIRECTION_BOTH,
}
_EDGE_TO_PB = {
    EdgeKind.READ: pb.EDGE_KIND_READ,
    EdgeKind.WROTE: pb.EDGE_KIND_WROTE,
    EdgeKind.SAME_DIGEST: pb.EDGE_KIND_SAME_DIGEST,
}
_VERIFY_TO_PB = {
    VerifyState.MATCH: pb.VERIFY_STATE_MATCH,
    VerifyState.CHANGED: pb.VERIFY_STATE_CHANGED,
    VerifyState.MISSING: pb.VERIFY_STATE_MISSING,
    VerifyState.UNKNOWN: pb.VERIFY_STATE_UNKNOWN,
}

_K = TypeVar("_K")
_T = TypeVar("_T")


def _invert(mapping: Mapping[_K, int]) -> dict[int, _K]:
    return {number: key for key, number in mapping.items()}


_ROLE_FROM_PB = _invert(_ROLE_TO_PB)
_CHANGE_FROM_PB = _invert(_CHANGE_TO_PB)
MODE_FROM_PB = _invert(_MODE_TO_PB)
_HOW_FROM_PB = _invert(_HOW_TO_PB)
# How a client may say it knew of an access ("digest" is for graph edges only).
REPORTED_HOW_FROM_PB: dict[int, AccessHow] = {
    pb.ACCESS_HOW_DECLARED: AccessHow.DECLARED,
    pb.ACCESS_HOW_TRACED: AccessHow.TRACED,
}
ACCESS_ROLE_FROM_PB = _invert(_ACCESS_ROLE_TO_PB)
# RunFile says kind and role in text (lineage.proto); anything else reads as a data input.
_RUN_FILE_KINDS = {kind.value: kind for kind in (EdgeKind.READ, EdgeKind.WROTE)}
_RUN_FILE_ROLES = {role.value: role for role in AccessRole}
STATUS_FROM_PB = _invert(_STATUS_TO_PB)
DIRECTION_FROM_PB = _invert(_DIRECTION_TO_PB)
_EDGE_FROM_PB = _invert(_EDGE_TO_PB)
_VERIFY_FROM_PB = _invert(_VERIFY_TO_PB)


# --- times -------------------------------------------------------------------------------


def ns_to_ts(ns: int) -> timestamp_pb2.Timestamp:
    """A Timestamp for nanoseconds since the epoch (negative times included)."""
    seconds, nanos = divmod(ns, 1_000_000_000)
    return timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos)


def ns_from_ts(ts: timestamp_pb2.Timestamp) -> int:
    """Nanoseconds since the epoch of a Timestamp, without validation (responses)."""
    return int(ts.seconds) * 1_000_000_000 + int(ts.nanos)


def _set_time(message: Any, field: str, ns: int | None) -> None:
    if ns is not None:
        ts = getattr(message, field)  # set in place: no Timestamp built and copied
        ts.seconds, ts.nanos = divmod(ns, 1_000_000_000)


def _get_time(message: Any, field: str) -> int | None:
    if not message.HasField(field):
        return None
    ts: timestamp_pb2.Timestamp = getattr(message, field)
    return ts.seconds * 1_000_000_000 + ts.nanos


# --- versions ----------------------------------------------------------------------------


def version_to_pb(version: Version) -> pb.Version:
    """The wire form of a version."""
    return _fill_version(pb.Version(), version)


def _fill_version(message: pb.Version, version: Version) -> pb.Version:
    # Fills a message in place: graphs build theirs inside the repeated field.
    message.id = version.id
    message.path = version.path
    message.digest = version.digest
    message.size = version.size
    message.seen = _CHANGE_TO_PB.get(version.seen, pb.CHANGE_KIND_UNSPECIFIED)
    if version.closed_by is not None:
        message.closed_by = _CHANGE_TO_PB.get(version.closed_by, pb.CHANGE_KIND_UNSPECIFIED)
    message.external = version.external
    _set_time(message, "mtime", version.mtime_ns)
    _set_time(message, "valid_from", version.valid_from)
    _set_time(message, "valid_until", version.valid_until)
    return message


def version_from_pb(message: pb.Version) -> Version:
    """A version read back from the wire (responses: lenient about unknown enum numbers)."""
    # Unset timestamps read as zero, which is what an unset mtime or valid_from means here.
    mtime, valid_from = message.mtime, message.valid_from
    return Version(
        id=message.id,
        path=message.path,
        digest=message.digest,
        size=message.size,
        mtime_ns=mtime.seconds * 1_000_000_000 + mtime.nanos,
        valid_from=valid_from.seconds * 1_000_000_000 + valid_from.nanos,
        valid_until=_get_time(message, "valid_until"),
        seen=_CHANGE_FROM_PB.get(message.seen, ChangeKind.SCAN),
        closed_by=_CHANGE_FROM_PB.get(message.closed_by),
        external=message.external,
    )


# --- runs --------------------------------------------------------------------------------


def _code_to_pb(code: CodeState, *, with_diff: bool) -> pb.CodeState:
    return _fill_code(pb.CodeState(), code, with_diff=with_diff)


def _fill_code(message: pb.CodeState, code: CodeState, *, with_diff: bool) -> pb.CodeState:
    message.commit = code.commit
    message.branch = code.branch
    message.remote = code.remote
    message.dirty = code.dirty
    if with_diff:
        message.diff = code.diff
    message.diff_digest = code.diff_digest
    message.diff_size = code.diff_size
    message.diff_truncated = code.diff_truncated
    message.untracked.extend(code.untracked)
    add = message.sources.add
    for source in code.sources:
        add(path=source.path, digest=source.digest)
    return message


def _code_from_pb(message: pb.CodeState) -> CodeState:
    return CodeState(
        commit=message.commit,
        branch=message.branch,
        remote=message.remote,
        dirty=message.dirty,
        diff=bytes(message.diff),
        diff_digest=message.diff_digest,
        diff_size=message.diff_size,
        diff_truncated=message.diff_truncated,
        untracked=tuple(message.untracked) if message.untracked else (),
        sources=tuple([SourceFile(s.path, s.digest) for s in message.sources]),
    )


def _env_to_pb(env: EnvState) -> pb.EnvState:
    return _fill_env(pb.EnvState(), env)


def _fill_env(message: pb.EnvState, env: EnvState) -> pb.EnvState:
    message.python_version = env.python_version
    message.implementation = env.implementation
    message.platform = env.platform
    message.packages.extend(env.packages)
    message.packages_digest = env.packages_digest
    if env.variables:
        message.variables.update(env.variables)
    return message


def _env_from_pb(message: pb.EnvState) -> EnvState:
    return EnvState(
        python_version=message.python_version,
        implementation=message.implementation,
        platform=message.platform,
        packages=tuple(message.packages),
        packages_digest=message.packages_digest,
        variables=dict(message.variables),
    )


def run_status_to_pb(status: RunStatus | None) -> pb.RunStatus.ValueType:
    """The wire number of a run status (None: UNSPECIFIED)."""
    return pb.RUN_STATUS_UNSPECIFIED if status is None else _STATUS_TO_PB[status]


def run_to_pb(run: Run, *, with_diff: bool = True) -> pb.Run:
    """The wire form of a run; lineage graphs leave the (possibly large) diff out."""
    return _fill_run(pb.Run(), run, with_diff=with_diff)


def _fill_run(message: pb.Run, run: Run, *, with_diff: bool) -> pb.Run:
    message.run_id = run.run_id
    message.name = run.name
    message.argv.extend(run.argv)
    message.cwd = run.cwd
    message.host = run.host
    message.user = run.user
    message.pid = run.pid
    message.status = _STATUS_TO_PB.get(run.status, pb.RUN_STATUS_UNSPECIFIED)
    if run.params:
        message.params.update(run.params)
    message.parent_run_id = run.parent_run_id
    message.warnings.extend(run.warnings)
    message.id = run.id
    if run.capture is not None:
        capture_to_pb(message.capture, run.capture)
    _set_time(message, "started_at", run.started_at)
    _set_time(message, "ended_at", run.ended_at)
    if run.exit_code is not None:
        message.exit_code = run.exit_code
    if run.code is not None:
        _fill_code(message.code, run.code, with_diff=with_diff)
    if run.env is not None:
        _fill_env(message.env, run.env)
    return message


def _decoded_once(
    message: Any, decode: Callable[[Any], _T], memo: dict[tuple[Any, bytes], Any] | None
) -> _T:
    """``decode(message)``, or the value decoded from the same bytes earlier in this answer:
    the runs of a graph or a listing mostly share their code and their environment."""
    if memo is None:
        return decode(message)
    key = (decode, message.SerializeToString())
    value: _T | None = memo.get(key)
    if value is None:
        value = memo[key] = decode(message)
    return value


def capture_to_pb(message: pb.RunCapture, capture: Capture) -> pb.RunCapture:
    """Fill ``message`` with ``capture``."""
    message.complete = capture.complete
    message.reasons.extend(capture.reasons)
    message.method = capture.method
    return message


def _capture_from_pb(message: pb.RunCapture) -> Capture:
    return Capture(complete=message.complete, reasons=tuple(message.reasons), method=message.method)


def run_from_pb(message: pb.Run, memo: dict[tuple[Any, bytes], Any] | None = None) -> Run:
    """A run read back from the wire; runs decoded with one ``memo`` share equal code and
    environment values instead of decoding each again."""
    started = message.started_at  # unset reads as zero, which is what it means here
    return Run(
        run_id=message.run_id,
        name=message.name,
        argv=tuple(message.argv),
        cwd=message.cwd,
        host=message.host,
        user=message.user,
        pid=message.pid,
        started_at=started.seconds * 1_000_000_000 + started.nanos,
        ended_at=_get_time(message, "ended_at"),
        status=STATUS_FROM_PB.get(message.status, RunStatus.RUNNING),
        exit_code=message.exit_code if message.HasField("exit_code") else None,
        # Empty containers skip the conversion: graphs decode many runs, most without them.
        params=dict(message.params) if message.params else {},
        parent_run_id=message.parent_run_id,
        code=_decoded_once(message.code, _code_from_pb, memo) if message.HasField("code") else None,
        env=_decoded_once(message.env, _env_from_pb, memo) if message.HasField("env") else None,
        warnings=tuple(message.warnings) if message.warnings else (),
        id=message.id,
        capture=_capture_from_pb(message.capture) if message.HasField("capture") else None,
    )


def begin_run_to_pb(start: RunStart) -> pb.BeginRunRequest:
    """The BeginRun request for a run start (client side)."""
    request = pb.BeginRunRequest(
        name=start.name,
        argv=list(start.argv),
        cwd=start.cwd,
        host=start.host,
        user=start.user,
        pid=start.pid,
        params=dict(start.params),
        parent_run_id=start.parent_run_id,
        run_id=start.run_id,
    )
    _set_time(request, "started_at", start.started_at or None)
    if start.code is not None:
        request.code.CopyFrom(_code_to_pb(start.code, with_diff=True))
    if start.env is not None:
        request.env.CopyFrom(_env_to_pb(start.env))
    return request


def access_to_pb(access: Access) -> pb.Access:
    """The wire form of a reported access (client side)."""
    return _fill_access(pb.Access(), access)


def _fill_access(message: pb.Access, access: Access) -> pb.Access:
    message.path = access.path
    message.mode = _MODE_TO_PB[access.mode]
    _set_time(message, "first_at", access.first_at)
    _set_time(message, "last_at", access.last_at)
    message.how = _HOW_TO_PB.get(access.how, pb.ACCESS_HOW_UNSPECIFIED)
    message.role = _ACCESS_ROLE_TO_PB.get(access.role, pb.ACCESS_ROLE_UNSPECIFIED)
    message.digest = access.digest
    message.size = access.size
    if access.mtime_ns:
        _set_time(message, "mtime", access.mtime_ns)
    return message


# --- lineage -----------------------------------------------------------------------------


def start_to_pb(start: StartNode) -> pb.StartNode:
    """The wire form of a walk's start; exactly one field of ``start`` must be set."""
    if start.path and start.at is not None:
        return pb.StartNode(path_at=pb.PathAt(path=start.path, at=ns_to_ts(start.at)))
    if start.path:
        return pb.StartNode(path=start.path)
    if start.digest:
        return pb.StartNode(digest=start.digest)
    if start.version_id:
        return pb.StartNode(version_id=start.version_id)
    if start.run_id:
        return pb.StartNode(run_id=start.run_id)
    raise InvalidArgument("a lineage start needs a path, a digest, a version id or a run id")


def direction_to_pb(direction: Direction) -> pb.Direction.ValueType:
    """The wire number of a direction."""
    return _DIRECTION_TO_PB[direction]


def graph_to_pb(graph: Graph) -> pb.Graph:
    """The wire form of a lineage graph (run diffs left out: GetRun has them)."""
    message = pb.Graph(truncated=graph.truncated, start=graph.start)
    add_version = message.versions.add
    for version in graph.versions:
        _fill_version(add_version(), version)
    add_run = message.runs.add
    for run in graph.runs:
        _fill_run(add_run(), run, with_diff=False)
    add_edge = message.edges.add
    for edge in graph.edges:
        add_edge(
            source=edge.source,
            target=edge.target,
            kind=_EDGE_TO_PB.get(edge.kind, pb.EDGE_KIND_UNSPECIFIED),
            how=_HOW_TO_PB.get(edge.how, pb.ACCESS_HOW_UNSPECIFIED),
            role=_ACCESS_ROLE_TO_PB.get(edge.role, pb.ACCESS_ROLE_UNSPECIFIED),
            changed_during_run=edge.changed_during_run,
        )
    return message


def graph_from_pb(message: pb.Graph) -> Graph:
    """A lineage graph read back from the wire; its runs share equal code and environments."""
    memo: dict[tuple[Any, bytes], Any] = {}
    return Graph(
        versions=tuple([version_from_pb(version) for version in message.versions]),
        runs=tuple([run_from_pb(run, memo) for run in message.runs]),
        edges=tuple([_edge_from_pb(edge) for edge in message.edges]),
        truncated=message.truncated,
        start=tuple(message.start),
    )


def _edge_from_pb(message: pb.Edge) -> Edge:
    return Edge(
        source=message.source,
        target=message.target,
        kind=_EDGE_FROM_PB.get(message.kind, EdgeKind.READ),
        how=_HOW_FROM_PB.get(message.how, AccessHow.TRACED),
        role=ACCESS_ROLE_FROM_PB.get(message.role, AccessRole.DATA),
        changed_during_run=message.changed_during_run,
    )


def verify_item_to_pb(item: VerifyItem) -> pb.VerifyItem:
    """The wire form of one verified input."""
    return pb.VerifyItem(
        path=item.path,
        recorded_digest=item.recorded_digest,
        state=_VERIFY_TO_PB.get(item.state, pb.VERIFY_STATE_UNSPECIFIED),
        current_digest=item.current_digest,
        version_id=item.version_id,
        run_id=item.run_id,
        changed_during_run=item.changed_during_run,
    )


def verify_item_from_pb(message: pb.VerifyItem) -> VerifyItem:
    """One verified input read back from the wire."""
    return VerifyItem(
        path=message.path,
        recorded_digest=message.recorded_digest,
        state=_VERIFY_FROM_PB.get(message.state, VerifyState.UNKNOWN),
        current_digest=message.current_digest,
        version_id=message.version_id,
        run_id=message.run_id,
        changed_during_run=message.changed_during_run,
    )


# --- status and events -------------------------------------------------------------------


def status_to_pb(status: Status) -> pb.GetStatusResponse:
    """The GetStatus answer."""
    scan = pb.ScanState(
        running=status.scan.running,
        initial_done=status.scan.initial_done,
        files_seen=status.scan.files_seen,
        files_hashed=status.scan.files_hashed,
        bytes_hashed=status.scan.bytes_hashed,
        scans_completed=status.scan.scans_completed,
    )
    _set_time(scan, "started_at", status.scan.started_at or None)
    _set_time(scan, "finished_at", status.scan.finished_at or None)
    counts = status.counts
    response = pb.GetStatusResponse(
        version=status.version,
        pid=status.pid,
        state_dir=status.state_dir,
        socket=status.socket,
        roots=[
            pb.Root(
                id=root.id or 0,
                path=root.path,
                role=_ROLE_TO_PB.get(root.role, pb.ROLE_UNSPECIFIED),
                ignore=list(root.ignore),
                health=root.health,
                polling=root.polling,
            )
            for root in status.roots
        ],
        counts=pb.Counts(
            roots=counts.roots,
            artifacts=counts.artifacts,
            versions=counts.versions,
            runs=counts.runs,
            edges=counts.edges,
        ),
        scan=scan,
        queue_depth=status.queue_depth,
        serving=status.serving,
        degraded=list(status.degraded),
        openlineage_transport=status.openlineage,
        openlineage_backlog=status.openlineage_backlog,
        openlineage_last_error=status.openlineage_error,
    )
    _set_time(response, "started_at", status.started_at)
    return response


def status_from_pb(message: pb.GetStatusResponse) -> Status:
    """The daemon's status read back from the wire."""
    scan = message.scan
    counts = message.counts
    return Status(
        version=message.version,
        pid=message.pid,
        started_at=message.started_at.seconds * 1_000_000_000 + message.started_at.nanos,
        state_dir=message.state_dir,
        socket=message.socket,
        roots=tuple(
            Root(
                path=root.path,
                role=_ROLE_FROM_PB.get(root.role, Role.OTHER),
                ignore=tuple(root.ignore),
                id=root.id or None,
                health=root.health,
                polling=root.polling,
            )
            for root in message.roots
        ),
        counts=Counts(
            roots=counts.roots,
            artifacts=counts.artifacts,
            versions=counts.versions,
            runs=counts.runs,
            edges=counts.edges,
        ),
        scan=ScanState(
            running=scan.running,
            initial_done=scan.initial_done,
            files_seen=scan.files_seen,
            files_hashed=scan.files_hashed,
            bytes_hashed=scan.bytes_hashed,
            started_at=_get_time(scan, "started_at") or 0,
            finished_at=_get_time(scan, "finished_at") or 0,
            scans_completed=scan.scans_completed,
        ),
        queue_depth=message.queue_depth,
        serving=message.serving,
        degraded=tuple(message.degraded),
        openlineage=message.openlineage_transport,
        openlineage_backlog=message.openlineage_backlog,
        openlineage_error=message.openlineage_last_error,
    )


def event_to_pb(event: Event) -> pb.Event:
    """The wire form of a streamed event."""
    if event.version is not None:
        return pb.Event(version=version_to_pb(event.version))
    if event.run is not None:
        return pb.Event(run=run_to_pb(event.run, with_diff=False))
    return pb.Event()


def event_from_pb(message: pb.Event) -> Event:
    """A streamed event read back from the wire."""
    which = message.WhichOneof("event")
    if which == "version":
        return Event(kind=EventKind.VERSION, version=version_from_pb(message.version))
    if which == "run":
        return Event(kind=EventKind.RUN, run=run_from_pb(message.run))
    return Event(kind=EventKind.UNKNOWN)


def versions_to_pb(versions: Iterable[Version]) -> list[pb.Version]:
    """Wire forms of several versions."""
    return [version_to_pb(v) for v in versions]


# --- content store (docs/reproduce.md) ------------------------------------------------------


def run_file_to_pb(item: RunFile) -> pb.RunFile:
    """Wire form of a run's file and whether its bytes are kept."""
    return pb.RunFile(
        version=version_to_pb(item.version),
        kind=item.kind,
        role=item.role,
        kept=item.kept,
        not_kept=item.not_kept,
    )


def run_file_from_pb(message: pb.RunFile) -> RunFile:
    """A run's file from its wire form."""
    return RunFile(
        version=version_from_pb(message.version),
        kind=_RUN_FILE_KINDS.get(message.kind, EdgeKind.READ),
        role=_RUN_FILE_ROLES.get(message.role, AccessRole.DATA),
        kept=message.kept,
        not_kept=message.not_kept,
    )


def pin_report_to_pb(report: PinReport) -> pb.PinVersionsResponse:
    """Wire form of what a pin protected."""
    return pb.PinVersionsResponse(
        pinned=versions_to_pb(report.pinned),
        upstream_versions=report.upstream_versions,
        upstream_kept=report.upstream_kept,
    )


def pin_report_from_pb(message: pb.PinVersionsResponse) -> PinReport:
    """What a pin protected, from its wire form."""
    return PinReport(
        pinned=tuple(version_from_pb(v) for v in message.pinned),
        upstream_versions=message.upstream_versions,
        upstream_kept=message.upstream_kept,
    )


def gc_report_to_pb(report: GcReport) -> pb.CollectGarbageResponse:
    """Wire form of a gc report."""
    return pb.CollectGarbageResponse(
        dry_run=report.dry_run,
        freed_objects=report.freed_objects,
        freed_bytes=report.freed_bytes,
        kept_objects=report.kept_objects,
        kept_bytes=report.kept_bytes,
        protected_objects=report.protected_objects,
        freed=list(report.freed),
    )


def gc_report_from_pb(message: pb.CollectGarbageResponse) -> GcReport:
    """A gc report from its wire form."""
    return GcReport(
        dry_run=message.dry_run,
        freed_objects=message.freed_objects,
        freed_bytes=message.freed_bytes,
        kept_objects=message.kept_objects,
        kept_bytes=message.kept_bytes,
        protected_objects=message.protected_objects,
        freed=tuple(message.freed),
    )

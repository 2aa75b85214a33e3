"""The request gate: every request the daemon serves is checked here, once, at the gRPC edge,
and comes out as typed values (``lineage_core.models`` and the queries below) that the engine
and the store trust.

Each ``parse_*`` (and ``check_*``) function holds one request, or one part of one, to the
limits of ``lineage_core.limits`` and raises ``InvalidArgument`` with a message that names the
field and says what it must be. Paths must arrive absolute and normalised (clients resolve
them); nothing here normalises silently. The client uses the same functions to read back what
it spooled while the daemon was away.
"""

from __future__ import annotations

import base64
import binascii
import posixpath
import re
from collections.abc import Mapping, Sequence, Sized
from dataclasses import dataclass
from typing import Any, TypeVar

from google.protobuf import timestamp_pb2

from lineage_core._proto.lineage.v1 import lineage_pb2 as pb
from lineage_core.errors import InvalidArgument
from lineage_core.limits import (
    DEFAULT_MAX_DEPTH,
    DEFAULT_MAX_NODES,
    DEFAULT_PAGE_SIZE,
    MAX_ACCESSES,
    MAX_CAPTURE_METHOD,
    MAX_DEPTH,
    MAX_DIFF_BYTES,
    MAX_NAME_BYTES,
    MAX_NODES,
    MAX_NS,
    MAX_PAGE_SIZE,
    MAX_PATH_BYTES,
    MAX_PID,
    MAX_PIN_NOTE,
    MAX_REPEATED,
    MAX_RUN_ID,
    MAX_RUN_NAME,
    MAX_TEXT_BYTES,
    MAX_WARNING_CHARS,
    MAX_WARNINGS,
    MIN_DIGEST_PREFIX,
    MIN_NS,
)
from lineage_core.models import (
    Access,
    AccessHow,
    AccessRole,
    Capture,
    CodeState,
    Direction,
    EnvState,
    RunStart,
    RunStatus,
    SourceFile,
    StartNode,
    is_new_run_id,
)
from lineage_core.paths import is_normal_path
from lineage_core.wire import (
    ACCESS_ROLE_FROM_PB,
    DIRECTION_FROM_PB,
    MODE_FROM_PB,
    REPORTED_HOW_FROM_PB,
    STATUS_FROM_PB,
    ns_from_ts,
)

__all__ = [
    "LineageQuery",
    "ListRunsQuery",
    "check_digest_prefix",
    "check_new_run_id",
    "check_path",
    "decode_page_token",
    "encode_page_token",
    "parse_access",
    "parse_begin_run",
    "parse_capture",
    "parse_direction",
    "parse_end_run",
    "parse_export_openlineage",
    "parse_lineage",
    "parse_list_runs",
    "parse_page_size",
    "parse_path_prefix",
    "parse_pin_versions",
    "parse_read_version_bytes",
    "parse_record_accesses",
    "parse_run_id",
    "parse_start",
    "parse_time",
    "parse_version_id",
]

_K = TypeVar("_K")
_HEX = re.compile(r"[0-9a-f]+")
_RUN_ID = re.compile(r"[A-Za-z0-9._:-]+")


def parse_time(message: Any, field: str, *, required: bool = False) -> int | None:
    """The validated time in ``message.field``: None when unset (InvalidArgument if required)."""
    if not message.HasField(field):
        if required:
            raise InvalidArgument(f"{field} is required")
        return None
    ts = getattr(message, field)
    if not 0 <= ts.nanos < 1_000_000_000:
        raise InvalidArgument(f"{field}.nanos must be between 0 and 999999999, not {ts.nanos}")
    ns = ns_from_ts(ts)
    if not MIN_NS <= ns <= MAX_NS:
        raise InvalidArgument(
            f"{field} is out of range: times must lie between 1677-09-21 and 2262-04-11 UTC"
        )
    return ns


def _check_text(value: str, field: str, *, max_bytes: int = MAX_TEXT_BYTES) -> str:
    if "\x00" in value:
        raise InvalidArgument(f"{field} contains a NUL byte")
    if len(value) > max_bytes or len(value.encode("utf-8", "surrogatepass")) > max_bytes:
        raise InvalidArgument(f"{field} is longer than {max_bytes} bytes")
    return value


def _check_count(values: Sized, field: str, limit: int = MAX_REPEATED) -> None:
    if len(values) > limit:
        raise InvalidArgument(f"{field} has {len(values)} entries; at most {limit} are accepted")


def check_path(value: str, field: str = "path", *, allow_empty: bool = False) -> str:
    """An absolute, normalised path, else InvalidArgument saying what is wrong with it."""
    if not value:
        if allow_empty:
            return value
        raise InvalidArgument(f"{field} is required")
    _check_text(value, field, max_bytes=MAX_PATH_BYTES)
    if not value.startswith("/"):
        raise InvalidArgument(
            f"{field} must be an absolute path, not {value!r} (clients make paths absolute)"
        )
    # posixpath keeps a leading "//" (implementation-defined in POSIX); no root uses it.
    if posixpath.normpath(value) != value or value.startswith("//"):
        raise InvalidArgument(
            f"{field} must be normalised (no '.', '..', '//' or trailing '/'): {value!r};"
            f" did you mean {posixpath.normpath('/' + value.lstrip('/'))!r}?"
        )
    return value


def _check_digest(value: str, field: str) -> str:
    digest = value.lower()
    if len(digest) != 64 or not _HEX.fullmatch(digest):
        raise InvalidArgument(
            f"{field} must be 64 hex characters (a BLAKE3-256 digest), not {value[:80]!r}"
        )
    return digest


def check_digest_prefix(value: str, field: str = "digest") -> str:
    """A full digest or a prefix of 8..64 hex characters, lowercased."""
    if not value:
        raise InvalidArgument(f"{field} is required")
    digest = value.lower()
    if not _HEX.fullmatch(digest) or not MIN_DIGEST_PREFIX <= len(digest) <= 64:
        raise InvalidArgument(
            f"{field} must be 8 to 64 hex characters (a BLAKE3 digest or a prefix), not {value[:80]!r}"
        )
    return digest


def parse_run_id(value: str, field: str = "run_id") -> str:
    """A run id (or a prefix of one) in the characters run ids are made of."""
    if not value:
        raise InvalidArgument(f"{field} is required")
    if len(value) > MAX_RUN_ID or not _RUN_ID.fullmatch(value):
        raise InvalidArgument(
            f"{field} must be 1 to {MAX_RUN_ID} characters of letters, digits, '.', '_', ':'"
            f" or '-', not {value[:80]!r}"
        )
    return value


def _check_int(value: int, field: str, low: int, high: int) -> int:
    if not low <= value <= high:
        raise InvalidArgument(f"{field} must be between {low} and {high}, not {value}")
    return value


def _enum(mapping: Mapping[int, _K], number: int, field: str, enum: Any) -> _K:
    if number not in mapping:
        names = ", ".join(enum.Name(n) for n in sorted(mapping))
        raise InvalidArgument(f"{field} has an unknown value {number}; expected one of {names}")
    return mapping[number]


def parse_page_size(value: int, field: str = "page_size") -> int:
    """0 means the default; otherwise 1..1000."""
    if value == 0:
        return DEFAULT_PAGE_SIZE
    if not 1 <= value <= MAX_PAGE_SIZE:
        raise InvalidArgument(
            f"{field} must be between 1 and {MAX_PAGE_SIZE} (0 means {DEFAULT_PAGE_SIZE}), not {value}"
        )
    return value


def encode_page_token(kind: str, before_id: int) -> str:
    """An opaque token resuming a ``kind`` listing after the row ``before_id``."""
    return base64.urlsafe_b64encode(f"v1:{kind}:{before_id}".encode()).decode().rstrip("=")


def decode_page_token(token: str, kind: str) -> int | None:
    """The row id a token resumes after; None for an empty token; InvalidArgument if foreign."""
    if not token:
        return None
    try:
        text = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode("ascii")
        version, token_kind, number = text.split(":")
        before_id = int(number)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise InvalidArgument(
            "page_token is not a token this server issued; pass next_page_token unchanged"
        ) from None
    if version != "v1" or token_kind != kind or not 0 < before_id <= MAX_NS:
        raise InvalidArgument(
            f"page_token belongs to another listing; pass the next_page_token of a {kind} answer"
        )
    return before_id


def parse_capture(request: pb.EndRunRequest) -> Capture | None:
    """Validate EndRun's capture (None when the client did not say)."""
    if not request.HasField("capture"):
        return None
    reasons = _parse_short_texts(request.capture.reasons, "capture.reasons")
    method = _check_text(request.capture.method, "capture.method", max_bytes=MAX_CAPTURE_METHOD)
    if request.capture.complete and reasons:
        raise InvalidArgument("a complete capture has no reasons to be partial")
    return Capture(complete=request.capture.complete, reasons=reasons, method=method)


def _parse_strings(
    values: Sequence[str], field: str, *, max_bytes: int = MAX_TEXT_BYTES
) -> tuple[str, ...]:
    _check_count(values, field)
    return tuple(_check_text(v, f"{field}[{i}]", max_bytes=max_bytes) for i, v in enumerate(values))


def _parse_short_texts(values: Sequence[str], field: str) -> tuple[str, ...]:
    """Warnings and capture reasons: at most MAX_WARNINGS of MAX_WARNING_CHARS characters."""
    _check_count(values, field, MAX_WARNINGS)
    for index, value in enumerate(values):
        if "\x00" in value:
            raise InvalidArgument(f"{field}[{index}] contains a NUL byte")
        if len(value) > MAX_WARNING_CHARS:
            raise InvalidArgument(f"{field}[{index}] is longer than {MAX_WARNING_CHARS} characters")
    return tuple(values)


def _parse_map(values: Mapping[str, str], field: str) -> dict[str, str]:
    _check_count(values, field)
    parsed: dict[str, str] = {}
    for key, value in values.items():
        _check_text(key, f"{field} key", max_bytes=MAX_NAME_BYTES)
        parsed[key] = _check_text(value, f"{field}[{key[:40]!r}]")
    return parsed


def _parse_code(message: pb.CodeState) -> CodeState:
    if len(message.diff) > MAX_DIFF_BYTES:
        raise InvalidArgument(f"code.diff is larger than {MAX_DIFF_BYTES} bytes; truncate it")
    _check_count(message.sources, "code.sources")
    sources = tuple(
        SourceFile(
            path=check_path(s.path, f"code.sources[{i}].path"),
            digest=_check_digest(s.digest, f"code.sources[{i}].digest"),
        )
        for i, s in enumerate(message.sources)
    )
    return CodeState(
        commit=_check_text(message.commit, "code.commit", max_bytes=MAX_NAME_BYTES),
        branch=_check_text(message.branch, "code.branch", max_bytes=MAX_NAME_BYTES),
        remote=_check_text(message.remote, "code.remote", max_bytes=MAX_PATH_BYTES),
        dirty=message.dirty,
        diff=bytes(message.diff),
        diff_digest=_check_digest(message.diff_digest, "code.diff_digest")
        if message.diff_digest
        else "",
        diff_size=_check_int(message.diff_size, "code.diff_size", 0, MAX_NS),
        diff_truncated=message.diff_truncated,
        untracked=_parse_strings(message.untracked, "code.untracked", max_bytes=MAX_PATH_BYTES),
        sources=sources,
    )


def _parse_env(message: pb.EnvState) -> EnvState:
    return EnvState(
        python_version=_check_text(
            message.python_version, "env.python_version", max_bytes=MAX_NAME_BYTES
        ),
        implementation=_check_text(
            message.implementation, "env.implementation", max_bytes=MAX_NAME_BYTES
        ),
        platform=_check_text(message.platform, "env.platform", max_bytes=MAX_NAME_BYTES),
        packages=_parse_strings(message.packages, "env.packages", max_bytes=MAX_NAME_BYTES),
        packages_digest=_check_digest(message.packages_digest, "env.packages_digest")
        if message.packages_digest
        else "",
        variables=_parse_map(message.variables, "env.variables"),
    )


def parse_begin_run(request: pb.BeginRunRequest, *, now: int) -> RunStart:
    """Validate a BeginRun request; an unset ``started_at`` becomes ``now``."""
    name = request.name
    if not name.strip():
        raise InvalidArgument("name is required (a short label such as 'train')")
    if "\x00" in name or len(name) > MAX_RUN_NAME:
        raise InvalidArgument(f"name is 1 to {MAX_RUN_NAME} characters without NUL bytes")
    started_at = parse_time(request, "started_at")
    return RunStart(
        name=name,
        argv=_parse_strings(request.argv, "argv"),
        cwd=check_path(request.cwd, "cwd", allow_empty=True),
        host=_check_text(request.host, "host", max_bytes=MAX_NAME_BYTES),
        user=_check_text(request.user, "user", max_bytes=MAX_NAME_BYTES),
        pid=_check_int(request.pid, "pid", 0, MAX_PID),
        started_at=now if started_at is None else started_at,
        params=_parse_map(request.params, "params"),
        parent_run_id=parse_run_id(request.parent_run_id, "parent_run_id")
        if request.parent_run_id
        else "",
        code=_parse_code(request.code) if request.HasField("code") else None,
        env=_parse_env(request.env) if request.HasField("env") else None,
        run_id=check_new_run_id(request.run_id) if request.run_id else "",
    )


def check_new_run_id(value: str, field: str = "run_id") -> str:
    """A run id a client chose for a new run: the daemon's format, else InvalidArgument."""
    if not is_new_run_id(value):
        raise InvalidArgument(
            f"{field} must be 32 lowercase hex characters, as the daemon makes them (a 48-bit"
            f" millisecond timestamp then 80 random bits), or empty; not {value[:80]!r}"
        )
    return value


def _time_ns(ts: timestamp_pb2.Timestamp, field: str) -> int:
    """:func:`parse_time` for a Timestamp known to be set."""
    nanos = ts.nanos
    if not 0 <= nanos < 1_000_000_000:
        raise InvalidArgument(f"{field}.nanos must be between 0 and 999999999, not {nanos}")
    ns = ts.seconds * 1_000_000_000 + nanos
    if not MIN_NS <= ns <= MAX_NS:
        raise InvalidArgument(
            f"{field} is out of range: times must lie between 1677-09-21 and 2262-04-11 UTC"
        )
    return ns


def parse_access(message: pb.Access, field: str, *, now: int) -> Access:
    """Validate one reported access; unset times become ``now``."""
    path = message.path
    # check_path's rules, by cheaper exact tests first; its messages when one fails.
    if (
        path[:1] != "/"
        or "\x00" in path
        or len(path) > MAX_PATH_BYTES
        or (not path.isascii() and len(path.encode("utf-8", "surrogatepass")) > MAX_PATH_BYTES)
        or not is_normal_path(path)
    ):
        check_path(path, f"{field}.path")
    mode = MODE_FROM_PB.get(message.mode)
    if mode is None:
        mode = _enum(MODE_FROM_PB, message.mode, f"{field}.mode", pb.AccessMode)
    has = message.HasField
    first_at = _time_ns(message.first_at, "first_at") if has("first_at") else now
    last_at = _time_ns(message.last_at, "last_at") if has("last_at") else first_at
    if last_at < first_at:
        raise InvalidArgument(f"{field}.last_at is before {field}.first_at")
    how = REPORTED_HOW_FROM_PB.get(message.how) or (
        AccessHow.TRACED
        if message.how == pb.ACCESS_HOW_UNSPECIFIED
        else _enum(REPORTED_HOW_FROM_PB, message.how, f"{field}.how", pb.AccessHow)
    )
    role = ACCESS_ROLE_FROM_PB.get(message.role) or (
        AccessRole.DATA
        if message.role == pb.ACCESS_ROLE_UNSPECIFIED
        else _enum(ACCESS_ROLE_FROM_PB, message.role, f"{field}.role", pb.AccessRole)
    )
    digest = message.digest
    if digest:
        digest = _check_digest(digest, f"{field}.digest")
    size = message.size
    if size:
        _check_int(size, f"{field}.size", 0, MAX_NS)
    mtime = _time_ns(message.mtime, "mtime") if has("mtime") else 0
    return Access(path, mode, first_at, last_at, how, role, digest, size, mtime)


def parse_end_run(
    request: pb.EndRunRequest, *, now: int
) -> tuple[str, int | None, RunStatus, int, tuple[str, ...]]:
    """Validate EndRun: (run_id, exit_code, status, ended_at, warnings)."""
    run_id = parse_run_id(request.run_id)
    if request.status in (
        pb.RUN_STATUS_UNSPECIFIED,
        pb.RUN_STATUS_RUNNING,
        pb.RUN_STATUS_ABANDONED,
    ):
        raise InvalidArgument(
            "status must be RUN_STATUS_SUCCEEDED, RUN_STATUS_FAILED or RUN_STATUS_INTERRUPTED"
        )
    status = _enum(STATUS_FROM_PB, request.status, "status", pb.RunStatus)
    ended_at = parse_time(request, "ended_at")
    exit_code = request.exit_code if request.HasField("exit_code") else None
    warnings = _parse_short_texts(request.warnings, "warnings")
    return run_id, exit_code, status, now if ended_at is None else ended_at, warnings


@dataclass(frozen=True, slots=True)
class ListRunsQuery:
    """A validated ListRuns request."""

    limit: int
    name: str
    status: RunStatus | None
    since: int | None
    until: int | None
    before_id: int | None
    parent_run_id: str = ""


def parse_list_runs(request: pb.ListRunsRequest) -> ListRunsQuery:
    """Validate ListRuns."""
    status = (
        None
        if request.status == pb.RUN_STATUS_UNSPECIFIED
        else _enum(STATUS_FROM_PB, request.status, "status", pb.RunStatus)
    )
    since = parse_time(request, "since")
    until = parse_time(request, "until")
    if since is not None and until is not None and until < since:
        raise InvalidArgument("until is before since")
    return ListRunsQuery(
        limit=parse_page_size(request.page_size),
        name=_check_text(request.name, "name", max_bytes=MAX_NAME_BYTES),
        status=status,
        since=since,
        until=until,
        before_id=decode_page_token(request.page_token, "runs"),
        parent_run_id=parse_run_id(request.parent_run_id, "parent_run_id")
        if request.parent_run_id
        else "",
    )


def parse_start(message: pb.StartNode, field: str = "start") -> StartNode:
    """Validate a StartNode oneof."""
    which = message.WhichOneof("node")
    if which is None:
        raise InvalidArgument(
            f"{field} is required: set one of path, path_at, digest, version_id or run_id"
        )
    if which == "path":
        return StartNode(path=check_path(message.path, f"{field}.path"))
    if which == "path_at":
        path = check_path(message.path_at.path, f"{field}.path_at.path")
        at = parse_time(message.path_at, "at", required=True)
        return StartNode(path=path, at=at)
    if which == "digest":
        return StartNode(digest=check_digest_prefix(message.digest, f"{field}.digest"))
    if which == "version_id":
        return StartNode(
            version_id=_check_int(message.version_id, f"{field}.version_id", 1, MAX_NS)
        )
    return StartNode(run_id=parse_run_id(message.run_id, f"{field}.run_id"))


def parse_direction(number: int, field: str = "direction") -> Direction:
    """A walk direction; UNSPECIFIED is an error (say which way to walk)."""
    if number == pb.DIRECTION_UNSPECIFIED:
        raise InvalidArgument(
            f"{field} is required: DIRECTION_UPSTREAM, DIRECTION_DOWNSTREAM or DIRECTION_BOTH"
        )
    return _enum(DIRECTION_FROM_PB, number, field, pb.Direction)


@dataclass(frozen=True, slots=True)
class LineageQuery:
    """A validated GetLineage request."""

    start: StartNode
    direction: Direction
    max_depth: int
    max_nodes: int


def parse_lineage(request: pb.GetLineageRequest) -> LineageQuery:
    """Validate GetLineage; 0 depth/nodes mean the defaults."""
    start = parse_start(request.start) if request.HasField("start") else parse_start(pb.StartNode())
    direction = parse_direction(request.direction)
    depth = request.max_depth or DEFAULT_MAX_DEPTH
    nodes = request.max_nodes or DEFAULT_MAX_NODES
    _check_int(depth, "max_depth", 1, MAX_DEPTH)
    _check_int(nodes, "max_nodes", 1, MAX_NODES)
    return LineageQuery(start, direction, depth, nodes)


def parse_read_version_bytes(
    request: pb.ReadVersionBytesRequest,
) -> tuple[str, int | None, str]:
    """(path or "", time or None, digest or "") of a ReadVersionBytes request, validated."""
    path = check_path(request.path, allow_empty=True) if request.path else ""
    at = parse_time(request, "at")
    digest = check_digest_prefix(request.digest) if request.digest else ""
    if not path and not digest:
        raise InvalidArgument("give a path, a digest, or both")
    if at is not None and (digest or not path):
        raise InvalidArgument("a time goes with a path, and not with a digest")
    return path, at, digest


def parse_record_accesses(
    request: pb.RecordAccessesRequest, *, now: int
) -> tuple[str, list[Access]]:
    """Validate RecordAccesses: the run id and at most ``MAX_ACCESSES`` accesses, each named
    by its index when it is refused; unset times become ``now``."""
    run_id = parse_run_id(request.run_id)
    count = len(request.accesses)
    if count > MAX_ACCESSES:
        raise InvalidArgument(
            f"accesses holds {count} accesses; send at most {MAX_ACCESSES} per call"
            " (the Python client batches for you)"
        )
    accesses = [
        parse_access(access, f"accesses[{index}]", now=now)
        for index, access in enumerate(request.accesses)
    ]
    return run_id, accesses


def parse_export_openlineage(
    request: pb.ExportOpenLineageRequest,
) -> tuple[list[str], int | None]:
    """Validate ExportOpenLineage: at most ``MAX_PAGE_SIZE`` run ids, and an optional time."""
    if len(request.run_ids) > MAX_PAGE_SIZE:
        raise InvalidArgument(f"at most {MAX_PAGE_SIZE} run ids per export")
    run_ids = [parse_run_id(run_id, "run_ids") for run_id in request.run_ids]
    return run_ids, parse_time(request, "since")


def parse_pin_versions(request: pb.PinVersionsRequest) -> tuple[StartNode, str]:
    """Validate PinVersions: where the pin starts, and its note."""
    note = request.note
    if "\x00" in note or len(note) > MAX_PIN_NOTE:
        raise InvalidArgument(f"note is at most {MAX_PIN_NOTE} characters without NUL bytes")
    return parse_start(request.start), note


def parse_version_id(value: int, field: str = "version_id") -> int:
    """A version id asked for by itself: a positive integer."""
    if value <= 0:
        raise InvalidArgument(f"{field} must be a positive version id, not {value}")
    return value


def parse_path_prefix(value: str, field: str = "path_prefix") -> str:
    """A Subscribe filter: empty (everything), or an absolute path that may end in "/" or stop
    in the middle of a name; otherwise held to the rules of a path."""
    if value:
        check_path(value.rstrip("/") or "/", field)
    return value

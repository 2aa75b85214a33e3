"""Domain values <-> protobuf messages, and validation of everything that arrives on the wire.

The only module besides ``service.py`` (and the client) that imports the generated stubs.
``*_to_pb`` build messages from ``lineage_core.models`` values; ``*_from_pb`` read them back.
``parse_*`` read *requests*: they validate at the edge (NUL bytes, relative or unnormalised
paths, unknown enum numbers, absurd sizes and times) and raise ``InvalidArgument`` with a
message a person can act on, naming the field.
"""

from __future__ import annotations

import base64
import binascii
import posixpath
import re
from collections.abc import Callable, Iterable, Mapping, Sequence, Sized
from dataclasses import dataclass
from typing import Any, TypeVar

from google.protobuf import timestamp_pb2

from lineage_core._proto.lineage.v1 import lineage_pb2 as pb
from lineage_core.errors import InvalidArgument
from lineage_core.limits import (
    DEFAULT_MAX_DEPTH,
    DEFAULT_MAX_NODES,
    DEFAULT_PAGE_SIZE,
    MAX_CAPTURE_METHOD,
    MAX_DEPTH,
    MAX_DIFF_BYTES,
    MAX_NAME_BYTES,
    MAX_NODES,
    MAX_NS,
    MAX_PAGE_SIZE,
    MAX_PATH_BYTES,
    MAX_PID,
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
    is_new_run_id,
)
from lineage_core.paths import is_normal_path

__all__ = [
    "ERROR_CLASS_KEY",
    "LineageQuery",
    "ListRunsQuery",
    "access_to_pb",
    "begin_run_to_pb",
    "capture_to_pb",
    "check_digest_prefix",
    "check_new_run_id",
    "check_path",
    "decode_page_token",
    "direction_to_pb",
    "encode_page_token",
    "event_from_pb",
    "event_to_pb",
    "gc_report_from_pb",
    "gc_report_to_pb",
    "graph_from_pb",
    "graph_to_pb",
    "ns_from_ts",
    "ns_to_ts",
    "parse_access",
    "parse_begin_run",
    "parse_capture",
    "parse_direction",
    "parse_end_run",
    "parse_lineage",
    "parse_list_runs",
    "parse_page_size",
    "parse_read_version_bytes",
    "parse_run_id",
    "parse_start",
    "parse_time",
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

# Times must fit int64 nanoseconds, which is what the store keeps: 1677-09-21 .. 2262-04-11.
_MIN_NS = MIN_NS
_MAX_NS = MAX_NS
_MAX_PID = MAX_PID

_HEX = re.compile(r"[0-9a-f]+")
_RUN_ID = re.compile(r"[A-Za-z0-9._:-]+")

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
_MODE_FROM_PB = _invert(_MODE_TO_PB)
_HOW_FROM_PB = _invert(_HOW_TO_PB)
# How a client may say it knew of an access ("digest" is for graph edges only).
_REPORTED_HOW_FROM_PB: dict[int, AccessHow] = {
    pb.ACCESS_HOW_DECLARED: AccessHow.DECLARED,
    pb.ACCESS_HOW_TRACED: AccessHow.TRACED,
}
_ACCESS_ROLE_FROM_PB = _invert(_ACCESS_ROLE_TO_PB)
# RunFile says kind and role in text (lineage.proto); anything else reads as a data input.
_RUN_FILE_KINDS = {kind.value: kind for kind in (EdgeKind.READ, EdgeKind.WROTE)}
_RUN_FILE_ROLES = {role.value: role for role in AccessRole}
_STATUS_FROM_PB = _invert(_STATUS_TO_PB)
_DIRECTION_FROM_PB = _invert(_DIRECTION_TO_PB)
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
    if not _MIN_NS <= ns <= _MAX_NS:
        raise InvalidArgument(
            f"{field} is out of range: times must lie between 1677-09-21 and 2262-04-11 UTC"
        )
    return ns


def _set_time(message: Any, field: str, ns: int | None) -> None:
    if ns is not None:
        ts = getattr(message, field)  # set in place: no Timestamp built and copied
        ts.seconds, ts.nanos = divmod(ns, 1_000_000_000)


def _get_time(message: Any, field: str) -> int | None:
    if not message.HasField(field):
        return None
    ts: timestamp_pb2.Timestamp = getattr(message, field)
    return ts.seconds * 1_000_000_000 + ts.nanos


# --- scalar validation -------------------------------------------------------------------


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


# --- page tokens -------------------------------------------------------------------------


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
    if version != "v1" or token_kind != kind or not 0 < before_id <= _MAX_NS:
        raise InvalidArgument(
            f"page_token belongs to another listing; pass the next_page_token of a {kind} answer"
        )
    return before_id


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


def parse_capture(request: pb.EndRunRequest) -> Capture | None:
    """Validate EndRun's capture (None when the client did not say)."""
    if not request.HasField("capture"):
        return None
    reasons = _parse_short_texts(request.capture.reasons, "capture.reasons")
    method = _check_text(request.capture.method, "capture.method", max_bytes=MAX_CAPTURE_METHOD)
    if request.capture.complete and reasons:
        raise InvalidArgument("a complete capture has no reasons to be partial")
    return Capture(complete=request.capture.complete, reasons=reasons, method=method)


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
        status=_STATUS_FROM_PB.get(message.status, RunStatus.RUNNING),
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
        diff_size=_check_int(message.diff_size, "code.diff_size", 0, _MAX_NS),
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
        pid=_check_int(request.pid, "pid", 0, _MAX_PID),
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


def _time_ns(ts: timestamp_pb2.Timestamp, field: str) -> int:
    """:func:`parse_time` for a Timestamp known to be set."""
    nanos = ts.nanos
    if not 0 <= nanos < 1_000_000_000:
        raise InvalidArgument(f"{field}.nanos must be between 0 and 999999999, not {nanos}")
    ns = ts.seconds * 1_000_000_000 + nanos
    if not _MIN_NS <= ns <= _MAX_NS:
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
    mode = _MODE_FROM_PB.get(message.mode)
    if mode is None:
        mode = _enum(_MODE_FROM_PB, message.mode, f"{field}.mode", pb.AccessMode)
    has = message.HasField
    first_at = _time_ns(message.first_at, "first_at") if has("first_at") else now
    last_at = _time_ns(message.last_at, "last_at") if has("last_at") else first_at
    if last_at < first_at:
        raise InvalidArgument(f"{field}.last_at is before {field}.first_at")
    how = _REPORTED_HOW_FROM_PB.get(message.how) or (
        AccessHow.TRACED
        if message.how == pb.ACCESS_HOW_UNSPECIFIED
        else _enum(_REPORTED_HOW_FROM_PB, message.how, f"{field}.how", pb.AccessHow)
    )
    role = _ACCESS_ROLE_FROM_PB.get(message.role) or (
        AccessRole.DATA
        if message.role == pb.ACCESS_ROLE_UNSPECIFIED
        else _enum(_ACCESS_ROLE_FROM_PB, message.role, f"{field}.role", pb.AccessRole)
    )
    digest = message.digest
    if digest:
        digest = _check_digest(digest, f"{field}.digest")
    size = message.size
    if size:
        _check_int(size, f"{field}.size", 0, _MAX_NS)
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
    status = _enum(_STATUS_FROM_PB, request.status, "status", pb.RunStatus)
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
        else _enum(_STATUS_FROM_PB, request.status, "status", pb.RunStatus)
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
            version_id=_check_int(message.version_id, f"{field}.version_id", 1, _MAX_NS)
        )
    return StartNode(run_id=parse_run_id(message.run_id, f"{field}.run_id"))


def parse_direction(number: int, field: str = "direction") -> Direction:
    """A walk direction; UNSPECIFIED is an error (say which way to walk)."""
    if number == pb.DIRECTION_UNSPECIFIED:
        raise InvalidArgument(
            f"{field} is required: DIRECTION_UPSTREAM, DIRECTION_DOWNSTREAM or DIRECTION_BOTH"
        )
    return _enum(_DIRECTION_FROM_PB, number, field, pb.Direction)


def direction_to_pb(direction: Direction) -> pb.Direction.ValueType:
    """The wire number of a direction."""
    return _DIRECTION_TO_PB[direction]


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
        role=_ACCESS_ROLE_FROM_PB.get(message.role, AccessRole.DATA),
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

"""The Python client of lineaged: typed results, errors mapped back to ``lineage_core.errors``.

Every method returns the frozen dataclasses of ``lineage_core.models`` (never protobuf messages) and
raises the same exception classes the daemon raised. Paths may be relative: they are made
absolute against the current directory. Files outside every watched root are hashed here,
as the calling user, because the daemon never opens them (docs/design.md, invariant 6).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import getpass
import os
import re
import socket as socket_module
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import grpc
from lineage_core import errors, hasher, limits, wire
from lineage_core._proto.lineage.v1 import lineage_pb2 as pb
from lineage_core._proto.lineage.v1 import lineage_pb2_grpc as pb_grpc
from lineage_core.errors import (
    DaemonUnavailable,
    DeadlineExceeded,
    InvalidArgument,
    LineageError,
    NotFound,
)
from lineage_core.models import (
    Access,
    AccessHow,
    AccessMode,
    AccessRole,
    Capture,
    CodeState,
    Direction,
    EnvState,
    Event,
    GcReport,
    Graph,
    PinReport,
    Root,
    Run,
    RunFile,
    RunStart,
    RunStatus,
    StartNode,
    Status,
    VerifyItem,
    VerifyState,
    Version,
    run_id_time_ns,
)
from lineage_core.redact import Redactor

from lineage_client import mlflow_bridge
from lineage_client._reach import PARENT_ENV, find_socket, not_running, permission_denied

__all__ = [
    "Client",
    "EventStream",
    "Page",
    "RunFiles",
    "RunRecorder",
    "digest_file",
    "parse_time",
]

if TYPE_CHECKING:
    from lineage_client.reproduce import Checkout, Reproduction, Restored

_T = TypeVar("_T")
_HEX = re.compile(r"[0-9a-fA-F]{8,64}")
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|d|w)(?:\s+ago)?", re.IGNORECASE)
_UNITS = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 604800}
PARENT_WAIT = 30.0  # how long after its id was made a parent from PARENT_ENV is waited for
_MAX_RECEIVE = limits.MAX_ANSWER_BYTES


@dataclass(frozen=True, slots=True)
class Page(Generic[_T]):
    """One page of a listing; pass ``next_page_token`` back for the next ("" on the last)."""

    items: tuple[_T, ...]
    next_page_token: str = ""


@dataclass(frozen=True, slots=True)
class RunFiles:
    """What ``Client.run_files`` answers: a run's files and its reproduction links."""

    files: tuple[RunFile, ...]
    reproduces: str = ""
    reproduced_by: tuple[str, ...] = ()


def digest_file(path: str | os.PathLike[str]) -> tuple[str, int, int]:
    """BLAKE3 hex digest, size and mtime_ns of a file's complete, stable content.

    The daemon's own hasher (one descriptor, fstat before and after, bounded retries), run
    here because files outside the watched roots are hashed by the client, as the user.
    """
    result = hasher.hash_file(path)
    return result.digest, result.stat_key.size, result.stat_key.mtime_ns


def parse_time(text: str | int | dt.datetime, *, now: int | None = None) -> int:
    """Nanoseconds since the epoch from ISO 8601, an epoch in seconds, or a duration ago (``2h``).

    Naive ISO times are local time. ``now``, ``today`` and ``yesterday`` are understood too.
    """
    if isinstance(text, int):
        return text
    if isinstance(text, dt.datetime):
        moment = text if text.tzinfo else text.astimezone()
        return int(moment.timestamp()) * 1_000_000_000 + moment.microsecond * 1000
    current = time.time_ns() if now is None else now
    value = text.strip()
    lowered = value.lower()
    if lowered == "now":
        return current
    if lowered in ("today", "yesterday"):
        midnight = dt.datetime.fromtimestamp(current / 1e9).replace(
            hour=0, minute=0, second=0, microsecond=0
        )
        if lowered == "yesterday":
            midnight -= dt.timedelta(days=1)
        return parse_time(midnight)
    duration = _DURATION.fullmatch(value)
    if duration:
        seconds = float(duration.group(1)) * _UNITS[duration.group(2).lower()]
        return current - int(seconds * 1_000_000_000)
    if re.fullmatch(r"\d{9,11}(\.\d+)?", value):
        return int(float(value) * 1_000_000_000)
    try:
        return parse_time(dt.datetime.fromisoformat(value))
    except ValueError:
        raise InvalidArgument(
            f"cannot read {text!r} as a time: use 2024-05-01T14:02 (local), 2024-05-01T12:02Z,"
            " an epoch in seconds, or a duration ago such as 30m, 2h or 7d"
        ) from None


class EventStream:
    """An open Subscribe stream: iterate for ``Event`` values; ``cancel()`` ends it."""

    def __init__(self, call: Any, client: Client) -> None:
        self._call = call
        self._client = client

    def __iter__(self) -> Iterator[Event]:
        try:
            for message in self._call:
                yield wire.event_from_pb(message)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.CANCELLED:
                return
            raise self._client._error(exc) from None

    def cancel(self) -> None:
        """Stop the stream; iteration ends."""
        self._call.cancel()

    def __enter__(self) -> EventStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cancel()


class Client:
    """A connection to lineaged over its Unix socket (default) or TCP with a token.

    ``Client()`` finds the socket the way the daemon picks it (``--socket`` aside):
    ``$LINEAGE_SOCKET``, systemd's runtime directory, ``$XDG_RUNTIME_DIR/lineaged``,
    ``/tmp/lineaged-$UID``, then the system service's ``/run/lineaged``.
    """

    def __init__(
        self,
        socket: str | os.PathLike[str] | None = None,
        *,
        target: str | None = None,
        token: str | None = None,
        tls: bool | str = False,
        timeout: float | None = 30.0,
    ) -> None:
        if socket is not None and target is not None:
            raise InvalidArgument("give either socket or target, not both")
        self._timeout = timeout
        self._metadata: tuple[tuple[str, str], ...] = (
            (("authorization", f"Bearer {token}"),) if token else ()
        )
        self._roots: tuple[Root, ...] | None = None
        self._lock = threading.Lock()
        options = [
            ("grpc.max_receive_message_length", _MAX_RECEIVE),
            ("grpc.max_send_message_length", _MAX_RECEIVE),
        ]
        if target is not None:
            self.socket = ""
            self.target = target
            if tls:
                roots = Path(tls).read_bytes() if isinstance(tls, str) else None
                credentials = grpc.ssl_channel_credentials(root_certificates=roots)
                self._channel = grpc.secure_channel(target, credentials, options=options)
            else:
                self._channel = grpc.insecure_channel(target, options=options)
        else:
            self.socket = find_socket(socket)
            self.target = f"unix:{self.socket}"
            self._channel = grpc.insecure_channel(self.target, options=options)
        self._stub = pb_grpc.LineageServiceStub(self._channel)

    def __repr__(self) -> str:
        return f"Client({self.target!r})"

    def close(self) -> None:
        """Close the channel."""
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- plumbing ------------------------------------------------------------------------

    def _error(self, exc: grpc.RpcError) -> LineageError:
        """The ``lineage_core.errors`` exception for a failed call."""
        code = exc.code()
        details = exc.details() or code.name
        for key, value in exc.trailing_metadata() or ():
            if key == wire.ERROR_CLASS_KEY and str(value) in errors.ERROR_CLASSES:
                return errors.error_for_status(code.name, details, str(value))
        if code == grpc.StatusCode.UNAVAILABLE:
            where = self.socket or self.target
            if "permission denied" in details.lower():
                return permission_denied(where)
            if self.socket:
                return not_running(where)
            return DaemonUnavailable(f"lineaged is not reachable at {where}: {details}")
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return DeadlineExceeded(f"lineaged did not answer within {self._timeout} s")
        return errors.error_for_status(code.name, details)

    def _call(self, method: str, request: Any, timeout: float | None = None) -> Any:
        try:
            return getattr(self._stub, method)(
                request, timeout=timeout or self._timeout, metadata=self._metadata
            )
        except grpc.RpcError as exc:
            raise self._error(exc) from None

    @staticmethod
    def _abspath(path: str | os.PathLike[str]) -> str:
        # The daemon stores canonical paths (its roots are resolved, and it never follows a
        # link on a client's behalf), so links are resolved here, where the user's rights apply.
        resolved = os.path.realpath(os.path.expanduser(os.fspath(path)))
        if not resolved.isascii():
            try:
                resolved.encode("utf-8")
            except UnicodeEncodeError:
                raise InvalidArgument(
                    f"{os.fsencode(resolved)!r} is not valid UTF-8: lineaged records no such "
                    "name (it skips them with a warning; see docs/security.md)"
                ) from None
        return resolved

    def roots(self) -> tuple[Root, ...]:
        """The daemon's watched roots (asked once per client)."""
        with self._lock:
            if self._roots is None:
                self._roots = self.status().roots
            return self._roots

    def under_root(self, path: str) -> str | None:
        """``path`` (or its resolved form) when it lies under a watched root, else None."""
        for candidate in dict.fromkeys((path, os.path.realpath(path))):
            for root in self.roots():
                base = root.path.rstrip("/") or "/"
                if candidate == base or candidate.startswith(base.rstrip("/") + "/"):
                    return candidate
        return None

    # --- queries -------------------------------------------------------------------------

    def status(self) -> Status:
        """Version, uptime, roots with health, counts, scan state, queue depth."""
        return wire.status_from_pb(self._call("GetStatus", pb.GetStatusRequest()))

    def history(
        self, path: str | os.PathLike[str], *, page_size: int = 0, page_token: str = ""
    ) -> Page[Version]:
        """One page of every version ``path`` has had, newest first."""
        request = pb.GetHistoryRequest(
            path=self._abspath(path), page_size=page_size, page_token=page_token
        )
        response = self._call("GetHistory", request)
        return Page(
            tuple(wire.version_from_pb(v) for v in response.versions), response.next_page_token
        )

    def iter_history(
        self, path: str | os.PathLike[str], *, page_size: int = 0
    ) -> Iterator[Version]:
        """Every version ``path`` has had, newest first, fetched page by page."""
        token = ""
        while True:
            page = self.history(path, page_size=page_size, page_token=token)
            yield from page.items
            token = page.next_page_token
            if not token:
                return

    def find_digest(self, digest: str, *, page_size: int = 1000) -> list[Version]:
        """Every version (any path) that held a digest or a unique prefix (>= 8 hex) of one."""
        response = self._call(
            "FindDigest", pb.FindDigestRequest(digest=digest, page_size=page_size)
        )
        return [wire.version_from_pb(v) for v in response.versions]

    def version_at(self, path: str | os.PathLike[str], at: int | str | dt.datetime) -> Version:
        """The version ``path`` held at a time (ns, ISO 8601, or a duration ago like ``2h``)."""
        request = pb.GetVersionAtRequest(path=self._abspath(path), at=wire.ns_to_ts(parse_time(at)))
        return wire.version_from_pb(self._call("GetVersionAt", request).version)

    def get_version(self, version_id: int) -> Version:
        """One version by id."""
        response = self._call("GetVersion", pb.GetVersionRequest(version_id=version_id))
        return wire.version_from_pb(response.version)

    def get_run(self, run_id: str) -> Run:
        """One run by id or unique prefix (>= 8 characters), with its code diff and environment."""
        return wire.run_from_pb(self._call("GetRun", pb.GetRunRequest(run_id=run_id)).run)

    def list_runs(
        self,
        *,
        name: str = "",
        status: RunStatus | str | None = None,
        since: int | str | dt.datetime | None = None,
        until: int | str | dt.datetime | None = None,
        page_size: int = 0,
        page_token: str = "",
        parent_run_id: str = "",
    ) -> Page[Run]:
        """One page of runs, newest first, filtered by name, status, start time and parent
        (``parent_run_id``: the runs nested in that one)."""
        request = pb.ListRunsRequest(
            name=name,
            parent_run_id=parent_run_id,
            status=wire.run_status_to_pb(RunStatus(status) if status else None),
            page_size=page_size,
            page_token=page_token,
        )
        if since is not None:
            request.since.CopyFrom(wire.ns_to_ts(parse_time(since)))
        if until is not None:
            request.until.CopyFrom(wire.ns_to_ts(parse_time(until)))
        response = self._call("ListRuns", request)
        memo: dict[Any, Any] = {}
        runs = tuple([wire.run_from_pb(run, memo) for run in response.runs])
        return Page(runs, response.next_page_token)

    def iter_runs(self, *, limit: int | None = None, **filters: Any) -> Iterator[Run]:
        """Runs newest first across pages (``list_runs`` filters), at most ``limit``."""
        token = ""
        count = 0
        while True:
            page_size = min(1000, limit - count) if limit is not None else 0
            page = self.list_runs(page_size=page_size, page_token=token, **filters)
            for run in page.items:
                yield run
                count += 1
                if limit is not None and count >= limit:
                    return
            token = page.next_page_token
            if not token:
                return

    # --- lineage -------------------------------------------------------------------------

    def lineage(
        self,
        start: StartNode | str,
        direction: Direction | str = Direction.UPSTREAM,
        *,
        max_depth: int = 0,
        max_nodes: int = 0,
    ) -> Graph:
        """The lineage graph around ``start`` (a StartNode or any target ``trace`` accepts)."""
        direction = Direction(direction)
        last: NotFound | None = None
        for node in self.resolve(start) if isinstance(start, str) else [start]:
            request = pb.GetLineageRequest(
                start=wire.start_to_pb(node),
                direction=wire.direction_to_pb(direction),
                max_depth=max_depth,
                max_nodes=max_nodes,
            )
            try:
                return wire.graph_from_pb(self._call("GetLineage", request).graph)
            except NotFound as exc:
                last = exc
        assert last is not None  # resolve() yields at least one node
        raise last

    def trace(self, target: str, *, max_depth: int = 0, max_nodes: int = 0) -> Graph:
        """Upstream lineage: the data, code and environment that made ``target``.

        ``target`` is a path, ``PATH@TIME``, a digest or a prefix of one (>= 8 hex), a run id,
        or a node id (``version:12``, ``run:<id>``). A path outside every watched root is
        hashed here and looked up by digest, so copies anywhere on disk trace back.
        """
        return self.lineage(target, Direction.UPSTREAM, max_depth=max_depth, max_nodes=max_nodes)

    def impact(self, target: str, *, max_depth: int = 0, max_nodes: int = 0) -> Graph:
        """Downstream lineage: every run and output that used ``target`` (see ``trace``)."""
        return self.lineage(target, Direction.DOWNSTREAM, max_depth=max_depth, max_nodes=max_nodes)

    def verify(self, target: StartNode | str) -> list[VerifyItem]:
        """Every input upstream of ``target`` and what its path holds now.

        Inputs outside every root come back UNKNOWN from the daemon; they are checked here.
        """
        return self.verify_start(target)[1]

    def verify_start(self, target: StartNode | str) -> tuple[StartNode, list[VerifyItem]]:
        """:meth:`verify`, with the start node ``target`` turned out to mean."""
        last: NotFound | None = None
        for node in self.resolve(target) if isinstance(target, str) else [target]:
            try:
                response = self._call("Verify", pb.VerifyRequest(start=wire.start_to_pb(node)))
            except NotFound as exc:
                last = exc
                continue
            return node, [self._check_locally(wire.verify_item_from_pb(i)) for i in response.items]
        assert last is not None
        raise last

    @staticmethod
    def target_gone(start: StartNode) -> str:
        """The path of a start that names a path's current state when that path no longer
        exists (the inputs of its last version may all match; the file is still gone)."""
        if start.path and start.at is None and not os.path.lexists(start.path):
            return start.path
        return ""

    @staticmethod
    def _check_locally(item: VerifyItem) -> VerifyItem:
        if item.state is not VerifyState.UNKNOWN:
            return item
        try:
            digest, _, _ = digest_file(item.path)
        except FileNotFoundError:
            return dataclasses.replace(item, state=VerifyState.MISSING)
        except OSError:
            return item
        state = VerifyState.MATCH if digest == item.recorded_digest else VerifyState.CHANGED
        return dataclasses.replace(item, state=state, current_digest=digest)

    def resolve(self, target: str) -> list[StartNode]:
        """The start nodes a target may mean, most likely first (tried in this order)."""
        text = target.strip()
        if not text or "\x00" in text:
            raise InvalidArgument(f"{target!r} is not a path, digest or run id")
        kind, _, rest = text.partition(":")
        if kind in ("mlflow", "runs", "models") and rest:
            return [StartNode(run_id=mlflow_bridge.lineage_run_id(text))]
        if kind == "run" and rest:
            return [StartNode(run_id=rest)]
        if kind == "version" and rest.isdigit():
            return [StartNode(version_id=int(rest))]
        if kind == "digest" and rest:
            return [StartNode(digest=rest.lower())]
        path = self._abspath(text)
        if os.path.lexists(path):
            return [self._path_start(path)]
        if "@" in text:
            name, _, when = text.rpartition("@")
            try:
                at = parse_time(when)
            except InvalidArgument:
                pass
            else:
                return [StartNode(path=self._abspath(name), at=at)]
        nodes: list[StartNode] = []
        if _HEX.fullmatch(text):
            nodes.append(StartNode(digest=text.lower()))
        if "/" in text or text.startswith(("~", ".")):
            nodes.append(StartNode(path=path))
        else:
            if re.fullmatch(r"[A-Za-z0-9._:-]{1,128}", text):
                nodes.append(StartNode(run_id=text))
            nodes.append(StartNode(path=path))  # a file of the cwd that no longer exists
        return nodes

    def _path_start(self, path: str) -> StartNode:
        inside = self.under_root(path)
        if inside is not None:
            return StartNode(path=inside)
        if os.path.isdir(path):
            raise InvalidArgument(f"{path} is a directory; name a file")
        digest, _, _ = digest_file(path)
        return StartNode(digest=digest)

    # --- runs ----------------------------------------------------------------------------

    def begin_run(self, start: RunStart, *, wait_for_parent: bool = True) -> Run:
        """Record a new run; returns it with its run id (``start.run_id`` if one was chosen).

        A parent named by ``$LINEAGE_RUN_ID`` may not be recorded yet: ``lineage run`` starts
        its command before its own BeginRun reaches the daemon. Such a parent is waited for
        until ``PARENT_WAIT`` seconds after its id was made (the id carries the time) before
        the daemon's NotFound is raised: a parent whose BeginRun failed, or a stale variable,
        costs the runs nested later nothing. ``wait_for_parent=False`` never waits (a spooled
        run's delivery decides on its own).

        Secrets in argv, params, the git remote and variables are redacted here, before
        sending (docs/security.md; ``$LINEAGE_REDACT_NAMES`` adds names); the daemon redacts
        again.
        """
        request = wire.begin_run_to_pb(client_redactor().run_start(start))
        pause = 0.01
        while True:
            try:
                return wire.run_from_pb(self._call("BeginRun", request).run)
            except NotFound:
                parent = start.parent_run_id
                made = run_id_time_ns(parent)
                if (
                    not wait_for_parent
                    or not parent
                    or parent != os.environ.get(PARENT_ENV)
                    or made is None
                ):
                    raise
                left = (made - time.time_ns()) / 1e9 + PARENT_WAIT
                if left <= 0:
                    raise
                time.sleep(min(pause, left))
                pause = min(2 * pause, 0.25)

    def record_accesses(self, run_id: str, accesses: Sequence[Access]) -> int:
        """Report file accesses of a running run (batched); returns edges added or updated."""
        recorded = 0
        for first in range(0, len(accesses), limits.MAX_ACCESSES):
            request = pb.RecordAccessesRequest(run_id=run_id)
            batch = accesses[first : first + limits.MAX_ACCESSES]
            request.accesses.extend(map(wire.access_to_pb, batch))
            recorded += self._call("RecordAccesses", request).recorded
        return recorded

    def end_run(
        self,
        run_id: str,
        *,
        status: RunStatus | str,
        exit_code: int | None = None,
        ended_at: int | None = None,
        warnings: Sequence[str] = (),
        capture: Capture | None = None,
    ) -> Run:
        """Finish a run with its exit status; outputs resolve to what their paths hold now.

        ``capture`` says how completely its file accesses were traced (``lineage run``).
        """
        request = pb.EndRunRequest(
            run_id=run_id,
            status=wire.run_status_to_pb(RunStatus(status)),
            warnings=list(warnings),
        )
        if capture is not None:
            wire.capture_to_pb(request.capture, capture)
        if exit_code is not None:
            request.exit_code = exit_code
        if ended_at is not None:
            request.ended_at.CopyFrom(wire.ns_to_ts(ended_at))
        return wire.run_from_pb(self._call("EndRun", request).run)

    def run(
        self,
        name: str,
        *,
        params: Mapping[str, object] | None = None,
        argv: Sequence[str] | None = None,
        code: CodeState | None = None,
        env: EnvState | None = None,
        parent_run_id: str | None = None,
        capture: bool = True,
    ) -> RunRecorder:
        """A context manager recording one run: declare I/O with ``input()``/``output()``.

        ``parent_run_id`` defaults to ``$LINEAGE_RUN_ID``: code run under ``lineage run``
        records its runs as children of that run. With ``capture`` (the default) the run's
        code and environment are recorded as ``lineage run`` records them: the git state of
        the working directory (unless ``code`` is given), this interpreter's environment
        (unless ``env`` is), and, when it ends, the script and project modules loaded.
        """
        start = RunStart(
            name=name,
            argv=tuple(sys.argv if argv is None else argv),
            cwd=os.getcwd(),
            host=socket_module.gethostname(),
            user=getpass.getuser(),
            pid=os.getpid(),
            params={str(k): str(v) for k, v in (params or {}).items()},
            parent_run_id=os.environ.get(PARENT_ENV, "")
            if parent_run_id is None
            else parent_run_id,
            code=code,
            env=env,
        )
        return RunRecorder(self, start, capture=capture)

    def export_openlineage(
        self, run_ids: Sequence[str] = (), *, since: int | str | dt.datetime | None = None
    ) -> Iterator[str]:
        """The OpenLineage events (one JSON document each) of the named runs, else of the runs
        started at or after ``since``, else of every run; oldest first (no deadline)."""
        request = pb.ExportOpenLineageRequest(run_ids=list(run_ids))
        if since is not None:
            request.since.seconds, request.since.nanos = divmod(parse_time(since), 1_000_000_000)
        call = self._stub.ExportOpenLineage(request, metadata=self._metadata)
        try:
            for message in call:
                yield message.json
        except grpc.RpcError as exc:
            raise self._error(exc) from None
        finally:
            call.cancel()

    def subscribe(self, path_prefix: str = "") -> EventStream:
        """Stream new versions and run events under ``path_prefix`` (no deadline)."""
        prefix = self._abspath(path_prefix) if path_prefix else ""
        if path_prefix.endswith("/") and prefix != "/":
            prefix += "/"
        call = self._stub.Subscribe(
            pb.SubscribeRequest(path_prefix=prefix), metadata=self._metadata
        )
        # The daemon sends headers once it is subscribed: after this, no event can be missed.
        call.initial_metadata()
        return EventStream(call, self)

    # --- content store: keep, restore, reproduce (docs/reproduce.md) ----------------------

    def run_files(self, run_id: str) -> RunFiles:
        """Every version a run read or wrote, whether its bytes are kept, and its
        reproduction links."""
        response = self._call("GetRunFiles", pb.GetRunFilesRequest(run_id=run_id))
        return RunFiles(
            files=tuple(wire.run_file_from_pb(f) for f in response.files),
            reproduces=response.reproduces,
            reproduced_by=tuple(response.reproduced_by),
        )

    def read_version_bytes(
        self, path: str = "", *, at: int | None = None, digest: str = ""
    ) -> tuple[Version, Iterator[bytes]]:
        """The version meant (PATH: its newest; PATH and a time; PATH and a digest; a digest)
        and an iterator over its kept bytes, which the daemon verified before sending them.

        The caller writes them: the daemon opens no path outside its roots for a client.
        """
        request = pb.ReadVersionBytesRequest(
            path=self._abspath(path) if path else "", digest=digest
        )
        if at is not None:
            request.at.CopyFrom(wire.ns_to_ts(at))
        try:
            call = self._stub.ReadVersionBytes(request, metadata=self._metadata)
            first = next(call)
        except grpc.RpcError as exc:
            raise self._error(exc) from None
        except StopIteration:
            raise LineageError("the daemon sent no version") from None

        def chunks() -> Iterator[bytes]:
            try:
                if first.data:
                    yield first.data
                for message in call:
                    yield message.data
            except grpc.RpcError as exc:
                raise self._error(exc) from None
            finally:
                call.cancel()

        return wire.version_from_pb(first.version), chunks()

    def kept_version(self, path: str = "", *, digest: str = "") -> Version | None:
        """The version whose bytes ``read_version_bytes`` would give back, or None when they
        are not kept (nothing is read or sent)."""
        try:
            return self.locate_version(path, digest=digest)[0]
        except NotFound:
            return None

    def locate_version(
        self, path: str = "", *, at: int | None = None, digest: str = ""
    ) -> tuple[Version, str]:
        """The version ``read_version_bytes`` would send and the file the daemon keeps its
        bytes in (readable by this user or not); NotFound when they are not kept."""
        request = pb.ReadVersionBytesRequest(
            path=self._abspath(path) if path else "", digest=digest, probe=True
        )
        if at is not None:
            request.at.CopyFrom(wire.ns_to_ts(at))
        try:
            for message in self._stub.ReadVersionBytes(request, metadata=self._metadata):
                return wire.version_from_pb(message.version), message.object_path
        except grpc.RpcError as exc:
            raise self._error(exc) from None
        raise LineageError("the daemon sent no version")

    def pin(self, target: str, *, note: str = "") -> PinReport:
        """Pin a version and everything upstream of it: a path (its current version),
        ``PATH@TIME``, a digest (every version with it) or a run (its files)."""
        last: NotFound | None = None
        for node in self.resolve(target):
            request = pb.PinVersionsRequest(start=wire.start_to_pb(node), note=note)
            try:
                return wire.pin_report_from_pb(self._call("PinVersions", request))
            except NotFound as exc:
                last = exc
        assert last is not None
        raise last

    def gc(self, *, dry_run: bool = False) -> GcReport:
        """Free the kept bytes the keep policy no longer wants, never upstream of a pin."""
        request = pb.CollectGarbageRequest(dry_run=dry_run)
        return wire.gc_report_from_pb(self._call("CollectGarbage", request, timeout=3600))

    def link_reproduction(self, run_id: str, original_run_id: str) -> None:
        """Record that ``run_id`` re-ran ``original_run_id``."""
        request = pb.LinkReproductionRequest(run_id=run_id, original_run_id=original_run_id)
        self._call("LinkReproduction", request)

    def restore(
        self,
        target: str | os.PathLike[str],
        *,
        to: str | os.PathLike[str] | None = None,
        force: bool = False,
    ) -> Restored:
        """Write the recorded bytes of ``PATH``, ``PATH@TIME`` or ``PATH@DIGEST`` back (or to
        ``to``), checked against the digest; refuses to overwrite unsaved content unless
        ``force``."""
        # (d) cycle: reproduce imports this module (digest_file, parse_time)
        from lineage_client.reproduce import restore

        return restore(self, os.fspath(target), to=to, force=force)

    def checkout(self, run_id: str, to: str | os.PathLike[str]) -> Checkout:
        """Materialise what a run read, at the versions it read, and its code, under ``to``."""
        # (d) cycle: reproduce imports this module (digest_file, parse_time)
        from lineage_client.reproduce import checkout

        return checkout(self, run_id, os.fspath(to))

    def reproduce(
        self,
        run_id: str,
        *,
        in_dir: str | os.PathLike[str] | None = None,
        output: int | None = None,
    ) -> Reproduction:
        """Check a run out, re-run it under ``lineage run`` and compare every output by digest.

        ``output`` is where the re-run command's stdout goes (a file descriptor; default ours).
        """
        # (d) cycle: reproduce imports this module (digest_file, parse_time)
        from lineage_client.reproduce import reproduce

        return reproduce(
            self, run_id, in_dir=os.fspath(in_dir) if in_dir is not None else None, output=output
        )


REDACT_NAMES_ENV = "LINEAGE_REDACT_NAMES"  # extra comma-separated secret names (fnmatch)


def client_redactor() -> Redactor:
    """The client's redaction rules: the built-in ones plus ``$LINEAGE_REDACT_NAMES``."""
    extra = os.environ.get(REDACT_NAMES_ENV, "")
    return Redactor(names=tuple(n.strip() for n in extra.split(",") if n.strip()))


class RunRecorder:
    """One run in progress (``with client.run(...) as run``): begun on enter, ended on exit.

    A clean exit ends the run ``succeeded``; an exception ``failed`` (exit code 1) and is
    re-raised; ``KeyboardInterrupt`` ends it ``interrupted``; ``SystemExit(n)`` uses ``n``.
    """

    def __init__(self, client: Client, start: RunStart, *, capture: bool = False) -> None:
        self._client = client
        self._start = start
        self._capture = capture
        self._pending: list[Access] = []
        self._outputs: dict[str, tuple[int, AccessHow]] = {}
        self._warnings: list[str] = []
        self.run: Run | None = None  # as begun
        self.result: Run | None = None  # as ended

    def __repr__(self) -> str:
        state = self.result.status if self.result else ("running" if self.run else "not begun")
        return f"<RunRecorder {self._start.name!r} {self.run_id or '-'} {state}>"

    @property
    def run_id(self) -> str:
        """The run's id once begun, else ""."""
        return self.run.run_id if self.run else ""

    def __enter__(self) -> RunRecorder:
        start = dataclasses.replace(self._start, started_at=time.time_ns())
        if self._capture:
            # Deferred (e): the run wrapper's modules (30 ms) serve client.run() only, not
            # every query or CLI command; tests/test_client_surface.py holds this.
            from lineage_client.capture.declared import describe_code, describe_env

            if start.code is None:
                start = dataclasses.replace(start, code=describe_code(start.cwd, self._warnings))
            if start.env is None:
                start = dataclasses.replace(start, env=describe_env())
        self.run = self._client.begin_run(start)
        return self

    def _collect_sources(self) -> None:
        """The script and project modules this process loaded, as code inputs."""
        assert self.run is not None
        from lineage_client.capture.declared import loaded_sources, source_accesses  # (e), above

        self._pending += source_accesses(loaded_sources(), self.run.started_at, time.time_ns())

    def _files(self, path: str | os.PathLike[str]) -> list[str]:
        absolute = Client._abspath(path)
        if os.path.isdir(absolute):
            # Links resolved, as every path the client sends is (the daemon follows none).
            return sorted(
                {
                    os.path.realpath(os.path.join(folder, name))
                    for folder, _, names in os.walk(absolute)
                    for name in names
                }
            )
        return [absolute]

    def input(
        self, path: str | os.PathLike[str], *, role: AccessRole | str = AccessRole.DATA
    ) -> None:
        """Declare that the run read ``path`` (a file, or every file under a directory);
        ``role`` is data or code."""
        try:
            access_role = AccessRole(role)
        except ValueError:
            raise InvalidArgument(f"role is data or code, not {str(role)!r}") from None
        now = time.time_ns()
        for file in self._files(path):
            access = Access(
                path=file,
                mode=AccessMode.READ,
                first_at=now,
                last_at=now,
                how=AccessHow.DECLARED,
                role=access_role,
            )
            if self._client.under_root(file) is None:
                # The daemon never opens files outside its roots: hash as the user, now.
                digest, size, mtime_ns = digest_file(file)
                access = dataclasses.replace(access, digest=digest, size=size, mtime_ns=mtime_ns)
            self._pending.append(access)
        if len(self._pending) >= limits.MAX_ACCESSES:
            self.flush()

    def output(self, path: str | os.PathLike[str]) -> None:
        """Declare that the run wrote ``path``; it is resolved to its content when the run ends."""
        now = time.time_ns()
        for file in self._files(path):
            self._outputs.setdefault(file, (now, AccessHow.DECLARED))

    def warn(self, message: str) -> None:
        """Attach a warning to the run (shown by ``lineage show``)."""
        self._warnings.append(message)

    def flush(self) -> None:
        """Send the accesses declared so far."""
        if self.run is None:
            raise InvalidArgument("the run has not begun: use it as `with client.run(...) as run`")
        pending, self._pending = self._pending, []
        if pending:
            self._client.record_accesses(self.run.run_id, pending)

    def _collect_outputs(self) -> None:
        now = time.time_ns()
        for file, (first_at, how) in self._outputs.items():
            access = Access(
                path=file, mode=AccessMode.WRITE, first_at=first_at, last_at=now, how=how
            )
            if self._client.under_root(file) is None:
                try:
                    digest, size, mtime_ns = digest_file(file)
                except FileNotFoundError:
                    self._warnings.append(f"declared output {file} does not exist")
                    continue
                access = dataclasses.replace(access, digest=digest, size=size, mtime_ns=mtime_ns)
            self._pending.append(access)
        self._outputs.clear()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self.run is None:
            return
        status, exit_code = RunStatus.SUCCEEDED, 0
        if isinstance(exc, KeyboardInterrupt):
            status, exit_code = RunStatus.INTERRUPTED, 130
        elif isinstance(exc, SystemExit):
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            status, exit_code = (RunStatus.SUCCEEDED if code == 0 else RunStatus.FAILED), code
        elif exc is not None:
            status, exit_code = RunStatus.FAILED, 1
        try:
            self._collect_outputs()
            if self._capture:
                self._collect_sources()
            self.flush()
        except LineageError as error:
            if exc is None:
                raise
            exc.add_note(f"lineage: recording the run's files failed: {error.message}")
        finally:
            try:
                self.result = self._client.end_run(
                    self.run.run_id, status=status, exit_code=exit_code, warnings=self._warnings
                )
            except LineageError as error:
                if exc is None:
                    raise
                exc.add_note(f"lineage: ending run {self.run.run_id} failed: {error.message}")

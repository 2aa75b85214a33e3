"""The ``lineage.v1.LineageService`` servicer: validate the request, ask the engine, answer.

Servicers only raise ``lineage_core.errors`` exceptions; the error interceptor in ``server.py`` turns
them into status codes. Every request is checked once, by ``lineage_core.gate``, before the
engine sees it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

from lineage_core import gate, limits, wire
from lineage_core._proto.lineage.v1 import lineage_pb2 as pb
from lineage_core._proto.lineage.v1 import lineage_pb2_grpc as pb_grpc
from lineage_core.errors import DeadlineExceeded, ResourceExhausted
from lineage_core.models import Status

from lineaged.engine import Engine

__all__ = ["SERVICE_NAME", "LineageServicer"]

SERVICE_NAME: str = pb.DESCRIPTOR.services_by_name["LineageService"].full_name
_POLL_SECONDS = 0.25  # how often a Subscribe stream notices cancellation and shutdown

_T = TypeVar("_T")


def _check_deadline(context: Any) -> None:
    """Stop before more work when the caller's deadline has already passed."""
    remaining = context.time_remaining()
    if remaining is not None and remaining <= 0:
        raise DeadlineExceeded("the call's deadline passed before the daemon could answer")


def _page(
    fetch: Callable[[int], Sequence[_T]], page_size: int, row_id: Callable[[_T], int], kind: str
) -> tuple[list[_T], str]:
    """One page plus the token of the next; asks for one extra row to know whether there is one."""
    rows = list(fetch(min(page_size + 1, limits.MAX_PAGE_SIZE)))
    if len(rows) > page_size or (len(rows) == page_size == limits.MAX_PAGE_SIZE):
        rows = rows[:page_size]
        return rows, gate.encode_page_token(kind, row_id(rows[-1]))
    return rows, ""


class LineageServicer(pb_grpc.LineageServiceServicer):
    """Answers every RPC of ``lineage.v1.LineageService`` from an ``Engine``."""

    def __init__(
        self,
        engine: Engine,
        *,
        stopping: threading.Event | None = None,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self._engine = engine
        # Set by the server when it stops, so Subscribe streams end instead of holding the grace.
        self._stopping = stopping or threading.Event()
        self._clock = clock
        self._status_answer: tuple[Status, pb.GetStatusResponse] | None = None

    def GetStatus(self, request: pb.GetStatusRequest, context: Any) -> pb.GetStatusResponse:
        """The daemon's version, roots, counts, scan state and queue depth."""
        status = self._engine.status()
        # Scripts and dashboards poll status, and it rarely changes between two polls: an equal
        # status gets the answer already encoded (gRPC only reads it, so threads may share it).
        answered = self._status_answer
        if answered is None or answered[0] != status:
            answered = self._status_answer = (status, wire.status_to_pb(status))
        return answered[1]

    def GetHistory(self, request: pb.GetHistoryRequest, context: Any) -> pb.GetHistoryResponse:
        """Every version a path has had, newest first, one page at a time."""
        path = gate.check_path(request.path)
        page_size = gate.parse_page_size(request.page_size)
        before_id = gate.decode_page_token(request.page_token, "history")
        _check_deadline(context)
        versions, token = _page(
            lambda limit: self._engine.queries.history(path, limit=limit, before_id=before_id),
            page_size,
            lambda version: version.id,
            "history",
        )
        return pb.GetHistoryResponse(versions=wire.versions_to_pb(versions), next_page_token=token)

    def FindDigest(self, request: pb.FindDigestRequest, context: Any) -> pb.FindDigestResponse:
        """Every version (any path) that held a digest or a unique prefix of one."""
        digest = gate.check_digest_prefix(request.digest)
        page_size = gate.parse_page_size(request.page_size)
        _check_deadline(context)
        limit = min(page_size + 1, limits.MAX_PAGE_SIZE)
        versions = self._engine.queries.versions_by_digest(digest, limit=limit)
        truncated = len(versions) > page_size or len(versions) == page_size == limits.MAX_PAGE_SIZE
        return pb.FindDigestResponse(
            versions=wire.versions_to_pb(versions[:page_size]), truncated=truncated
        )

    def GetVersionAt(
        self, request: pb.GetVersionAtRequest, context: Any
    ) -> pb.GetVersionAtResponse:
        """The version a path held at a time."""
        path = gate.check_path(request.path)
        at = gate.parse_time(request, "at", required=True)
        assert at is not None  # required=True
        _check_deadline(context)
        return pb.GetVersionAtResponse(
            version=wire.version_to_pb(self._engine.queries.version_at(path, at))
        )

    def GetVersion(self, request: pb.GetVersionRequest, context: Any) -> pb.GetVersionResponse:
        """One version by id."""
        version_id = gate.parse_version_id(request.version_id)
        _check_deadline(context)
        version = self._engine.queries.get_version(version_id)
        return pb.GetVersionResponse(version=wire.version_to_pb(version))

    def BeginRun(self, request: pb.BeginRunRequest, context: Any) -> pb.BeginRunResponse:
        """Record a new run; the answer carries its run id."""
        start = gate.parse_begin_run(request, now=self._clock())
        _check_deadline(context)
        return pb.BeginRunResponse(run=wire.run_to_pb(self._engine.runs.begin_run(start)))

    def RecordAccesses(
        self, request: pb.RecordAccessesRequest, context: Any
    ) -> pb.RecordAccessesResponse:
        """Record file accesses of a running run (at most 10,000 per call)."""
        run_id, accesses = gate.parse_record_accesses(request, now=self._clock())
        _check_deadline(context)
        recorded = self._engine.runs.record_accesses(run_id, accesses)
        return pb.RecordAccessesResponse(recorded=recorded)

    def EndRun(self, request: pb.EndRunRequest, context: Any) -> pb.EndRunResponse:
        """Finish a run with its exit status."""
        run_id, exit_code, status, ended_at, warnings = gate.parse_end_run(
            request, now=self._clock()
        )
        _check_deadline(context)
        run = self._engine.runs.end_run(
            run_id,
            exit_code=exit_code,
            status=status,
            ended_at=ended_at,
            warnings=warnings,
            capture=gate.parse_capture(request),
        )
        return pb.EndRunResponse(run=wire.run_to_pb(run))

    def GetRun(self, request: pb.GetRunRequest, context: Any) -> pb.GetRunResponse:
        """One run by id or unique prefix, with its code (diff included) and environment."""
        run_id = gate.parse_run_id(request.run_id)
        _check_deadline(context)
        return pb.GetRunResponse(run=wire.run_to_pb(self._engine.queries.get_run(run_id)))

    def ListRuns(self, request: pb.ListRunsRequest, context: Any) -> pb.ListRunsResponse:
        """Runs newest first, filtered, one page at a time."""
        query = gate.parse_list_runs(request)
        _check_deadline(context)
        runs, token = _page(
            lambda limit: self._engine.queries.list_runs(
                limit=limit,
                name=query.name,
                status=query.status,
                since=query.since,
                until=query.until,
                before_id=query.before_id,
                parent_run_id=query.parent_run_id,
            ),
            query.limit,
            lambda run: run.id,
            "runs",
        )
        return pb.ListRunsResponse(
            runs=[wire.run_to_pb(run, with_diff=False) for run in runs], next_page_token=token
        )

    def GetLineage(self, request: pb.GetLineageRequest, context: Any) -> pb.GetLineageResponse:
        """The lineage graph around a start node, capped by depth and node count."""
        query = gate.parse_lineage(request)
        _check_deadline(context)
        graph = self._engine.queries.lineage(
            query.start, query.direction, max_depth=query.max_depth, max_nodes=query.max_nodes
        )
        _check_deadline(context)
        answer = pb.GetLineageResponse(graph=wire.graph_to_pb(graph))
        size = answer.ByteSize()
        if size > limits.MAX_ANSWER_BYTES:
            raise ResourceExhausted(
                f"the lineage graph is {size / 2**20:.0f} MiB, more than the"
                f" {limits.MAX_ANSWER_BYTES >> 20} MiB an answer may hold: ask for fewer nodes"
                " (max_nodes) or less depth (max_depth)"
            )
        return answer

    def Verify(self, request: pb.VerifyRequest, context: Any) -> pb.VerifyResponse:
        """Every input upstream of a start node and what its path holds now."""
        start = gate.parse_start(request.start)
        _check_deadline(context)
        items = self._engine.queries.verify(start)
        return pb.VerifyResponse(items=[wire.verify_item_to_pb(item) for item in items])

    def Subscribe(self, request: pb.SubscribeRequest, context: Any) -> Iterator[pb.Event]:
        """Stream new versions and run events under a path prefix until the caller cancels."""
        prefix = gate.parse_path_prefix(request.path_prefix)
        subscription = self._engine.events.subscribe(prefix)
        try:
            # Headers go out now, so a client knows the subscription is live before any event.
            context.send_initial_metadata(())
            while context.is_active() and not self._stopping.is_set():
                event = subscription.get(_POLL_SECONDS)
                if subscription.overflowed:
                    raise ResourceExhausted(
                        "this subscriber fell behind and events were dropped;"
                        " subscribe again and re-read what changed meanwhile"
                    )
                if event is not None:
                    yield wire.event_to_pb(event)
        finally:
            subscription.close()

    def ExportOpenLineage(
        self, request: pb.ExportOpenLineageRequest, context: Any
    ) -> Iterator[pb.OpenLineageEvent]:
        """Recorded runs' OpenLineage events as JSON, oldest run first (a backfill)."""
        run_ids, since = gate.parse_export_openlineage(request)
        _check_deadline(context)
        for text in self._engine.queries.export_openlineage(run_ids, since):
            if not context.is_active() or self._stopping.is_set():
                return
            yield pb.OpenLineageEvent(json=text)

    # -- content store (docs/reproduce.md)

    def GetRunFiles(self, request: pb.GetRunFilesRequest, context: Any) -> pb.GetRunFilesResponse:
        """Every version a run read or wrote, with whether its bytes are kept."""
        run_id = gate.parse_run_id(request.run_id)
        _check_deadline(context)
        files = self._engine.queries.run_files(run_id)
        return pb.GetRunFilesResponse(
            files=[wire.run_file_to_pb(f) for f in files],
            reproduces=self._engine.store.reproduces(run_id),
            reproduced_by=self._engine.store.reproductions_of(run_id),
        )

    def ReadVersionBytes(
        self, request: pb.ReadVersionBytesRequest, context: Any
    ) -> Iterator[pb.VersionBytes]:
        """The kept bytes of a version, hashed as they are read: the last chunk only follows once
        all of them matched (else DATA_LOSS). The caller writes them (the daemon opens no path
        outside its roots on a client's behalf)."""
        path, at, digest = gate.parse_read_version_bytes(request)
        _check_deadline(context)
        version = self._engine.queries.version_to_restore(path, at, digest)
        where = str(self._engine.objects.path_of(version.digest))
        if request.probe:
            yield pb.VersionBytes(version=wire.version_to_pb(version), object_path=where)
            return
        chunks = self._engine.queries.object_chunks(version.digest)
        first = next(chunks, b"")  # a small object is read and verified whole here
        yield pb.VersionBytes(version=wire.version_to_pb(version), data=first, object_path=where)
        for chunk in chunks:
            if not context.is_active():
                return
            yield pb.VersionBytes(data=chunk)

    def PinVersions(self, request: pb.PinVersionsRequest, context: Any) -> pb.PinVersionsResponse:
        """Pin a version (or a run's files) and so everything upstream of it."""
        start, note = gate.parse_pin_versions(request)
        _check_deadline(context)
        return wire.pin_report_to_pb(self._engine.queries.pin(start, note))

    def CollectGarbage(
        self, request: pb.CollectGarbageRequest, context: Any
    ) -> pb.CollectGarbageResponse:
        """Free the kept bytes the policy no longer wants (never upstream of a pin)."""
        _check_deadline(context)
        report = self._engine.queries.collect_garbage(dry_run=request.dry_run)
        return wire.gc_report_to_pb(report)

    def LinkReproduction(
        self, request: pb.LinkReproductionRequest, context: Any
    ) -> pb.LinkReproductionResponse:
        """Record that a run re-ran another (``lineage reproduce``)."""
        run_id = gate.parse_run_id(request.run_id)
        original = gate.parse_run_id(request.original_run_id, "original_run_id")
        _check_deadline(context)
        self._engine.runs.link_reproduction(run_id, original)
        return pb.LinkReproductionResponse()

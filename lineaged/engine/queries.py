"""Answering questions: versions, runs, lineage, verify, the content store, status.

Reads go to the store's per-thread read connections; the few answers that write (a pin,
garbage collection) go through the keeper. ``verify`` first brings the paths it checks up to
date (hashing what changed, within ``HASH_WAIT_SECONDS``): "now" means now.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from lineage_core.errors import NotFound
from lineage_core.limits import MAX_DEPTH, MAX_NODES, MAX_PAGE_SIZE
from lineage_core.models import (
    ChangeKind,
    Direction,
    GcReport,
    Graph,
    PinReport,
    Run,
    RunFile,
    RunStatus,
    StartNode,
    Status,
    VerifyItem,
    Version,
)
from lineage_core.objects import CHUNK, ObjectStore

from lineaged import __version__
from lineaged.engine.runs import HASH_WAIT_SECONDS
from lineaged.engine.supervision import Supervisor
from lineaged.ol_delivery import export_events
from lineaged.retention import Keeper
from lineaged.store import Store

if TYPE_CHECKING:
    from lineaged.ol_delivery import OpenLineageDelivery

__all__ = ["Queries"]


class Queries:
    """The engine's answers to every question the service asks (see the module doc)."""

    def __init__(
        self,
        store: Store,
        supervision: Supervisor,
        keeper: Keeper,
        objects: ObjectStore,
        openlineage: OpenLineageDelivery | None,
        *,
        started_at: int,
    ) -> None:
        self.store = store
        self.supervision = supervision
        self.keeper = keeper
        self.objects = objects
        self.openlineage = openlineage
        self.started_at = started_at

    # -- versions

    def history(self, path: str, *, limit: int, before_id: int | None = None) -> list[Version]:
        """Every version the path has had, newest first; page with ``before_id``."""
        return self.store.history(path, limit=limit, before_id=before_id)

    def version_at(self, path: str, at: int) -> Version:
        """The version the path held at time ``at`` (NotFound if none)."""
        return self.store.version_at(path, at)

    def get_version(self, version_id: int) -> Version:
        """One version by id."""
        return self.store.get_version(version_id)

    def versions_by_digest(self, digest: str, *, limit: int) -> list[Version]:
        """Every version (any path) with this digest; a prefix of >= 8 hex chars is accepted."""
        return self.store.versions_by_digest(digest, limit=limit)

    # -- runs

    def get_run(self, run_id: str) -> Run:
        """One run by id (a unique prefix of at least 8 characters is accepted)."""
        return self.store.get_run(run_id)

    def list_runs(
        self,
        *,
        limit: int,
        name: str = "",
        status: RunStatus | None = None,
        since: int | None = None,
        until: int | None = None,
        before_id: int | None = None,
        parent_run_id: str = "",
    ) -> list[Run]:
        """Runs newest first, filtered; page with ``before_id`` (the last run's ``id``);
        ``parent_run_id``: only the runs nested in that one."""
        return self.store.list_runs(
            limit=limit,
            name=name,
            status=status,
            since=since,
            until=until,
            before_id=before_id,
            parent_run_id=parent_run_id,
        )

    def run_files(self, run_id: str) -> list[RunFile]:
        """Every version a run read or wrote, and whether its bytes are kept."""
        return self.store.run_files(run_id)

    # -- lineage

    def lineage(
        self, start: StartNode, direction: Direction, *, max_depth: int, max_nodes: int
    ) -> Graph:
        """The lineage subgraph around ``start``; ``truncated`` when a limit cut it."""
        return self.store.lineage(start, direction, max_depth=max_depth, max_nodes=max_nodes)

    def verify(self, start: StartNode) -> list[VerifyItem]:
        """Every input on the upstream closure of ``start`` and what its path holds now."""
        # Paths under a root are brought up to date first: "now" means now, not the last event.
        graph = self.store.lineage(
            start, Direction.UPSTREAM, max_depth=MAX_DEPTH, max_nodes=MAX_NODES
        )
        roots = self.supervision.roots
        hints = {v.path: ChangeKind.MODIFIED for v in graph.versions if roots.tracked(v.path)}
        if hints:
            # Files still hashing by the deadline are checked against what is recorded.
            self.supervision.indexer.observe_within(hints, time.monotonic() + HASH_WAIT_SECONDS)
        return self.store.verify(start, max_nodes=MAX_NODES)

    # -- content store

    def pin(self, start: StartNode, note: str = "") -> PinReport:
        """Pin a path's current version, every version of a digest, or a run's files."""
        if start.run_id:
            versions = [f.version for f in self.store.run_files(start.run_id)]
        else:
            versions, _ = self.store.start_versions(start)
        return self.keeper.pin(start, versions, note)

    def collect_garbage(self, *, dry_run: bool) -> GcReport:
        """Free what the keep policy no longer wants (``lineage gc``)."""
        return self.keeper.collect(dry_run=dry_run)

    def version_to_restore(self, path: str, at: int | None, digest: str) -> Version:
        """The version ``lineage restore`` means: PATH (its newest version), PATH@TIME,
        PATH@DIGEST or a digest alone; NotFound when its bytes are not kept."""
        if digest:
            candidates = self.store.versions_by_digest(digest, limit=MAX_PAGE_SIZE)
            same_path = [v for v in candidates if v.path == path]
            if path and not same_path:
                raise NotFound(f"{path} never held {candidates[0].digest}")
            version = (same_path or candidates)[0]
        elif at is not None:
            version = self.store.version_at(path, at)
        else:
            version = self.store.history(path, limit=1)[0]
        if not self.store.object_kept(version.digest):
            files = self.store.not_kept_reason(version.id)
            why = f": {files}" if files else " (the keep policy did not ask for them)"
            raise NotFound(
                f"the bytes of {version.path} version {version.id} ({version.digest[:12]}) "
                f"were not kept{why}"
            )
        return version

    def object_chunks(self, digest: str) -> Iterator[bytes]:
        """The kept bytes of ``digest``, verified before the first chunk (``CorruptObject``)."""
        return self.objects.chunks(digest, CHUNK)

    # -- status and export

    def status(self) -> Status:
        """Version, uptime, roots with health, counts, scan state, queue depth."""
        supervision = self.supervision
        config = supervision.config
        roots, degraded = supervision.root_health()
        if supervision.writer.problem:
            degraded.append(f"store: {supervision.writer.problem}")
        if supervision.watch_problem:
            degraded.append(f"watcher: {supervision.watch_problem}")
        degraded.extend(f"store: {warning}" for warning in self.store.open_warnings)
        damaged = self.store.damaged_rows()
        if damaged:
            shown = ", ".join(f"{vid} ({path})" for vid, path in sorted(damaged.items())[:5])
            more = f" and {len(damaged) - 5} more" if len(damaged) > 5 else ""
            degraded.append(
                f"store: {len(damaged)} damaged version rows refused (failing their checksum): "
                f"{shown}{more}; restore a backup ('lineaged check' lists them)"
            )
        openlineage, backlog, error = "", 0, ""
        if self.openlineage is not None:
            openlineage = self.openlineage.transport
            backlog, error = self.openlineage.backlog()
        return Status(
            version=__version__,
            pid=os.getpid(),
            started_at=self.started_at,
            state_dir=str(config.state_dir),
            socket=str(config.socket),
            roots=tuple(roots),
            counts=supervision.counts(),
            scan=supervision.scan,
            queue_depth=supervision.queue_depth,
            serving=supervision.serving,
            degraded=tuple(degraded),
            openlineage=openlineage,
            openlineage_backlog=backlog,
            openlineage_error=error,
        )

    def export_openlineage(self, run_ids: Sequence[str], since: int | None) -> Iterator[str]:
        """The OpenLineage events (JSON) of the named runs, or of every run started at or
        after ``since`` (all runs when neither is given), oldest first: START, then the end."""
        if run_ids:
            wanted = [self.store.get_run(run_id).run_id for run_id in run_ids]
        else:
            wanted = self.store.openlineage_runs(since)
        delivery = self.openlineage
        return export_events(
            self.store,
            delivery.settings.namespace if delivery is not None else "",
            wanted,
            client=delivery.client if delivery is not None else None,
        )

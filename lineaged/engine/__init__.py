"""The daemon's facade: every question the gRPC service asks goes through ``Engine``.

``Engine`` composes the parts, each a module of its own:

- ``supervision``: the watching machinery, the scan thread, root health and the status cache;
- ``runs``: run recording (begin, accesses, end, orphaned runs, reproductions);
- ``queries``: the answers (versions, runs, lineage, verify, the content store, status);
- ``events``: the event bus the ``Subscribe`` streams read.

The engine trusts its arguments: every request was checked once, at the gRPC edge, by
``lineage_core.gate`` (paths absolute and normalised, limits within ``lineage_core.limits``).
Reads go to the store's per-thread read connections; writes (runs, accesses) go through the
single writer thread. The engine never opens a path outside its watched roots: files a run
used elsewhere arrive with the digest the client computed.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Sequence

from lineage_core.models import (
    Access,
    Capture,
    Direction,
    GcReport,
    Graph,
    PinReport,
    Run,
    RunFile,
    RunStart,
    RunStatus,
    ScanState,
    StartNode,
    Status,
    VerifyItem,
    Version,
)
from lineage_core.objects import ObjectStore
from lineage_core.redact import Redactor

from lineaged.config import Config
from lineaged.engine.events import MAX_SUBSCRIBERS, SUBSCRIBER_BUFFER, EventBus, Subscription
from lineaged.engine.queries import Queries
from lineaged.engine.runs import ABANDON_AFTER_NS, HASH_WAIT_SECONDS, Runs
from lineaged.engine.supervision import (
    COUNTS_SECONDS,
    LIMIT_RETRY_SECONDS,
    LOST_RETRY_SECONDS,
    MISSING_ROOT_CHECK_SECONDS,
    PROBLEM_KINDS,
    PROGRESS_LOG_SECONDS,
    ROOT_CHECK_SECONDS,
    ROOT_MISSING,
    Supervisor,
)
from lineaged.ol_delivery import OpenLineageDelivery, settings_from
from lineaged.retention import Keeper
from lineaged.store import Store, Writer
from lineaged.watching.indexer import RootSet
from lineaged.watching.scanner import ScanStats
from lineaged.watching.watcher import POLL_SECONDS

__all__ = [
    "ABANDON_AFTER_NS",
    "COUNTS_SECONDS",
    "HASH_WAIT_SECONDS",
    "LIMIT_RETRY_SECONDS",
    "LOST_RETRY_SECONDS",
    "MAX_SUBSCRIBERS",
    "MISSING_ROOT_CHECK_SECONDS",
    "PROBLEM_KINDS",
    "PROGRESS_LOG_SECONDS",
    "ROOT_CHECK_SECONDS",
    "ROOT_MISSING",
    "SUBSCRIBER_BUFFER",
    "Engine",
    "Subscription",
]


class Engine:
    """Everything the daemon does, behind one object: index, watch, answer, record runs.

    Blindness is reported, never silent: every reason a root cannot be fully seen and a
    failing store are listed in ``status().degraded`` and in the root's ``health`` (see
    ``supervision``). A root that disappears keeps its history as it was; when it is back,
    the reconcile scan records what changed.
    """

    def __init__(
        self, config: Config, store: Store, *, poll_interval: float = POLL_SECONDS
    ) -> None:
        self.store = store
        self.poll_interval = poll_interval
        self.started_at = time.time_ns()
        self.events = EventBus()
        self.writer = Writer(store, on_recovered=self._on_store_recovered)
        self.roots = RootSet([], excluded=[str(config.state_dir), str(config.objects_path)])
        self.objects = ObjectStore(config.objects_path)
        self.keeper = Keeper(
            store, self.writer, self.objects, self.roots, budget=config.objects_budget
        )
        self.supervision = Supervisor(
            config,
            store,
            self.writer,
            self.roots,
            self.keeper,
            publish=self.events.publish_versions,
            poll_interval=poll_interval,
        )
        self.indexer = self.supervision.indexer
        self.large_lane = self.supervision.large_lane
        self.small_lane = self.supervision.small_lane
        self.scanner = self.supervision.scanner
        self.pipeline = self.supervision.pipeline
        store.on_damage = self.supervision.on_row_damage
        self.openlineage = _openlineage_delivery(config, store, self.writer)
        self.runs = Runs(
            config,
            store,
            self.writer,
            self.roots,
            self.indexer,
            self.keeper,
            self.events,
            self.openlineage,
        )
        self.queries = Queries(
            store,
            self.supervision,
            self.keeper,
            self.objects,
            self.openlineage,
            started_at=self.started_at,
        )

    @property
    def config(self) -> Config:
        """The configuration in force (a reload replaces its roots and scan interval)."""
        return self.supervision.config

    @property
    def redactor(self) -> Redactor:
        """The daemon's redaction rules, keyed with the store's secret key."""
        return self.runs.redactor

    def _on_store_recovered(self, lost: int) -> None:
        # Changes given up while the store failed are found again by comparing the trees
        # with the store; runs and accesses failed loudly to their callers.
        self.supervision.request_scan(f"the store accepts writes again after {lost} failed changes")

    # -- lifecycle

    def start(self, *, watch: bool = True) -> None:
        """Start the writer, register the roots, mark orphaned runs abandoned, start watching
        and the initial scan."""
        self.writer.start()
        self.supervision.register_roots(self.config.roots)
        if self.openlineage is not None:
            self.store.openlineage_outbox = True
            self.openlineage.start()
        self.runs.abandon_orphans()
        if watch:
            self.supervision.start_watching()

    def stop(self) -> None:
        """Stop watching, drain the queue, commit; the store stays open for the caller."""
        self.supervision.stop()
        if self.openlineage is not None:
            self.openlineage.stop()  # before the writer: it marks what it delivered
        self.writer.stop()

    def run_once(self) -> ScanStats:
        """Index every root once (``lineaged --once``) and return the totals."""
        self.scanner.large_lane = None  # everything hashed before it returns
        self.writer.start()
        try:
            self.supervision.register_roots(self.config.roots)
            return self.supervision.scan_all("one-shot")
        finally:
            self.writer.stop()

    def reload(self, config: Config) -> None:
        """Apply a new configuration: roots added start being watched, removed ones stop."""
        self.keeper.budget = config.objects_budget  # keep policies come with the roots
        self.runs.reconfigure(self.supervision.reload(config))

    def request_scan(self, reason: str) -> None:
        """Ask the scan thread for a reconcile scan of every root soon."""
        self.supervision.request_scan(reason)

    def add_progress_listener(self, listener: Callable[[ScanState], None]) -> None:
        """Call ``listener(scan_state)`` on scan progress (systemd STATUS=)."""
        self.supervision.add_progress_listener(listener)

    def wait_idle(self, timeout: float = 30.0) -> bool:
        """Block until the pipeline and the writer have nothing queued."""
        return self.supervision.wait_idle(timeout)

    # -- health and status

    @property
    def serving(self) -> bool:
        """False while the initial scan runs (health NOT_SERVING), True after."""
        return self.supervision.serving

    def add_health_listener(self, listener: Callable[[bool], None]) -> None:
        """Call ``listener(serving)`` now and whenever serving changes."""
        self.supervision.add_health_listener(listener)

    def status(self) -> Status:
        """Version, uptime, roots with health, counts, scan state, queue depth."""
        return self.queries.status()

    def export_openlineage(self, run_ids: Sequence[str], since: int | None) -> Iterator[str]:
        """The OpenLineage events (JSON) of the named runs, or of every run since ``since``."""
        return self.queries.export_openlineage(run_ids, since)

    # -- versions

    def history(self, path: str, *, limit: int, before_id: int | None = None) -> list[Version]:
        """Every version the path has had, newest first; page with ``before_id``."""
        return self.queries.history(path, limit=limit, before_id=before_id)

    def version_at(self, path: str, at: int) -> Version:
        """The version the path held at time ``at`` (NotFound if none)."""
        return self.queries.version_at(path, at)

    def get_version(self, version_id: int) -> Version:
        """One version by id."""
        return self.queries.get_version(version_id)

    def versions_by_digest(self, digest: str, *, limit: int) -> list[Version]:
        """Every version (any path) with this digest; a prefix of >= 8 hex chars is accepted."""
        return self.queries.versions_by_digest(digest, limit=limit)

    # -- runs

    def begin_run(self, start: RunStart) -> Run:
        """Record a new run (status running) and return it with its run_id."""
        return self.runs.begin_run(start)

    def record_accesses(self, run_id: str, accesses: Sequence[Access]) -> int:
        """Record file accesses of a running run; returns how many were recorded."""
        return self.runs.record_accesses(run_id, accesses)

    def abandon_orphans(self, *, now: int | None = None) -> list[str]:
        """Mark ``abandoned`` the running runs whose wrapper is gone; returns their ids."""
        return self.runs.abandon_orphans(now=now)

    def end_run(
        self,
        run_id: str,
        *,
        exit_code: int | None,
        status: RunStatus,
        ended_at: int,
        warnings: Sequence[str] = (),
        capture: Capture | None = None,
    ) -> Run:
        """Finish a run: resolve its outputs to the versions they hold now, and close it."""
        return self.runs.end_run(
            run_id,
            exit_code=exit_code,
            status=status,
            ended_at=ended_at,
            warnings=warnings,
            capture=capture,
        )

    def get_run(self, run_id: str) -> Run:
        """One run by id (a unique prefix of at least 8 characters is accepted)."""
        return self.queries.get_run(run_id)

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
        """Runs newest first, filtered; page with ``before_id`` (the last run's ``id``)."""
        return self.queries.list_runs(
            limit=limit,
            name=name,
            status=status,
            since=since,
            until=until,
            before_id=before_id,
            parent_run_id=parent_run_id,
        )

    def link_reproduction(self, run_id: str, original_run_id: str) -> None:
        """Record that ``run_id`` re-ran ``original_run_id``."""
        self.runs.link_reproduction(run_id, original_run_id)

    def run_files(self, run_id: str) -> list[RunFile]:
        """Every version a run read or wrote, and whether its bytes are kept."""
        return self.queries.run_files(run_id)

    # -- lineage

    def lineage(
        self, start: StartNode, direction: Direction, *, max_depth: int, max_nodes: int
    ) -> Graph:
        """The lineage subgraph around ``start``; ``truncated`` when a limit cut it."""
        return self.queries.lineage(start, direction, max_depth=max_depth, max_nodes=max_nodes)

    def verify(self, start: StartNode) -> list[VerifyItem]:
        """Every input on the upstream closure of ``start`` and what its path holds now."""
        return self.queries.verify(start)

    # -- content store

    def pin(self, start: StartNode, note: str = "") -> PinReport:
        """Pin a path's current version, every version of a digest, or a run's files."""
        return self.queries.pin(start, note)

    def collect_garbage(self, *, dry_run: bool) -> GcReport:
        """Free what the keep policy no longer wants (``lineage gc``)."""
        return self.queries.collect_garbage(dry_run=dry_run)

    def version_to_restore(self, path: str, at: int | None, digest: str) -> Version:
        """The version ``lineage restore`` means; NotFound when its bytes are not kept."""
        return self.queries.version_to_restore(path, at, digest)

    def object_chunks(self, digest: str) -> Iterator[bytes]:
        """The kept bytes of ``digest``, verified before the first chunk (``CorruptObject``)."""
        return self.queries.object_chunks(digest)

    # -- events

    def subscribe(self, path_prefix: str = "") -> Subscription:
        """A queue of new versions and run events whose path starts with ``path_prefix``."""
        return self.events.subscribe(path_prefix)


def _openlineage_delivery(
    config: Config, store: Store, writer: Writer
) -> OpenLineageDelivery | None:
    """The OpenLineage sender when something configures one (ol_delivery.py)."""
    settings = settings_from(config.openlineage, os.environ)
    if settings is None:
        return None
    return OpenLineageDelivery(store, writer, settings)

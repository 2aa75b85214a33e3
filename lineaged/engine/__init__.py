"""The daemon's engine: ``Engine`` starts, reloads and stops the parts, and holds them.

The gRPC service asks the part a question belongs to, each a module of its own:

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
from collections.abc import Callable

from lineage_core.models import ScanState, Status
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
    """Everything the daemon does, in parts: ``supervision`` indexes and watches, ``runs``
    records runs, ``queries`` answers, ``events`` streams; ``Engine`` starts and stops them.

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


def _openlineage_delivery(
    config: Config, store: Store, writer: Writer
) -> OpenLineageDelivery | None:
    """The OpenLineage sender when something configures one (ol_delivery.py)."""
    settings = settings_from(config.openlineage, os.environ)
    if settings is None:
        return None
    return OpenLineageDelivery(store, writer, settings)

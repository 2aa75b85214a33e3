"""Keeping the roots seen: the scan thread, root health, watcher supervision, progress.

``Supervisor`` owns the watching machinery (``lineaged.watching``): the indexer, the hash
lanes, the scanner, the pipeline and one watcher per root. Its scan thread runs the
reconcile scans (at startup, periodically, when asked) and checks the roots every few
seconds: a root that vanished, came back or was replaced, a watcher that died, a root polled
for an inotify limit that may be watched again, a tree grown too deep for watchdog.

Blindness is reported, never silent: every reason a root cannot be fully seen (polling
instead of inotify, unreadable directories, files too large to hash, the root missing) is
kept as the root's problems, logged when it changes, and shown by ``root_health``. A root
that disappears keeps its history as it was: its files are *not* marked deleted, because a
deleted directory cannot be told from an unmounted disk; when the root is back, the
reconcile scan records what changed.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import replace

from lineage_core.models import ChangeKind, Counts, Root, ScanState

from lineaged.config import Config
from lineaged.retention import Keeper
from lineaged.store import Store, Writer
from lineaged.watching.deepwatch import (
    WATCHDOG_MAX_DEPTH,
    DeepWatcher,
    WatchdogCrashes,
    deeper_than,
)
from lineaged.watching.indexer import Indexer, Publish, RootSet, WatchedRoot
from lineaged.watching.lanes import HashLane
from lineaged.watching.scanner import Scanner, ScanStats
from lineaged.watching.watcher import (
    BLIND_SCAN_INTERVAL,
    NETWORK_FILESYSTEMS,
    Pipeline,
    RootWatcher,
    WatchFailures,
    filesystem_type,
    lost_event_problem,
    root_identity,
)

__all__ = [
    "COUNTS_SECONDS",
    "LIMIT_RETRY_SECONDS",
    "LOST_RETRY_SECONDS",
    "MISSING_ROOT_CHECK_SECONDS",
    "PROBLEM_KINDS",
    "PROGRESS_LOG_SECONDS",
    "ROOT_CHECK_SECONDS",
    "ROOT_MISSING",
    "Supervisor",
]

log = logging.getLogger(__name__)

PROGRESS_LOG_SECONDS = 2.0  # scans shorter than this log only their summary
COUNTS_SECONDS = 1.0  # how stale the counts in status may be
ROOT_CHECK_SECONDS = 5.0
MISSING_ROOT_CHECK_SECONDS = 1.0  # a vanished root is looked for more often: cheap (one stat)
LOST_RETRY_SECONDS = 30.0  # between rescans that retry changes a failing store gave up on
# A root polled because inotify ran out of watches or instances tries inotify again this
# often: when the limit no longer bites (raised, or the tree shrank), it is watched again.
LIMIT_RETRY_SECONDS = 60.0
_LIMIT_PROBLEMS = ("inotify watch limit reached", "inotify instance limit reached")
PROBLEM_KINDS = ("root", "watch", "read", "size")  # the order status lists them in
ROOT_MISSING = (
    "root does not exist (deleted or unmounted?); its files keep their last versions, "
    "not marked deleted; waiting for it to appear"
)


class Supervisor:
    """The roots' watchers, scans and health, behind the engine (see the module doc)."""

    def __init__(
        self,
        config: Config,
        store: Store,
        writer: Writer,
        roots: RootSet,
        keeper: Keeper,
        *,
        publish: Publish,
        poll_interval: float,
    ) -> None:
        self.config = config
        self.store = store
        self.writer = writer
        self.roots = roots
        self.poll_interval = poll_interval
        self._stop = threading.Event()
        self._scan_wanted = threading.Event()  # wakes the scan thread (scan or root check)
        self._scan_pending = False
        self._scan_reason = "startup"
        self._next_lost_retry = 0.0
        self._health_listeners: list[Callable[[bool], None]] = []
        self._serving = False
        self._scan = ScanState()
        self._scan_lock = threading.Lock()
        # root path -> {"root" | "watch" | "read" | "size": reason}; shown by root_health()
        self._problems: dict[str, dict[str, str]] = {}
        self._problems_lock = threading.Lock()
        self._watchers: dict[str, RootWatcher | DeepWatcher] = {}
        self._progress_logged = 0.0  # monotonic time of the last progress line
        self._watchdog_crashed = False
        self._too_deep: set[str] = set()  # roots a scan found too deep for watchdog
        self._crashes = WatchdogCrashes(self._on_watchdog_crash)
        self._too_large: dict[str, set[str]] = {}  # root path -> files over max_hash_size
        self.indexer = Indexer(
            store,
            writer,
            roots,
            cancel=self._stop,
            on_too_large=self._on_too_large,
            publish=publish,
        )
        self.indexer.keeper = keeper
        # Big files hash one at a time on their own lane; the small lane takes what a
        # client's call could not hash before its deadline (see watching/lanes.py).
        self.large_lane = HashLane("large", self.indexer.hash_and_record, self._stop)
        self.small_lane = HashLane("small", self.indexer.hash_and_record, self._stop)
        self.indexer.large_lane = self.large_lane
        self.indexer.small_lane = self.small_lane
        self.scanner = Scanner(
            store,
            writer,
            roots,
            progress=self._progress,
            stop=self._stop,
            large_lane=self._hash_large,
            publish=publish,
        )
        self.scanner.keeper = keeper
        self.pipeline = Pipeline(
            self.indexer,
            settle=config.settle_ms / 1000.0,
            scan_directory=self._scan_directory,
            on_root_gone=self._on_root_trouble,
        )
        self._scan_thread = threading.Thread(
            target=self._scan_loop, name="lineaged-scan", daemon=True
        )
        self._watch_failures = WatchFailures()
        self._progress_listeners: list[Callable[[ScanState], None]] = []
        self._counts_cache: tuple[float, Counts] | None = None
        self._progress_base = ScanStats()
        self._watch_problem = ""  # set when lost events cannot be detected
        self._limit_retry_at: dict[str, float] = {}  # root -> when to try inotify again

    def on_row_damage(self, version_id: int, path: str) -> None:
        """A version row failed its checksum (any thread, maybe the writer's): the stat cache
        no longer vouches for the path, and the file is hashed again right after."""
        if self.roots.tracked(path) is None:
            return  # outside every root: nothing here to hash again
        future = self.writer.submit(lambda store: store.distrust(path))

        def rehash() -> None:
            try:
                self.indexer.observe({path: ChangeKind.SCAN})
            except Exception:
                log.exception("re-hashing %s after store damage failed", path)

        # Hashed on a thread of its own: the callback runs on the writer, which must not hash.
        future.add_done_callback(
            lambda _: threading.Thread(target=rehash, name="lineaged-rehash", daemon=True).start()
        )

    # -- lifecycle

    def start_watching(self) -> None:
        """Watch every registered root and start the scan thread (the initial scan first)."""
        self._watch_problem = lost_event_problem()
        if self._watch_problem:
            log.warning("%s", self._watch_problem)
            self._shorten_scan_interval()
        self._watch_failures.__enter__()
        self._crashes.__enter__()
        self.pipeline.start()
        for root in self.roots.roots:
            self._start_watcher(root)
        self._scan_pending = True
        self._scan_wanted.set()
        self._scan_thread.start()

    def stop(self) -> None:
        """Stop the lanes, the watchers, the scan thread and the pipeline (drained)."""
        self._stop.set()
        self._scan_wanted.set()
        # First: a hash in progress (a 1 TiB file) is cancelled and its helper killed.
        self.large_lane.stop()
        self.small_lane.stop()
        for watcher in list(self._watchers.values()):
            watcher.stop()
        self._watchers.clear()
        if self._scan_thread.is_alive():
            self._scan_thread.join()
        self.pipeline.stop()
        self._watch_failures.__exit__()
        self._crashes.__exit__()

    def reload(self, config: Config) -> Config:
        """Take a new configuration's roots and scan interval: roots added start being
        watched, removed ones stop. Returns the configuration now in force."""
        old = {r.path for r in self.roots.roots}
        new = {r.path for r in config.roots}
        for path in old - new:
            watcher = self._watchers.pop(path, None)
            if watcher is not None:
                watcher.stop()
            with self._problems_lock:
                self._problems.pop(path, None)
        self.config = replace(
            self.config,
            roots=config.roots,
            scan_interval=config.scan_interval,
            redact_names=config.redact_names,
            redact_values=config.redact_values,
            objects_budget=config.objects_budget,
        )
        if self._watch_problem:
            self._shorten_scan_interval()
        added = self.register_roots(config.roots)
        for root in added:
            self._start_watcher(root)
        log.info(
            "configuration reloaded: %d roots (%d added, %d removed)",
            len(new),
            len(added),
            len(old - new),
        )
        if added:
            self.request_scan("roots added by reload")
        return self.config

    def _shorten_scan_interval(self) -> None:
        interval = self.config.scan_interval
        if interval <= 0 or interval > BLIND_SCAN_INTERVAL:
            self.config = replace(self.config, scan_interval=BLIND_SCAN_INTERVAL)

    def register_roots(self, roots: Sequence[Root]) -> list[WatchedRoot]:
        """Record ``roots`` in the store and make them the watched set; returns the new ones."""

        def job(store: Store) -> list[int]:
            return [store.ensure_root(r.path, r.role) for r in roots]

        ids = self.writer.call(job)
        existing = {r.path for r in self.roots.roots}
        watched = [
            WatchedRoot(replace(root, id=root_id), root_id, self.config.ignore_rules(root))
            for root, root_id in zip(roots, ids, strict=True)
        ]
        self.roots.roots[:] = [w for w in watched]
        return [w for w in watched if w.path not in existing]

    # -- watchers

    def _start_watcher(
        self, root: WatchedRoot, *, force_polling: str = ""
    ) -> RootWatcher | DeepWatcher:
        watcher: RootWatcher | DeepWatcher
        if deeper_than(root.path, WATCHDOG_MAX_DEPTH):
            # watchdog's recursive setup and its polling snapshot recurse once per level
            # (see deepwatch.py). DeepWatcher handles the watch limit itself (it polls only
            # what it cannot watch); only a network filesystem is polled whole.
            fs_type = filesystem_type(root.path)
            network = ""
            if fs_type in NETWORK_FILESYSTEMS:
                network = force_polling or (
                    f"on a network filesystem ({fs_type}) where inotify misses other "
                    "machines' changes; polling instead"
                )
            watcher = DeepWatcher(
                root,
                self.pipeline.put,
                poll_interval=self.poll_interval,
                on_overflow=self._on_overflow,
                force_polling=network,
            )
        else:
            watcher = RootWatcher(
                root,
                self.pipeline.put,
                force_polling=force_polling,
                poll_interval=self.poll_interval,
                on_trouble=self._on_root_trouble,
                on_lost=self._on_overflow,
                failures=self._watch_failures,
            )
        try:
            watcher.start()
        except Exception as exc:  # never let one root stop the daemon
            log.exception("cannot watch %s", root.path)
            watcher.problem = f"cannot watch: {exc}"
        self._watchers[root.path] = watcher
        if watcher.identity is None:
            self._set_problem(root.path, "root", ROOT_MISSING)
            self._set_problem(root.path, "watch", "")
        else:
            self._set_problem(root.path, "watch", watcher.problem)
        return watcher

    def _set_problem(self, path: str, kind: str, reason: str) -> None:
        """Record (or clear, with "") one reason a root is not fully seen; log changes."""
        with self._problems_lock:
            problems = self._problems.setdefault(path, {})
            before = problems.get(kind, "")
            if reason:
                problems[kind] = reason
            else:
                problems.pop(kind, None)
        if reason and reason != before:
            log.warning("root %s: %s", path, reason)
        elif before and not reason:
            log.warning("root %s: resolved: %s", path, before)

    def _problem(self, path: str, kind: str) -> str:
        with self._problems_lock:
            return self._problems.get(path, {}).get(kind, "")

    def _on_root_trouble(self, path: str) -> None:
        """A root vanished or its watcher must change: look at the roots now (any thread)."""
        self._scan_wanted.set()

    # -- scanning

    def request_scan(self, reason: str) -> None:
        """Ask the scan thread for a reconcile scan of every root soon."""
        self._scan_reason = reason
        self._scan_pending = True
        self._scan_wanted.set()

    def _on_overflow(self, message: str) -> None:
        log.warning("watcher lost events (%s); scheduling a reconcile scan", message)
        self.request_scan("watcher overflow")

    def _scan_loop(self) -> None:
        interval = self.config.scan_interval
        next_periodic = time.monotonic() + (interval if interval > 0 else 1e18)
        while not self._stop.is_set():
            interval = self.config.scan_interval
            wait = ROOT_CHECK_SECONDS
            if any(self._problem(r.path, "root") for r in self.roots.roots):
                wait = MISSING_ROOT_CHECK_SECONDS
            if self._next_lost_retry:
                wait = min(wait, max(0.0, self._next_lost_retry - time.monotonic()))
            if interval > 0:
                wait = min(wait, max(0.0, next_periodic - time.monotonic()))
            self._scan_wanted.wait(timeout=wait)
            self._scan_wanted.clear()
            if self._stop.is_set():
                break
            try:
                self._check_roots()
            except Exception:  # the scan thread must outlive any one check
                log.exception("checking the roots failed")
            due = interval > 0 and time.monotonic() >= next_periodic
            self._retry_lost_changes()
            if self._scan_pending or due:
                self._scan_pending = False
                reason = self._scan_reason if not due else "periodic"
                self._scan_reason = "requested"
                try:
                    self.scan_all(reason)
                except Exception:
                    log.exception("reconcile scan failed")
                next_periodic = time.monotonic() + (interval if interval > 0 else 1e18)
                if not self._serving and not self._stop.is_set():
                    self._set_serving(True)

    def _retry_lost_changes(self) -> None:
        """Rescan a while after the store gave changes up, until it records them again.

        Nothing else may write to show that the store has recovered; the delay keeps a full
        disk from being hammered.
        """
        now = time.monotonic()
        if not self.writer.lost:
            self._next_lost_retry = 0.0
        elif not self._next_lost_retry:
            self._next_lost_retry = now + LOST_RETRY_SECONDS
        elif now >= self._next_lost_retry:
            self._next_lost_retry = now + LOST_RETRY_SECONDS
            self.request_scan(f"retrying {self.writer.lost} changes the store could not record")

    def _on_watchdog_crash(self, exc: BaseException | None) -> None:
        self._watchdog_crashed = True
        self._scan_wanted.set()

    # -- root health

    def _check_roots(self) -> None:
        """Notice roots that vanished, came back or were replaced, and watchers to restart."""
        crashed, self._watchdog_crashed = self._watchdog_crashed, False
        for root in list(self.roots.roots):
            try:
                too_deep = root.path in self._too_deep
                self._too_deep.discard(root.path)
                if (crashed or too_deep) and isinstance(self._watchers.get(root.path), RootWatcher):
                    # A watchdog thread died; its observer may look alive and be blind.
                    self._watchers.pop(root.path).stop()
                    restarted = self._start_watcher(root)
                    if too_deep:
                        log.info("%s: deeper than %d levels", root.path, WATCHDOG_MAX_DEPTH)
                    else:
                        log.warning("watching %s again after watchdog failed", root.path)
                    self.request_scan(f"root {root.path} watched again")
                    if not restarted.started:
                        continue
                self._check_root(root)
            except Exception:
                log.exception("checking root %s failed", root.path)

    def _check_root(self, root: WatchedRoot) -> None:
        path = root.path
        watcher = self._watchers.get(path)
        identity = root_identity(path)
        if identity is None:
            self._set_problem(path, "root", ROOT_MISSING)
            self._set_problem(path, "watch", "")
            self._set_problem(path, "read", "")
            if watcher is not None:
                watcher.stop()
                self._watchers.pop(path, None)
            return
        came_back = bool(self._problem(path, "root"))
        if came_back:
            self._set_problem(path, "root", "")
        force_polling = ""
        if watcher is not None:
            if watcher.alive and watcher.identity == identity and not watcher.wants_polling:
                if isinstance(watcher, DeepWatcher):
                    if self._deep_watcher_done(watcher):
                        return
                else:
                    if came_back:
                        self.request_scan(f"root {path} is back")
                    if watcher.polling and watcher.problem.startswith(_LIMIT_PROBLEMS):
                        self._retry_inotify(root, watcher)
                    return
            elif isinstance(watcher, DeepWatcher):
                pass  # restarted below, deep or not: never onto a recursive polling walk
            elif watcher.wants_polling:
                force_polling = watcher.wants_polling
            elif watcher.polling and watcher.problem:
                force_polling = watcher.problem  # stay on the fallback that was chosen
            if watcher.identity not in (None, identity):
                log.warning("root %s was replaced by another directory; watching the new one", path)
            elif watcher.started and not watcher.alive:
                log.warning("the watcher of %s stopped; watching it again and rescanning", path)
            watcher.stop()
        restarted = self._start_watcher(root, force_polling=force_polling)
        if restarted.alive:
            log.info("watching %s%s", path, " (polling)" if restarted.polling else "")
            self.request_scan(f"root {path} watched again")

    def _retry_inotify(self, root: WatchedRoot, polled: RootWatcher) -> None:
        """Try inotify again on a root polled for an inotify limit; switch when it works."""
        now = time.monotonic()
        due = self._limit_retry_at.setdefault(root.path, now + LIMIT_RETRY_SECONDS)
        if now < due:
            return
        self._limit_retry_at[root.path] = now + LIMIT_RETRY_SECONDS
        trial = RootWatcher(
            root,
            self.pipeline.put,
            poll_interval=self.poll_interval,
            on_trouble=self._on_root_trouble,
            on_lost=self._on_overflow,
            failures=self._watch_failures,
        )
        try:
            trial.start()
        except Exception:  # as in _start_watcher: one root never stops the daemon
            log.exception("retrying inotify on %s failed", root.path)
            trial.polling = True
        if trial.polling or not trial.alive:  # the limit still bites: keep polling
            trial.stop()
            return
        self._watchers[root.path] = trial
        polled.stop()
        self._limit_retry_at.pop(root.path, None)
        self._set_problem(root.path, "watch", "")
        log.info("%s: inotify watches the whole root again", root.path)
        self.request_scan(f"root {root.path} watched by inotify again")

    def _deep_watcher_done(self, watcher: DeepWatcher) -> bool:
        """Follow a deep-tree watcher: report which part it polls (the message clears when
        the limit no longer bites); False when the tree is shallow and fully watched again,
        so the root goes back to watchdog."""
        self._set_problem(watcher.root.path, "watch", watcher.problem)
        if watcher.polling or watcher.max_depth > WATCHDOG_MAX_DEPTH:
            return True
        if deeper_than(watcher.root.path, WATCHDOG_MAX_DEPTH):
            return True
        log.info("%s: no longer deeper than %d levels", watcher.root.path, WATCHDOG_MAX_DEPTH)
        return False

    # -- the reconcile scan

    def scan_all(self, reason: str) -> ScanStats:
        """Reconcile every root with the store now, on this thread; returns the totals."""
        total = ScanStats()
        with self._scan_lock:
            self._scan = replace(
                self._scan,
                running=True,
                files_seen=0,
                files_hashed=0,
                bytes_hashed=0,
                started_at=time.time_ns(),
            )
            log.info("reconcile scan (%s) of %d roots started", reason, len(self.roots.roots))
            self._progress_base = ScanStats()
            try:
                deferred = self.writer.call(lambda store: store.defer_digest_index())
                try:
                    self._scan_roots(total)
                finally:
                    if deferred:
                        self._ensure_indexes()
            except BaseException:
                self._scan = replace(self._scan, running=False, finished_at=time.time_ns())
                raise
            self._scan = replace(
                self._scan,
                running=False,
                initial_done=True,
                files_seen=total.files,
                files_hashed=total.hashed,
                bytes_hashed=total.bytes_hashed,
                finished_at=time.time_ns(),
                scans_completed=self._scan.scans_completed + 1,
            )
        log.info("reconcile scan (%s) done: %s", reason, total.summary())
        return total

    def _ensure_indexes(self) -> None:
        try:
            self.writer.call(lambda store: store.ensure_indexes())
        except Exception as exc:  # Store.open rebuilds a missing index on the next start
            log.error("cannot rebuild the digest index now (%s); queries by digest are slow", exc)

    def _scan_roots(self, total: ScanStats) -> None:
        for root in list(self.roots.roots):
            if self._stop.is_set():
                break
            if root_identity(root.path) is None:
                # Not scanned, so nothing under it is recorded as deleted (see the module doc).
                self._set_problem(root.path, "root", ROOT_MISSING)
                continue
            stats = self.scanner.scan(root)
            self._note_unreadable(root.path, stats.unreadable, whole_root=True)
            self._note_too_large(root, stats.too_large, whole_root=True)
            self._note_depth(root, stats.max_depth)
            total.add(stats)
            self._progress_base.add(stats)

    def _note_unreadable(self, path: str, unreadable: list[str], *, whole_root: bool) -> None:
        """Report what a scan could not read; a scan of the whole root also clears it."""
        if not unreadable and not whole_root:
            return
        if not whole_root:
            before = self._problem(path, "read")
            if before and all(u in before for u in unreadable):
                return
        if not unreadable:
            self._set_problem(path, "read", "")
            return
        shown = ", ".join(unreadable[:3])
        more = f" and {len(unreadable) - 3} more" if len(unreadable) > 3 else ""
        self._set_problem(
            path,
            "read",
            f"cannot read {shown}{more}; what is there keeps its last recorded versions "
            "until it can be read",
        )

    def _progress(self, stats: ScanStats) -> None:
        base = self._progress_base
        files = base.files + stats.files
        hashed = base.hashed + stats.hashed
        bytes_hashed = base.bytes_hashed + stats.bytes_hashed
        self._scan = replace(
            self._scan, files_seen=files, files_hashed=hashed, bytes_hashed=bytes_hashed
        )
        elapsed = max(1e-9, (time.time_ns() - self._scan.started_at) / 1e9)
        now = time.monotonic()
        # Short scans only print their summary; long ones a line every few seconds at most.
        if elapsed >= PROGRESS_LOG_SECONDS and now - self._progress_logged >= PROGRESS_LOG_SECONDS:
            self._progress_logged = now
            log.info(
                "scanning: %d files seen, %d hashed, %.1f MB (%.1f MB/s)",
                files,
                hashed,
                bytes_hashed / 1e6,
                bytes_hashed / 1e6 / elapsed,
            )
        for listener in self._progress_listeners:
            listener(self._scan)

    def add_progress_listener(self, listener: Callable[[ScanState], None]) -> None:
        """Call ``listener(scan_state)`` on scan progress (systemd STATUS=)."""
        self._progress_listeners = [*self._progress_listeners, listener]

    def _scan_directory(self, directory: str, seen: ChangeKind) -> None:
        root = self.roots.tracked(directory, is_dir=True)
        if root is None or not os.path.isdir(directory):
            return
        # A directory scan is no progress of the reconcile scan: it neither counts in the
        # scan state nor logs (a 500-level tree created at once is 500 directory scans).
        stats = self.scanner.scan(root, directory, seen=seen, report=False)
        self._note_unreadable(root.path, stats.unreadable, whole_root=False)
        self._note_too_large(root, stats.too_large, whole_root=False)
        self._note_depth(root, stats.max_depth)

    def _note_depth(self, root: WatchedRoot, depth: int) -> None:
        """A scan found the tree deeper than watchdog can follow: move the root to
        DeepWatcher now (watchdog may already have failed below some level)."""
        if depth > WATCHDOG_MAX_DEPTH and isinstance(self._watchers.get(root.path), RootWatcher):
            self._too_deep.add(root.path)
            self._scan_wanted.set()

    def _hash_large(self, root: WatchedRoot, path: str, seen: ChangeKind) -> None:
        """The scan's hand-off of a big file to the large lane (not waited for)."""
        self.large_lane.submit(root, path, seen)

    def _on_too_large(self, root: WatchedRoot, path: str) -> None:
        self._note_too_large(root, [path], whole_root=False)

    def _note_too_large(self, root: WatchedRoot, paths: list[str], *, whole_root: bool) -> None:
        """Files over the root's ``max_hash_size``: not hashed, and said so in its health.

        They keep their last recorded version (like an unreadable file); a scan of the
        whole root replaces the list, so a file made smaller or deleted clears it.
        """
        with self._problems_lock:
            known = self._too_large.setdefault(root.path, set())
            if whole_root:
                known.clear()
            known.update(paths)
            found = sorted(known)
        if not found:
            self._set_problem(root.path, "size", "")
            return
        shown = ", ".join(found[:3])
        more = f" and {len(found) - 3} more" if len(found) > 3 else ""
        self._set_problem(
            root.path,
            "size",
            f"not hashed: too large (over max_hash_size {root.root.max_hash_size} bytes): "
            f"{shown}{more}; they keep their last recorded versions",
        )

    def wait_idle(self, timeout: float = 30.0) -> bool:
        """Block until the pipeline and the writer have nothing queued."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            # The pipeline's idle flag also covers a flush in progress (depth does not).
            idle = self.pipeline.wait_idle(max(0.0, deadline - time.monotonic()))
            if idle and self.pipeline.depth == 0 and self.writer.depth == 0:
                self.writer.call(lambda store: None)
                if self.pipeline.depth == 0:
                    return True
            time.sleep(0.02)
        return False

    # -- health and the status cache

    @property
    def serving(self) -> bool:
        """False while the initial scan runs (health NOT_SERVING), True after."""
        return self._serving

    def _set_serving(self, serving: bool) -> None:
        self._serving = serving
        for listener in list(self._health_listeners):
            try:
                listener(serving)
            except Exception:
                log.exception("health listener failed")

    def add_health_listener(self, listener: Callable[[bool], None]) -> None:
        """Call ``listener(serving)`` now and whenever serving changes."""
        self._health_listeners.append(listener)
        listener(self._serving)

    @property
    def scan(self) -> ScanState:
        """The reconcile scan's state: running or not, how far, how many completed."""
        return self._scan

    @property
    def queue_depth(self) -> int:
        """Changes waiting: in the pipeline, the writer and the hash lanes."""
        return (
            self.pipeline.depth + self.writer.depth + self.large_lane.depth + self.small_lane.depth
        )

    @property
    def watch_problem(self) -> str:
        """Why lost events cannot be detected ("" when they can)."""
        return self._watch_problem

    def counts(self) -> Counts:
        """Store counts, at most COUNTS_SECONDS old: status is polled by scripts and
        dashboards, and five index lookups per call halved the calls/s it can answer."""
        now = time.monotonic()
        cached = self._counts_cache
        if cached is None or now - cached[0] > COUNTS_SECONDS:
            cached = (now, self.store.counts())
            self._counts_cache = cached
        return cached[1]

    def root_health(self) -> tuple[list[Root], list[str]]:
        """Each root with its health and whether it is polled, and every reason a root is
        not fully seen (``path: reason``), in ``PROBLEM_KINDS`` order."""
        with self._problems_lock:
            problems = {path: dict(reasons) for path, reasons in self._problems.items()}
        watchers = dict(self._watchers)
        roots: list[Root] = []
        degraded: list[str] = []
        for r in self.roots.roots:
            found = problems.get(r.path, {})
            reasons = [found[kind] for kind in PROBLEM_KINDS if found.get(kind)]
            watcher = watchers.get(r.path)
            health = "; ".join(reasons) or "ok"
            polling = bool(watcher is not None and watcher.alive and watcher.polling)
            root = r.root
            if (root.health, root.polling) != (health, polling):
                root = replace(root, health=health, polling=polling)
            roots.append(root)
            degraded.extend(f"{r.path}: {reason}" for reason in reasons)
        return roots, degraded

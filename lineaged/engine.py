"""The daemon's facade: every question the gRPC service asks goes through ``Engine``.

Reads go to the store's per-thread read connections; writes (runs, accesses) go through the
single writer thread. The engine never opens a path outside its watched roots: files a run
used elsewhere arrive with the digest the client computed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import socket
import stat
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from lineaged import __version__, hasher
from lineaged.config import Config
from lineaged.deepwatch import WATCHDOG_MAX_DEPTH, DeepWatcher, WatchdogCrashes, deeper_than
from lineaged.errors import (
    ConfigError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PathOutsideRoots,
    ResourceExhausted,
    StoreError,
)
from lineaged.indexer import RACY_NS, Indexer, RootSet, WatchedRoot
from lineaged.lanes import HashLane, Ticket
from lineaged.models import (
    Access,
    AccessMode,
    Capture,
    ChangeKind,
    Counts,
    Direction,
    Event,
    GcReport,
    Graph,
    PinReport,
    Root,
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
from lineaged.objects import CHUNK, ObjectStore
from lineaged.paths import is_normal_path
from lineaged.redact import Redactor, load_or_create_key
from lineaged.retention import Keeper
from lineaged.scanner import Scanner, ScanStats
from lineaged.store import Store, Writer, digest_to_blob, pack_stat
from lineaged.watcher import (
    BLIND_SCAN_INTERVAL,
    NETWORK_FILESYSTEMS,
    POLL_SECONDS,
    Pipeline,
    RootWatcher,
    WatchFailures,
    filesystem_type,
    lost_event_problem,
    root_identity,
)

if TYPE_CHECKING:
    from lineaged.ol_delivery import OpenLineageDelivery

__all__ = ["MAX_ACCESSES", "MAX_DEPTH", "MAX_NODES", "MAX_PAGE", "Engine", "Subscription"]

log = logging.getLogger(__name__)

MAX_PAGE = 1000  # the largest page any listing returns; bigger limits are InvalidArgument
MAX_NODES = 10_000  # the largest lineage graph one answer carries
MAX_DEPTH = 10_000
MAX_ACCESSES = 10_000  # per RecordAccesses call
# A run still "running" this long after it began, whose wrapper cannot be checked (another
# host, no pid), is marked abandoned when the daemon starts.
ABANDON_AFTER_NS = 7 * 24 * 3600 * 1_000_000_000
PROGRESS_LOG_SECONDS = 2.0  # scans shorter than this log only their summary
COUNTS_SECONDS = 1.0  # how stale the counts in status may be
MAX_SUBSCRIBERS = 8  # each Subscribe stream holds a worker thread (16 by default)
SUBSCRIBER_BUFFER = 10_000
ROOT_CHECK_SECONDS = 5.0
MISSING_ROOT_CHECK_SECONDS = 1.0  # a vanished root is looked for more often: cheap (one stat)
LOST_RETRY_SECONDS = 30.0  # between rescans that retry changes a failing store gave up on
# A root polled because inotify ran out of watches or instances tries inotify again this
# often: when the limit no longer bites (raised, or the tree shrank), it is watched again.
LIMIT_RETRY_SECONDS = 60.0
_LIMIT_PROBLEMS = ("inotify watch limit reached", "inotify instance limit reached")
HASH_WAIT_SECONDS = 2.0  # the longest a client's call waits on hashing (then: a lane)
PROBLEM_KINDS = ("root", "watch", "read", "size")  # the order status lists them in
ROOT_MISSING = (
    "root does not exist (deleted or unmounted?); its files keep their last versions, "
    "not marked deleted; waiting for it to appear"
)


def _iso_ns(ns: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ns / 1e9))


def _process_alive_since(pid: int, started_at: int) -> bool:
    """Whether process ``pid`` runs on this host and began no later than ``started_at`` (a
    process that began after the run did merely took the wrapper's pid)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: it exists
    except OSError:
        return False
    began = _process_start_ns(pid)
    # Clock ticks make the start time coarse (10 ms); a second of slack is plenty.
    return began is None or began <= started_at + 1_000_000_000


def _process_start_ns(pid: int) -> int | None:
    """When process ``pid`` began, from /proc (Linux), else None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat_file:
            fields = stat_file.read().rsplit(b")", 1)[1].split()
        with open("/proc/stat", "rb") as system:
            boot = next(int(line.split()[1]) for line in system if line.startswith(b"btime"))
        ticks = os.sysconf("SC_CLK_TCK")
        return int((boot + int(fields[19]) / ticks) * 1e9)
    except (OSError, ValueError, IndexError, StopIteration):
        return None


class Subscription:
    """A subscriber's queue of events; read with ``get`` and ``close`` when done."""

    def __init__(self, bus: _EventBus, path_prefix: str) -> None:
        self._bus = bus
        self.path_prefix = path_prefix
        self._queue: queue.Queue[Event] = queue.Queue(SUBSCRIBER_BUFFER)
        self._overflowed = False

    def offer(self, event: Event) -> None:
        """Queue an event without blocking the publisher; drop and remember when full."""
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            self._overflowed = True

    def get(self, timeout: float) -> Event | None:
        """The next event, or None when ``timeout`` seconds pass without one."""
        try:
            return self._queue.get(timeout=timeout)
        except queue.Empty:
            return None

    def close(self) -> None:
        """Stop receiving events."""
        self._bus.unsubscribe(self)

    @property
    def overflowed(self) -> bool:
        """True when events were dropped because the subscriber fell too far behind."""
        return self._overflowed

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _EventBus:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subscribers: list[Subscription] = []

    def subscribe(self, path_prefix: str) -> Subscription:
        sub = Subscription(self, path_prefix)
        with self._lock:
            if len(self._subscribers) >= MAX_SUBSCRIBERS:
                raise ResourceExhausted(
                    f"too many subscribers ({MAX_SUBSCRIBERS}): each stream holds one of the "
                    "daemon's worker threads; close one first"
                )
            self._subscribers.append(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        with self._lock, contextlib.suppress(ValueError):
            self._subscribers.remove(sub)

    @property
    def listened(self) -> bool:
        """Whether anyone subscribes (read without the lock: a stale answer is harmless)."""
        return bool(self._subscribers)

    def publish(self, events: Sequence[Event]) -> None:
        with self._lock:
            subscribers = list(self._subscribers)
        for event in events:
            for sub in subscribers:
                if _matches(event, sub.path_prefix):
                    sub.offer(event)


def _matches(event: Event, prefix: str) -> bool:
    if not prefix:
        return True
    if event.version is not None:
        return event.version.path.startswith(prefix)
    if event.run is not None:
        return event.run.cwd.startswith(prefix)
    return False


def _check_limit(limit: int, what: str = "page size") -> int:
    if limit == 0:
        return 100
    if not 1 <= limit <= MAX_PAGE:
        raise InvalidArgument(f"{what} must be between 1 and {MAX_PAGE}, got {limit}")
    return limit


def _check_abs(path: str) -> str:
    if not path or "\x00" in path:
        raise InvalidArgument("a path must be non-empty and free of NUL bytes")
    if len(path) > 4096:
        raise InvalidArgument("a path is at most 4096 bytes")
    if not os.path.isabs(path):
        raise InvalidArgument(
            f"paths are absolute on the wire (the client resolves them): {path!r}"
        )
    return os.path.normpath(path)


def _is_clean_abs(path: str) -> bool:
    """Whether ``_check_abs(path)`` would return ``path`` unchanged (the normpath is only paid
    for a path that fails here, and then decides)."""
    return path[:1] == "/" and len(path) <= 4096 and "\x00" not in path and is_normal_path(path)


def _check_fields(accesses: Sequence[Access]) -> None:
    """An access's fields besides its path, checked for a whole batch at once (each value set
    is small: a run reports a handful of distinct ones)."""
    if not accesses:
        return
    hows = {access.how for access in accesses} - {"declared", "traced"}
    if hows:
        raise InvalidArgument(f"access 'how' is declared or traced, got {min(hows)!r}")
    roles = {access.role for access in accesses} - {"data", "code"}
    if roles:
        raise InvalidArgument(f"access role is data or code, got {min(roles)!r}")
    for access in accesses:
        if access.digest:
            digest_to_blob(access.digest)
    if (
        min(access.size for access in accesses) < 0
        or min(access.first_at for access in accesses) < 0
        or min(access.last_at for access in accesses) < 0
    ):
        raise InvalidArgument("sizes and times cannot be negative")


class _PathFacts:
    """What one batch of a run's accesses learnt about paths: folders, lstat results.

    A run reports thousands of files in a few folders: each folder's root, ignore and
    exclusion answers and its real path are worked out once, and each file is lstat-ed
    once, for both the link check and the stat cache.
    """

    __slots__ = ("folders", "real_dirs", "special", "stats")

    def __init__(self, special: frozenset[str] = frozenset()) -> None:
        self.special = special  # paths a folder's answers do not cover: roots, exclusions
        # folder -> (its root or None, whether files directly in it can be tracked)
        self.folders: dict[str, tuple[WatchedRoot | None, bool]] = {}
        self.real_dirs: dict[str, str] = {}
        self.stats: dict[str, os.stat_result | None] = {}

    def lstat(self, path: str) -> os.stat_result | None:
        """``os.lstat(path)``, None when it fails; remembered."""
        if path in self.stats:
            return self.stats[path]
        try:
            found: os.stat_result | None = os.lstat(path)
        except OSError:
            found = None
        self.stats[path] = found
        return found


def _real_path(path: str, facts: _PathFacts) -> str:
    """``os.path.realpath(path)``, one ``lstat`` of the file and each folder resolved once."""
    folder, _, name = path.rpartition("/")
    folder = folder or "/"
    real_dir = facts.real_dirs.get(folder)
    if real_dir is None:
        real_dir = facts.real_dirs[folder] = os.path.realpath(folder)
    st = facts.lstat(path)
    is_link = st is not None and stat.S_ISLNK(st.st_mode)  # missing: realpath keeps the name
    if is_link or name in ("", ".", ".."):
        return os.path.realpath(path)
    return real_dir.rstrip("/") + "/" + name


class Engine:
    """Everything the daemon does, behind one object: index, watch, answer, record runs.

    Blindness is reported, never silent: every reason a root cannot be fully seen (polling
    instead of inotify, unreadable directories, the root missing) and a failing store are
    listed in ``status().degraded`` and in the root's ``health``, and logged when they change.
    A root that disappears keeps its history as it was: its files are *not* marked deleted,
    because a deleted directory cannot be told from an unmounted disk; when the root is back,
    the reconcile scan records what changed (files missing then are recorded as deleted).
    """

    def __init__(
        self, config: Config, store: Store, *, poll_interval: float = POLL_SECONDS
    ) -> None:
        self.config = config
        self.store = store
        self.poll_interval = poll_interval
        self.started_at = time.time_ns()
        self._bus = _EventBus()
        self.writer = Writer(
            store, after_commit=self._after_commit, on_recovered=self._on_store_recovered
        )
        self._stop = threading.Event()
        self._scan_wanted = threading.Event()  # wakes the scan thread (scan or root check)
        self._scan_pending = False
        self._scan_reason = "startup"
        self._next_lost_retry = 0.0
        self._health_listeners: list[Callable[[bool], None]] = []
        self._serving = False
        self._scan = ScanState()
        self._scan_lock = threading.Lock()
        # root path -> {"root" | "watch" | "read": reason}; reported by status()
        self._problems: dict[str, dict[str, str]] = {}
        self._problems_lock = threading.Lock()
        self._watchers: dict[str, RootWatcher | DeepWatcher] = {}
        self._progress_logged = 0.0  # monotonic time of the last progress line
        self._watchdog_crashed = False
        self._too_deep: set[str] = set()  # roots a scan found too deep for watchdog
        self._crashes = WatchdogCrashes(self._on_watchdog_crash)
        self.roots = RootSet([], excluded=[str(config.state_dir), str(config.objects_path)])
        self.objects = ObjectStore(config.objects_path)
        self.keeper = Keeper(
            store, self.writer, self.objects, self.roots, budget=config.objects_budget
        )
        self._too_large: dict[str, set[str]] = {}  # root path -> files over max_hash_size
        self.indexer = Indexer(
            store, self.writer, self.roots, cancel=self._stop, on_too_large=self._on_too_large
        )
        self.indexer.keeper = self.keeper
        # Big files hash one at a time on their own lane; the small lane takes what a
        # client's call could not hash before its deadline (see lanes.py).
        self.large_lane = HashLane("large", self.indexer.hash_and_record, self._stop)
        self.small_lane = HashLane("small", self.indexer.hash_and_record, self._stop)
        self.indexer.large_lane = self.large_lane
        self.indexer.small_lane = self.small_lane
        self.scanner = Scanner(
            store,
            self.writer,
            self.roots,
            progress=self._progress,
            stop=self._stop,
            large_lane=self._hash_large,
        )
        self.scanner.keeper = self.keeper
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
        # The daemon trusts no client to have redacted: every run is redacted again here,
        # with the store's key (made when the first run arrives).
        self._redactor: Redactor | None = None
        self._redactor_lock = threading.Lock()
        store.on_damage = self._on_row_damage
        self.openlineage = self._openlineage_delivery(config)

    def _on_row_damage(self, version_id: int, path: str) -> None:
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

    @property
    def redactor(self) -> Redactor:
        """The daemon's redaction rules, keyed with the store's secret key."""
        with self._redactor_lock:
            if self._redactor is None:
                config = self.config
                try:
                    key = load_or_create_key(config.state_dir)
                except ConfigError as exc:  # the daemon's state, not the caller's request
                    raise StoreError(exc.message) from None
                self._redactor = Redactor(
                    key=key,
                    names=config.redact_names,
                    values=config.redact_values,
                )
            return self._redactor

    def _openlineage_delivery(self, config: Config) -> OpenLineageDelivery | None:
        """The OpenLineage sender when something configures one (ol_delivery.py)."""
        from lineaged.ol_delivery import OpenLineageDelivery, settings_from

        settings = settings_from(config.openlineage, os.environ)
        if settings is None:
            return None
        return OpenLineageDelivery(self.store, self.writer, settings)

    # -- lifecycle

    def start(self, *, watch: bool = True) -> None:
        """Start the writer, register the roots, mark orphaned runs abandoned, start watching
        and the initial scan."""
        self.writer.start()
        self._register_roots(self.config.roots)
        if self.openlineage is not None:
            self.store.openlineage_outbox = True
            self.openlineage.start()
        self.abandon_orphans()
        if watch:
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
        """Stop watching, drain the queue, commit; the store stays open for the caller."""
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
        if self.openlineage is not None:
            self.openlineage.stop()  # before the writer: it marks what it delivered
        self.writer.stop()

    def run_once(self) -> ScanStats:
        """Index every root once (``lineaged --once``) and return the totals."""
        self.scanner.large_lane = None  # everything hashed before it returns
        self.writer.start()
        try:
            self._register_roots(self.config.roots)
            return self._scan_all("one-shot")
        finally:
            self.writer.stop()

    def reload(self, config: Config) -> None:
        """Apply a new configuration: roots added start being watched, removed ones stop."""
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
        self.keeper.budget = config.objects_budget  # keep policies come with the roots
        with self._redactor_lock:
            self._redactor = None  # rebuilt with the new [redact] rules on the next run
        if self._watch_problem:
            self._shorten_scan_interval()
        added = self._register_roots(config.roots)
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

    def _shorten_scan_interval(self) -> None:
        interval = self.config.scan_interval
        if interval <= 0 or interval > BLIND_SCAN_INTERVAL:
            self.config = replace(self.config, scan_interval=BLIND_SCAN_INTERVAL)

    def _register_roots(self, roots: Sequence[Root]) -> list[WatchedRoot]:
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

    def _on_store_recovered(self, lost: int) -> None:
        # Changes given up while the store failed are found again by comparing the trees
        # with the store; runs and accesses failed loudly to their callers.
        self.request_scan(f"the store accepts writes again after {lost} failed changes")

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
                    self._scan_all(reason)
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

    def _scan_all(self, reason: str) -> ScanStats:
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
                # Not scanned, so nothing under it is recorded as deleted (see the class doc).
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

    # -- health and status

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

    def _counts(self) -> Counts:
        """Store counts, at most COUNTS_SECONDS old: status is polled by scripts and
        dashboards, and five index lookups per call halved the calls/s it can answer."""
        now = time.monotonic()
        cached = self._counts_cache
        if cached is None or now - cached[0] > COUNTS_SECONDS:
            cached = (now, self.store.counts())
            self._counts_cache = cached
        return cached[1]

    def status(self) -> Status:
        """Version, uptime, roots with health, counts, scan state, queue depth."""
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
        if self.writer.problem:
            degraded.append(f"store: {self.writer.problem}")
        if self._watch_problem:
            degraded.append(f"watcher: {self._watch_problem}")
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
            state_dir=str(self.config.state_dir),
            socket=str(self.config.socket),
            roots=tuple(roots),
            counts=self._counts(),
            scan=self._scan,
            queue_depth=self.pipeline.depth
            + self.writer.depth
            + self.large_lane.depth
            + self.small_lane.depth,
            serving=self._serving,
            degraded=tuple(degraded),
            openlineage=openlineage,
            openlineage_backlog=backlog,
            openlineage_error=error,
        )

    def export_openlineage(self, run_ids: Sequence[str], since: int | None) -> Iterator[str]:
        """The OpenLineage events (JSON) of the named runs, or of every run started at or
        after ``since`` (all runs when neither is given), oldest first: START, then the end."""
        from lineaged.ol_delivery import export_events

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

    # -- versions

    def history(self, path: str, *, limit: int, before_id: int | None = None) -> list[Version]:
        """Every version the path has had, newest first; page with ``before_id``."""
        return self.store.history(_check_abs(path), limit=_check_limit(limit), before_id=before_id)

    def version_at(self, path: str, at: int) -> Version:
        """The version the path held at time ``at`` (NotFound if none)."""
        return self.store.version_at(_check_abs(path), at)

    def get_version(self, version_id: int) -> Version:
        """One version by id."""
        if version_id <= 0:
            raise InvalidArgument(f"a version id is a positive integer, got {version_id}")
        return self.store.get_version(version_id)

    def versions_by_digest(self, digest: str, *, limit: int) -> list[Version]:
        """Every version (any path) with this digest; a prefix of >= 8 hex chars is accepted."""
        return self.store.versions_by_digest(digest, limit=_check_limit(limit))

    # -- runs

    def begin_run(self, start: RunStart) -> Run:
        """Record a new run (status running) and return it with its run_id."""
        if not start.name or "\x00" in start.name or len(start.name) > 256:
            raise InvalidArgument("a run name is 1 to 256 characters without NUL bytes")
        if any("\x00" in a for a in start.argv) or len(start.argv) > 10_000:
            raise InvalidArgument("argv has at most 10000 arguments without NUL bytes")
        if start.cwd:
            _check_abs(start.cwd)
        start = self.redactor.run_start(start)
        run_id = self.writer.call(lambda store: store.begin_run(start))
        if self.openlineage is not None:
            self.openlineage.wake()
        run = self.store.get_run(run_id)
        self._bus.publish([Event(kind="run", run=run)])
        return run

    def record_accesses(self, run_id: str, accesses: Sequence[Access]) -> int:
        """Record file accesses of a running run; returns how many were recorded.

        Reads under a root are tied at once to the version current when the file was first
        opened; writes are tied at the run's end to what the file then holds; files outside
        every root are recorded with the digest the client computed (never opened here).
        """
        if len(accesses) > MAX_ACCESSES:
            raise InvalidArgument(f"at most {MAX_ACCESSES} accesses per call, got {len(accesses)}")
        roots = self.roots
        facts = _PathFacts(frozenset([*(r.path for r in roots.roots), *roots.excluded]))
        _check_fields(accesses)
        clean: list[Access] = []
        reads: list[Access] = []
        # Files outside every root carry the digest the client computed (never opened here).
        external: list[Access] = []
        # The usual access (a clean path in a folder seen before, a file that is no link,
        # times in order) is decided here inline; _check_access decides (and words) the rest.
        folders, special, real_dirs = facts.folders, facts.special, facts.real_dirs
        lstat, in_folder, read = facts.lstat, self.roots.file_in_folder_tracked, AccessMode.READ
        for access in accesses:
            path = access.path
            folder, _, name = path.rpartition("/")
            place = folders.get(folder)
            if (
                place is None
                or not name
                or path in special
                or access.last_at < access.first_at
                or not _is_clean_abs(path)
            ):
                access, under_root, tracked = self._check_access(access, facts)
            else:
                root, files_tracked = place
                if root is None:
                    under_root = tracked = False
                else:
                    st = lstat(path)
                    if real_dirs.get(folder) != folder or (
                        st is not None and stat.S_ISLNK(st.st_mode)
                    ):
                        access, under_root, tracked = self._check_access(access, facts)  # refused
                    else:
                        under_root = True
                        tracked = files_tracked and in_folder(root, path, name)
            clean.append(access)
            if tracked and access.mode is read:
                reads.append(access)
            elif access.digest and not under_root:
                external.append(access)
        self.store.get_run(run_id)  # NotFound early, before hashing anything
        if self.openlineage is not None:
            self.openlineage.busy()
        linked, hashing = self._read_versions(reads, facts)
        linked = self._match_digests(linked)

        # A read tied to a version is its edge; only what is not (writes, resolved at the run's
        # end; reads of untracked or vanished files) is kept as a raw access. Storing both
        # cost 70 ms per 10,000 reads and nothing ever read the copy back.
        linked_ids = {id(access) for _, access in linked}
        raw = [access for access in clean if id(access) not in linked_ids]

        def job(store: Store) -> int:
            store.add_accesses(run_id, raw)
            store.link_many(run_id, "read", linked)
            for access in external:
                version_id = store.record_external(
                    access.path, access.digest, access.size, access.mtime_ns, access.first_at
                )
                kind = "read" if access.mode is AccessMode.READ else "wrote"
                store.link(run_id, version_id, kind, access)
            return len(clean)

        recorded = self.writer.call(job)
        self._link_when_hashed(run_id, "read", reads, hashing)
        # Before the run ends: the bytes it read are copied while its reads are reported.
        self.keeper.keep_versions([version_id for version_id, _ in linked])
        return int(recorded)

    def _link_when_hashed(
        self, run_id: str, kind: str, accesses: Sequence[Access], hashing: dict[str, Ticket]
    ) -> None:
        """Tie the run to the files a lane is still hashing, once their versions land.

        The call answered before (it never waits on hashing past ``HASH_WAIT_SECONDS``); the
        edge is added then, to the version the lane recorded. A daemon stopped before that
        leaves the access recorded without its edge (a read; a write is resolved again by
        nothing: the run's output then shows no version).
        """
        for access in accesses:
            ticket = hashing.get(access.path)
            if ticket is None:
                continue

            def link(recorded: bool, access: Access = access) -> None:
                if not recorded:
                    return

                def job(store: Store) -> None:
                    current = store.current_version(access.path)
                    if current is not None:
                        store.link(run_id, current.id, kind, access)

                self.writer.submit(job, urgent=True)

            ticket.add_done_callback(link)

    def _read_versions(
        self, reads: Sequence[Access], facts: _PathFacts
    ) -> tuple[list[tuple[int, Access]], dict[str, Ticket]]:
        """Each read under a root with the version current at its first open.

        Reads whose stat key the cache does not vouch for (usually none) are indexed first
        (hashed through the stat cache), so that version is in the store.
        """
        wanted = [(access.path, access.first_at) for access in reads]
        # needs_hash() as the rescan applies it: a packed key the store trusts, compared whole.
        states = self.store.read_states(wanted, hasher.HASH_FORMAT, RACY_NS)
        versions = {read: version_id for read, (_, version_id) in states.items()}
        stale: dict[str, ChangeKind] = {}
        for read in wanted:
            path = read[0]
            st = facts.lstat(path)
            # Missing or not a regular file: the indexer records it gone (or logs why).
            state = states.get(read)
            if (
                st is None
                or state is None
                or state[0] is None
                or not stat.S_ISREG(st.st_mode)
                or state[0] != pack_stat(st)
            ):
                stale[path] = ChangeKind.MODIFIED
        hashing: dict[str, Ticket] = {}
        if stale:
            hashing = self.indexer.observe_within(stale, time.monotonic() + HASH_WAIT_SECONDS)
            again = [read for read in wanted if read[0] in stale and read[0] not in hashing]
            for read in wanted:
                if read[0] in hashing:
                    versions.pop(read, None)  # linked when its hash lands
            for read in again:
                versions.pop(read, None)
            versions.update(self.store.read_versions(again))
        linked: list[tuple[int, Access]] = []
        for read, access in zip(wanted, reads, strict=True):
            version_id = versions.get(read)
            if version_id is not None:
                linked.append((version_id, access))
        return linked, hashing

    def _match_digests(self, linked: list[tuple[int, Access]]) -> list[tuple[int, Access]]:
        """Reads that carry the client's digest (a capture spooled while the daemon was away,
        or a source file) tied to the version of their path that held those bytes.

        The version current at the first open is right when the daemon watched the run; a
        run delivered late may have read a state the daemon saw only later, or earlier. A
        read whose bytes the path never held in the store stays unlinked (kept as a raw
        access with its digest) rather than tied to other bytes.
        """
        if not any(access.digest for _, access in linked):
            return linked
        digests = self.store.version_digests([vid for vid, access in linked if access.digest])
        matched: list[tuple[int, Access]] = []
        for version_id, access in linked:
            if access.digest and digests.get(version_id) != access.digest:
                found = self.store.version_with_digest(access.path, access.digest, access.first_at)
                if found is None:
                    continue
                version_id = found
            matched.append((version_id, access))
        return matched

    def abandon_orphans(self, *, now: int | None = None) -> list[str]:
        """Mark ``abandoned`` the runs still ``running`` whose wrapper is gone: its process
        is not alive on this host (or is another process that took its pid), or the run is
        older than ``ABANDON_AFTER_NS`` (another host, or no pid to check). Returns their ids.
        """
        current = time.time_ns() if now is None else now
        host = socket.gethostname()
        reasons: dict[str, str] = {}
        for run_id, run_host, pid, started_at in self.writer.call(lambda s: s.open_runs()):
            if run_host == host and pid > 0:
                if _process_alive_since(pid, started_at):
                    continue
                reasons[run_id] = (
                    f"abandoned: its process {pid} was gone when lineaged started at "
                    f"{_iso_ns(current)}; a spooled capture delivered later completes the run"
                )
            elif current - started_at > ABANDON_AFTER_NS:
                reasons[run_id] = (
                    f"abandoned: still running {(current - started_at) // 3_600_000_000_000} h "
                    f"after it began, when lineaged started at {_iso_ns(current)}"
                )
        if reasons:
            self.writer.call(lambda s: s.mark_abandoned(reasons))
            log.warning("marked %d runs abandoned (their wrappers are gone)", len(reasons))
        return sorted(reasons)

    def _check_access(self, access: Access, facts: _PathFacts) -> tuple[Access, bool, bool]:
        """The access's path checked (normalised; last_at not before first_at), whether it
        is under a root, and whether it is tracked there (:meth:`RootSet.tracked`). The other
        fields are checked for the whole batch by :func:`_check_fields`."""
        path = access.path
        if not _is_clean_abs(path):
            path = _check_abs(path)
        folder, _, name = path.rpartition("/")
        folder = folder or "/"
        place = facts.folders.get(folder)
        if place is None:
            place = facts.folders[folder] = self.roots.folder(folder)
        root, files_tracked = place
        if not name or path in facts.special:
            # Rare ("/", a root itself, an excluded folder): the general answers.
            root = self.roots.root_for(path)
            tracked = self.roots.tracked(path) is not None
        else:
            tracked = (
                root is not None
                and files_tracked
                and self.roots.file_in_folder_tracked(root, path, name)
            )
        if root is not None:
            real = _real_path(path, facts)
            if real != path:
                # The daemon opens paths under its roots (to hash them); a link could make
                # it open something elsewhere on a client's behalf, so links are refused.
                raise PathOutsideRoots(
                    f"{path} goes through a symbolic link (it resolves to {real}); lineaged "
                    "never follows links under its roots: send the resolved path"
                )
        if path != access.path or access.last_at < access.first_at:
            access = replace(access, path=path, last_at=max(access.last_at, access.first_at))
        return access, root is not None, tracked

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
        if status is RunStatus.RUNNING:
            raise InvalidArgument("a run cannot end with status running")
        if len(warnings) > 100 or any(len(w) > 4096 or "\x00" in w for w in warnings):
            raise InvalidArgument("at most 100 warnings of at most 4096 characters")
        if capture is not None and (
            len(capture.reasons) > 100
            or any(len(r) > 4096 or "\x00" in r for r in capture.reasons)
            or len(capture.method) > 64
        ):
            raise InvalidArgument("at most 100 capture reasons of at most 4096 characters")
        if capture is not None and capture.complete and capture.reasons:
            raise InvalidArgument("a complete capture has no reasons to be partial")
        warnings = self.redactor.texts(warnings)
        run = self.store.get_run(run_id)
        if run.status not in (RunStatus.RUNNING, RunStatus.ABANDONED):
            raise FailedPrecondition(f"run {run.run_id} already ended ({run.status.value})")
        run_id = run.run_id
        outputs = self.writer.call(lambda store: store.run_accesses(run_id, AccessMode.WRITE))
        tracked = {a.path: ChangeKind.RUN for a in outputs if self.roots.tracked(a.path)}
        hashing: dict[str, Ticket] = {}
        if tracked:
            hashing = self.indexer.observe_within(tracked, time.monotonic() + HASH_WAIT_SECONDS)
        linked: list[tuple[int, Access]] = []
        for access in outputs:
            if access.path in tracked and access.path not in hashing:
                current = self.store.current_version(access.path)
                if access.digest and (current is None or current.digest != access.digest):
                    # Delivered late from a spool: the file may have changed since the run
                    # wrote it; the client's digest names the state the run left.
                    found = self.store.version_with_digest(
                        access.path, access.digest, access.last_at
                    )
                    if found is not None:
                        linked.append((found, access))
                        continue
                if current is not None:
                    linked.append((current.id, access))
        end = ended_at or time.time_ns()
        self.keeper.keep_versions([version_id for version_id, _ in linked])

        def job(store: Store) -> None:
            store.link_many(run_id, "wrote", linked)
            store.flag_changed_reads(run_id, end)
            store.end_run(
                run_id,
                exit_code=exit_code,
                status=status,
                ended_at=end,
                warnings=warnings,
                capture=capture,
            )

        self.writer.call(job)
        if self.openlineage is not None:
            self.openlineage.wake()
        self._link_when_hashed(run_id, "wrote", outputs, hashing)
        finished = self.store.get_run(run_id)
        self._bus.publish([Event(kind="run", run=finished)])
        return finished

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
        if "\x00" in name:
            raise InvalidArgument("a run name has no NUL bytes")
        return self.store.list_runs(
            limit=_check_limit(limit),
            name=name,
            status=status,
            since=since,
            until=until,
            before_id=before_id,
            parent_run_id=parent_run_id,
        )

    # -- lineage

    def lineage(
        self, start: StartNode, direction: Direction, *, max_depth: int, max_nodes: int
    ) -> Graph:
        """The lineage subgraph around ``start``; ``truncated`` when a limit cut it."""
        max_depth = max_depth or 50
        max_nodes = max_nodes or 1000
        if not 1 <= max_depth <= MAX_DEPTH:
            raise InvalidArgument(f"max_depth must be between 1 and {MAX_DEPTH}, got {max_depth}")
        if not 1 <= max_nodes <= MAX_NODES:
            raise InvalidArgument(f"max_nodes must be between 1 and {MAX_NODES}, got {max_nodes}")
        return self.store.lineage(
            self._check_start(start), direction, max_depth=max_depth, max_nodes=max_nodes
        )

    def verify(self, start: StartNode) -> list[VerifyItem]:
        """Every input on the upstream closure of ``start`` and what its path holds now."""
        start = self._check_start(start)
        # Paths under a root are brought up to date first: "now" means now, not the last event.
        graph = self.store.lineage(
            start, Direction.UPSTREAM, max_depth=MAX_DEPTH, max_nodes=MAX_NODES
        )
        hints = {v.path: ChangeKind.MODIFIED for v in graph.versions if self.roots.tracked(v.path)}
        if hints:
            # Files still hashing by the deadline are checked against what is recorded.
            self.indexer.observe_within(hints, time.monotonic() + HASH_WAIT_SECONDS)
        return self.store.verify(start, max_nodes=MAX_NODES)

    def _check_start(self, start: StartNode) -> StartNode:
        given = sum(bool(x) for x in (start.path, start.digest, start.version_id, start.run_id))
        if given != 1:
            raise InvalidArgument(
                "give exactly one start: a path, a digest, a version id or a run id"
            )
        if start.path:
            return replace(start, path=_check_abs(start.path))
        if start.version_id < 0:
            raise InvalidArgument("a version id is a positive integer")
        return start

    # -- content store

    def pin(self, start: StartNode, note: str = "") -> PinReport:
        """Pin a path's current version, every version of a digest, or a run's files."""
        start = self._check_start(start)
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
        if not path and not digest:
            raise InvalidArgument("restore needs a path, a digest, or both")
        if path:
            path = _check_abs(path)
        if digest:
            candidates = self.store.versions_by_digest(digest, limit=MAX_PAGE)
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

    def run_files(self, run_id: str) -> list[RunFile]:
        """Every version a run read or wrote, and whether its bytes are kept."""
        return self.store.run_files(run_id)

    def link_reproduction(self, run_id: str, original_run_id: str) -> None:
        """Record that ``run_id`` re-ran ``original_run_id``."""
        run = self.store.get_run(run_id)
        original = self.store.get_run(original_run_id)
        at = time.time_ns()
        self.writer.call(lambda store: store.link_reproduction(run.run_id, original.run_id, at))

    # -- events

    def subscribe(self, path_prefix: str = "") -> Subscription:
        """A queue of new versions and run events whose path starts with ``path_prefix``."""
        if "\x00" in path_prefix:
            raise InvalidArgument("a path prefix has no NUL bytes")
        return self._bus.subscribe(path_prefix)

    def _after_commit(self, outputs: list[Any]) -> None:
        # Runs on the writer thread: a first scan commits 100k versions, and wrapping each in
        # an event nobody reads cost a second of it.
        if not self._bus.listened:
            return
        events: list[Event] = []
        for output in outputs:
            if isinstance(output, list):
                events.extend(
                    Event(kind="version", version=v) for v in output if isinstance(v, Version)
                )
        if events:
            self._bus.publish(events)

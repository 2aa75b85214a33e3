"""Recording runs: begin, the accesses a run reports, end, and runs whose wrapper is gone.

A read under a root is tied at once to the version current when the file was first opened
(hashed first when the stat cache does not vouch for it); a write is tied at the run's end
to what the file then holds. A file a lane is still hashing when the client's call must
answer is linked when its hash lands. Files outside every root arrive with the digest the
client computed: the daemon never opens a path outside its roots on anyone's behalf, and
refuses a path under a root that goes through a symbolic link.
"""

from __future__ import annotations

import logging
import os
import socket
import stat
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from lineage_core import hasher
from lineage_core.errors import ConfigError, FailedPrecondition, PathOutsideRoots, StoreError
from lineage_core.models import (
    Access,
    AccessMode,
    Capture,
    ChangeKind,
    EdgeKind,
    Run,
    RunStart,
    RunStatus,
)
from lineage_core.redact import Redactor, load_or_create_key

from lineaged.config import Config
from lineaged.engine.events import EventBus
from lineaged.retention import Keeper
from lineaged.store import Store, Writer, pack_stat
from lineaged.watching.indexer import RACY_NS, Indexer, RootSet, WatchedRoot
from lineaged.watching.lanes import Ticket

if TYPE_CHECKING:
    from lineaged.ol_delivery import OpenLineageDelivery

__all__ = ["ABANDON_AFTER_NS", "HASH_WAIT_SECONDS", "Runs"]

log = logging.getLogger(__name__)

# A run still "running" this long after it began, whose wrapper cannot be checked (another
# host, no pid), is marked abandoned when the daemon starts.
ABANDON_AFTER_NS = 7 * 24 * 3600 * 1_000_000_000
HASH_WAIT_SECONDS = 2.0  # the longest a client's call waits on hashing (then: a lane)


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


class Runs:
    """Run recording behind the engine (see the module doc)."""

    def __init__(
        self,
        config: Config,
        store: Store,
        writer: Writer,
        roots: RootSet,
        indexer: Indexer,
        keeper: Keeper,
        events: EventBus,
        openlineage: OpenLineageDelivery | None,
    ) -> None:
        self.config = config
        self.store = store
        self.writer = writer
        self.roots = roots
        self.indexer = indexer
        self.keeper = keeper
        self.events = events
        self.openlineage = openlineage
        # The daemon trusts no client to have redacted: every run is redacted again here,
        # with the store's key (made when the first run arrives).
        self._redactor: Redactor | None = None
        self._redactor_lock = threading.Lock()

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

    def reconfigure(self, config: Config) -> None:
        """Take a reloaded configuration: the redactor is rebuilt with its [redact] rules on
        the next run."""
        with self._redactor_lock:
            self.config = config
            self._redactor = None

    def begin_run(self, start: RunStart) -> Run:
        """Record a new run (status running) and return it with its run_id."""
        start = self.redactor.run_start(start)
        run_id = self.writer.call(lambda store: store.begin_run(start))
        if self.openlineage is not None:
            self.openlineage.wake()
        run = self.store.get_run(run_id)
        self.events.publish_run(run)
        return run

    def record_accesses(self, run_id: str, accesses: Sequence[Access]) -> int:
        """Record file accesses of a running run; returns how many were recorded.

        Reads under a root are tied at once to the version current when the file was first
        opened; writes are tied at the run's end to what the file then holds; files outside
        every root are recorded with the digest the client computed (never opened here).
        """
        roots = self.roots
        facts = _PathFacts(frozenset([*(r.path for r in roots.roots), *roots.excluded]))
        clean: list[Access] = []
        reads: list[Access] = []
        # Files outside every root carry the digest the client computed (never opened here).
        external: list[Access] = []
        # The usual access (a file that is no link, in a folder seen before) is placed here
        # inline; _place_access places (or refuses, with the words) the rest.
        folders, special, real_dirs = facts.folders, facts.special, facts.real_dirs
        lstat, in_folder, read = facts.lstat, self.roots.file_in_folder_tracked, AccessMode.READ
        for access in accesses:
            path = access.path
            folder, _, name = path.rpartition("/")
            place = folders.get(folder)
            if place is None or not name or path in special:
                under_root, tracked = self._place_access(access, facts)
            else:
                root, files_tracked = place
                if root is None:
                    under_root = tracked = False
                else:
                    st = lstat(path)
                    if real_dirs.get(folder) != folder or (
                        st is not None and stat.S_ISLNK(st.st_mode)
                    ):
                        under_root, tracked = self._place_access(access, facts)  # refused
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
            store.link_many(run_id, EdgeKind.READ, linked)
            for access in external:
                version_id = store.record_external(
                    access.path, access.digest, access.size, access.mtime_ns, access.first_at
                )
                kind = EdgeKind.READ if access.mode is AccessMode.READ else EdgeKind.WROTE
                store.link(run_id, version_id, kind, access)
            return len(clean)

        recorded = self.writer.call(job)
        self._link_when_hashed(run_id, EdgeKind.READ, reads, hashing)
        # Before the run ends: the bytes it read are copied while its reads are reported.
        self.keeper.keep_versions([version_id for version_id, _ in linked])
        return int(recorded)

    def _link_when_hashed(
        self, run_id: str, kind: EdgeKind, accesses: Sequence[Access], hashing: dict[str, Ticket]
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

    def _place_access(self, access: Access, facts: _PathFacts) -> tuple[bool, bool]:
        """Whether the access's path is under a root, and whether it is tracked there
        (:meth:`RootSet.tracked`); ``PathOutsideRoots`` when it goes through a link under a
        root. The gate has checked the access itself (an absolute, normalised path, times in
        order)."""
        path = access.path
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
        return root is not None, tracked

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
            store.link_many(run_id, EdgeKind.WROTE, linked)
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
        self._link_when_hashed(run_id, EdgeKind.WROTE, outputs, hashing)
        finished = self.store.get_run(run_id)
        self.events.publish_run(finished)
        return finished

    def link_reproduction(self, run_id: str, original_run_id: str) -> None:
        """Record that ``run_id`` re-ran ``original_run_id``."""
        run = self.store.get_run(run_id)
        original = self.store.get_run(original_run_id)
        at = time.time_ns()
        self.writer.call(lambda store: store.link_reproduction(run.run_id, original.run_id, at))

"""Which versions' bytes are kept, when they are copied, and what ``gc`` may free.

The policy is per root (``keep`` in the config): ``lineage`` keeps every version a recorded run
read or wrote, ``all`` every version when it is first recorded, ``none`` nothing. Pins protect a
version and everything upstream of it from ``gc`` whatever the policy. The copying itself is
``objects.py``'s; what is kept is recorded in the store.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence

from lineage_core.errors import NotFound
from lineage_core.models import GcReport, Keep, PinReport, StartNode, Version
from lineage_core.objects import ObjectStore, PutResult

from lineaged.store import Store, Writer
from lineaged.watching.indexer import RootSet

__all__ = ["MAX_LISTED", "Keeper"]

log = logging.getLogger(__name__)

MAX_LISTED = 1000  # digests listed in a gc report


class Keeper:
    """Copies the bytes the policy wants into the content store, pins, collects garbage."""

    def __init__(
        self,
        store: Store,
        writer: Writer,
        objects: ObjectStore,
        roots: RootSet,
        *,
        budget: int = 0,
    ) -> None:
        self.store = store
        self.writer = writer
        self.objects = objects
        self.roots = roots
        self.budget = budget
        # gc's removals and the keeping of bytes exclude each other: an object kept again
        # while gc plans must not be removed under the row that says it is kept.
        self._lock = threading.RLock()

    def policy(self, root_id: int | None) -> Keep:
        """The keep policy of a root by its store id (lineage for a root not configured now)."""
        for watched in self.roots.roots:
            if watched.root_id == root_id:
                return watched.root.keep
        return Keep.LINEAGE

    def wants_all(self, root_id: int) -> bool:
        """Whether a root keeps every version as it is recorded."""
        return self.policy(root_id) is Keep.ALL

    def put(self, path: str, digest: str, *, sync: bool = True) -> PutResult:
        """Copy the bytes ``path`` holds if they still hash to ``digest`` (no store write)."""
        with self._lock:
            result = self.objects.put(path, digest, sync=sync)
        if not result.kept:
            log.info("not keeping %s (%s): %s", path, digest[:12], result.reason)
        return result

    def keep_versions(self, version_ids: Sequence[int]) -> list[PutResult]:
        """Keep the bytes of recorded versions a run read or wrote, where the policy wants
        them and they are not kept yet; waits until the store says so."""
        if not version_ids:
            return []
        unkept = [
            item
            for item in self.store.unkept_versions(version_ids)
            if self.policy(item[4]) is not Keep.NONE
        ]
        if not unkept:
            return []
        with self._lock:
            results = [(item[0], self.put(item[1], item[2])) for item in unkept]
            kept = [(r.digest, r.size, r.method) for _, r in results if r.kept]
            missed = [(version_id, r.reason) for version_id, r in results if not r.kept]
            at = time.time_ns()

            def job(store: Store) -> None:
                store.record_objects(kept, at)
                store.mark_not_kept(missed)

            self.writer.call(job)
        return [r for _, r in results]

    # -- pins

    def pin(self, start: StartNode, versions: Sequence[Version], note: str) -> PinReport:
        """Pin ``versions`` (resolved from ``start``); report what is upstream of them."""
        if not versions:
            raise NotFound("nothing to pin: the target has no recorded version")
        ids = sorted({v.id for v in versions})
        at = time.time_ns()
        self.writer.call(lambda store: store.pin(ids, note, at))
        upstream = self.store.upstream_digests(ids)
        return PinReport(
            pinned=tuple(versions),
            upstream_versions=len(upstream),
            upstream_kept=self.store.objects_kept_by(upstream),
        )

    # -- garbage collection

    def collect(self, *, dry_run: bool) -> GcReport:
        """Free every object the policy no longer wants, never one upstream of a pin; over
        the budget, free the oldest unpinned objects until the rest fits."""
        with self._lock:
            keep_all: list[int] = []
            keep_lineage: list[int] = []
            configured = {w.root_id: w.root.keep for w in self.roots.roots}
            for root in self.store.roots():
                policy = configured.get(root.id or 0, Keep.LINEAGE)
                if policy is Keep.ALL:
                    keep_all.append(root.id or 0)
                elif policy is Keep.LINEAGE:
                    keep_lineage.append(root.id or 0)
            needs = self.store.object_needs(keep_all, keep_lineage)
            protected = self.store.upstream_digests(self.store.pinned_versions())
            freed: list[tuple[bytes, int]] = []
            kept: list[tuple[bytes, int]] = []
            for digest, size, _, wanted in needs:
                if digest in protected or wanted:
                    kept.append((digest, size))
                else:
                    freed.append((digest, size))
            if self.budget:
                total = sum(size for _, size in kept)
                over_budget: list[tuple[bytes, int]] = []
                remaining: list[tuple[bytes, int]] = []
                for digest, size in kept:  # oldest first
                    if total > self.budget and digest not in protected:
                        over_budget.append((digest, size))
                        total -= size
                    else:
                        remaining.append((digest, size))
                freed += over_budget
                kept = remaining
            if not dry_run and freed:
                doomed = [digest for digest, _ in freed]
                # The rows go first: the store never says kept for bytes that are gone.
                self.writer.call(lambda store: store.forget_objects(doomed))
                for digest in doomed:
                    self.objects.remove(digest.hex())
        protected_count = sum(1 for digest, _ in kept if digest in protected)
        return GcReport(
            dry_run=dry_run,
            freed_objects=len(freed),
            freed_bytes=sum(size for _, size in freed),
            kept_objects=len(kept),
            kept_bytes=sum(size for _, size in kept),
            protected_objects=protected_count,
            freed=tuple(digest.hex() for digest, _ in freed[:MAX_LISTED]),
        )

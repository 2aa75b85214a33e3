"""The one thread that writes (``Writer``: group commit, retries when the store fails) and
the checkpoints beside it (``_Checkpointer``: the WAL copied into the database on a
connection of its own, a moment after commits)."""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from lineage_core.errors import StoreError

from lineaged.store.connection import TransactionLost, is_io_error

if TYPE_CHECKING:
    from lineaged.store.store import Store

log = logging.getLogger(__name__)

T = TypeVar("T")


class _Checkpointer:
    """Copies the WAL into the database beside the writer: PASSIVE checkpoints on a connection
    of its own, a moment after commits, so no commit waits for a checkpoint's writes and
    fsyncs (SQLite's automatic checkpoint runs inside the commit that crosses its threshold:
    on a store of a few hundred thousand edges, 200 ms of a 10,000-read RecordAccesses).

    A passive checkpoint never blocks readers or the writer. It copies what no reader still
    needs; the writer restarts the WAL from its start once a checkpoint has copied it all, and
    :meth:`Writer._bound_wal` forces that when writes never pause long enough.
    """

    def __init__(self, path: Path, delay: float) -> None:
        self._path = path
        self._delay = delay
        self._wanted = threading.Event()
        self._stopping = threading.Event()
        self._failing = False
        self._thread = threading.Thread(target=self._loop, name="lineaged-checkpoint", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def poke(self) -> None:
        """A commit added to the WAL: checkpoint soon."""
        self._wanted.set()

    def stop(self) -> None:
        """Stop; the store's last connection to close copies what is left."""
        if self._thread.is_alive():
            self._stopping.set()
            self._wanted.set()
            self._thread.join()

    def _loop(self) -> None:
        conn = sqlite3.connect(self._path, timeout=30.0, isolation_level=None)
        try:
            while True:
                self._wanted.wait()
                # Commits that come meanwhile join this checkpoint: a page rewritten by each
                # of them is copied once.
                if self._stopping.wait(self._delay):
                    return
                self._wanted.clear()
                self._checkpoint(conn)
        finally:
            conn.close()

    def _checkpoint(self, conn: sqlite3.Connection) -> None:
        try:
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except sqlite3.Error as exc:  # disk full, I/O: the WAL keeps the data; retried later
            if not self._failing:
                log.warning("store checkpoint failed (%s); the WAL grows until one succeeds", exc)
            self._failing = True
            self._wanted.set()
        else:
            if self._failing:
                log.warning("store checkpoints succeed again")
            self._failing = False


class Writer:
    """The one thread that writes: jobs are grouped into transactions (group commit).

    Each job runs in its own savepoint, so a failing job changes nothing and does not undo the
    others in its batch; the batch commits once. ``submit`` returns a Future of the job's result.

    When the store itself fails (disk full, an I/O error, the database locked), the whole
    batch is rolled back and run again from the start, with back-off, up to
    ``RETRY_ATTEMPTS`` times: jobs must therefore be functions of the store's state, not of
    their own earlier attempts. What earlier batches committed is never touched. A batch that
    still fails is given up: its callers get a ``StoreError``, ``problem`` says why, and
    ``on_recovered(lost)`` is called after the next commit that succeeds (the engine then
    rescans, so file changes are recorded once the fault clears).
    """

    RETRY_ATTEMPTS = 8
    RETRY_MAX_DELAY = 5.0
    CHECKPOINT_DELAY = 0.25  # seconds from a commit to the background checkpoint
    # A WAL past this size (writes that never paused for the background checkpoint to copy
    # all of it, so the WAL never restarted) is checkpointed by the writer between batches.
    WAL_FORCE_BYTES = 64 << 20

    def __init__(
        self,
        store: Store,
        *,
        batch_seconds: float = 0.05,
        batch_jobs: int = 256,
        on_recovered: Callable[[int], None] | None = None,
        checkpoint_delay: float | None = None,
        wal_force_bytes: int | None = None,
    ) -> None:
        self.store = store
        self.batch_seconds = batch_seconds
        self.batch_jobs = batch_jobs
        self.wal_force_bytes = self.WAL_FORCE_BYTES if wal_force_bytes is None else wal_force_bytes
        self.on_recovered = on_recovered
        # (job, future, urgent): an urgent job's batch is written without waiting for more.
        self._queue: queue.Queue[tuple[Callable[[Store], Any], Future[Any], bool] | None] = (
            queue.Queue()
        )
        self._thread = threading.Thread(target=self._loop, name="lineaged-writer", daemon=True)
        self._checkpointer = _Checkpointer(
            store.path, self.CHECKPOINT_DELAY if checkpoint_delay is None else checkpoint_delay
        )
        self._stopping = False
        self._problem = ""
        self._lost = 0  # jobs given up since the last successful commit

    def __enter__(self) -> Writer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        """Start the thread (and the checkpoints beside it)."""
        self.store.set_auto_checkpoint(0)
        self._checkpointer.start()
        self._thread.start()

    def stop(self) -> None:
        """Finish every queued job, commit, and stop."""
        if self._thread.is_alive():
            self._stopping = True
            self._queue.put(None)
            self._thread.join()
        self._checkpointer.stop()
        with contextlib.suppress(StoreError, sqlite3.Error):  # a store closed already
            self.store.set_auto_checkpoint(1000)  # SQLite's default, for whoever writes next

    @property
    def depth(self) -> int:
        """Jobs waiting."""
        return self._queue.qsize()

    @property
    def problem(self) -> str:
        """Why the store is failing to write right now ("" when the last batch committed)."""
        return self._problem

    @property
    def lost(self) -> int:
        """Jobs given up since the last batch that committed."""
        return self._lost

    def submit(self, job: Callable[[Store], T], *, urgent: bool = False) -> Future[T]:
        """Queue ``job(store)`` to run in a write transaction.

        ``urgent``: someone waits on it (``call`` always does), so its batch commits with
        what is queued already instead of waiting ``batch_seconds`` for more.
        """
        future: Future[T] = Future()
        if self._stopping and not self._thread.is_alive():
            future.set_exception(StoreError("the store writer has stopped"))
            return future
        self._queue.put((job, future, urgent))
        return future

    def call(self, job: Callable[[Store], T], timeout: float | None = 60.0) -> T:
        """Run ``job`` on the writer thread and wait for its committed result.

        The caller is blocked, so the job is urgent: waiting ``batch_seconds`` for company
        only delayed it (two such waits were a tenth of a rescan of 100,000 files).
        """
        return self.submit(job, urgent=True).result(timeout)

    def _loop(self) -> None:
        stop = False
        while not stop:
            item = self._queue.get()
            if item is None:
                break
            batch = [item[:2]]
            urgent = item[2]
            deadline = time.monotonic() + self.batch_seconds
            while len(batch) < self.batch_jobs:
                remaining = deadline - time.monotonic()
                try:
                    nxt = (
                        self._queue.get(timeout=max(0.0, remaining))
                        if remaining > 0 and not urgent
                        else self._queue.get_nowait()
                    )
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                batch.append(nxt[:2])
                urgent = urgent or nxt[2]
            try:
                self._run_batch(batch)
            except BaseException as exc:  # the one writer must outlive any batch
                log.exception("store writer failed a batch of %d changes", len(batch))
                self._fail(batch, StoreError(f"store write failed: {exc}"))

    def _run_batch(self, batch: list[tuple[Callable[[Store], Any], Future[Any]]]) -> None:
        # A future is marked running once; the retries below re-run its job, never re-mark it.
        batch = [(job, fut) for job, fut in batch if fut.set_running_or_notify_cancel()]
        if not batch:
            return
        results: list[tuple[Future[Any], Any, BaseException | None]] = []
        attempt = 0
        while True:
            attempt += 1
            results = []
            try:
                self.store.begin()
                for job, future in batch:
                    try:
                        with self.store.savepoint():
                            value = job(self.store)
                    except sqlite3.OperationalError as exc:
                        if isinstance(exc, TransactionLost) or is_io_error(exc):
                            raise  # the store failed, not the job: retry the whole batch
                        results.append((future, None, exc))
                    except Exception as exc:  # a job's own failure: report it to its caller
                        results.append((future, None, exc))
                    else:
                        results.append((future, value, None))
                self.store.commit()
                break
            except sqlite3.Error as exc:
                self._rollback_quietly()
                # What the store said, not how the writer noticed it.
                cause = exc.__cause__ if isinstance(exc, TransactionLost) else None
                self._problem = f"writes failing ({cause or exc}); retrying"
                # While stopping, a failing store is not waited out: what the watcher saw is
                # found again by the next start's scan.
                if attempt >= (2 if self._stopping else self.RETRY_ATTEMPTS):
                    log.error(
                        "store write failed %d times (%s); giving up on %d changes",
                        attempt,
                        exc,
                        len(batch),
                    )
                    self._lost += len(batch)
                    self._problem = (
                        f"writes failing ({cause or exc}); {self._lost} changes not recorded, "
                        "a reconcile scan follows when writes succeed again"
                    )
                    self._fail(batch, StoreError(f"store write failed: {exc}"))
                    return
                delay = min(self.RETRY_MAX_DELAY, 0.1 * 2**attempt)
                log.error(
                    "store write failed (%s); retrying %d changes in %.1fs (attempt %d of %d)",
                    exc,
                    len(batch),
                    delay,
                    attempt,
                    self.RETRY_ATTEMPTS,
                )
                time.sleep(delay)
        if self._problem:
            log.warning("store writes succeed again (after %d attempts)", attempt)
            self._problem = ""
        lost, self._lost = self._lost, 0
        for future, value, error in results:
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(value)
        if lost and self.on_recovered is not None:
            try:
                self.on_recovered(lost)
            except Exception:
                log.exception("store-recovered hook failed")
        # After the callers have their answers: a forced checkpoint delays the next batch only.
        self._checkpointer.poke()
        self._bound_wal()

    def _bound_wal(self) -> None:
        """A WAL over ``wal_force_bytes`` is checkpointed here, after the commit, as SQLite's
        automatic checkpoint would: the next write then restarts it, cut to
        ``WAL_KEEP_BYTES``, unless a reader still needs it (passive: nobody is made to wait)."""
        try:
            size = os.stat(self.store.wal_path).st_size
        except OSError:
            return
        if size > self.wal_force_bytes:
            try:
                self.store.checkpoint()
            except sqlite3.Error as exc:
                log.warning("store checkpoint of a %d MB WAL failed: %s", size >> 20, exc)

    def _rollback_quietly(self) -> None:
        try:
            self.store.rollback()
        except sqlite3.Error as exc:
            # The next attempt's BEGIN fails (and is retried) if a transaction survived.
            log.error("store rollback failed: %s", exc)

    @staticmethod
    def _fail(
        batch: list[tuple[Callable[[Store], Any], Future[Any]]], error: BaseException
    ) -> None:
        for _, future in batch:
            if not future.done():
                future.set_exception(error)

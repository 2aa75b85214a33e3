"""Shared test helpers: ground-truth digests, waiting with a deadline, reading the store."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import blake3
from lineage_core.models import Role, Root

from lineaged.config import Config
from lineaged.engine import Engine
from lineaged.store import DB_NAME, Store
from lineaged.watching.watcher import POLL_SECONDS

B3SUM = shutil.which("b3sum")


def b3(data: bytes) -> str:
    """BLAKE3 of ``data`` from an independent implementation: b3sum when installed."""
    if B3SUM:
        out = subprocess.run(
            [B3SUM, "--no-names", "-"], input=data, capture_output=True, check=True
        )
        return out.stdout.decode().strip()
    return str(blake3.blake3(data).hexdigest())


def b3_files(paths: list[Path]) -> dict[str, str]:
    """Digest of each file, in one b3sum call when installed."""
    if not paths:
        return {}
    if B3SUM:
        out = subprocess.run(
            [B3SUM, "--", *map(str, paths)], capture_output=True, check=True, text=True
        )
        result = {}
        for line in out.stdout.splitlines():
            digest, _, name = line.partition("  ")
            result[name] = digest
        return result
    return {str(p): str(blake3.blake3(p.read_bytes()).hexdigest()) for p in paths}


def ground_truth(*roots: Path) -> dict[str, str]:
    """os.walk + b3sum over the trees: what the store must say is live."""
    paths = []
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = [d for d in dirnames if d not in (".git", "__pycache__")]
            for name in filenames:
                p = Path(dirpath) / name
                if p.is_file() and not p.is_symlink():
                    paths.append(p)
    return b3_files(paths)


def wait_for(
    condition: Callable[[], object], timeout: float = 20.0, what: str = "condition"
) -> object:
    """Poll ``condition`` until it is truthy; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        last = condition()
        if last:
            return last
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last value: {last!r})")


def live_digests(db: Path) -> dict[str, str]:
    """path -> digest of every current version, read straight from the SQLite file."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30) as conn:
        rows = conn.execute(
            "SELECT a.path, v.digest FROM versions v JOIN artifacts a ON a.id=v.artifact_id "
            "WHERE v.valid_until IS NULL AND a.root_id IS NOT NULL"
        ).fetchall()
    conn.close()
    return {path: digest.hex() for path, digest in rows}


def history(db: Path, path: Path | str) -> list[tuple[str, str, str | None]]:
    """(digest, seen, closed_by) of every version of ``path``, oldest first."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30) as conn:
        rows = conn.execute(
            "SELECT v.digest, v.seen, v.closed_by FROM versions v JOIN artifacts a "
            "ON a.id=v.artifact_id WHERE a.path=? ORDER BY v.id",
            (str(path),),
        ).fetchall()
    conn.close()
    return [(d.hex(), seen, closed) for d, seen, closed in rows]


def all_digests(db: Path) -> set[str]:
    """Every digest ever recorded."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30) as conn:
        rows = conn.execute("SELECT DISTINCT digest FROM versions").fetchall()
    conn.close()
    return {d.hex() for (d,) in rows}


class EngineHarness:
    """A real engine (watchdog observers, pipeline, SQLite store) on ``data`` and ``models``
    roots under ``tmp_path``; ``start()`` waits for the initial scan."""

    def __init__(
        self,
        tmp_path: Path,
        *,
        settle_ms: int = 50,
        scan_interval: float = 0,
        poll_interval: float = POLL_SECONDS,
    ) -> None:
        self.tmp = tmp_path
        self.data = tmp_path / "data"
        self.models = tmp_path / "models"
        self.data.mkdir(exist_ok=True)
        self.models.mkdir(exist_ok=True)
        self.state = tmp_path / "state"
        self.state.mkdir(exist_ok=True)
        self.db = self.state / DB_NAME
        self.config = Config(
            roots=(Root(str(self.data), Role.DATA), Root(str(self.models), Role.MODEL)),
            state_dir=self.state,
            socket=tmp_path / "sock" / "s",
            settle_ms=settle_ms,
            scan_interval=scan_interval,
        )
        self.store = Store.open(self.db)
        self.engine = Engine(self.config, self.store, poll_interval=poll_interval)

    def start(self) -> EngineHarness:
        self.engine.start()
        wait_for(lambda: self.engine.serving, what="initial scan")
        return self

    def stop(self) -> None:
        self.engine.stop()
        self.store.close()

    def live(self) -> dict[str, str]:
        self.engine.wait_idle()
        return live_digests(self.db)

    def root(self, path: Path) -> Root:
        """The status of one root."""
        return next(r for r in self.engine.status().roots if r.path == str(path))

    def scans(self) -> int:
        return self.engine.status().scan.scans_completed

    def expect(self, path: Path, data: bytes | None, timeout: float = 20.0) -> None:
        """Wait until the store's current version of ``path`` is ``data`` (None: gone)."""
        want = None if data is None else b3(data)
        wait_for(
            lambda: live_digests(self.db).get(str(path)) == want,
            timeout=timeout,
            what=f"{path} -> {want}",
        )

    def expect_truth(self) -> None:
        truth = ground_truth(self.data, self.models)
        wait_for(
            lambda: live_digests(self.db) == truth, timeout=60, what="store == os.walk + b3sum"
        )

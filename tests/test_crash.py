"""kill -9: the daemon is killed with SIGKILL at random moments while files change and runs
are recorded, and restarted each time. At the end the database is intact, every file's final
content is recorded with the right digest, and no run, edge or version is half-written.

The schedule comes from a seeded ``random.Random``: set ``LINEAGED_CRASH_SEED`` to replay a
failure (the seed is printed, and named in every assertion).
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from lineage_client import Client
from lineage_core.errors import LineageError
from lineage_core.models import Access, AccessMode, RunStart, RunStatus

from lineaged.store import DB_NAME
from tests.helpers import ground_truth, live_digests, wait_for

KILLS = 22
STARTED = "serving on"  # logged once the store is open, the roots watched, the socket bound
SCANNED = "reconcile scan (startup) done"


class Churn(threading.Thread):
    """Creates, rewrites, appends to, renames and deletes files under ``root`` until stopped."""

    def __init__(self, root: Path, rng: random.Random) -> None:
        super().__init__(name="churn", daemon=True)
        self.root = root
        self.rng = rng
        self.halt = threading.Event()
        self.operations = 0
        self.names = [f"d{i % 4}/f{i}.csv" for i in range(40)]

    def run(self) -> None:
        rng = self.rng
        while not self.halt.is_set():
            path = self.root / rng.choice(self.names)
            path.parent.mkdir(exist_ok=True)
            action = rng.random()
            with contextlib.suppress(FileNotFoundError):
                if action < 0.35:
                    path.write_bytes(rng.randbytes(rng.randrange(0, 3000)))
                elif action < 0.55:
                    with open(path, "ab") as f:
                        f.write(rng.randbytes(rng.randrange(1, 200)))
                elif action < 0.70:
                    temp = path.with_name(f".{path.name}.tmp")  # an atomic save
                    temp.write_bytes(rng.randbytes(rng.randrange(0, 3000)))
                    os.replace(temp, path)
                elif action < 0.85:
                    os.replace(path, self.root / rng.choice(self.names))
                else:
                    path.unlink()
            self.operations += 1
            time.sleep(rng.uniform(0, 0.01))


class Runs(threading.Thread):
    """Records runs (read one input, write one output) over gRPC; the daemon may be down."""

    def __init__(self, socket: Path, inputs: Path, outputs: Path, rng: random.Random) -> None:
        super().__init__(name="runs", daemon=True)
        self.socket = socket
        self.inputs = inputs
        self.outputs = outputs
        self.rng = rng
        self.halt = threading.Event()
        self.ended = 0
        self.failed_calls = 0

    def run(self) -> None:
        number = 0
        while not self.halt.is_set():
            number += 1
            # A fresh channel each time: a channel that saw the daemon die backs off for
            # seconds before it reconnects.
            try:
                with Client(socket=self.socket, timeout=3.0) as client:
                    self.one_run(client, number)
                self.ended += 1
            except LineageError:
                self.failed_calls += 1
                time.sleep(0.02)

    def one_run(self, client: Client, number: int) -> None:
        now = time.time_ns
        run = client.begin_run(RunStart(name=f"train-{number}", argv=("train.py",), cwd="/"))
        source = self.inputs / f"in{number % 3}.csv"
        client.record_accesses(
            run.run_id, [Access(str(source), AccessMode.READ, now(), now(), how="declared")]
        )
        output = self.outputs / f"model-{number}.bin"
        output.write_bytes(self.rng.randbytes(self.rng.randrange(1, 5000)))
        client.record_accesses(
            run.run_id, [Access(str(output), AccessMode.WRITE, now(), now(), how="declared")]
        )
        client.end_run(run.run_id, status=RunStatus.SUCCEEDED, exit_code=0)


class Daemon:
    """``python -m lineaged`` over ``data`` and ``models``; each start logs to its own file."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.state = base / "state"
        self.socket = base / "run" / "lineaged.sock"
        self.data = base / "data"
        self.models = base / "models"
        self.starts = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = base / "daemon-0.log"

    def start(self) -> None:
        self.starts += 1
        self.log = self.base / f"daemon-{self.starts}.log"
        args = [
            "--state-dir", str(self.state), "--socket", str(self.socket),
            "--watch", f"{self.data}:data", "--watch", f"{self.models}:model",
            "--settle-ms", "50", "--scan-interval", "0", "--log-level", "debug",
        ]  # fmt: skip
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "lineaged", *args], stdout=out, stderr=out
            )

    def started(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"lineaged exited {self.proc.returncode}:\n{self.text()}")
        return STARTED in self.text()

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)


@pytest.fixture
def daemon() -> Iterator[Daemon]:
    base = Path(tempfile.mkdtemp(prefix="lg-", dir="/tmp"))  # a short socket path
    d = Daemon(base)
    for folder in (d.data, d.models / "inputs", d.models / "out"):
        folder.mkdir(parents=True)
    yield d
    if d.proc is not None and d.proc.poll() is None:
        d.proc.kill()
        d.proc.wait()
    shutil.rmtree(base, ignore_errors=True)


def test_kill_9_at_random_moments_loses_nothing_and_half_writes_nothing(daemon: Daemon) -> None:
    seed = int(os.environ.get("LINEAGED_CRASH_SEED", random.randrange(2**32)))
    print(f"crash test seed: {seed} (replay with LINEAGED_CRASH_SEED={seed})")
    rng = random.Random(seed)
    inputs = daemon.models / "inputs"
    for i in range(3):
        (inputs / f"in{i}.csv").write_bytes(f"input {i}\n".encode() * 100)
    churn = Churn(daemon.data, random.Random(rng.random()))
    runs = Runs(daemon.socket, inputs, daemon.models / "out", random.Random(rng.random()))
    kill_points: list[float] = []
    daemon.start()
    churn.start()
    runs.start()
    try:
        for _ in range(KILLS):
            wait_for(
                daemon.started, timeout=30, what=f"daemon start #{daemon.starts} (seed {seed})"
            )
            # Anywhere from the initial scan to steady state.
            pause = rng.uniform(0.0, 0.8)
            kill_points.append(round(pause, 3))
            time.sleep(pause)
            daemon.kill()
            daemon.start()
    finally:
        churn.halt.set()
        runs.halt.set()
        churn.join(timeout=30)
        runs.join(timeout=30)
    print(f"killed {KILLS} times, this long after each start: {kill_points}")
    print(
        f"{churn.operations} file operations, {runs.ended} runs ended, {runs.failed_calls} failed"
    )
    # The last start settles: the startup scan reconciles whatever the kills interrupted.
    wait_for(
        lambda: daemon.started() and SCANNED in daemon.text(),
        timeout=60,
        what=f"the last start's reconcile scan (seed {seed})",
    )
    db = daemon.state / DB_NAME
    truth = ground_truth(daemon.data, daemon.models)
    wait_for(
        lambda: live_digests(db) == truth, timeout=60, what=f"store == ground truth (seed {seed})"
    )
    code = daemon.stop()
    assert code == 0, daemon.text()[-3000:]
    assert churn.operations > 100 and runs.ended > 0, (churn.operations, runs.ended)
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        print(
            "runs by status:",
            dict(conn.execute("SELECT status, count(*) FROM runs GROUP BY status").fetchall()),
            "edges by kind:",
            dict(conn.execute("SELECT kind, count(*) FROM edges GROUP BY kind").fetchall()),
            "versions:",
            conn.execute("SELECT count(*) FROM versions").fetchone()[0],
        )
    problems = half_written(db)
    assert problems == [], f"seed {seed}: {problems}"
    for log in sorted(daemon.base.glob("daemon-*.log")):
        assert "Traceback" not in log.read_text(errors="replace"), log.read_text()[-3000:]


def half_written(db: Path) -> list[str]:
    """Every sign of a torn write: SQLite damage, dangling rows, incomplete logical changes."""
    checks = {
        "integrity_check": "SELECT * FROM pragma_integrity_check WHERE integrity_check <> 'ok'",
        "foreign keys": "SELECT * FROM pragma_foreign_key_check",
        "edge without its run or version": (
            "SELECT e.id FROM edges e LEFT JOIN runs r ON r.id = e.run_id "
            "LEFT JOIN versions v ON v.id = e.version_id WHERE r.id IS NULL OR v.id IS NULL"
        ),
        "run ended without end time, or end time on a running run": (
            "SELECT run_id FROM runs WHERE (status = 'running') <> (ended_at IS NULL)"
        ),
        "output edge of a run that never ended (outputs are linked when the run ends)": (
            "SELECT r.run_id FROM runs r JOIN edges e ON e.run_id = r.id "
            "WHERE e.kind = 'wrote' AND r.status = 'running'"
        ),
        "ended run without exactly one output edge": (
            "SELECT r.run_id FROM runs r WHERE r.status <> 'running' AND "
            "(SELECT count(*) FROM edges e WHERE e.run_id = r.id AND e.kind = 'wrote') <> 1"
        ),
        "a read recorded both as an edge and as an unresolved access": (
            "SELECT r.run_id FROM runs r JOIN accesses a ON a.run_id = r.id AND a.mode = 'read' "
            "JOIN edges e ON e.run_id = r.id AND e.kind = 'read' "
            "JOIN versions v ON v.id = e.version_id JOIN artifacts t ON t.id = v.artifact_id "
            "WHERE t.path = a.path"
        ),
        "artifact with more than one current version": (
            "SELECT artifact_id FROM versions WHERE valid_until IS NULL "
            "GROUP BY artifact_id HAVING count(*) > 1"
        ),
        "closed version without reason or with an empty interval": (
            "SELECT id FROM versions WHERE valid_until IS NOT NULL "
            "AND (closed_by IS NULL OR valid_until <= valid_from)"
        ),
        "stat cache of a path that has no current version of that content": (
            "SELECT a.id FROM artifacts a LEFT JOIN versions v "
            "ON v.artifact_id = a.id AND v.valid_until IS NULL "
            "WHERE a.cache_key IS NOT NULL AND (v.id IS NULL OR v.digest <> a.cache_digest)"
        ),
    }
    problems = []
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        for what, sql in checks.items():
            rows = conn.execute(sql).fetchall()
            if rows:
                problems.append(f"{what}: {rows[:5]}")
    return problems

"""``lineage run`` sends reads to the daemon while the command runs: the run records the same
edges as when everything is sent at the end, a read repeated later widens its edge, and a
source file first sent as data becomes a code input."""

from __future__ import annotations

import contextlib
import re
import sqlite3
import sys
import textwrap
import uuid
from pathlib import Path

from lineage_core.models import Direction, StartNode

from lineaged.store import DB_NAME
from tests.conftest import DaemonProcess
from tests.helpers import b3

# The command itself waits until the daemon holds edges for its first half of reads (the
# proof that they went while it ran), then reads the rest and the first file again.
STAGE = """\
import os, sys, time
from lineage_client import Client
from lineage_core.models import Direction, StartNode

folder, socket = sys.argv[1], sys.argv[2]
names = sorted(os.listdir(folder))
half = len(names) // 2
for name in names[:half]:
    with open(os.path.join(folder, name), "rb") as f:
        f.read()
run_id = os.environ["LINEAGE_RUN_ID"]
deadline = time.monotonic() + 60
with Client(socket=socket) as client:
    while time.monotonic() < deadline:
        try:
            graph = client.lineage(StartNode(run_id=run_id), Direction.UPSTREAM, max_depth=1)
        except Exception:
            graph = None
        if graph is not None and sum(e.kind == "read" for e in graph.edges) >= half:
            break
        time.sleep(0.05)
    else:
        sys.exit("the first reads never reached the daemon while the run went on")
for name in names[half:] + names[:1]:
    with open(os.path.join(folder, name), "rb") as f:
        f.read()
"""


def test_reads_are_recorded_while_the_command_runs(module_daemon: DaemonProcess) -> None:
    area = module_daemon.data / f"stream-{uuid.uuid4().hex[:8]}"
    files = area / "files"
    files.mkdir(parents=True)
    for index in range(40):
        (files / f"f{index:02d}.csv").write_bytes(f"row {index}\n".encode())
    # No .py suffix: the streamer sends it as a data read; the end of the run knows it for
    # the run's script (a source file) and makes its edge a code input.
    stage = area / "stage"
    stage.write_text(STAGE)
    done = module_daemon.run_cli(
        "run", "--", sys.executable, str(stage), str(files), str(module_daemon.socket), cwd=area
    )
    assert done.returncode == 0, done.stderr
    summary = re.search(
        r"run (\w+) succeeded .*: (\d+) inputs \((\d+) recorded while it ran\)", done.stderr
    )
    assert summary is not None, done.stderr
    run_id, inputs, streamed = summary.group(1), int(summary.group(2)), int(summary.group(3))
    assert inputs == 40 and streamed >= 20, done.stderr

    client = module_daemon.client()
    graph = client.lineage(StartNode(run_id=run_id), Direction.UPSTREAM, max_depth=1)
    versions = {f"version:{v.id}": v for v in graph.versions}
    # Under the root: the files and the script (the client modules it imports are code
    # inputs too, from outside the roots).
    reads = [
        e for e in graph.edges if e.kind == "read" and versions[e.target].path.startswith(str(area))
    ]
    by_path = {versions[e.target].path: e for e in reads}
    assert len(reads) == len(by_path) == 41  # each file once, and the script
    for index in range(40):
        path = files / f"f{index:02d}.csv"
        assert versions[by_path[str(path)].target].digest == b3(f"row {index}\n".encode())
        assert by_path[str(path)].role == "data"
    assert by_path[str(stage)].role == "code"
    # The first file was read again after the wait: sent again at the end, its edge widened.
    with contextlib.closing(
        sqlite3.connect(f"file:{module_daemon.state_dir / DB_NAME}?mode=ro", uri=True)
    ) as conn:
        first_at, last_at = conn.execute(
            "SELECT e.first_at, e.last_at FROM edges e JOIN runs r ON r.id = e.run_id "
            "JOIN versions v ON v.id = e.version_id JOIN artifacts a ON a.id = v.artifact_id "
            "WHERE r.run_id = ? AND a.path = ?",
            (run_id, str(files / "f00.csv")),
        ).fetchone()
    assert last_at > first_at


def test_a_short_commands_reads_are_recorded_at_the_end(
    module_daemon: DaemonProcess, tmp_path: Path
) -> None:
    """A command over before the run is begun: its reads all go at the end, as before."""
    area = module_daemon.data / f"quick-{uuid.uuid4().hex[:8]}"
    area.mkdir()
    (area / "in.csv").write_bytes(b"x\n")
    script = tmp_path / "quick.py"
    script.write_text(
        textwrap.dedent(
            f"""
            with open({str(area / "in.csv")!r}, "rb") as f:
                f.read()
            """
        )
    )
    done = module_daemon.run_cli("run", "--", sys.executable, str(script), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert re.search(r": 1 inputs \(\d+ recorded while it ran\)", done.stderr), done.stderr
    graph = module_daemon.client().trace(str(area / "in.csv"))
    assert graph.versions and not graph.runs  # read, not written: nothing upstream of it
    impact = module_daemon.client().impact(str(area / "in.csv"))
    assert len(impact.runs) == 1

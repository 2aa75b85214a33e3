"""What recording a run through the spool costs, against recording it directly.

A run that read ``FILES`` small files under a watched root is recorded twice per round, on
the same real daemon (``python -m lineaged``) over its Unix socket:

- ``direct``: BeginRun, RecordAccesses of every read (the daemon ties each to its version),
  EndRun — what ``lineage run`` does when the daemon is there;
- ``spooled``: the client hashes every file (BLAKE3, ``capture/digest.hash_external``),
  journals the run to the spool (one fsynced 0600 file) and a delivery pass sends it
  (GetRun, BeginRun, RecordAccesses with digests, EndRun) and removes the file — what a run
  captured while the daemon was away costs in all.

Printed: the median of each, per run and per access, and the ratio spooled / direct. No
target: the spool is the fault path; the figure says what a late delivery costs.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

from bench.bench_api import daemon
from bench.common import measure_rounds, median, print_table, work_dir

FILES = 2_000
ROUNDS = 5


def main() -> None:
    from lineage_client import spool
    from lineage_client.capture.digest import hash_external
    from lineage_client.client import Client
    from lineage_core.models import Access, AccessMode, RunStart, RunStatus, new_run_id

    with work_dir("spool") as base:
        data = base / "data"
        data.mkdir()
        for i in range(FILES):
            (data / f"f{i:05d}.csv").write_bytes(b"%d,%d\n" % (i, i * i) * 20)
        folder = base / "spool"
        # A private folder with a short path: socket paths are limited to 107 bytes.
        sockets = Path(tempfile.mkdtemp(prefix="lg-bench-"))
        socket = sockets / "lineaged.sock"
        try:
            with (
                daemon(base / "state", data, socket, base / "daemon.log"),
                Client(socket) as client,
            ):
                paths = sorted(str(p) for p in data.iterdir())

                def reads() -> list[Access]:
                    now = time.time_ns()
                    return [Access(p, AccessMode.READ, now, now) for p in paths]

                def direct() -> None:
                    run_id = client.begin_run(RunStart(name="direct", run_id=new_run_id())).run_id
                    client.record_accesses(run_id, reads())
                    client.end_run(run_id, status=RunStatus.SUCCEEDED, exit_code=0)

                def spooled() -> None:
                    start = RunStart(name="spooled", run_id=new_run_id(), started_at=time.time_ns())
                    spool.write_run(
                        target=client.target,
                        start=start,
                        accesses=[hash_external(a) for a in reads()],
                        status=RunStatus.SUCCEEDED,
                        exit_code=0,
                        ended_at=time.time_ns(),
                        warnings=(),
                        reason="bench",
                        folder=folder,
                    )
                    report = spool.deliver(client, folder=folder)
                    assert report.delivered == [start.run_id], report

                direct()  # warm: the first run hashes nothing new, but fills caches
                timings = measure_rounds({"direct": direct, "spooled": spooled}, ROUNDS)
        finally:
            shutil.rmtree(sockets, ignore_errors=True)
    rows = []
    for name, seconds in timings.items():
        mid = median(seconds)
        rows.append([name, mid, mid / FILES * 1e6])
    print(f"a run of {FILES} reads under a root, median of {ROUNDS} rounds")
    print_table(["recording", "seconds", "us per access"], rows)
    ratio = median(timings["spooled"]) / median(timings["direct"])
    print(f"spooled / direct: {ratio:.2f}x (reported, no target)")

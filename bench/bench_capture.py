"""Tracing overhead of ``lineage run``: a Python script opening 10,000 small files.

Contenders, each a whole process (interpreter start included), interleaved round by round:

- bare: ``python open_many.py FOLDER`` alone;
- lineage run (CLI, real daemon) — the verdict, at most 1.5x bare: the whole command a user
  types, ``lineage run --socket S -- python open_many.py FOLDER`` (the venv's ``lineage``
  console script): CLI start, git and environment capture, BeginRun, the traced command,
  hashing what lies outside the roots, RecordAccesses and EndRun to a real daemon
  (``python -m lineaged``) that resolves each read to the version current when it was opened.
  FOLDER lies in the daemon's watched root and was indexed by its first scan before timing
  (the realistic case: data lives in a watched folder). The command runs in a scratch folder
  outside any git work tree, so git capture asks git and finds no repository (the in-repo case
  adds the git commands' time). After every round, outside the timed part, the run is checked:
  succeeded, with one read edge per file to that file's version;
- capture_command: the same command through ``capture_command`` alone (audit hook in the
  child, then reading the trace, resolving paths, hashing the sources), no CLI, no daemon;
- hook only: the child with the hook loaded, without the wrapper's post-processing;
- strace (reference): ``capture_command(mode="strace")``, when strace is installed.

Wall-clock medians are the verdict; CPU seconds (user+system of this process and its
children) are printed beside them because a busy machine skews wall time. The daemon's CPU
is not in that column: it is printed separately, per round of the CLI contender.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

from lineage_client.capture import capture_command
from lineage_client.capture.audit import hook_environment
from lineage_client.capture.strace import find_strace, strace_problem
from lineage_client.client import Client

from bench.bench_api import daemon
from bench.common import measure_rounds, median, print_table, work_dir
from lineaged.models import Direction, RunStatus, StartNode
from lineaged.store import Store

FILES = 10_000
FILE_SIZE = 256
RUNS = int(os.environ.get("BENCH_RUNS", "11"))
TARGET = 1.5
VERDICT = "lineage run (CLI, real daemon)"

SCRIPT = """\
import os
import sys

folder = sys.argv[1]
total = 0
for name in sorted(os.listdir(folder)):
    with open(os.path.join(folder, name), "rb") as stream:
        total += len(stream.read())
print(total)
"""


def _cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _process_cpu(pid: int) -> float:
    """User+system CPU seconds a live process has used so far (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _with_cpu(run: Callable[[], object], cpu: list[float]) -> Callable[[], None]:
    def timed() -> None:
        before = _cpu_seconds()
        run()
        cpu.append(_cpu_seconds() - before)

    return timed


def _wait_indexed(socket: Path, count: int, timeout: float = 300.0) -> None:
    """Return once the daemon's first scan is done and its store holds ``count`` versions."""
    deadline = time.monotonic() + timeout
    with Client(socket=socket) as client:
        while time.monotonic() < deadline:
            status = client.status()
            if status.scan.initial_done and status.counts.versions >= count:
                return
            time.sleep(0.2)
    raise RuntimeError(f"the daemon did not index {count} files in {timeout} s")


def _check_run(socket: Path, db: Path, run_id: str, folder: Path) -> None:
    """The run succeeded and read exactly one version of each file in ``folder``."""
    with Client(socket=socket) as client:
        run = client.get_run(run_id)
    if run.status is not RunStatus.SUCCEEDED:
        raise AssertionError(f"run {run_id} is {run.status.value}")
    # In process on a read-only store: an RPC answer stops at 10,000 nodes, one short here.
    store = Store.open_readonly(db)
    try:
        graph = store.lineage(
            StartNode(run_id=run_id), Direction.UPSTREAM, max_depth=1, max_nodes=3 * FILES
        )
    finally:
        store.close()
    by_id = {version.id: version for version in graph.versions}
    prefix = str(folder) + "/"
    read = {
        by_id[int(edge.target.removeprefix("version:"))].path
        for edge in graph.edges
        if edge.kind == "read" and edge.role == "data"
    }
    data = {path for path in read if path.startswith(prefix)}
    if len(data) != FILES or graph.truncated:
        raise AssertionError(f"run {run_id}: {len(data)} of {FILES} files recorded as read")


def main() -> None:
    """Start a daemon on the files, time every contender in interleaved rounds, print ratios."""
    with work_dir("capture") as work, ExitStack() as stack:
        watched = work / "data"
        folder = watched / "files"
        folder.mkdir(parents=True)
        payload = b"x" * FILE_SIZE
        for index in range(FILES):
            (folder / f"f{index:05d}.txt").write_bytes(payload)
        # Outside any git work tree (bench/.work is inside this repository's).
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="lineage-bench-")))
        script = scratch / "open_many.py"
        script.write_text(SCRIPT)
        argv = [sys.executable, str(script), str(folder)]
        trace_dir = work / "trace"
        trace_dir.mkdir()
        hook_env = hook_environment(os.environ, str(trace_dir))
        state, socket = work / "state", work / "run" / "lineaged.sock"
        proc = stack.enter_context(daemon(state, watched, socket, work / "daemon.log"))
        _wait_indexed(socket, FILES)
        lineage = str(Path(sys.executable).with_name("lineage"))
        cli_argv = [lineage, "run", "--socket", str(socket), "--", *argv]
        daemon_cpu: list[float] = []

        def bare() -> None:
            subprocess.run(argv, stdout=subprocess.DEVNULL, check=True, cwd=scratch)

        def lineage_run() -> None:
            before = _process_cpu(proc.pid)
            done = subprocess.run(
                cli_argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=scratch
            )
            daemon_cpu.append(_process_cpu(proc.pid) - before)
            if done.returncode != 0:
                raise AssertionError(f"lineage run exited {done.returncode}:\n{done.stderr!r}")
            last_runs.append(done.stderr.decode())

        def hook_only() -> None:
            subprocess.run(argv, stdout=subprocess.DEVNULL, env=hook_env, check=True, cwd=scratch)
            for trace in trace_dir.iterdir():
                trace.unlink()

        def captured(mode: str) -> Callable[[], None]:
            def run() -> None:
                with open(os.devnull, "wb") as sink:
                    saved = os.dup(1)
                    os.dup2(sink.fileno(), 1)  # the child inherits fd 1: keep the table clean
                    try:
                        result = capture_command(argv, cwd=str(scratch), mode=mode)
                    finally:
                        os.dup2(saved, 1)
                        os.close(saved)
                reads = sum(1 for a in result.accesses if a.role == "data")
                if result.exit_code != 0 or reads != FILES:
                    raise AssertionError(f"{mode}: exit {result.exit_code}, {reads} reads")

            return run

        last_runs: list[str] = []
        checked: list[str] = []

        def check_last() -> None:
            # Outside the timed part: the run the CLI just recorded, edge by edge.
            for stderr in last_runs:
                run_id = stderr.split("lineage: run ", 1)[1].split()[0]
                _check_run(socket, state / "lineaged.db", run_id, folder)
                checked.append(run_id)
            last_runs.clear()

        cpu: dict[str, list[float]] = {}
        contenders: dict[str, Callable[[], object]] = {}

        def add(name: str, run: Callable[[], object]) -> None:
            cpu[name] = []
            contenders[name] = _with_cpu(run, cpu[name])

        add("bare python", bare)
        add(VERDICT, lineage_run)
        add("capture_command (audit hook)", captured("audit-hook"))
        add("hook only, no post-processing", hook_only)
        strace = find_strace()
        if strace is not None and not strace_problem(strace):
            add("capture_command (strace, reference)", captured("strace"))
        else:
            print("strace is missing or cannot trace here: its row is skipped")

        for run in contenders.values():  # warm the page cache and the .pyc files
            run()
        check_last()
        for samples in (*cpu.values(), daemon_cpu):
            samples.clear()
        print(f"{FILES} files of {FILE_SIZE} B, {RUNS} interleaved rounds ...", flush=True)
        timings: dict[str, list[float]] = {name: [] for name in contenders}
        for _ in range(RUNS):
            for name, seconds in measure_rounds(contenders, 1).items():
                timings[name] += seconds
            check_last()

        base_wall = median(timings["bare python"])
        base_cpu = median(cpu["bare python"])
        rows = []
        for name in contenders:
            wall, cpu_s = median(timings[name]), median(cpu[name])
            rows.append([name, wall, wall / base_wall, cpu_s, cpu_s / base_cpu])
        print_table(["contender", "wall s", "x bare", "cpu s", "x bare (cpu)"], rows)
        print(
            f"daemon CPU per lineage run: {median(daemon_cpu):.3f} s (median); "
            f"{len(checked)} runs checked: {FILES} read edges each"
        )
        ratio = median(timings[VERDICT]) / base_wall
        verdict = "PASS" if ratio <= TARGET else "MISS"
        print(f"lineage run overhead: {ratio:.2f}x bare (target <= {TARGET}x): {verdict}")


if __name__ == "__main__":
    main()

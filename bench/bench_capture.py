"""Tracing overhead of ``lineage run``, two measurements in one run.

1. The verdict: a realistic pipeline (pandas CSV -> Parquet -> scikit-learn fit -> model
   file), whole wall time under ``lineage run`` (the venv's console script, a real daemon
   watching the data, default capture) against the same command bare, interleaved round by
   round: at most 1.10x. After every round, outside the timed part, the run is checked: it
   succeeded, its capture is complete, it read the CSV and wrote the Parquet file and model.
2. The cost of each capture mechanism shipped (interposer, strace, audit hook), side by side:
   ``capture_command(mode=...)`` on a Python script opening 10,000 small files and on the
   same script over an empty folder, against the bare script. Fixed start-up cost is
   (mechanism, 0 files) - (bare, 0 files); cost per traced open is the extra time the 10,000
   opens took under the mechanism over bare, divided by 10,000. Reported, not a target: it
   is what decides the default mechanism.

Wall-clock medians are the verdict; CPU seconds (user+system of this process and its
children) are printed beside them because a busy machine skews wall time.
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
from lineage_client.capture.strace import find_strace, strace_problem
from lineage_client.client import Client
from lineage_core.models import Direction, RunStatus, StartNode

from bench.bench_api import daemon
from bench.common import measure_rounds, median, print_table, work_dir

FILES = 10_000
FILE_SIZE = 256
RUNS = int(os.environ.get("BENCH_RUNS", "7"))
TARGET = 1.10
ROWS = int(os.environ.get("BENCH_PIPELINE_ROWS", "300000"))
MECHANISMS = ("interposer", "strace", "audit-hook")

PIPELINE = """\
import pickle
import sys

import pandas as pd
from sklearn.linear_model import SGDClassifier

data, models = sys.argv[1], sys.argv[2]
frame = pd.read_csv(f"{data}/raw.csv")
frame.to_parquet(f"{data}/features.parquet")
table = pd.read_parquet(f"{data}/features.parquet")
features = table.drop(columns=["label"]).to_numpy()
model = SGDClassifier(max_iter=20, tol=None, random_state=0).fit(features, table["label"])
with open(f"{models}/model.pkl", "wb") as stream:
    pickle.dump(model, stream)
print(model.score(features, table["label"]))
"""

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


def _check_run(socket: Path, run_id: str, inputs: set[str], outputs: set[str]) -> None:
    """The run succeeded, its capture is complete, and it read and wrote exactly these."""
    with Client(socket=socket) as client:
        run = client.get_run(run_id)
        graph = client.lineage(StartNode(run_id=run_id), Direction.BOTH, max_depth=1)
    if run.status is not RunStatus.SUCCEEDED:
        raise AssertionError(f"run {run_id} is {run.status.value}")
    if run.capture is None or not run.capture.complete:
        raise AssertionError(f"run {run_id}: capture {run.capture}")
    paths = {f"version:{v.id}": v.path for v in graph.versions}
    node = f"run:{run_id}"
    read = {paths[e.target] for e in graph.edges if e.source == node and e.kind == "read"}
    wrote = {paths[e.target] for e in graph.edges if e.source == node and e.kind == "wrote"}
    if not inputs <= read or wrote != outputs:
        raise AssertionError(f"run {run_id}: read {sorted(read)}, wrote {sorted(wrote)}")


def _write_csv(path: Path, rows: int) -> None:
    """A CSV of ``rows`` rows: 8 numeric features and a label that depends on them."""
    import numpy as np

    generator = np.random.default_rng(0)
    features = generator.normal(size=(rows, 8)).round(5)
    labels = (features @ generator.normal(size=8) > 0).astype(int)
    with path.open("w") as stream:
        stream.write(",".join([*(f"x{i}" for i in range(8)), "label"]) + "\n")
        for row, label in zip(features.tolist(), labels.tolist(), strict=True):
            stream.write(",".join(map(str, row)) + f",{label}\n")


def _pipeline(work: Path, stack: ExitStack) -> None:
    """The verdict: the realistic pipeline, bare against ``lineage run`` with a real daemon."""
    watched = work / "data"
    data, models = watched / "pipeline", watched / "models"
    data.mkdir(parents=True)
    models.mkdir()
    _write_csv(data / "raw.csv", ROWS)
    scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="lineage-bench-")))
    script = scratch / "pipeline.py"
    script.write_text(PIPELINE)
    argv = [sys.executable, str(script), str(data), str(models)]
    state, socket = work / "state", work / "run" / "lineaged.sock"
    stack.enter_context(daemon(state, watched, socket, work / "daemon.log"))
    _wait_indexed(socket, 1)
    lineage = str(Path(sys.executable).with_name("lineage"))
    cli_argv = [lineage, "run", "--socket", str(socket), "--", *argv]
    runs: list[str] = []

    def bare() -> None:
        subprocess.run(argv, stdout=subprocess.DEVNULL, check=True, cwd=scratch)

    def lineage_run() -> None:
        done = subprocess.run(
            cli_argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=scratch
        )
        if done.returncode != 0:
            raise AssertionError(f"lineage run exited {done.returncode}:\n{done.stderr!r}")
        runs.append(done.stderr.decode())

    inputs = {str(data / "raw.csv"), str(data / "features.parquet")}
    outputs = {str(data / "features.parquet"), str(models / "model.pkl")}

    def check() -> None:
        for stderr in runs:
            run_id = stderr.split("lineage: run ", 1)[1].split()[0]
            # features.parquet is read back after the run wrote it: its own output only.
            _check_run(socket, run_id, inputs - {str(data / "features.parquet")}, outputs)
        runs.clear()

    cpu: dict[str, list[float]] = {"bare": [], "lineage run": []}
    contenders = {
        "bare": _with_cpu(bare, cpu["bare"]),
        "lineage run": _with_cpu(lineage_run, cpu["lineage run"]),
    }
    for run in contenders.values():  # warm the page cache, the .pyc files, the interposer
        run()
    check()
    for samples in cpu.values():
        samples.clear()
    print(f"pipeline on {ROWS} CSV rows, {RUNS} interleaved rounds ...", flush=True)
    timings: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(RUNS):
        for name, seconds in measure_rounds(contenders, 1).items():
            timings[name] += seconds
        check()
    base_wall, base_cpu = median(timings["bare"]), median(cpu["bare"])
    rows = []
    for name in contenders:
        wall, cpu_s = median(timings[name]), median(cpu[name])
        rows.append([name, wall, wall / base_wall, cpu_s, cpu_s / base_cpu])
    print_table(["pipeline", "wall s", "x bare", "cpu s", "x bare (cpu)"], rows)
    ratio = median(timings["lineage run"]) / base_wall
    verdict = "PASS" if ratio <= TARGET else "MISS"
    print(f"lineage run on the pipeline: {ratio:.3f}x bare (target <= {TARGET}x): {verdict}")


def _mechanisms(work: Path, stack: ExitStack) -> None:
    """Fixed start-up cost and cost per traced open of each capture mechanism."""
    folder = work / "files"
    empty = work / "empty"
    folder.mkdir()
    empty.mkdir()
    payload = b"x" * FILE_SIZE
    for index in range(FILES):
        (folder / f"f{index:05d}.txt").write_bytes(payload)
    scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="lineage-bench-")))
    script = scratch / "open_many.py"
    script.write_text(SCRIPT)
    mechanisms = list(MECHANISMS)
    strace = find_strace()
    if strace is None or strace_problem(strace):
        print("strace is missing or cannot trace here: its rows are skipped")
        mechanisms.remove("strace")

    def bare(target: Path) -> Callable[[], None]:
        def run() -> None:
            argv = [sys.executable, str(script), str(target)]
            subprocess.run(argv, stdout=subprocess.DEVNULL, check=True, cwd=scratch)

        return run

    def captured(mode: str, target: Path, expected: int) -> Callable[[], None]:
        def run() -> None:
            argv = [sys.executable, str(script), str(target)]
            with open(os.devnull, "wb") as sink:
                saved = os.dup(1)
                os.dup2(sink.fileno(), 1)  # the child inherits fd 1: keep the table clean
                try:
                    result = capture_command(argv, cwd=str(scratch), mode=mode)
                finally:
                    os.dup2(saved, 1)
                    os.close(saved)
            reads = sum(1 for a in result.accesses if a.role == "data")
            if result.exit_code != 0 or reads != expected or result.method != mode:
                raise AssertionError(f"{mode}: exit {result.exit_code}, {reads} reads")

        return run

    contenders: dict[str, Callable[[], object]] = {}
    cpu: dict[str, list[float]] = {}
    for name, files, target in (("0 files", 0, empty), (f"{FILES} files", FILES, folder)):
        for mechanism in ["bare", *mechanisms]:
            key = f"{mechanism}, {name}"
            cpu[key] = []
            run = bare(target) if mechanism == "bare" else captured(mechanism, target, files)
            contenders[key] = _with_cpu(run, cpu[key])
    for run in contenders.values():
        run()
    for samples in cpu.values():
        samples.clear()
    print(f"capture mechanisms: {FILES} files of {FILE_SIZE} B, {RUNS} rounds ...", flush=True)
    timings: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(RUNS):
        for name, seconds in measure_rounds(contenders, 1).items():
            timings[name] += seconds
    wall = {name: median(values) for name, values in timings.items()}
    used = {name: median(values) for name, values in cpu.items()}
    rows = []
    for mechanism in ["bare", *mechanisms]:
        row: list[object] = [mechanism]
        for table in (wall, used):
            empty_s, full_s = table[f"{mechanism}, 0 files"], table[f"{mechanism}, {FILES} files"]
            bare_empty, bare_full = table["bare, 0 files"], table[f"bare, {FILES} files"]
            per_open = ((full_s - empty_s) - (bare_full - bare_empty)) / FILES * 1e6
            row += [empty_s, full_s, full_s / bare_full, (empty_s - bare_empty) * 1e3, per_open]
        rows.append(row)
    columns = ["0 files s", f"{FILES} files s", "x bare", "start-up ms", "us/open"]
    print("wall (left) and CPU (right; this process and its children):")
    print_table(["mechanism", *columns, *(f"cpu {c}" for c in columns)], rows)


def main() -> None:
    """The pipeline verdict, then the per-mechanism costs (see the module doc)."""
    with work_dir("capture") as work, ExitStack() as stack:
        _pipeline(work / "pipeline", stack)
    with work_dir("capture") as work, ExitStack() as stack:
        _mechanisms(work, stack)


if __name__ == "__main__":
    main()

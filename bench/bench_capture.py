"""Tracing overhead of ``lineage run``: a Python script opening 10,000 small files.

Contenders, each a whole ``python script.py`` process (interpreter start included):

- bare: the script alone;
- capture_command: the script run through ``capture_command`` (audit hook in the child,
  then reading the trace, resolving paths and hashing the sources) — the target,
  at most 1.5x bare;
- hook only: the child with the hook loaded, without the wrapper's post-processing;
- strace (reference): ``capture_command(mode="strace")``, when strace is installed.

Wall-clock medians over interleaved rounds are the verdict; CPU seconds (user+system,
children and self) are printed beside them because a busy machine skews wall time.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from collections.abc import Callable

from lineage_client.capture import capture_command
from lineage_client.capture.audit import hook_environment
from lineage_client.capture.strace import find_strace, strace_problem

from bench.common import measure_rounds, median, print_table, work_dir

FILES = 10_000
FILE_SIZE = 256
RUNS = int(os.environ.get("BENCH_RUNS", "11"))
TARGET = 1.5

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


def _with_cpu(run: Callable[[], object], cpu: list[float]) -> Callable[[], None]:
    def timed() -> None:
        before = _cpu_seconds()
        run()
        cpu.append(_cpu_seconds() - before)

    return timed


def main() -> None:
    """Create the files, time every contender in interleaved rounds, print the ratios."""
    with work_dir("capture") as work:
        folder = work / "files"
        folder.mkdir()
        payload = b"x" * FILE_SIZE
        for index in range(FILES):
            (folder / f"f{index:05d}.txt").write_bytes(payload)
        script = work / "open_many.py"
        script.write_text(SCRIPT)
        argv = [sys.executable, str(script), str(folder)]
        trace_dir = work / "trace"
        trace_dir.mkdir()
        hook_env = hook_environment(os.environ, str(trace_dir))

        def bare() -> None:
            subprocess.run(argv, stdout=subprocess.DEVNULL, check=True)

        def hook_only() -> None:
            subprocess.run(argv, stdout=subprocess.DEVNULL, env=hook_env, check=True)
            for trace in trace_dir.iterdir():
                trace.unlink()

        def captured(mode: str) -> Callable[[], None]:
            def run() -> None:
                with open(os.devnull, "wb") as sink:
                    saved = os.dup(1)
                    os.dup2(sink.fileno(), 1)  # the child inherits fd 1: keep the table clean
                    try:
                        result = capture_command(argv, cwd=str(work), mode=mode)
                    finally:
                        os.dup2(saved, 1)
                        os.close(saved)
                reads = sum(1 for a in result.accesses if a.role == "data")
                if result.exit_code != 0 or reads != FILES:
                    raise AssertionError(f"{mode}: exit {result.exit_code}, {reads} reads")

            return run

        cpu: dict[str, list[float]] = {}
        contenders: dict[str, Callable[[], object]] = {}

        def add(name: str, run: Callable[[], object]) -> None:
            cpu[name] = []
            contenders[name] = _with_cpu(run, cpu[name])

        add("bare python", bare)
        add("capture_command (audit hook)", captured("audit-hook"))
        add("hook only, no post-processing", hook_only)
        strace = find_strace()
        if strace is not None and not strace_problem(strace):
            add("capture_command (strace, reference)", captured("strace"))
        else:
            print("strace is missing or cannot trace here: its row is skipped")

        for run in contenders.values():  # warm the page cache and the .pyc files
            run()
        for samples in cpu.values():
            samples.clear()
        print(f"{FILES} files of {FILE_SIZE} B, {RUNS} interleaved rounds ...", flush=True)
        timings = measure_rounds(contenders, RUNS)

        base_wall = median(timings["bare python"])
        base_cpu = median(cpu["bare python"])
        rows = []
        for name in contenders:
            wall, cpu_s = median(timings[name]), median(cpu[name])
            rows.append([name, wall, wall / base_wall, cpu_s, cpu_s / base_cpu])
        print_table(["contender", "wall s", "x bare", "cpu s", "x bare (cpu)"], rows)
        ratio = median(timings["capture_command (audit hook)"]) / base_wall
        verdict = "PASS" if ratio <= TARGET else "MISS"
        print(f"capture_command overhead: {ratio:.2f}x bare (target <= {TARGET}x): {verdict}")


if __name__ == "__main__":
    main()

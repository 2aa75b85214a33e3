"""Indexing a tree of 100,000 small files: lineaged's first scan and rescan against peers.

Peers, measured in the same run, page cache warm, whole processes (start-up included):
- ``b3sum`` over the same files through ``find | xargs`` (one b3sum at a time, and two);
- the bare ``os.scandir`` + ``os.stat`` walk in Python (the floor of any rescan).
lineaged runs as ``lineaged --once`` on a fresh state directory (first index, to committed
rows) and again on the unchanged tree (rescan). Peak RSS is the sum over the daemon's
process tree (it hashes small files in a pool of worker processes), sampled every 20 ms.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from bench.common import measure_rounds, median, print_table, which, work_dir

FILES = int(os.environ.get("BENCH_SCAN_FILES", "100000"))
DIRS = 100
SIZE = 4096
RUNS = int(os.environ.get("BENCH_RUNS", "3"))

WALK = """
import os, sys
def walk(top):
    n = 0
    stack = [top]
    while stack:
        with os.scandir(stack.pop()) as it:
            for e in it:
                if e.is_dir(follow_symlinks=False):
                    stack.append(e.path)
                elif e.is_file(follow_symlinks=False):
                    e.stat(follow_symlinks=False)
                    n += 1
    return n
print(walk(sys.argv[1]))
"""


def make_tree(root: Path) -> None:
    block = os.urandom(SIZE * 64)
    for d in range(DIRS):
        folder = root / f"d{d:03d}"
        folder.mkdir(parents=True)
        for f in range(FILES // DIRS):
            offset = ((d * 7919 + f * 104729) % 63) * SIZE
            # Distinct content per file: prefix the index so no two digests collide.
            (folder / f"f{f:05d}.bin").write_bytes(
                f"{d}:{f}:".encode() + block[offset : offset + SIZE - 16]
            )


def lineaged_once(tree: Path, state: Path) -> list[str]:
    return [
        sys.executable, "-m", "lineaged", "--once", "--log-level", "warning",
        "--state-dir", str(state), "--watch", f"{tree}:data",
    ]  # fmt: skip


def tree_rss_kb(pid: int) -> int:
    """Resident memory of a process and all its descendants, in KiB."""
    total = 0
    stack = [pid]
    while stack:
        current = stack.pop()
        try:
            with open(f"/proc/{current}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
                        break
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as f:
                    stack.extend(int(c) for c in f.read().split())
        except (FileNotFoundError, ProcessLookupError, ValueError):
            continue
    return total


def peak_rss_mb(argv: list[str]) -> float:
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, tree_rss_kb(proc.pid))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    proc.wait()
    done.set()
    sampler.join()
    return peak / 1024


def main() -> None:
    b3sum = which("b3sum")
    with work_dir("scan") as work:
        tree = work / "tree"
        print(f"creating {FILES} files of {SIZE} bytes in {DIRS} directories ...", flush=True)
        make_tree(tree)
        subprocess.run(
            f"find {tree} -type f -print0 | xargs -0 cat > /dev/null", shell=True, check=True
        )
        time.sleep(2.5)  # let the newest mtimes leave the racy window before the first index
        states = iter(range(1000))

        def fresh_index() -> None:
            state = work / f"state-{next(states)}"
            subprocess.run(lineaged_once(tree, state), check=True, stdout=subprocess.DEVNULL)
            shutil.rmtree(state)

        indexed = work / "state-kept"
        subprocess.run(lineaged_once(tree, indexed), check=True, stdout=subprocess.DEVNULL)
        # Every contender in the same interleaved rounds: the rescan is compared with walks
        # timed beside it, not minutes apart (this machine has slow and fast spells).
        contenders = {
            "lineaged first index": fresh_index,
            "lineaged rescan (unchanged)": lambda: subprocess.run(
                lineaged_once(tree, indexed), check=True, stdout=subprocess.DEVNULL
            ),
            "bare scandir+stat walk": lambda: subprocess.run(
                [sys.executable, "-c", WALK, str(tree)], check=True, stdout=subprocess.DEVNULL
            ),
        }
        if b3sum:
            contenders["b3sum (find | xargs)"] = lambda: subprocess.run(
                f"find {tree} -type f -print0 | xargs -0 {b3sum} > /dev/null",
                shell=True,
                check=True,
            )
            contenders["b3sum (xargs -P2)"] = lambda: subprocess.run(
                f"find {tree} -type f -print0 | xargs -0 -P2 -n 5000 {b3sum} > /dev/null",
                shell=True,
                check=True,
            )
        timings = measure_rounds(contenders, RUNS)
        peak = peak_rss_mb(lineaged_once(tree, work / "state-rss"))

    seconds = {name: median(values) for name, values in timings.items()}
    walk = seconds["bare scandir+stat walk"]
    first = seconds["lineaged first index"]
    rows: list[list[object]] = [[name, value, ""] for name, value in seconds.items()]
    print_table([f"contender (median of {RUNS})", "seconds", ""], rows)
    print()
    checks: list[list[object]] = []
    if b3sum:
        b3 = seconds["b3sum (find | xargs)"]
        checks.append(
            [
                "first index / b3sum time",
                first / b3,
                "<= 2.0",
                "PASS" if first / b3 <= 2.0 else "MISS",
            ]
        )
        b3p = seconds["b3sum (xargs -P2)"]
        checks.append(["first index / b3sum -P2 time", first / b3p, "(info)", ""])
    else:
        print("b3sum not installed: the b3sum rows are skipped (apt-get install b3sum)")
    rescan_ratio = seconds["lineaged rescan (unchanged)"] / walk
    checks.append(
        [
            "rescan / bare walk time",
            rescan_ratio,
            "<= 2.0",
            "PASS" if rescan_ratio <= 2.0 else "MISS",
        ]
    )
    checks.append(["peak RSS while indexing (MB)", peak, "< 200", "PASS" if peak < 200 else "MISS"])
    print_table(["ratio", "measured", "target", ""], checks)

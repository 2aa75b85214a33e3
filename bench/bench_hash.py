"""Hashing one 1 GiB file (page cache warm): lineaged against b3sum and md5sum (DVC's hash).

lineaged is timed two ways: ``hash_file`` in process (what the daemon does: the
interpreter is already running) and as a fresh ``python -c`` process (interpreter start
and imports included, like the peers' whole-command times). The targets are judged on the
in-process figure; the fresh-process ratios are printed beside them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from blake3 import blake3
from lineage_core import hasher
from lineage_core.hasher import hash_file

from bench.common import (
    command,
    free_bytes,
    gb_per_s,
    measure_rounds,
    median,
    print_table,
    verdict,
    warm,
    which,
    work_dir,
    write_random,
)

SIZE = 1 << 30
RUNS = int(os.environ.get("BENCH_RUNS", "5"))
TARGET_VS_B3SUM = 0.9
TARGET_VS_MD5SUM = 5.0

IN_PROCESS = "lineaged hash_file, in process"
UNDER_ROOT = "lineaged hash_file(root=...), in process (dir descriptors, as the daemon)"
FRESH_PROCESS = "lineaged hash_file, fresh python -c"
READ_AHEAD = "lineaged read-ahead fallback, in process"
UPDATE_MMAP = "blake3 update_mmap, in process (reference, SIGBUS-unsafe)"
_SNIPPET = (
    "import sys; from lineage_core.hasher import hash_file; print(hash_file(sys.argv[1]).digest)"
)


def _read_ahead(path: Path) -> str:
    """The path ``hash_file`` takes for big files when the mmap helper is unavailable."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        digest, _ = hasher._hash_read_ahead(fd, os.fstat(fd).st_size)
    finally:
        os.close(fd)
    return digest


def main() -> None:
    """Create the file, time every contender in interleaved rounds, print the table."""
    b3sum, md5sum = which("b3sum"), which("md5sum")
    for tool, path in (("b3sum", b3sum), ("md5sum", md5sum)):
        if path is None:
            print(f"{tool} is not installed: its row and ratio are skipped")
    with work_dir("hash") as work:
        if free_bytes(work) < SIZE * 3 // 2:
            print(f"skipped: less than {SIZE * 3 // 2 >> 20} MiB free under {work}")
            return
        big = work / "random-1GiB.bin"
        print(f"writing {SIZE >> 20} MiB of random bytes to {big} ...", flush=True)
        write_random(big, SIZE)
        warm(big)

        digest = hash_file(big).digest
        if b3sum is not None:
            printed = subprocess.run(
                [b3sum, "--no-names", str(big)], capture_output=True, text=True
            )
            if printed.stdout.strip() != digest:
                raise SystemExit(
                    f"digest mismatch: lineaged {digest}, b3sum {printed.stdout.strip()}"
                )
            print("digest checked: lineaged == b3sum")

        contenders: dict[str, Callable[[], object]] = {
            IN_PROCESS: lambda: hash_file(big),
            UNDER_ROOT: lambda: hash_file(big, root=str(work)),
            FRESH_PROCESS: command([sys.executable, "-c", _SNIPPET, str(big)]),
            READ_AHEAD: lambda: _read_ahead(big),
            UPDATE_MMAP: lambda: blake3(max_threads=blake3.AUTO).update_mmap(str(big)),
        }
        if b3sum is not None:
            contenders["b3sum"] = command([b3sum, str(big)])
        if md5sum is not None:
            contenders["md5sum (DVC's hash)"] = command([md5sum, str(big)])
        print(f"{RUNS} interleaved rounds, {os.cpu_count()} CPUs ...", flush=True)
        timings = measure_rounds(contenders, RUNS)

    medians = {name: median(seconds) for name, seconds in timings.items()}
    b3sum_s = medians.get("b3sum")
    md5sum_s = medians.get("md5sum (DVC's hash)")
    rows = []
    for name, seconds in medians.items():
        rows.append(
            [
                name,
                seconds,
                min(timings[name]),
                gb_per_s(SIZE, seconds),
                f"{b3sum_s / seconds:.2f}x" if b3sum_s else "n/a",
                f"{md5sum_s / seconds:.2f}x" if md5sum_s else "n/a",
            ]
        )
    print()
    print_table(["1 GiB, warm", "median s", "min s", "GB/s", "vs b3sum", "vs md5sum"], rows)
    print()
    for label, name in (
        ("in process", IN_PROCESS),
        ("under a root, in process", UNDER_ROOT),
        ("fresh process", FRESH_PROCESS),
    ):
        if b3sum_s is not None:
            ratio = b3sum_s / medians[name]
            mark = verdict(ratio, TARGET_VS_B3SUM) if name == IN_PROCESS else "(info)"
            print(
                f"lineaged ({label}) / b3sum throughput: {ratio:.2f}x "
                f"(target >= {TARGET_VS_B3SUM}x) {mark}"
            )
        if md5sum_s is not None:
            ratio = md5sum_s / medians[name]
            mark = verdict(ratio, TARGET_VS_MD5SUM) if name == IN_PROCESS else "(info)"
            print(
                f"lineaged ({label}) / md5sum throughput: {ratio:.2f}x "
                f"(target >= {TARGET_VS_MD5SUM}x) {mark}"
            )

"""Helpers shared by the benchmarks: scratch dirs, page-cache warm-up, timing, tables."""

from __future__ import annotations

import mmap
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

__all__ = [
    "WORK_ROOT",
    "command",
    "free_bytes",
    "gb_per_s",
    "measure_rounds",
    "median",
    "print_table",
    "verdict",
    "warm",
    "which",
    "work_dir",
    "write_random",
]

WORK_ROOT = Path(__file__).resolve().parent / ".work"
"""Where benchmarks put their files (ignored by git); each run removes its own."""

_CHUNK = 16 << 20


@contextmanager
def work_dir(name: str) -> Iterator[Path]:
    """A fresh directory under ``bench/.work/``, removed afterwards, even on Ctrl-C."""
    WORK_ROOT.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=WORK_ROOT))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def which(tool: str) -> str | None:
    """The path of ``tool`` on PATH, or None."""
    return shutil.which(tool)


def free_bytes(path: Path) -> int:
    """Free space on the file system holding ``path``."""
    return shutil.disk_usage(path).free


def write_random(path: Path, size: int) -> None:
    """Write ``size`` random (incompressible) bytes to ``path``."""
    with path.open("wb") as out:
        left = size
        while left > 0:
            block = os.urandom(min(_CHUNK, left))
            out.write(block)
            left -= len(block)


def warm(path: Path) -> None:
    """Read the whole file once so every peer is timed against a warm page cache."""
    buffer = mmap.mmap(-1, _CHUNK)  # page-aligned: reads into it run at memory speed
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            while os.readv(fd, [buffer]):
                pass
        finally:
            os.close(fd)
    finally:
        buffer.close()


def command(argv: Sequence[str]) -> Callable[[], None]:
    """A contender that runs a whole command (startup included), output discarded."""

    def run() -> None:
        subprocess.run(list(argv), stdout=subprocess.DEVNULL, check=True)

    return run


def measure_rounds(
    contenders: Mapping[str, Callable[[], object]], runs: int
) -> dict[str, list[float]]:
    """Wall seconds of each contender, ``runs`` times, interleaved round by round.

    Interleaving spreads machine noise (other jobs, frequency changes) over every
    contender instead of penalising whichever ran during a busy moment.
    """
    timings: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(runs):
        for name, contender in contenders.items():
            started = time.perf_counter()
            contender()
            timings[name].append(time.perf_counter() - started)
    return timings


def median(seconds: Sequence[float]) -> float:
    """The median of a list of timings."""
    return statistics.median(seconds)


def gb_per_s(size: int, seconds: float) -> float:
    """Throughput in GB/s (10^9 bytes per second)."""
    return size / seconds / 1e9


def verdict(ratio: float, target: float) -> str:
    """PASS when ``ratio`` reaches ``target``, else MISS."""
    return "PASS" if ratio >= target else "MISS"


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """Print rows as an aligned text table (floats with 3 decimals)."""
    cells = [[_cell(value) for value in row] for row in rows]
    widths = [max(len(h), *(len(row[i]) for row in cells)) for i, h in enumerate(headers)]
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)

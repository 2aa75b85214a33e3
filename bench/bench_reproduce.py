"""The content store: keeping and restoring a big version, indexing with keep = "all", gc.

Peers, measured in the same run, page cache warm:
- storing a new 1 GiB version (``ObjectStore.put``: copy, hash the copy, fsync, rename)
  and restoring it (verified read, streamed, hashed while written, fsync, rename; in process
  and through a real daemon's ``ReadVersionBytes`` stream) against ``cp`` of the same file,
  and ``cp`` followed by ``sync FILE`` (lineaged syncs what it keeps; ``cp`` does not);
- the first index of a tree of 100,000 files of 4 KiB (``lineaged --once``) with
  ``keep = "all"`` against ``keep = "none"``, and against ``dvc add`` of the same tree
  (DVC 3.x in a venv of its own under ``bench/.work/dvc-venv``, created on first use; it
  hashes and copies into its cache too);
- ``gc`` over the 100,000 objects so kept, 1,000 of them pinned, wall time.

``BENCH_REPRODUCE_FILES`` and ``BENCH_REPRODUCE_BYTES`` shrink the tree and the big file;
``BENCH_REPRODUCE_PARTS=big`` (or ``tree``) runs one part only (gc goes with the tree).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench.common import (
    WORK_ROOT,
    gb_per_s,
    measure_rounds,
    median,
    print_table,
    verdict,
    warm,
    work_dir,
    write_random,
)

FILES = int(os.environ.get("BENCH_REPRODUCE_FILES", "100000"))
BIG = int(os.environ.get("BENCH_REPRODUCE_BYTES", str(1 << 30)))
RUNS = int(os.environ.get("BENCH_RUNS", "3"))
PARTS = os.environ.get("BENCH_REPRODUCE_PARTS", "big,tree").split(",")
PINNED = 1000
DIRS = 100
SIZE = 4096
DVC_VENV = WORK_ROOT / "dvc-venv"


def make_tree(root: Path, files: int) -> None:
    """``files`` files of 4 KiB with distinct contents in 100 folders."""
    block = os.urandom(SIZE * 64)
    for d in range(DIRS):
        folder = root / f"d{d:03d}"
        folder.mkdir(parents=True)
        for f in range(files // DIRS):
            offset = ((d * 7919 + f * 104729) % 63) * SIZE
            (folder / f"f{f:05d}.bin").write_bytes(
                f"{d}:{f}:".encode() + block[offset : offset + SIZE - 16]
            )


def write_config(path: Path, tree: Path, keep: str) -> Path:
    path.write_text(f'[[roots]]\npath = "{tree}"\nrole = "data"\nkeep = "{keep}"\n')
    return path


def lineaged_once(config: Path, state: Path) -> list[str]:
    return [
        sys.executable, "-m", "lineaged", "--once", "--log-level", "warning",
        "--config", str(config), "--state-dir", str(state),
    ]  # fmt: skip


def dvc_python() -> str | None:
    """The interpreter of a venv with DVC 3.x (made on first use), or None with the reason."""
    python = DVC_VENV / "bin" / "python"
    if python.exists():
        return str(python)
    print(f"creating {DVC_VENV} with dvc>=3,<4 (once) ...", flush=True)
    try:
        subprocess.run([sys.executable, "-m", "venv", str(DVC_VENV)], check=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", "dvc>=3,<4"],
            check=True,
            timeout=1800,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        print(f"dvc add skipped: could not install DVC 3.x into {DVC_VENV}: {exc}")
        shutil.rmtree(DVC_VENV, ignore_errors=True)
        return None
    return str(python)


def big_file_rows(work: Path) -> list[list[object]]:
    """Store and restore a new BIG-byte version against cp, interleaved rounds."""

    from lineage_core import hasher
    from lineage_core.objects import ObjectStore

    source = work / "big.bin"
    print(f"writing {BIG} random bytes ...", flush=True)
    write_random(source, BIG)
    warm(source)
    time.sleep(0.1)  # out of the racy window
    digest = hasher.hash_file(source).digest
    store = ObjectStore(work / "objects")
    copy = work / "copy.bin"
    methods: set[str] = set()

    def put() -> None:
        store.remove(digest)  # a new version each round
        result = store.put(str(source), digest)
        assert result.kept, result.reason
        methods.add(result.method)

    def cp() -> None:
        copy.unlink(missing_ok=True)
        subprocess.run(["cp", str(source), str(copy)], check=True)

    def cp_sync() -> None:
        copy.unlink(missing_ok=True)
        subprocess.run(["cp", str(source), str(copy)], check=True)
        subprocess.run(["sync", str(copy)], check=True)

    put()
    contenders = {
        "cp": cp,
        "cp + sync FILE": cp_sync,
        "lineaged store (put)": put,
    }
    daemon_restore = _daemon_restore(work, source, digest)
    if daemon_restore is not None:
        restore, stream, close = daemon_restore
        contenders["lineaged restore (same user: client copies)"] = restore
        contenders["lineaged restore (root daemon: gRPC stream)"] = stream
    try:
        timings = measure_rounds(contenders, RUNS)
    finally:
        if daemon_restore is not None:
            close()
    seconds = {name: median(values) for name, values in timings.items()}
    how = "reflink (FICLONE)" if methods == {"reflink"} else "copy (copy_file_range)"
    print(f"\n{BIG / (1 << 30):g} GiB version: the store measured a {how}")
    rows: list[list[object]] = [
        [name, value, gb_per_s(BIG, value)] for name, value in seconds.items()
    ]
    print_table([f"contender (median of {RUNS})", "seconds", "GB/s"], rows)
    cp_time = seconds["cp"]
    checks: list[list[object]] = []
    for name in [n for n in seconds if n.startswith("lineaged")]:
        ratio = cp_time / seconds[name]
        checks.append([f"{name} throughput / cp", ratio, ">= 0.9", verdict(ratio, 0.9)])
    synced = seconds["cp + sync FILE"]
    checks.append(
        ["store (put) / (cp + sync)", synced / seconds["lineaged store (put)"], "(info)", ""]
    )
    return checks


def _daemon_restore(
    work: Path, source: Path, digest: str
) -> tuple[Callable[[], None], Callable[[], None], Callable[[], None]] | None:
    """A daemon keeping ``source`` (keep = "all"); contenders restoring it through it (as
    ``lineage restore`` does for this user, and through the stream a root daemon's users
    get), and what stops the daemon."""
    from lineage_client import Client
    from lineage_client.reproduce import materialise

    root = work / "root"
    root.mkdir()
    kept = root / "big.bin"
    os.link(source, kept)
    config = write_config(work / "daemon.toml", root, "all")
    # A folder of its own (the daemon refuses a shared one such as /tmp), short for AF_UNIX.
    socket_dir = Path(tempfile.mkdtemp(prefix="lg-bench-", dir="/tmp"))
    socket = socket_dir / "s.sock"
    log = (work / "daemon.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "lineaged", "--config", str(config), "--state-dir",
         str(work / "daemon-state"), "--socket", str(socket), "--log-level", "warning"],
        stdout=log, stderr=log,
    )  # fmt: skip

    def stop() -> None:
        proc.terminate()
        proc.wait(timeout=60)
        log.close()
        shutil.rmtree(socket_dir, ignore_errors=True)

    deadline = time.monotonic() + 300
    client = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            print(f"the daemon exited: {(work / 'daemon.log').read_text()[-2000:]}")
            return None
        if socket.exists():
            try:
                client = client or Client(socket=socket)
                if client.kept_version(digest=digest) is not None:
                    break
            except Exception:  # not serving yet
                pass
        time.sleep(0.2)
    else:
        stop()
        print("the daemon did not keep the big file in 300 s: daemon restore skipped")
        return None
    assert client is not None
    dest = work / "restored-by-daemon.bin"

    def restore() -> None:
        dest.unlink(missing_ok=True)  # else it holds the bytes already and nothing is written
        client.restore(f"{kept}@{digest}", to=dest, force=True)

    version, _ = client.locate_version(str(kept), digest=digest)

    def stream() -> None:
        dest.unlink(missing_ok=True)
        materialise(client, version, "", str(dest))

    def close() -> None:
        client.close()
        stop()

    return restore, stream, close


def tree_rows(work: Path) -> tuple[list[list[object]], Path]:
    """First index with keep = all vs none (and dvc add); returns a kept state for gc."""
    tree = work / "tree"
    print(f"\ncreating {FILES} files of {SIZE} bytes in {DIRS} directories ...", flush=True)
    make_tree(tree, FILES)
    subprocess.run(
        f"find {tree} -type f -print0 | xargs -0 cat > /dev/null", shell=True, check=True
    )
    time.sleep(2.5)  # the newest mtimes leave the racy window before the first index
    keep_all = write_config(work / "all.toml", tree, "all")
    keep_none = write_config(work / "none.toml", tree, "none")
    contenders = {'first index, keep = "none"': keep_none, 'first index, keep = "all"': keep_all}
    timings: dict[str, list[float]] = {name: [] for name in contenders}
    for round_ in range(RUNS):  # interleaved; removing a state (100k objects) is not timed
        for name, config in contenders.items():
            state = work / f"state-{round_}-{len(timings[name])}-{config.stem}"
            started = time.perf_counter()
            subprocess.run(lineaged_once(config, state), check=True, stdout=subprocess.DEVNULL)
            timings[name].append(time.perf_counter() - started)
            shutil.rmtree(state)
    python = dvc_python()
    if python is not None:
        dvc_times = []
        for round_ in range(1 if RUNS > 1 else RUNS):
            project = work / f"dvc-{round_}"
            project.mkdir()
            shutil.copytree(tree, project / "tree", copy_function=os.link)
            dvc = [python, "-m", "dvc"]
            subprocess.run([*dvc, "init", "--no-scm", "-q"], cwd=project, check=True)
            subprocess.run(
                [*dvc, "config", "core.site_cache_dir", str(project / "site-cache")],
                cwd=project,
                check=True,
            )
            started = time.perf_counter()
            subprocess.run([*dvc, "add", "-q", "tree"], cwd=project, check=True)
            dvc_times.append(time.perf_counter() - started)
            shutil.rmtree(project)
        timings["dvc add (DVC 3.x, one round)"] = dvc_times
    seconds = {name: median(values) for name, values in timings.items()}
    print_table(
        [f"{FILES} files (median of {RUNS})", "seconds"],
        [[name, value] for name, value in seconds.items()],
    )
    kept_all = seconds['first index, keep = "all"']
    checks: list[list[object]] = [
        [
            'keep = "all" / keep = "none" time',
            kept_all / seconds['first index, keep = "none"'],
            "(info)",
            "",
        ]
    ]
    if "dvc add (DVC 3.x, one round)" in seconds:
        ratio = seconds["dvc add (DVC 3.x, one round)"] / kept_all
        checks.append(['dvc add / keep = "all" time', ratio, ">= 10", verdict(ratio, 10.0)])
    state = work / "state-gc"
    subprocess.run(lineaged_once(keep_all, state), check=True, stdout=subprocess.DEVNULL)
    return checks, state


def gc_rows(state: Path, tree: Path) -> list[list[object]]:
    """gc over every kept object with PINNED pinned, the root's policy now keep = "none"."""
    from lineage_core.models import Keep, Role, Root
    from lineage_core.objects import ObjectStore

    from lineaged.config import IgnoreRules
    from lineaged.retention import Keeper
    from lineaged.store import DB_NAME, Store, Writer
    from lineaged.watching.indexer import RootSet, WatchedRoot

    store = Store.open(state / DB_NAME)
    writer = Writer(store)
    writer.start()
    try:
        objects, _ = store.object_totals()
        (root,) = [r for r in store.roots() if r.path == str(tree)]
        assert root.id is not None
        watched = WatchedRoot(
            Root(str(tree), Role.DATA, id=root.id, keep=Keep.NONE), root.id, IgnoreRules(())
        )
        keeper = Keeper(store, writer, ObjectStore(state / "objects"), RootSet([watched]))
        pins = list(range(1, PINNED + 1))
        writer.call(lambda s: s.pin(pins, "bench", time.time_ns()))
        started = time.perf_counter()
        dry = keeper.collect(dry_run=True)
        dry_seconds = time.perf_counter() - started
        started = time.perf_counter()
        report = keeper.collect(dry_run=False)
        seconds = time.perf_counter() - started
    finally:
        writer.stop()
        store.close()
    print(
        f"\ngc over {objects} kept objects, {PINNED} pinned: dry run {dry_seconds:.2f} s, "
        f"gc {seconds:.2f} s; freed {report.freed_objects} ({report.freed_bytes / 1e6:.1f} MB), "
        f"kept {report.kept_objects}"
    )
    assert dry.freed_objects == report.freed_objects == objects - PINNED
    return [
        [f"gc wall time, {objects} objects, {PINNED} pinned (s)", seconds, "(reported)", ""],
        ["gc --dry-run wall time (s)", dry_seconds, "(reported)", ""],
    ]


def main() -> None:
    checks: list[list[object]] = []
    with work_dir("reproduce") as work:
        if "big" in PARTS:
            checks += big_file_rows(work)
            for leftover in ("big.bin", "copy.bin", "restored.bin", "restored-by-daemon.bin"):
                (work / leftover).unlink(missing_ok=True)
            shutil.rmtree(work / "objects", ignore_errors=True)
            shutil.rmtree(work / "root", ignore_errors=True)
            shutil.rmtree(work / "daemon-state", ignore_errors=True)
        if "tree" in PARTS:
            tree_checks, state = tree_rows(work)
            checks += tree_checks
            checks += gc_rows(state, work / "tree")
    print()
    print_table(["ratio", "measured", "target", ""], checks)


if __name__ == "__main__":
    main()

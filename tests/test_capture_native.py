"""Native code's file accesses reach the record (issue 12): the LD_PRELOAD interposer under a
real daemon, with the real libraries (pandas, pyarrow, polars, h5py, sqlite3, gzip), digests
checked against b3sum; and every run says how complete its capture is."""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest
from lineage_client.capture import capture_command
from lineage_client.capture.native import build_interposer, escape_reason
from lineage_client.capture.settle import CTIME_SLACK_NS
from lineage_client.capture.strace import find_strace, strace_problem
from lineage_core.errors import CaptureIncomplete, InvalidArgument, NotFound
from lineage_core.models import (
    AccessMode,
    Capture,
    Direction,
    Run,
    RunStart,
    RunStatus,
    StartNode,
)

from lineaged.store import Store
from tests.conftest import DaemonProcess
from tests.helpers import b3_files, wait_for

INTERPOSER = build_interposer()
needs_interposer = pytest.mark.skipif(
    not INTERPOSER.path, reason=f"the interposer cannot be built here: {INTERPOSER.problem}"
)
STRACE = find_strace()
needs_strace = pytest.mark.skipif(
    STRACE is None or bool(strace_problem(STRACE)), reason="strace is missing or cannot trace"
)
STATIC = shutil.which("ldconfig", path="/sbin:/usr/sbin")


def area_of(daemon: DaemonProcess, name: str) -> Path:
    """A fresh folder under the daemon's data root."""
    area = daemon.data / f"{name}-{uuid.uuid4().hex[:8]}"
    area.mkdir()
    return area


def known(daemon: DaemonProcess, *paths: Path) -> None:
    """Wait until the daemon holds the current bytes of ``paths`` (inputs made by the test)."""
    client = daemon.client()
    want = b3_files(list(paths))

    def current() -> bool:
        for path in paths:
            try:
                versions = list(client.iter_history(str(path)))
            except NotFound:
                return False
            if not versions or versions[0].digest != want[str(path)]:
                return False
        return True

    wait_for(current, what="the daemon to know the inputs")


def lineage_run(
    daemon: DaemonProcess, code: str, cwd: Path, *options: str, env: dict[str, str] | None = None
) -> tuple[str, str]:
    """``lineage run [options] -- python script.py`` in ``cwd``; (run id, stderr)."""
    script = cwd.parent / f"{cwd.name}-job.py"
    script.write_text(textwrap.dedent(code))
    done = daemon.run_cli("run", *options, "--", sys.executable, str(script), cwd=cwd, env=env)
    assert done.returncode == 0, done.stderr
    match = re.search(r"lineage: run (\S+) \(", done.stderr)
    assert match is not None, done.stderr
    return match.group(1), done.stderr


def run_io(daemon: DaemonProcess, run_id: str) -> tuple[Run, dict[str, str], dict[str, str]]:
    """The run, and its data inputs and outputs as {path: digest}."""
    client = daemon.client()
    run = client.get_run(run_id)
    graph = client.lineage(StartNode(run_id=run.run_id), Direction.BOTH, max_depth=1)
    versions = {f"version:{v.id}": v for v in graph.versions}
    node = f"run:{run.run_id}"
    reads: dict[str, str] = {}
    writes: dict[str, str] = {}
    for edge in graph.edges:
        if edge.source != node or edge.target not in versions or edge.role != "data":
            continue
        version = versions[edge.target]
        (reads if edge.kind == "read" else writes)[version.path] = version.digest
    return run, reads, writes


def digests(*paths: Path) -> dict[str, str]:
    """b3sum of each file, by path."""
    return b3_files(list(paths))


def complete(run: Run) -> None:
    assert run.capture is not None and run.capture.complete, run.capture
    assert run.capture.method == "interposer"


@needs_interposer
def test_parquet_written_by_pandas_read_by_pandas_pyarrow_and_polars(
    module_daemon: DaemonProcess,
) -> None:
    area = area_of(module_daemon, "parquet")
    raw = area / "raw.csv"
    raw.write_text("key,value\n" + "".join(f"{'ab'[i % 2]},{i}\n" for i in range(200)))
    known(module_daemon, raw)

    run_id, stderr = lineage_run(
        module_daemon,
        """
        import pandas as pd
        pd.read_csv("raw.csv").to_parquet("table.parquet")
        """,
        area,
    )
    assert "capture: complete (interposer)" in stderr
    table = area / "table.parquet"
    run, reads, writes = run_io(module_daemon, run_id)
    complete(run)
    assert (reads, writes) == (digests(raw), digests(table))

    run_id, _ = lineage_run(
        module_daemon,
        """
        import pandas as pd
        assert len(pd.read_parquet("table.parquet")) == 200
        """,
        area,
    )
    assert run_io(module_daemon, run_id)[1:] == (digests(table), {})

    run_id, _ = lineage_run(
        module_daemon,
        """
        import pyarrow.dataset as ds
        import pyarrow.parquet as pq
        table = pq.read_table("table.parquet")
        ds.write_dataset(table, "parts", format="parquet", partitioning=["key"],
                         partitioning_flavor="hive")
        """,
        area,
    )
    parts = sorted((area / "parts").rglob("*.parquet"))
    assert len(parts) == 2
    assert run_io(module_daemon, run_id)[1:] == (digests(table), digests(*parts))

    run_id, _ = lineage_run(
        module_daemon,
        """
        import polars as pl
        import pyarrow.dataset as ds
        pl.read_parquet("table.parquet").write_parquet("polars.parquet")
        assert ds.dataset("parts", partitioning="hive").to_table().num_rows == 200
        """,
        area,
    )
    run, reads, writes = run_io(module_daemon, run_id)
    complete(run)
    assert reads == digests(table, *parts)
    assert writes == digests(area / "polars.parquet")


@needs_interposer
def test_hdf5_written_and_read_with_h5py(module_daemon: DaemonProcess) -> None:
    area = area_of(module_daemon, "hdf5")
    run_id, _ = lineage_run(
        module_daemon,
        """
        import h5py, numpy
        with h5py.File("data.h5", "w") as f:
            f["x"] = numpy.arange(1000)
        """,
        area,
    )
    data = area / "data.h5"
    assert run_io(module_daemon, run_id)[1:] == ({}, digests(data))
    run_id, _ = lineage_run(
        module_daemon,
        """
        import h5py
        with h5py.File("data.h5", "r") as f:
            assert int(f["x"][-1]) == 999
        """,
        area,
    )
    run, reads, writes = run_io(module_daemon, run_id)
    complete(run)
    assert (reads, writes) == (digests(data), {})


@needs_interposer
def test_a_read_only_sqlite_query_is_a_read(module_daemon: DaemonProcess) -> None:
    area = area_of(module_daemon, "sqlite")
    database = area / "db.sqlite"
    with sqlite3.connect(database) as conn:
        conn.execute("CREATE TABLE t (x)")
        conn.executemany("INSERT INTO t VALUES (?)", [(i,) for i in range(10)])
    conn.close()
    known(module_daemon, database)
    run_id, _ = lineage_run(
        module_daemon,
        """
        import sqlite3
        conn = sqlite3.connect("db.sqlite")  # opened O_RDWR|O_CREAT, as SQLite always does
        assert conn.execute("SELECT sum(x) FROM t").fetchone() == (45,)
        conn.close()
        """,
        area,
    )
    run, reads, writes = run_io(module_daemon, run_id)
    complete(run)
    assert (reads, writes) == (digests(database), {})


@needs_interposer
def test_gzip_started_by_python_is_traced(module_daemon: DaemonProcess) -> None:
    area = area_of(module_daemon, "gzip")
    text = area / "notes.txt"
    text.write_text("hello\n" * 100)
    known(module_daemon, text)
    run_id, _ = lineage_run(
        module_daemon,
        """
        import subprocess
        subprocess.run(["gzip", "-k", "notes.txt"], check=True)
        """,
        area,
    )
    run, reads, writes = run_io(module_daemon, run_id)
    complete(run)
    assert (reads, writes) == (digests(text), digests(area / "notes.txt.gz"))


@needs_interposer
def test_a_process_pool_is_traced_in_every_worker(module_daemon: DaemonProcess) -> None:
    area = area_of(module_daemon, "pool")
    inputs = [area / f"in{i}.txt" for i in range(4)]
    for i, path in enumerate(inputs):
        path.write_text(f"{i}\n" * (i + 1))
    known(module_daemon, *inputs)
    run_id, _ = lineage_run(
        module_daemon,
        """
        import os
        from concurrent.futures import ProcessPoolExecutor

        def work(i):
            with open(f"in{i}.txt") as src, open(f"out{i}.txt", "w") as dst:
                dst.write(src.read().upper())
            return os.getpid()

        if __name__ == "__main__":
            with ProcessPoolExecutor(2) as pool:
                assert os.getpid() not in set(pool.map(work, range(4)))
        """,
        area,
    )
    run, reads, writes = run_io(module_daemon, run_id)
    complete(run)
    assert reads == digests(*inputs)
    assert writes == digests(*(area / f"out{i}.txt" for i in range(4)))


def _bare_env(tmp_path: Path) -> dict[str, str]:
    """No compiler and no strace on PATH, and an empty interposer cache: nothing can trace
    native code (PATH manipulation, not mocks)."""
    empty = tmp_path / "bin"
    empty.mkdir(exist_ok=True)
    return {
        **os.environ,
        "PATH": str(empty),
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
    }


def test_without_interposer_or_strace_the_run_is_partial_and_says_why(
    module_daemon: DaemonProcess, tmp_path: Path
) -> None:
    area = area_of(module_daemon, "partial")
    (area / "in.txt").write_text("x\n")
    known(module_daemon, area / "in.txt")
    env = _bare_env(tmp_path)
    run_id, stderr = lineage_run(module_daemon, "open('in.txt').read()\n", area, env=env)
    assert "capture: partial (the LD_PRELOAD interposer is unavailable: no C compiler" in stderr
    assert "strace is not installed" in stderr
    run, reads, _ = run_io(module_daemon, run_id)
    assert reads == digests(area / "in.txt")  # the audit hook still saw Python's own open
    assert run.capture is not None and not run.capture.complete
    assert run.capture.method == "audit-hook"
    assert any("no C compiler" in reason for reason in run.capture.reasons)
    assert any("strace is not installed" in reason for reason in run.capture.reasons)

    shown = module_daemon.run_cli("show", run_id)
    assert "capture partial (audit-hook)" in shown.stdout
    assert "  - strace is not installed" in shown.stdout
    listed = module_daemon.run_cli("runs", "--full")
    (row,) = [line for line in listed.stdout.splitlines() if line.startswith(run_id)]
    assert " partial " in row
    traced = module_daemon.run_cli("trace", "--json", str(area / "in.txt"), "--depth", "0")
    assert traced.returncode == 0, traced.stderr
    impact = json.loads(module_daemon.run_cli("impact", "--json", str(area / "in.txt")).stdout)
    (node,) = [n for n in impact["nodes"] if n.get("run_id") == run_id]
    assert node["capture"]["state"] == "partial"
    assert node["capture"]["reasons"] == list(run.capture.reasons)
    text = module_daemon.run_cli("impact", str(area / "in.txt")).stdout
    assert "[capture partial]" in text


def test_require_complete_refuses_a_partial_capture(
    module_daemon: DaemonProcess, tmp_path: Path
) -> None:
    marker = tmp_path / "ran"
    env = _bare_env(tmp_path)
    command = [sys.executable, "-c", f"open({str(marker)!r}, 'w').close()"]
    for options, extra in ((["--require-complete"], {}), ([], {"LINEAGE_REQUIRE_COMPLETE": "1"})):
        done = module_daemon.run_cli(
            "run", *options, "--", *command, cwd=tmp_path, env={**env, **extra}
        )
        assert done.returncode == 2, done.stderr
        assert done.stderr.startswith("Error: the capture of this command would be partial")
        assert "no C compiler" in done.stderr and "strace is not installed" in done.stderr
        assert "started" not in done.stderr
        assert not marker.exists()
    if INTERPOSER.path:  # with the real PATH and cache the same command is complete: it runs
        done = module_daemon.run_cli("run", "--require-complete", "--", *command, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        assert marker.exists()


# Waits until the wrapper has offered strace to the interposer (or 30 s), then runs the static
# ldconfig on a cache file of the test's: a read only strace can see.
STATIC_CHILD = """
import os, subprocess, sys, time
offer = os.path.join(os.environ["LINEAGE_TRACE_DIR"], "strace.argv")
deadline = time.monotonic() + 30
while sys.argv[2] == "wait" and not os.path.exists(offer) and time.monotonic() < deadline:
    time.sleep(0.01)
subprocess.run([sys.argv[1], "-p", "-C", "ld.cache"], capture_output=True)
"""


@needs_interposer
@pytest.mark.skipif(STATIC is None, reason="no static ldconfig here")
def test_a_static_program_started_by_the_run_makes_it_partial(tmp_path: Path) -> None:
    assert STATIC is not None
    assert escape_reason(STATIC) == "static"
    assert escape_reason(sys.executable) == ""
    (tmp_path / "ld.cache").write_text("not a cache\n")
    no_strace = tmp_path / "bin"
    no_strace.mkdir()
    run = capture_command(
        [sys.executable, "-c", STATIC_CHILD, STATIC, "no-wait"],
        cwd=str(tmp_path),
        extra_env={"PATH": str(no_strace)},
    )
    assert run.method == "interposer"
    assert not run.complete
    (reason,) = run.capture_reasons
    assert reason.startswith(f"{STATIC} is statically linked")


@needs_interposer
@needs_strace
@pytest.mark.skipif(STATIC is None, reason="no static ldconfig here")
def test_a_static_program_started_by_the_run_is_handed_to_strace(tmp_path: Path) -> None:
    assert STATIC is not None
    (tmp_path / "ld.cache").write_text("not a cache\n")
    run = capture_command([sys.executable, "-c", STATIC_CHILD, STATIC, "wait"], cwd=str(tmp_path))
    assert (run.method, run.capture_reasons) == ("interposer", ())
    assert {(a.path, a.mode) for a in run.accesses if a.role == "data"} == {
        (str(tmp_path / "ld.cache"), AccessMode.READ)
    }


@needs_interposer
def test_a_static_command_goes_to_strace_or_is_partial(tmp_path: Path) -> None:
    if STATIC is None:
        pytest.skip("no static ldconfig here")
    run = capture_command([STATIC, "-p"], cwd=str(tmp_path))
    if STRACE is not None and not strace_problem(STRACE):
        assert (run.method, run.complete) == ("strace", True)
        assert any("statically linked" in warning for warning in run.warnings)
    else:
        assert not run.complete


@needs_interposer
def test_the_interposer_sees_renames_removals_and_native_writes(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("a\n")
    command = "cat a.txt > tmp.out && mv tmp.out final.out && cp a.txt gone && rm gone"
    run = capture_command(["sh", "-c", command], cwd=str(tmp_path))
    assert (run.method, run.complete) == ("interposer", True)
    assert {(a.path, a.mode) for a in run.accesses if a.role == "data"} == {
        (str(tmp_path / "a.txt"), AccessMode.READ),
        (str(tmp_path / "final.out"), AccessMode.WRITE),
    }


@needs_interposer
def test_an_environment_cleared_by_the_command_keeps_the_interposer(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("a\n")
    code = "import subprocess; subprocess.run(['/bin/cp', 'a.txt', 'b.txt'], env={}, check=True)"
    run = capture_command([sys.executable, "-c", code], cwd=str(tmp_path))
    assert run.complete
    assert {(a.path, a.mode) for a in run.accesses if a.role == "data"} == {
        (str(tmp_path / "a.txt"), AccessMode.READ),
        (str(tmp_path / "b.txt"), AccessMode.WRITE),
    }


@pytest.mark.parametrize(
    "mode",
    [
        pytest.param("interposer", marks=needs_interposer),
        pytest.param("strace", marks=needs_strace),
    ],
)
def test_opened_for_writing_but_unchanged_is_a_read(tmp_path: Path, mode: str) -> None:
    kept = tmp_path / "kept.txt"
    changed = tmp_path / "changed.txt"
    kept.write_text("same\n")
    changed.write_text("old\n")
    # Without the interposer's record, "unchanged" means: inode last changed before the
    # run, by more than the timestamp slack.
    wait_for(
        lambda: (
            time.time_ns()
            > max(kept.stat().st_ctime_ns, changed.stat().st_ctime_ns) + CTIME_SLACK_NS
        ),
        what="the inputs to be older than the slack",
    )
    code = (
        "open('kept.txt', 'r+').close(); "
        "f = open('changed.txt', 'r+'); f.write('new'); f.close(); "
        "open('made.txt', 'a').close()"
    )
    script = ["sh", "-c", f"'{sys.executable}' -c \"{code}\""]
    run = capture_command(script, cwd=str(tmp_path), mode=mode)
    assert (run.method, run.complete) == (mode, True)
    assert {(a.path, a.mode) for a in run.accesses if a.role == "data"} == {
        (str(kept), AccessMode.READ),
        (str(changed), AccessMode.WRITE),
        (str(tmp_path / "made.txt"), AccessMode.WRITE),
    }


def test_ptrace_forbidden_makes_the_capture_partial_with_the_reason(tmp_path: Path) -> None:
    # A strace that fails as it does where ptrace is not permitted (PATH, not a mock): the
    # interposer unavailable too, the run is partial and names both.
    env = _bare_env(tmp_path)
    fake = Path(env["PATH"]) / "strace"
    fake.write_text(
        "#!/bin/sh\n"
        "echo 'strace: test_ptrace_get_syscall_info: PTRACE_TRACEME: Operation not permitted' >&2\n"
        "exit 1\n"
    )
    fake.chmod(0o755)
    (tmp_path / "a.txt").write_text("a\n")
    run = capture_command(
        [sys.executable, "-c", "open('a.txt').read()"],
        cwd=str(tmp_path),
        extra_env={"PATH": env["PATH"], "XDG_CACHE_HOME": env["XDG_CACHE_HOME"]},
    )
    assert (run.method, run.complete) == ("audit-hook", False)
    (ptrace,) = [r for r in run.capture_reasons if r.startswith("strace cannot trace here")]
    assert "Operation not permitted" in ptrace
    with pytest.raises(CaptureIncomplete, match="Operation not permitted"):
        capture_command(
            [sys.executable, "-c", "pass"],
            cwd=str(tmp_path),
            extra_env={"PATH": env["PATH"], "XDG_CACHE_HOME": env["XDG_CACHE_HOME"]},
            require_complete=True,
        )


@needs_interposer
def test_many_opens_lose_no_record(tmp_path: Path) -> None:
    # More than 256 KiB of records from one process: none may be lost at any boundary.
    folder = tmp_path / "many"
    folder.mkdir()
    names = [f"{'long-name-' * 8}{i:05d}.txt" for i in range(3000)]
    for name in names:
        (folder / name).write_bytes(b"x")
    code = (
        "import os, sys\n"
        "for name in sorted(os.listdir(sys.argv[1])):\n"
        "    open(os.path.join(sys.argv[1], name), 'rb').close()\n"
    )
    run = capture_command([sys.executable, "-c", code, str(folder)], cwd=str(tmp_path))
    assert run.method == "interposer"
    assert {a.path for a in run.accesses if a.role == "data"} == {
        str(folder / name) for name in names
    }


def test_a_runs_capture_is_stored_validated_and_migrated(tmp_path: Path) -> None:
    db = tmp_path / "lineaged.db"
    store = Store.open(db)
    try:
        first = store.begin_run(RunStart(name="old", started_at=1))
        second = store.begin_run(RunStart(name="new", started_at=2))
        partial = Capture(complete=False, reasons=("strace is not installed",), method="none")
        store.end_run(first, exit_code=0, status=RunStatus.SUCCEEDED, ended_at=3, warnings=())
        store.end_run(
            second,
            exit_code=0,
            status=RunStatus.SUCCEEDED,
            ended_at=3,
            warnings=(),
            capture=partial,
        )
        assert store.get_run(first).capture is None
        assert store.get_run(second).capture == partial
    finally:
        store.close()
    # A store from before the capture column is migrated when opened, its runs kept (the
    # migrations after it run again too: they must not mind).
    from lineaged.store import MIGRATIONS, _migration_capture_completeness

    with sqlite3.connect(db) as conn:
        conn.execute("ALTER TABLE runs DROP COLUMN capture")
        conn.execute(f"PRAGMA user_version={MIGRATIONS.index(_migration_capture_completeness)}")
    conn.close()
    store = Store.open(db)
    try:
        assert store.get_run(second).capture is None
        assert store.get_run(first).name == "old"
    finally:
        store.close()


def test_end_run_refuses_a_capture_that_contradicts_itself(module_daemon: DaemonProcess) -> None:
    client = module_daemon.client()
    run_id = client.begin_run(RunStart(name="contradiction")).run_id
    with pytest.raises(InvalidArgument, match="complete capture"):
        client.end_run(
            run_id, status=RunStatus.SUCCEEDED, capture=Capture(True, ("missed a process",))
        )
    ended = client.end_run(
        run_id, status=RunStatus.SUCCEEDED, capture=Capture(True, (), "interposer")
    )
    assert ended.capture == Capture(True, (), "interposer")
    assert client.get_run(run_id).capture == Capture(True, (), "interposer")


@needs_interposer
@pytest.mark.skipif(shutil.which("objcopy") is None, reason="objcopy (binutils) is not installed")
def test_a_dynamically_linked_go_program_is_reported(tmp_path: Path) -> None:
    # A real dynamic ELF given the section every Go binary has: Go calls the kernel itself.
    fake_go = tmp_path / "gotool"
    real = shutil.which("true") or "/bin/true"
    subprocess.run(
        ["objcopy", "--add-section", ".go.buildinfo=/dev/null", real, str(fake_go)], check=True
    )
    assert (escape_reason(real), escape_reason(str(fake_go))) == ("", "go")
    code = f"import subprocess; subprocess.run([{str(fake_go)!r}], check=True)"
    no_strace = tmp_path / "bin"
    no_strace.mkdir()
    run = capture_command(
        [sys.executable, "-c", code], cwd=str(tmp_path), extra_env={"PATH": str(no_strace)}
    )
    (reason,) = run.capture_reasons
    assert reason.startswith(f"{fake_go} is a Go program")
    assert capture_command([str(fake_go)], cwd=str(tmp_path), mode="interposer").capture_reasons


@needs_interposer
def test_a_program_that_unsets_ld_preload_still_traces_its_children(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("a\n")
    # The shell drops the variables from its own environment, then execs cp through execve
    # with that environment: the interposer puts them back.
    command = "unset LD_PRELOAD LINEAGE_TRACE_DIR; exec cp a.txt b.txt"
    run = capture_command(["sh", "-c", command], cwd=str(tmp_path))
    assert run.complete
    assert {(a.path, a.mode) for a in run.accesses if a.role == "data"} == {
        (str(tmp_path / "a.txt"), AccessMode.READ),
        (str(tmp_path / "b.txt"), AccessMode.WRITE),
    }


def test_capture_mode_from_the_environment(module_daemon: DaemonProcess, tmp_path: Path) -> None:
    bad = module_daemon.run_cli(
        "run", "--", "true", cwd=tmp_path, env={**os.environ, "LINEAGE_CAPTURE": "psychic"}
    )
    assert bad.returncode == 2
    assert bad.stderr.startswith("Error: unknown capture mode 'psychic'"), bad.stderr
    assert "started" not in bad.stderr
    if STRACE is not None and not strace_problem(STRACE):
        done = module_daemon.run_cli(
            "run", "--", "true", cwd=tmp_path, env={**os.environ, "LINEAGE_CAPTURE": "strace"}
        )
        assert done.returncode == 0, done.stderr
        assert "capture: complete (strace)" in done.stderr


@needs_interposer
def test_hostile_names_survive_the_interposer(tmp_path: Path) -> None:
    names = ["new\nline.txt", "tab\there.txt", "back\\slash.txt", os.fsdecode(b"caf\xe9.txt")]
    for name in names:
        (tmp_path / name).write_bytes(b"x")
    run = capture_command(["sh", "-c", "cat -- * > /dev/null"], cwd=str(tmp_path))
    assert run.complete
    assert {(a.path, a.mode) for a in run.accesses if a.role == "data"} == {
        (str(tmp_path / name), AccessMode.READ) for name in names
    }

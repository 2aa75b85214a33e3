"""The strace tracer: real commands under strace, and the parser on known output."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from lineage_client.capture import CapturedRun, capture_command
from lineage_client.capture.strace import find_strace, parse_strace_file, strace_problem
from lineage_core.models import AccessMode

STRACE = find_strace()
needs_strace = pytest.mark.skipif(
    STRACE is None or bool(strace_problem(STRACE)),
    reason="strace is not installed" if STRACE is None else "strace cannot trace here",
)


def data(run: CapturedRun) -> set[tuple[str, AccessMode]]:
    """(path, mode) of the run's data accesses."""
    return {(access.path, access.mode) for access in run.accesses if access.role == "data"}


@needs_strace
def test_shell_redirection_records_input_and_output(tmp_path: Path) -> None:
    (tmp_path / "in.txt").write_text("b\na\n")
    run = capture_command(
        mode="strace", argv=["sh", "-c", "sort in.txt > out.txt"], cwd=str(tmp_path)
    )
    assert run.method == "strace"
    assert run.exit_code == 0
    assert (tmp_path / "out.txt").read_text() == "a\nb\n"
    assert data(run) == {
        (str(tmp_path / "in.txt"), AccessMode.READ),
        (str(tmp_path / "out.txt"), AccessMode.WRITE),
    }


@needs_strace
def test_relative_paths_follow_cd(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "x").write_text("x\n")
    (tmp_path / "x").write_text("decoy\n")
    run = capture_command(
        mode="strace",
        argv=["sh", "-c", "cd sub && cat x > /dev/null && (cd .. && cat x > copy)"],
        cwd=str(tmp_path),
    )
    assert run.exit_code == 0
    assert data(run) == {
        (str(tmp_path / "sub" / "x"), AccessMode.READ),
        (str(tmp_path / "x"), AccessMode.READ),
        (str(tmp_path / "copy"), AccessMode.WRITE),  # redirected in the subshell, after cd ..
    }


@needs_strace
def test_mv_of_a_temp_file_is_a_write_of_the_target(tmp_path: Path) -> None:
    run = capture_command(
        mode="strace",
        argv=["sh", "-c", "echo 1 > out.tmp && mv out.tmp out.txt && echo 2 > junk && rm junk"],
        cwd=str(tmp_path),
    )
    assert run.exit_code == 0
    assert data(run) == {(str(tmp_path / "out.txt"), AccessMode.WRITE)}


@needs_strace
def test_python_children_of_a_shell_still_report_sources(tmp_path: Path) -> None:
    (tmp_path / "job.py").write_text("import tool\nopen('in.txt').read()\n")
    (tmp_path / "tool.py").write_text("VALUE = 1\n")
    (tmp_path / "in.txt").write_text("1\n")
    run = capture_command(
        mode="strace", argv=["sh", "-c", f"'{sys.executable}' job.py"], cwd=str(tmp_path)
    )
    assert run.method == "strace"
    assert run.exit_code == 0
    assert {source.path for source in run.sources} == {
        str(tmp_path / "job.py"),
        str(tmp_path / "tool.py"),
    }
    assert (str(tmp_path / "in.txt"), AccessMode.READ) in data(run)


@needs_strace
def test_python_that_skips_site_falls_back_to_strace(tmp_path: Path) -> None:
    (tmp_path / "in.txt").write_text("1\n")
    run = capture_command(
        mode="strace", argv=[sys.executable, "-I", "-c", "open('in.txt').read()"], cwd=str(tmp_path)
    )
    assert run.method == "strace"
    assert any("-I" in warning for warning in run.warnings)
    assert data(run) == {(str(tmp_path / "in.txt"), AccessMode.READ)}


def test_without_strace_the_command_runs_untraced_with_a_warning(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("sh", "cat"):
        real = next(
            Path(d) / tool for d in os.defpath.split(os.pathsep) if (Path(d) / tool).exists()
        )
        (bin_dir / tool).symlink_to(real)
    (tmp_path / "in.txt").write_text("hello\n")
    run = capture_command(
        mode="strace",
        argv=["sh", "-c", "cat in.txt > out.txt; exit 4"],
        cwd=str(tmp_path),
        extra_env={"PATH": str(bin_dir)},
    )
    assert run.method == "none"
    assert run.exit_code == 4
    assert run.warnings == ()
    assert run.capture_reasons[0] == "strace is not installed (apt-get install strace)"
    assert not run.complete
    assert run.accesses == ()
    assert (tmp_path / "out.txt").read_text() == "hello\n"


STRACE_OUTPUT = r"""100 1700000000.000001 execve("/usr/bin/sh", ["sh", "-c", "..."], 0x7ffd /* 10 vars */) = 0
100 1700000000.000002 openat(AT_FDCWD</work>, "/etc/ld.so.cache", O_RDONLY|O_CLOEXEC) = 3</etc/ld.so.cache>
100 1700000000.000003 chdir("data") = 0
100 1700000000.000004 clone(child_stack=NULL, flags=CLONE_CHILD_CLEARTID|SIGCHLD <unfinished ...>
101 1700000000.000005 open("raw/caf\303\251 \"1\".csv", O_RDONLY) = 3
100 1700000000.000006 <... clone resumed>, child_tidptr=0x7f) = 101
101 1700000000.000007 openat(AT_FDCWD, "missing.csv", O_RDONLY) = -1 ENOENT (No such file or directory)
101 1700000000.000008 openat(AT_FDCWD</work/data>, "out", O_RDONLY|O_DIRECTORY) = 4</work/data/out>
101 1700000000.000009 openat(4</work/data/out>, "part.tmp", O_WRONLY|O_CREAT|O_TRUNC, 0666) = 5</work/data/out/part.tmp>
101 1700000000.000010 rename("out/part.tmp", "out/part.bin") = 0
101 1700000000.000011 openat(AT_FDCWD</work/data>, "a(b).csv", O_RDONLY <unfinished ...>
100 1700000000.000012 unlinkat(AT_FDCWD</work/data>, "old.csv", 0) = 0
101 1700000000.000013 <... openat resumed>) = 6</work/data/a(b).csv>
101 1700000000.000014 fchdir(4</work/data/out>) = 0
101 1700000000.000015 creat("made.txt", 0644) = 7</work/data/out/made.txt>
101 1700000000.000016 unlink("made.txt") = 0
100 1700000000.000017 execve("./run.sh", ["./run.sh"], 0x55 /* 10 vars */) = 0
101 1700000000.000018 exit_group(0) = ?
"""


def test_parser_on_known_output(tmp_path: Path) -> None:
    trace = tmp_path / "strace.out"
    trace.write_text(STRACE_OUTPUT, encoding="utf-8")
    events = parse_strace_file(str(trace), initial_cwd="/work")
    assert events.reads == {
        "/etc/ld.so.cache": [1700000000000002000] * 2,
        # relative to the cwd the child inherited from its parent's chdir
        '/work/data/raw/café "1".csv': [1700000000000005000] * 2,
        # the time of an interleaved call is when it started
        "/work/data/a(b).csv": [1700000000000011000] * 2,
    }
    assert events.writes == {
        "/work/data/out/part.tmp": [1700000000000009000] * 2,
        "/work/data/out/made.txt": [1700000000000015000] * 2,
    }
    assert events.renames == [
        (1700000000000010000, "/work/data/out/part.tmp", "/work/data/out/part.bin")
    ]
    assert events.removes == [
        (1700000000000012000, "/work/data/old.csv"),
        (1700000000000016000, "/work/data/out/made.txt"),  # after fchdir
    ]
    assert events.executables == {"/usr/bin/sh", "/work/data/./run.sh"}

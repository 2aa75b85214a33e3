"""The audit-hook tracer: real Python runs through capture_command, and the trace reader."""

from __future__ import annotations

import os
import re
import shutil
import site
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from blake3 import blake3
from lineage_client.capture import CapturedRun, capture_command
from lineage_client.capture.audit import BOOT_DIR, CHUNK, TraceTail, read_trace_file
from lineage_client.capture.events import RawEvents
from lineage_core.models import Access, AccessMode

SCRIPT = """\
import multiprocessing
import os
import subprocess
import sys

import blake3  # from site-packages: never a source
import helper


def read_c(path):
    with open(path) as stream:
        return stream.read()


if __name__ == "__main__":
    with open("a.csv") as stream:
        rows = stream.read()
    with open("b.csv.tmp", "w") as stream:
        stream.write(helper.double(rows))
    os.replace("b.csv.tmp", "b.csv")
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        assert pool.apply(read_c, ("c.csv",)) == "c\\n"
    subprocess.run([sys.executable, "-c", "open('d.csv').read()"], check=True)
    os.chdir("sub")
    open("e.csv").read()
    open("scratch.tmp", "w").write("gone soon")
    os.remove("scratch.tmp")
    print("done", blake3.__name__)
"""

HELPER = """\
def double(text):
    return text + text
"""


def by_path(run: CapturedRun) -> dict[tuple[str, AccessMode], Access]:
    """The run's accesses keyed by (path, mode)."""
    return {(access.path, access.mode): access for access in run.accesses}


def b3sum(path: Path) -> str | None:
    """The digest from the independent b3sum tool, when it is installed."""
    if shutil.which("b3sum") is None:
        return None
    return subprocess.run(
        ["b3sum", "--no-names", str(path)], capture_output=True, check=True, text=True
    ).stdout.strip()


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A project folder with the script, a local helper module and its data files."""
    root = tmp_path / "project"
    (root / "sub").mkdir(parents=True)
    (root / "script.py").write_text(SCRIPT)
    (root / "helper.py").write_text(HELPER)
    for name in ("a", "c", "d"):
        (root / f"{name}.csv").write_text(f"{name}\n")
    (root / "sub" / "e.csv").write_text("e\n")
    return root


def test_python_run_records_reads_writes_and_sources(project: Path) -> None:
    run = capture_command(mode="audit-hook", argv=[sys.executable, "script.py"], cwd=str(project))
    assert run.exit_code == 0, run
    assert run.method == "audit-hook"
    assert run.interrupted is False
    assert run.warnings == ()
    accesses = by_path(run)
    data = {key for key, access in accesses.items() if access.role == "data"}
    assert data == {
        (str(project / "a.csv"), AccessMode.READ),
        (str(project / "b.csv"), AccessMode.WRITE),  # the temp file renamed over it
        (str(project / "c.csv"), AccessMode.READ),  # in a spawned multiprocessing worker
        (str(project / "d.csv"), AccessMode.READ),  # in a python subprocess
        (str(project / "sub" / "e.csv"), AccessMode.READ),  # relative, after os.chdir
    }
    assert (project / "b.csv").read_text() == "a\na\n"

    sources = {source.path: source.digest for source in run.sources}
    assert set(sources) == {str(project / "script.py"), str(project / "helper.py")}
    for path, digest in sources.items():
        assert digest == blake3(Path(path).read_bytes()).hexdigest()
        assert b3sum(Path(path)) in (None, digest)
        code = accesses[(path, AccessMode.READ)]
        assert code.role == "code"
        assert code.digest == digest
        assert code.size == Path(path).stat().st_size
    site_dirs = (*site.getsitepackages(), sys.prefix, sys.base_prefix)
    assert not any(access.path.startswith(site_dirs) for access in run.accesses)
    assert all(access.how == "traced" for access in run.accesses)
    assert all(run.started_at <= a.first_at <= a.last_at <= run.ended_at for a in run.accesses)


def test_an_existing_sitecustomize_still_runs(project: Path, tmp_path: Path) -> None:
    theirs = tmp_path / "their-site"
    theirs.mkdir()
    marker = tmp_path / "marker.txt"
    (theirs / "sitecustomize.py").write_text(
        "import os\nopen(os.environ['MARKER'], 'w').write('ran')\nTHEIRS = True\n"
    )
    run = capture_command(
        mode="audit-hook",
        argv=[
            sys.executable,
            "-c",
            "import sitecustomize; assert sitecustomize.THEIRS; open('a.csv').read()",
        ],
        cwd=str(project),
        extra_env={"PYTHONPATH": str(theirs), "MARKER": str(marker)},
    )
    assert run.exit_code == 0, run
    assert marker.read_text() == "ran"
    assert (str(project / "a.csv"), AccessMode.READ) in by_path(run)


def test_records_survive_sigkill(project: Path) -> None:
    code = "import os, signal; open('a.csv').read(); os.kill(os.getpid(), signal.SIGKILL)"
    run = capture_command(mode="audit-hook", argv=[sys.executable, "-c", code], cwd=str(project))
    assert (run.exit_code, run.killed_by, run.interrupted) == (128 + 9, 9, False)
    assert (str(project / "a.csv"), AccessMode.READ) in by_path(run)


def test_forked_child_ending_in_os_exit_is_recorded(project: Path) -> None:
    code = textwrap.dedent(
        """
        import os
        pid = os.fork()
        if pid == 0:
            open("c.csv").read()
            open("out.csv", "w").write("x")
            os._exit(0)
        os.waitpid(pid, 0)
        """
    )
    run = capture_command(mode="audit-hook", argv=[sys.executable, "-c", code], cwd=str(project))
    assert run.exit_code == 0
    assert set(by_path(run)) == {
        (str(project / "c.csv"), AccessMode.READ),
        (str(project / "out.csv"), AccessMode.WRITE),
    }


def test_hook_does_not_change_what_user_code_sees(project: Path) -> None:
    code = textwrap.dedent(
        """
        import sys, os
        assert not any(p.endswith("_boot") for p in sys.path), sys.path
        try:
            open("missing.csv")
        except FileNotFoundError:
            pass
        with open("a.csv") as stream:
            os.fdopen(os.dup(stream.fileno())).close()  # an fd open: nothing new
        open(b"c.csv").read()
        """
    )
    run = capture_command(mode="audit-hook", argv=[sys.executable, "-c", code], cwd=str(project))
    assert run.exit_code == 0, run
    assert set(by_path(run)) == {
        (str(project / "a.csv"), AccessMode.READ),
        (str(project / "c.csv"), AccessMode.READ),
    }


def test_trace_reader_skips_zero_fill_and_torn_lines(tmp_path: Path) -> None:
    trace = tmp_path / "1-ab.trace"
    lines = [
        b"h\t1\t5\t/usr/bin/python3\n",
        b"r\t10\t20\t/data/a\\tb.csv\n",
        b"\0" * 50,  # the unused end of a chunk
        b"w\t11\t11\t/data/out\\\\x.csv\n",
        b"m\t12\t12\t/data/t.tmp\t/data/t\n",
        b"d\t13\t13\t/data/gone\n",
        b"s\t14\t14\t/src/m\xc3\xa9.py\n",
        b"r\t15\t15\t/data/to\0\0rn\n",  # a write a kill interrupted
        b"r\t16\t16\t/data/cut-sh",  # no newline: cut short
        b"\0" * 100,
    ]
    trace.write_bytes(b"".join(lines))
    events = RawEvents()
    read_trace_file(str(trace), events)
    assert events.reads == {"/data/a\tb.csv": [10, 20]}
    assert events.writes == {"/data/out\\x.csv": [11, 11]}
    assert events.renames == [(12, "/data/t.tmp", "/data/t")]
    assert events.removes == [(13, "/data/gone")]
    assert events.sources == {"/src/mé.py": 14}
    assert events.executables == {"/usr/bin/python3"}


def test_nothing_is_traced_without_the_trace_dir(tmp_path: Path) -> None:
    # The boot folder on PYTHONPATH alone changes nothing, and never breaks the interpreter.
    done = subprocess.run(
        [sys.executable, "-c", "import sys; print(sys.modules['sitecustomize'].__file__)"],
        env={**os.environ, "PYTHONPATH": BOOT_DIR},
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.strip() == os.path.join(BOOT_DIR, "sitecustomize.py")
    assert done.stderr == ""


def test_trace_tail_reads_only_complete_lines_while_the_run_goes_on(tmp_path: Path) -> None:
    trace = tmp_path / "7-cd.trace"
    head = b"h\t7\t1\t/usr/bin/python3\nr\t10\t10\t/data/a\n"
    trace.write_bytes(head + b"r\t11\t11\t/data/b" + b"\0" * 20)  # b is still being copied
    tail = TraceTail(str(tmp_path))
    tail.poll()
    assert tail.events.reads == {"/data/a": [10, 10]}

    # The writer finishes b, fills the chunk's end with nothing, and starts the next chunk
    # with a line it is still copying (its middle is not there yet).
    first_chunk = head + b"r\t11\t11\t/data/b\n" + b"w\t12\t12\t/data/torn-by-ki"
    first_chunk += b"\0" * (CHUNK - len(first_chunk))
    trace.write_bytes(first_chunk + b"r\t13\t13\t/da\0\0\0c\n" + b"\0" * 64)
    tail.poll()
    assert tail.events.reads == {"/data/a": [10, 10], "/data/b": [11, 11]}
    assert tail.events.writes == {}  # the torn line in the finished chunk is skipped

    trace.write_bytes(first_chunk + b"r\t13\t13\t/data/c\nd\t14\t14\t/data/b\n" + b"\0" * 64)
    tail.poll()
    assert "/data/c" in tail.events.reads
    events = tail.finish()
    assert events.reads == {"/data/a": [10, 10], "/data/b": [11, 11], "/data/c": [13, 13]}
    assert events.removes == [(14, "/data/b")]
    assert events.executables == {"/usr/bin/python3"}
    # Nothing is read twice.
    assert TraceTail(str(tmp_path)).finish().reads == events.reads


def test_reader_and_hook_agree_on_the_chunk_size() -> None:
    source = Path(BOOT_DIR, "sitecustomize.py").read_text()
    match = re.search(r"^_CHUNK = (.+)$", source, re.MULTILINE)
    assert match is not None
    assert eval(match.group(1), {"__builtins__": {}}) == CHUNK


def test_non_python_programs_started_by_the_command_are_named(project: Path) -> None:
    code = "import os, subprocess; subprocess.run(['sort', 'a.csv'], check=True); os.system('true')"
    run = capture_command(mode="audit-hook", argv=[sys.executable, "-c", code], cwd=str(project))
    assert run.exit_code == 0
    assert run.warnings == ()
    assert not run.complete
    (named,) = [reason for reason in run.capture_reasons if "sort, true" in reason]
    assert "does not see the files they read or wrote" in named


def test_threads_opening_files_at_once_lose_no_record(tmp_path: Path) -> None:
    # Records go into the mapping without a lock: threads racing across several chunk
    # boundaries must still each land whole.
    data = tmp_path / "data"
    data.mkdir()
    name_size = 120
    count = 3 * CHUNK // name_size
    code = textwrap.dedent(
        f"""
        import sys, threading
        folder, count = sys.argv[1], {count}
        def work(part):
            for index in range(part, count, 4):
                open(f"{{folder}}/{{index:0{name_size - 20}d}}.csv").close()
        threads = [threading.Thread(target=work, args=(part,)) for part in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        """
    )
    existing = [data / f"{index:0{name_size - 20}d}.csv" for index in range(count)]
    for path in existing:
        path.write_text("x")
    run = capture_command(
        mode="audit-hook", argv=[sys.executable, "-c", code, str(data)], cwd=str(tmp_path)
    )
    assert run.exit_code == 0
    assert {access.path for access in run.accesses} == {str(path) for path in existing}

"""A pipeline of nested ``lineage run``s: the parent lists its children, not their I/O, and
nothing that belongs to the environment or the tools (``.git/``, ``~/.gitconfig``, lineage's
own files, the interpreter) counts as anyone's input (docs/capture-reliability.md)."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
from lineage_core.models import Direction, StartNode

from tests.conftest import DaemonProcess, short_tmp_dir
from tests.helpers import b3

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


def run_io(client, run_id: str) -> tuple[dict[str, str], dict[str, str], dict[str, str]]:  # type: ignore[no-untyped-def]
    """(data inputs, code inputs, outputs) of a run, path -> digest."""
    graph = client.lineage(StartNode(run_id=run_id), Direction.BOTH, max_depth=1)
    versions = {f"version:{v.id}": v for v in graph.versions}
    data: dict[str, str] = {}
    code: dict[str, str] = {}
    outputs: dict[str, str] = {}
    for edge in graph.edges:
        version = versions.get(edge.target)
        if edge.source != f"run:{run_id}" or version is None:
            continue
        if edge.kind == "wrote":
            outputs[version.path] = version.digest
        elif edge.kind == "read":
            (code if edge.role == "code" else data)[version.path] = version.digest
    return data, code, outputs


@pytest.mark.parametrize(
    ("tracer", "offline"),
    [("strace", False), ("audit-hook", False), ("audit-hook", True)],
    ids=["strace", "audit-hook", "no-daemon-then-sync"],
)
def test_nested_pipeline_links_children_and_keeps_their_io_theirs(
    make_daemon: Callable[..., DaemonProcess], tmp_path: Path, tracer: str, offline: bool
) -> None:
    if tracer == "strace" and shutil.which("strace") is None:
        pytest.skip("strace is not installed")
    base = short_tmp_dir()
    try:
        run_pipeline(make_daemon, base, tmp_path, tracer, offline)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def run_pipeline(
    make_daemon: Callable[..., DaemonProcess],
    base: Path,
    tmp_path: Path,
    tracer: str,
    offline: bool,
) -> None:
    for root in ("data", "model", "run"):
        (base / root).mkdir()
    # Offline, the whole pipeline runs with no daemon: parent and children are spooled, and
    # delivered parent first (oldest first), so the children's links hold.
    daemon = None if offline else make_daemon(base=base)
    data, models, sock = base / "data", base / "model", base / "run" / "lineaged.sock"
    home = tmp_path / "home"
    home.mkdir()
    (home / ".gitconfig").write_text("[user]\n\tname = T\n\temail = t@example.org\n")
    env = {**os.environ, "HOME": str(home)}
    repo = tmp_path / "project"
    repo.mkdir()
    raw = data / "raw.csv"
    raw.write_bytes(b"a,b\n1,2\n3,4\n")
    clean = data / "clean.csv"
    model = models / "model.bin"
    (repo / "clean.py").write_text(
        f"open({str(clean)!r}, 'wb').write(open({str(raw)!r}, 'rb').read().upper())\n"
    )
    (repo / "train.py").write_text(
        f"open({str(model)!r}, 'wb').write(open({str(clean)!r}, 'rb').read()[::-1])\n"
    )
    lineage = f"{shlex.quote(sys.executable)} -m lineage_client.cli --socket {sock}"
    python = shlex.quote(sys.executable)
    (repo / "pipeline.sh").write_text(
        textwrap.dedent(
            f"""\
            set -e
            {lineage} run --name clean -- {python} clean.py
            {lineage} run --name train -- {python} train.py
            """
        )
    )
    (repo / "pipeline.py").write_text(
        "import subprocess, sys\nsubprocess.run(['sh', 'pipeline.sh'], check=True)\n"
    )
    for args in (["init", "-q"], ["add", "."], ["commit", "-q", "-m", "pipeline"]):
        subprocess.run(["git", *args], cwd=repo, env=env, check=True, capture_output=True)

    outer = ["sh", "pipeline.sh"] if tracer == "strace" else [sys.executable, "pipeline.py"]
    done = subprocess.run(
        [sys.executable, "-m", "lineage_client.cli", "--socket", str(sock), "run",
         "--name", "pipeline", "--", *outer],
        cwd=repo, env=env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert model.read_bytes() == raw.read_bytes().upper()[::-1]
    if daemon is not None:
        assert "2 nested runs (their I/O is theirs)" in done.stderr
    else:
        assert done.stderr.count("is spooled in") == 3
        daemon = make_daemon(base=base)
        synced = daemon.run_cli("sync")
        assert synced.returncode == 0 and "delivered 3 spooled runs" in synced.stdout, synced
    client = daemon.client()
    [parent] = [r for r in client.iter_runs(name="pipeline")]
    children = list(client.iter_runs(parent_run_id=parent.run_id))
    assert sorted(c.name for c in children) == ["clean", "train"]
    by_name = {c.name: c for c in children}

    data, code, outputs = run_io(client, parent.run_id)
    # The parent's own: its scripts (pipeline.sh, read by the sh that pipeline.py starts, is
    # seen by the interposer). No other data, no outputs, no .git/, no ~/.gitconfig, no
    # lineage module or cache, no interpreter file.
    assert set(data) <= {str(repo / "pipeline.sh")} and outputs == {}
    script = repo / ("pipeline.sh" if tracer == "strace" else "pipeline.py")
    assert set(code) <= {str(repo / "pipeline.sh"), str(repo / "pipeline.py")}
    assert code[str(script)] == b3(script.read_bytes())

    data, code, outputs = run_io(client, by_name["clean"].run_id)
    assert data == {str(raw): b3(raw.read_bytes())}
    assert outputs == {str(clean): b3(clean.read_bytes())}
    assert code == {str(repo / "clean.py"): b3((repo / "clean.py").read_bytes())}
    data, code, outputs = run_io(client, by_name["train"].run_id)
    assert data == {str(clean): b3(clean.read_bytes())}
    assert outputs == {str(model): b3(model.read_bytes())}

    # One writer for the model: the child that made it.
    trace = client.trace(str(model), max_depth=1)
    writers = {e.source for e in trace.edges if e.kind == "wrote"}
    assert writers == {f"run:{by_name['train'].run_id}"}
    shown = daemon.run_cli("show", parent.run_id)
    assert "children (2)" in shown.stdout and "'clean'" in shown.stdout

"""``client.run()`` records a run as fully as ``lineage run`` does: the git state, the source
files the process loaded (as code inputs, also when the run is interrupted) and the
environment."""

from __future__ import annotations

import platform
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from lineage_core.models import Direction, RunStatus, StartNode

from tests.conftest import DaemonProcess
from tests.helpers import b3

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), *args], check=True, capture_output=True, text=True
    ).stdout.strip()


def make_repo(tmp_path: Path, daemon: DaemonProcess, *, interrupt: bool) -> Path:
    repo = tmp_path / "project"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    git(repo, "config", "user.email", "t@example.org")
    git(repo, "config", "user.name", "T")
    git(repo, "remote", "add", "origin", "https://token@example.org/team/project.git")
    (repo / "features.py").write_text("def double(data):\n    return data * 2\n")
    raw = daemon.data / f"raw-{tmp_path.name}.csv"
    raw.write_bytes(b"a\n1\n")
    model = daemon.models / f"model-{tmp_path.name}.bin"
    ending = "raise KeyboardInterrupt" if interrupt else "pass"
    (repo / "train.py").write_text(
        textwrap.dedent(
            f"""
            import sys
            from lineage_client import Client
            import features

            client = Client(socket={str(daemon.socket)!r})
            try:
                with client.run("train") as run:
                    run.input({str(raw)!r})
                    data = open({str(raw)!r}, "rb").read()
                    open({str(model)!r}, "wb").write(features.double(data))
                    run.output({str(model)!r})
                    {ending}
            except KeyboardInterrupt:
                pass
            print(run.run_id)
            """
        )
    )
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "first")
    return repo


@pytest.mark.parametrize("interrupt", [False, True], ids=["finished", "interrupted"])
def test_client_run_records_code_sources_and_environment(
    module_daemon: DaemonProcess, tmp_path: Path, interrupt: bool
) -> None:
    repo = make_repo(tmp_path, module_daemon, interrupt=interrupt)
    (repo / "features.py").write_text("def double(data):\n    return data + data\n")  # dirty
    done = subprocess.run(
        [sys.executable, "train.py"], cwd=repo, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    run_id = done.stdout.strip()
    client = module_daemon.client()
    run = client.get_run(run_id)
    assert run.status is (RunStatus.INTERRUPTED if interrupt else RunStatus.SUCCEEDED)
    code = run.code
    assert code is not None
    assert code.commit == git(repo, "rev-parse", "HEAD")
    assert code.branch == "main"
    assert code.remote == "https://example.org/team/project.git"  # credentials stripped
    assert code.dirty and b"data + data" in code.diff
    sources = {s.path: s.digest for s in code.sources}
    assert sources == {
        str(repo / "train.py"): b3((repo / "train.py").read_bytes()),
        str(repo / "features.py"): b3((repo / "features.py").read_bytes()),
    }
    env = run.env
    assert env is not None and env.python_version == platform.python_version()
    assert any(p.startswith("grpcio==") for p in env.packages)
    # The script is code, never a data input, whether or not the run was interrupted.
    graph = client.lineage(StartNode(run_id=run_id), Direction.UPSTREAM, max_depth=1)
    paths = {f"version:{v.id}": v.path for v in graph.versions}
    data_inputs = {paths[e.target] for e in graph.edges if e.kind == "read" and e.role == "data"}
    assert data_inputs == {str(module_daemon.data / f"raw-{tmp_path.name}.csv")}
    shown = module_daemon.run_cli("show", run_id)
    assert shown.returncode == 0 and "code unknown" not in shown.stdout
    assert code.commit[:12] in shown.stdout

"""git_state against real repositories in tmp_path (real git, no network)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from blake3 import blake3
from lineage_client.capture.git import git_state, strip_credentials

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")

GIT_ENV = {
    "GIT_AUTHOR_NAME": "Test",
    "GIT_AUTHOR_EMAIL": "test@example.com",
    "GIT_COMMITTER_NAME": "Test",
    "GIT_COMMITTER_EMAIL": "test@example.com",
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_CONFIG_NOSYSTEM": "1",
}


def git(repo: Path, *args: str) -> bytes:
    """Run git in ``repo`` with a fixed identity and no user configuration."""
    return subprocess.run(
        ["git", "-C", str(repo), *args],
        check=True,
        capture_output=True,
        env={**os.environ, **GIT_ENV},
    ).stdout


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A repository on branch ``main`` with one commit and a remote holding credentials."""
    path = tmp_path / "repo"
    path.mkdir()
    git(path, "init", "-q", "-b", "main")
    (path / "train.py").write_text("print('train')\n")
    (path / ".gitignore").write_text("ignored.log\n")
    git(path, "add", ".")
    git(path, "commit", "-q", "-m", "first")
    git(path, "remote", "add", "origin", "https://alice:s3cr3t-token@git.example.com/team/ml.git")
    return path


@pytest.fixture(autouse=True)
def isolated_git_config(monkeypatch: pytest.MonkeyPatch) -> None:
    """git_state runs git with this process's environment: keep user config out of it."""
    for name, value in GIT_ENV.items():
        monkeypatch.setenv(name, value)


def test_clean_repo_reports_commit_branch_and_stripped_remote(repo: Path) -> None:
    state = git_state(str(repo))
    assert state is not None
    assert state.commit == git(repo, "rev-parse", "HEAD").decode().strip()
    assert len(state.commit) == 40
    assert state.branch == "main"
    assert state.remote == "https://git.example.com/team/ml.git"
    assert "s3cr3t" not in state.remote and "alice" not in state.remote
    assert state.dirty is False
    assert state.diff == b""
    assert state.diff_size == 0
    assert state.diff_truncated is False
    assert state.untracked == ()
    # An ignored file is neither untracked nor dirt.
    (repo / "ignored.log").write_text("noise\n")
    assert git_state(str(repo)) == state


def test_dirty_tree_carries_the_diff_and_its_digest(repo: Path) -> None:
    (repo / "train.py").write_text("print('train harder')\n")
    (repo / "weights.bin").write_bytes(bytes(range(256)))
    git(repo, "add", "weights.bin")  # staged changes count too, binary-safe
    state = git_state(str(repo))
    assert state is not None
    assert state.dirty is True
    expected = git(repo, "diff", "--binary", "--no-color", "HEAD")
    assert state.diff == expected
    assert b"+print('train harder')" in state.diff
    assert b"GIT binary patch" in state.diff
    assert state.diff_size == len(expected)
    assert state.diff_digest == blake3(expected).hexdigest()
    assert state.diff_truncated is False


def test_diff_cap_keeps_the_head_and_reports_the_whole(repo: Path) -> None:
    (repo / "train.py").write_text("".join(f"print({i})\n" for i in range(2000)))
    full = git(repo, "diff", "--binary", "--no-color", "HEAD")
    state = git_state(str(repo), diff_cap=100)
    assert state is not None
    assert state.diff_truncated is True
    assert state.diff == full[:100]
    assert state.diff_size == len(full) > 100
    assert state.diff_digest == blake3(full).hexdigest()


def test_untracked_files_are_listed_and_make_the_tree_dirty(repo: Path) -> None:
    (repo / "notes.txt").write_text("todo\n")
    (repo / "src").mkdir()
    (repo / "src" / "new_model.py").write_text("x = 1\n")
    state = git_state(str(repo / "src"))  # from a sub-folder: paths stay repo-relative
    assert state is not None
    assert state.dirty is True
    assert state.diff == b""
    assert sorted(state.untracked) == ["notes.txt", "src/new_model.py"]


def test_outside_a_work_tree_is_none(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    assert git_state(str(plain)) is None


def test_without_git_on_path_is_none(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(repo / "no-such-bin"))
    assert git_state(str(repo)) is None


def test_repository_without_commits(tmp_path: Path) -> None:
    path = tmp_path / "fresh"
    path.mkdir()
    git(path, "init", "-q", "-b", "trunk")
    (path / "model.py").write_text("w = 0\n")
    git(path, "add", "model.py")
    (path / "scratch.txt").write_text("?\n")
    state = git_state(str(path))
    assert state is not None
    assert state.commit == ""
    assert state.branch == "trunk"
    assert state.remote == ""
    assert state.dirty is True
    assert b"+w = 0" in state.diff  # the staged file, against the empty tree
    assert state.untracked == ("scratch.txt",)


def test_detached_head_has_no_branch(repo: Path) -> None:
    commit = git(repo, "rev-parse", "HEAD").decode().strip()
    git(repo, "checkout", "-q", "--detach", commit)
    state = git_state(str(repo))
    assert state is not None
    assert state.branch == ""
    assert state.commit == commit


def test_first_remote_when_there_is_no_origin(repo: Path) -> None:
    git(repo, "remote", "remove", "origin")
    git(repo, "remote", "add", "upstream", "ssh://bob:pw@host.example/x.git")
    state = git_state(str(repo))
    assert state is not None
    assert state.remote == "ssh://bob@host.example/x.git"


@pytest.mark.parametrize(
    ("url", "stripped"),
    [
        ("https://user:tok@host/x", "https://host/x"),
        ("https://ghp_abc123@github.com/o/r.git", "https://github.com/o/r.git"),
        ("http://u:p@host:8080/r", "http://host:8080/r"),
        ("https://github.com/o/r.git", "https://github.com/o/r.git"),
        ("ssh://git@github.com/o/r.git", "ssh://git@github.com/o/r.git"),
        ("ssh://git:pw@github.com/o/r.git", "ssh://git@github.com/o/r.git"),
        ("git@github.com:o/r.git", "git@github.com:o/r.git"),
        ("/srv/git/repo.git", "/srv/git/repo.git"),
    ],
)
def test_strip_credentials(url: str, stripped: str) -> None:
    assert strip_credentials(url) == stripped

"""Issue 13, failure 7: hostile names are shown, never obeyed; start-up failures are one line."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from lineage_client._terminal import escape, terminal_safe

from lineaged.store import DB_NAME
from tests.conftest import REPO, DaemonProcess
from tests.helpers import b3, wait_for

ESC_NAME = "evil\x1b[31mred\x1b[0m.csv"
NEWLINE_NAME = "two\nlines.csv"


def test_escape_rules() -> None:
    assert escape(ESC_NAME) == "evil\\x1b[31mred\\x1b[0m.csv"
    assert escape(NEWLINE_NAME) == "two\\nlines.csv"
    assert escape("tab\there\r\x7f\x9b\u202eabc") == "tab\\there\\r\\x7f\\x9b\\u202eabc"
    assert escape(os.fsdecode(b"raw\xff")) == "raw\\xff"
    assert escape("plain ünïcode name.csv") == "plain ünïcode name.csv"
    assert terminal_safe("a\nb\x1b") == "a\nb\\x1b"


def test_control_characters_are_escaped_in_human_output_and_kept_in_json(
    daemon: DaemonProcess,
) -> None:
    evil = daemon.data / ESC_NAME
    split = daemon.data / NEWLINE_NAME
    evil.write_bytes(b"same bytes\n")
    split.write_bytes(b"same bytes\n")
    digest = b3(b"same bytes\n")
    client = daemon.client()
    wait_for(lambda: _count(client, digest) == 2, what="both files recorded")
    # A run that read one and wrote the other, so trace, show and runs have names to print.
    out = daemon.models / f"model{chr(27)}]0;title{chr(7)}.bin"
    script = f"open({str(evil)!r}).read(); open({str(out)!r}, 'w').write('m')"
    done = daemon.run_cli("run", "--name", "n\x1b[2Jame", "--", sys.executable, "-c", script)
    assert done.returncode == 0, done.stderr
    run_id = client.list_runs(page_size=1).items[0].run_id
    human = {
        "where": daemon.run_cli("where", digest),
        "log": daemon.run_cli("log", str(evil)),
        "trace": daemon.run_cli("trace", str(out)),
        "impact": daemon.run_cli("impact", str(evil)),
        "verify": daemon.run_cli("verify", str(out)),
        "runs": daemon.run_cli("runs"),
        "show": daemon.run_cli("show", run_id),
        "status": daemon.run_cli("status"),
        "trace-dot": daemon.run_cli("trace", str(out), "--format", "mermaid"),
        "missing": daemon.run_cli("log", str(daemon.data / "no\x1b[31mpe")),
    }
    for command, result in human.items():
        printed = result.stdout + result.stderr
        assert "\x1b" not in printed and "\x07" not in printed, (command, printed)
    assert human["where"].returncode == 0
    where_rows = human["where"].stdout.splitlines()
    assert len(where_rows) == 3  # header and one row per version: no row split in two
    assert any("two\\nlines.csv" in row for row in where_rows)
    assert any("evil\\x1b[31mred" in row for row in where_rows)
    assert "evil\\x1b[31mred" in human["trace"].stdout
    assert "n\\x1b[2Jame" in human["runs"].stdout and "n\\x1b[2Jame" in human["show"].stdout
    assert human["missing"].returncode == 3 and "no\\x1b[31mpe" in human["missing"].stderr
    # JSON keeps the exact names.
    where_json = json.loads(daemon.run_cli("where", digest, "--json").stdout)
    assert {v["path"] for v in where_json["versions"]} == {str(evil), str(split)}


def test_names_that_are_not_utf8_are_skipped_with_a_warning(daemon: DaemonProcess) -> None:
    data = os.fsencode(daemon.data)
    bad_dir = data + b"/dir\xff"
    os.makedirs(bad_dir + b"/sub")
    with open(bad_dir + b"/f.txt", "wb") as handle:
        handle.write(b"inside")
    with open(data + b"/name\xfe.txt", "wb") as handle:
        handle.write(b"named")
    (daemon.data / "ok.txt").write_bytes(b"fine")
    client = daemon.client()
    wait_for(lambda: _found(client, b3(b"fine")), what="the valid name recorded")
    # Moved away and back while watched: the watcher's directory events hit the store too.
    os.rename(bad_dir, data + b"/moved\xfd")
    os.rename(data + b"/moved\xfd", data + b"/ok-dir")
    wait_for(lambda: _found(client, b3(b"inside")), what="the renamed directory recorded")
    wait_for(lambda: "not valid UTF-8" in daemon.log_text(), what="the warning")
    log = daemon.log_text()
    assert "Traceback" not in log, log[-3000:]
    # Asking about such a name: a clear error, no traceback.
    done = subprocess.run(
        [sys.executable, "-m", "lineage_client.cli", "--socket", str(daemon.socket), "log",
         os.fsdecode(data + b"/name\xfe.txt")],
        capture_output=True, text=True, timeout=60, cwd=REPO, check=False,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.startswith("Error: ") and "not valid UTF-8" in done.stderr
    assert done.stderr.count("\n") == 1
    # A run that read such a file: recorded, with a warning, and no traceback.
    script = f"open({data + b'/name' + bytes([0xFE]) + b'.txt'!r}).read(); print('done')"
    run = daemon.run_cli("run", "--", sys.executable, "-c", script)
    assert run.returncode == 0, run.stderr
    assert "Traceback" not in run.stderr
    assert "1 accessed files have names that are not UTF-8" in run.stderr
    recorded = daemon.client().list_runs(page_size=1).items[0]
    assert any("not UTF-8" in warning for warning in recorded.warnings)
    assert daemon.client().status().degraded == ()


def _found(client: object, digest: str) -> bool:
    return _count(client, digest) > 0


def _count(client: object, digest: str) -> int:
    from lineage_core.errors import NotFound

    try:
        return len(client.find_digest(digest))  # type: ignore[attr-defined]
    except NotFound:
        return 0


# -- start-up failures: one line and a status -------------------------------------------


def _lineaged(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lineaged", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        check=False,
    )


def _assert_one_line_error(done: subprocess.CompletedProcess[str], *words: str) -> None:
    assert done.returncode != 0
    assert "Traceback" not in done.stderr, done.stderr
    # Log lines may come first (a start that got as far as opening the store); the failure
    # itself is the one and last line.
    errors = [line for line in done.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1, done.stderr
    last = done.stderr.splitlines()[-1]
    assert last == errors[0] and last.startswith("lineaged: error: "), done.stderr
    for word in words:
        assert word in last, done.stderr


@contextlib.contextmanager
def _tiny_tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` at ``path`` (root only): a disk that fills for real."""
    path.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


def _fill(disk: Path) -> None:
    fd = os.open(disk / "filler", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        with contextlib.suppress(OSError):
            while os.write(fd, b"\0" * 512):
                pass
    finally:
        os.close(fd)


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("mount"), reason="needs root to mount")
def test_a_full_disk_at_start_is_one_line(tmp_path: Path) -> None:
    root = tmp_path / "data"
    root.mkdir()
    (root / "f.csv").write_bytes(b"1,2\n" * 1000)
    with _tiny_tmpfs(tmp_path / "disk", "2m") as disk:
        state = disk / "state"
        made = _lineaged("--once", "--state-dir", str(state), "--watch", f"{root}:data")
        assert made.returncode == 0, made.stderr
        _fill(disk)
        for extra in (["--once"], ["--socket", str(tmp_path / "s.sock")]):
            done = _lineaged(*extra, "--state-dir", str(state), "--watch", f"{root}:data")
            _assert_one_line_error(done)
            assert "space" in done.stderr or "full" in done.stderr, done.stderr
        # An empty state directory on a full disk: the lock cannot even be written.
        (disk / "filler").unlink()
        fresh = disk / "fresh"
        fresh.mkdir(mode=0o700)
        _fill(disk)
        done = _lineaged("--once", "--state-dir", str(fresh), "--watch", f"{root}:data")
        _assert_one_line_error(done, "No space left on device")
        assert (state / DB_NAME).exists()


def test_other_start_up_failures_are_one_line(tmp_path: Path) -> None:
    root = tmp_path / "data"
    root.mkdir()
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    bad_toml = tmp_path / "bad.toml"
    bad_toml.write_text("[[roots]\npath = \n")
    bad_redact = tmp_path / "redact.toml"
    bad_redact.write_text('[redact]\nvalues = ["("]\n')
    cases = {
        "state dir is a file": ("--once", "--state-dir", str(not_a_dir), "--watch", str(root)),
        "state dir under a file": (
            "--once", "--state-dir", str(not_a_dir / "sub"), "--watch", str(root),
        ),
        "bad config": ("--once", "--config", str(bad_toml), "--watch", str(root)),
        "config is a directory": ("--once", "--config", str(tmp_path), "--watch", str(root)),
        "bad [redact]": ("--once", "--config", str(bad_redact), "--watch", str(root)),
        "bad socket dir": (
            "--state-dir", str(tmp_path / "st"), "--watch", str(root),
            "--socket", str(not_a_dir / "s.sock"),
        ),
    }  # fmt: skip
    for label, args in cases.items():
        done = _lineaged(*args)
        assert done.returncode != 0, label
        _assert_one_line_error(done)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to start lineaged as nobody")
def test_an_unreadable_state_dir_is_one_line() -> None:
    from tests.test_blindness import _nobody, _python_for

    ids = _nobody()
    found = _python_for(ids[0]) if ids is not None else None
    if ids is None or found is None:
        pytest.skip("no user 'nobody' that can run lineaged here")
    uid, gid = ids
    python, env = found
    base = Path(tempfile.mkdtemp(prefix="lg-unread-", dir="/tmp"))
    try:
        base.chmod(0o755)
        data = base / "data"
        data.mkdir()
        closed = base / "closed"  # nobody may not enter it
        closed.mkdir(mode=0o700)
        locked = base / "locked"  # nobody's own, but mode 000
        locked.mkdir()
        os.chown(locked, uid, gid)
        locked.chmod(0)
        for state in (closed / "state", locked):
            done = subprocess.run(
                [python, "-m", "lineaged", "--once", "--state-dir", str(state),
                 "--watch", f"{data}:data"],
                env=env, cwd="/", user=uid, group=gid, extra_groups=[],
                capture_output=True, text=True, timeout=120, check=False,
            )  # fmt: skip
            _assert_one_line_error(done, str(state))
    finally:
        shutil.rmtree(base, ignore_errors=True)

"""capture_command end to end: exit status, signals, terminals, choosing the tracer."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from lineage_client.capture import capture_command, python_interpreter
from lineage_client.capture.strace import find_strace, strace_problem
from lineage_core.errors import InvalidArgument
from lineage_core.models import AccessMode

STRACE = find_strace()
HAS_STRACE = STRACE is not None and not strace_problem(STRACE)

# Runs capture_command in its own process, so a test can signal it like a user would.
WRAPPER = textwrap.dedent(
    """
    import json, sys
    from lineage_client.capture import capture_command
    out, argv = sys.argv[1], sys.argv[2:]
    if out.endswith(".tty"):
        import fcntl, termios
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)  # this new session's controlling terminal
        out = out[: -len(".tty")]
    import os
    run = capture_command(argv, mode=os.environ.get("TEST_CAPTURE_MODE", "auto"))
    with open(out, "w") as stream:
        json.dump({
            "exit_code": run.exit_code,
            "killed_by": run.killed_by,
            "interrupted": run.interrupted,
            "method": run.method,
            "accesses": [[a.path, a.mode.value] for a in run.accesses if a.role == "data"],
        }, stream)
    """
)


def wait_for(condition: object, what: str, timeout: float = 30.0) -> None:
    """Poll ``condition()`` until it is true, failing after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def start_wrapper(
    tmp_path: Path, argv: list[str], **popen: object
) -> tuple[subprocess.Popen[bytes], Path]:
    """Start the wrapper process on ``argv`` in ``tmp_path``; return it and its result file."""
    result = tmp_path / "result.json"
    options: dict[str, object] = {"stdin": subprocess.DEVNULL, "stdout": subprocess.DEVNULL}
    options.update(popen)
    wrapper = subprocess.Popen(  # type: ignore[call-overload]
        [sys.executable, "-c", WRAPPER, str(result), *argv], cwd=tmp_path, **options
    )
    return wrapper, result


SLEEPER = "open('a.csv').read(); open('ready', 'w').close(); import time; time.sleep(60)"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_to_the_wrapper_reaches_python_and_keeps_what_it_read(
    tmp_path: Path, signum: int
) -> None:
    (tmp_path / "a.csv").write_text("1\n")
    wrapper, result = start_wrapper(tmp_path, [sys.executable, "-c", SLEEPER])
    try:
        wait_for((tmp_path / "ready").exists, "the command to start sleeping")
        wrapper.send_signal(signum)
        assert wrapper.wait(timeout=30) == 0
    finally:
        if wrapper.poll() is None:
            wrapper.kill()
            wrapper.wait()
    run = json.loads(result.read_text())
    assert run["interrupted"] is True
    assert run["killed_by"] == signum  # Python re-raises SIGINT after KeyboardInterrupt
    assert run["exit_code"] == 128 + signum
    assert [str(tmp_path / "a.csv"), "read"] in run["accesses"]
    assert [str(tmp_path / "ready"), "write"] in run["accesses"]


@pytest.mark.skipif(not HAS_STRACE, reason="strace is not installed or cannot trace here")
def test_sigterm_under_strace_reaches_the_command(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("1\n")
    command = ["sh", "-c", "cat a.csv > /dev/null; touch ready; sleep 60"]
    env = {**os.environ, "TEST_CAPTURE_MODE": "strace"}
    wrapper, result = start_wrapper(tmp_path, command, env=env)
    try:
        wait_for((tmp_path / "ready").exists, "the command to start sleeping")
        wrapper.send_signal(signal.SIGTERM)
        assert wrapper.wait(timeout=30) == 0
    finally:
        if wrapper.poll() is None:
            wrapper.kill()
            wrapper.wait()
    run = json.loads(result.read_text())
    assert run["method"] == "strace"
    assert (run["interrupted"], run["exit_code"]) == (True, 143)
    assert [str(tmp_path / "a.csv"), "read"] in run["accesses"]


def test_the_command_gets_the_terminal_and_ctrl_c(tmp_path: Path) -> None:
    code = (
        "import time; line = input(); open('got.txt', 'w').write(line); "
        "open('ready', 'w').close(); time.sleep(60)"
    )
    primary, secondary = os.openpty()
    result = tmp_path / "result.json"
    try:
        wrapper = subprocess.Popen(
            [sys.executable, "-c", WRAPPER, f"{result}.tty", sys.executable, "-c", code],
            cwd=tmp_path,
            stdin=secondary,
            stdout=secondary,
            stderr=secondary,
            start_new_session=True,
        )
        try:
            os.write(primary, b"hello\n")  # read by the command: it owns the terminal
            wait_for((tmp_path / "ready").exists, "the command to read the terminal")
            os.write(primary, b"\x03")  # Ctrl-C, delivered by the terminal itself
            wait_for(lambda: wrapper.poll() is not None, "the wrapper to finish")
        finally:
            if wrapper.poll() is None:
                wrapper.kill()
            wrapper.wait()
    finally:
        os.close(primary)
        os.close(secondary)
    assert (tmp_path / "got.txt").read_text() == "hello"
    run = json.loads(result.read_text())
    assert (run["interrupted"], run["killed_by"], run["exit_code"]) == (True, 2, 130)


def test_exit_status_is_propagated(tmp_path: Path) -> None:
    run = capture_command([sys.executable, "-c", "raise SystemExit(7)"], cwd=str(tmp_path))
    assert (run.exit_code, run.killed_by, run.interrupted) == (7, 0, False)
    if HAS_STRACE:
        run = capture_command(["sh", "-c", "exit 3"], cwd=str(tmp_path), mode="strace")
        assert (run.method, run.exit_code) == ("strace", 3)
        run = capture_command(["sh", "-c", "kill -KILL $$"], cwd=str(tmp_path))
        assert (run.exit_code, run.killed_by, run.interrupted) == (137, 9, False)


def test_missing_and_unexecutable_commands(tmp_path: Path) -> None:
    run = capture_command(["no-such-command-for-lineage"], cwd=str(tmp_path))
    assert run.exit_code == 127
    assert run.warnings == ("command not found: no-such-command-for-lineage",)
    (tmp_path / "plain.txt").write_text("not a program\n")
    run = capture_command(["./plain.txt"], cwd=str(tmp_path))
    assert run.exit_code == 126
    with pytest.raises(InvalidArgument):
        capture_command([])
    with pytest.raises(InvalidArgument):
        capture_command(["true"], mode="psychic")


def test_mode_none_runs_untraced(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("1\n")
    run = capture_command(
        [sys.executable, "-c", "open('a.csv').read()"], cwd=str(tmp_path), mode="none"
    )
    assert (run.method, run.exit_code, run.accesses) == ("none", 0, ())
    assert run.capture_reasons == ("tracing was disabled (--capture none)",)


def test_a_script_with_a_python_shebang_loads_the_audit_hook(tmp_path: Path) -> None:
    script = tmp_path / "job"
    script.write_text(f"#!/usr/bin/env -S {sys.executable} -u\nopen('a.csv').read()\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    (tmp_path / "a.csv").write_text("1\n")
    assert python_interpreter(["./job"], cwd=str(tmp_path)) == sys.executable
    run = capture_command(["./job"], cwd=str(tmp_path))
    assert (run.method, run.complete) == ("interposer", True)
    assert (str(tmp_path / "a.csv"), AccessMode.READ) in {(a.path, a.mode) for a in run.accesses}
    assert [source.path for source in run.sources] == [str(script)]


def test_python_interpreter_detection(tmp_path: Path) -> None:
    assert python_interpreter([sys.executable, "x.py"]) == sys.executable
    assert python_interpreter(["sh", "-c", "true"]) is None
    assert python_interpreter(["no-such-command-for-lineage"]) is None


def test_excluded_dirs_are_not_accesses(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "db.sqlite").write_text("x")
    (tmp_path / "a.csv").write_text("1\n")
    code = "open('state/db.sqlite').read(); open('a.csv').read()"
    run = capture_command(
        [sys.executable, "-c", code], cwd=str(tmp_path), exclude_dirs=[str(state)]
    )
    assert {(a.path, a.mode) for a in run.accesses} == {(str(tmp_path / "a.csv"), AccessMode.READ)}

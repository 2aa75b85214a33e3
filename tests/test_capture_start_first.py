"""``lineage run`` starts the command before it talks to the daemon: the run id is chosen by
the client, a nested run may reach the daemon before its parent, and a daemon that is gone
or broken never costs the command its exit status."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import lineage_client.client as client_module
import pytest
from lineage_client.capture import capture_command
from lineage_client.capture.audit import BOOT_DIR
from lineage_client.client import PARENT_WAIT
from lineage_client.runcmd import PARENT_ENV
from lineage_core import gate
from lineage_core.errors import AlreadyExists, InvalidArgument, NotFound
from lineage_core.models import RunStart, RunStatus, new_run_id, run_id_time_ns

from tests.conftest import DaemonProcess


def test_a_client_chosen_run_id_is_kept_and_must_be_new_and_well_formed(
    module_daemon: DaemonProcess,
) -> None:
    client = module_daemon.client()
    run_id = new_run_id()
    gate.check_new_run_id(run_id)  # the client's ids have the daemon's format
    run = client.begin_run(RunStart(name="chosen", run_id=run_id))
    assert run.run_id == run_id and client.get_run(run_id).name == "chosen"
    with pytest.raises(AlreadyExists, match="exists already"):
        client.begin_run(RunStart(name="again", run_id=run_id))
    for bad in ("ABC", "0" * 31, "g" * 32, run_id.upper(), run_id + "0"):
        with pytest.raises(InvalidArgument, match="32 lowercase hex"):
            client.begin_run(RunStart(name="bad", run_id=bad))
    assert client.begin_run(RunStart(name="daemon's own")).run_id != run_id


def test_a_nested_run_waits_for_a_parent_that_is_not_recorded_yet(
    module_daemon: DaemonProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = module_daemon.client()
    parent_id = new_run_id()
    monkeypatch.setenv(PARENT_ENV, parent_id)
    child_tried = threading.Event()
    real_call = client._call

    def call(method: str, request: object, timeout: float | None = None) -> object:
        try:
            return real_call(method, request, timeout)
        finally:
            if method == "BeginRun":
                child_tried.set()

    # Observes calls only: the parent is begun once the child's first BeginRun was refused.
    monkeypatch.setattr(client, "_call", call)
    parent_client = module_daemon.client()

    def begin_parent() -> None:
        child_tried.wait(timeout=30)
        parent_client.begin_run(RunStart(name="parent", run_id=parent_id))

    starter = threading.Thread(target=begin_parent)
    starter.start()
    try:
        child = client.begin_run(RunStart(name="child", parent_run_id=parent_id))
    finally:
        starter.join()
    assert child.parent_run_id == parent_id
    assert client.get_run(parent_id).status is RunStatus.RUNNING


def test_client_run_inside_lineage_run_is_a_child_of_it(
    module_daemon: DaemonProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = module_daemon.client()
    parent = client.begin_run(RunStart(name="outer"))
    monkeypatch.setenv(PARENT_ENV, parent.run_id)
    with client.run("inner") as nested:
        pass
    with client.run("explicit", parent_run_id="") as top:
        pass
    assert client.get_run(nested.run_id).parent_run_id == parent.run_id
    assert client.get_run(top.run_id).parent_run_id == ""


def test_a_parent_that_is_not_the_environments_is_refused_at_once(
    module_daemon: DaemonProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Only the parent `lineage run` announced in the environment is waited for.
    monkeypatch.setenv(PARENT_ENV, new_run_id())
    with pytest.raises(NotFound, match="parent run"):
        module_daemon.client().begin_run(RunStart(name="orphan", parent_run_id=new_run_id()))


def test_a_parent_from_the_environment_made_long_ago_is_not_waited_for(
    module_daemon: DaemonProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Its BeginRun failed, or the variable is stale: the id says when it was made, and the
    # wait for a parent still on its way is long over.
    made = time.time_ns() // 1_000_000 - int(PARENT_WAIT * 1000) - 1000
    stale = f"{made:012x}{new_run_id()[12:]}"
    assert run_id_time_ns(stale) == made * 1_000_000
    monkeypatch.setenv(PARENT_ENV, stale)

    def no_waiting(seconds: float) -> None:
        raise AssertionError(f"waited {seconds} s for a parent made long ago")

    monkeypatch.setattr(client_module.time, "sleep", no_waiting)
    with pytest.raises(NotFound, match="parent run"):
        module_daemon.client().begin_run(RunStart(name="orphan", parent_run_id=stale))


def test_lineage_run_require_daemon_without_a_daemon_does_not_start_the_command(
    module_daemon: DaemonProcess, tmp_path: Path, socket_dir: Path
) -> None:
    marker = tmp_path / "ran"
    done = module_daemon.run_cli(
        "--socket", str(socket_dir / "none.sock"), "run", "--require-daemon", "--", "touch",
        str(marker),
    )  # fmt: skip
    assert done.returncode == 4
    assert "Error: lineaged is not running at" in done.stderr
    assert not marker.exists()


def test_a_daemon_that_accepts_but_does_not_answer_costs_the_command_nothing(
    module_daemon: DaemonProcess, tmp_path: Path, socket_dir: Path
) -> None:
    # A listener that is no gRPC server: the connect check passes, every call then fails.
    path = socket_dir / "mute.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(16)
    stop = threading.Event()

    def hang_up() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            connection.close()

    thread = threading.Thread(target=hang_up)
    thread.start()
    marker = tmp_path / "ran"
    script = f"open({str(marker)!r}, 'w').close(); raise SystemExit(5)"
    try:
        done = module_daemon.run_cli(
            "--socket", str(path), "run", "--", sys.executable, "-c", script
        )  # fmt: skip
    finally:
        stop.set()
        thread.join()
        listener.close()
    assert done.returncode == 5, done.stderr
    assert marker.exists()
    # Unreachable daemon: the capture is spooled for a later delivery (test_capture_spool).
    assert "was not recorded" in done.stderr and "is spooled in" in done.stderr


@pytest.mark.skipif(shutil.which("strace") is None, reason="strace is not installed")
def test_lineage_run_starts_the_command_before_it_imports_the_client(tmp_path: Path) -> None:
    """The import budget the lazy imports in lineage_client buy: the command is exec'd before
    the wrapper loads protobuf, grpc or the data model (those load beside the command)."""
    trace = tmp_path / "wrapper.strace"
    env = {
        **os.environ,
        "XDG_STATE_HOME": str(tmp_path / "state"),  # no daemon: the run is spooled here
        "LINEAGE_SOCKET": str(tmp_path / "no-daemon.sock"),
    }
    done = subprocess.run(
        ["strace", "-f", "-e", "trace=execve,openat", "-o", str(trace),
         sys.executable, "-m", "lineage_client.cli", "run", "--", "/bin/true"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = trace.read_text().splitlines()
    started = next(i for i, line in enumerate(lines) if 'execve("/bin/true"' in line)
    heavy = [
        i
        for i, line in enumerate(lines)
        if "openat(" in line
        and ("/grpc/" in line or "/google/protobuf/" in line or "/lineage_core/models.py" in line)
    ]
    assert heavy, "the wrapper never loaded the client: the check would prove nothing"
    assert started < min(heavy), lines[min(heavy)]


def test_a_traced_python_process_loads_no_client_grpc_or_protobuf(tmp_path: Path) -> None:
    """The import budget of the hook in every traced Python process (capture/_boot): its
    sitecustomize loads neither grpc, protobuf, the data model nor lineage's packages."""
    loaded = tmp_path / "modules.txt"
    script = (
        "import sys; open('data.csv').read(); "
        f"open({str(loaded)!r}, 'w').write(repr(sys.modules['sitecustomize'].__file__) + "
        "'\\n' + '\\n'.join(sorted(sys.modules)))"
    )
    (tmp_path / "data.csv").write_text("x\n")
    run = capture_command(mode="audit-hook", argv=[sys.executable, "-c", script], cwd=str(tmp_path))
    assert run.exit_code == 0, run
    assert any(access.path == str(tmp_path / "data.csv") for access in run.accesses)
    boot, *modules = loaded.read_text().splitlines()
    assert boot == repr(os.path.join(BOOT_DIR, "sitecustomize.py"))
    heavy = [
        name
        for name in modules
        if name.split(".")[0] in ("grpc", "google", "lineage_core", "lineage_client")
    ]
    assert heavy == []

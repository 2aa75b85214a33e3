"""Nothing of a capture is lost when the daemon is away: ``lineage run`` spools what no daemon
took, ``lineage sync`` (or the next command) delivers it exactly once, and a daemon that
starts marks the runs whose wrapper is gone ``abandoned`` (docs/capture-reliability.md)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from lineage_client import Client
from lineage_core.models import Direction, RunStart, RunStatus, StartNode

from tests.conftest import DaemonProcess, short_tmp_dir
from tests.helpers import b3, wait_for


@pytest.fixture
def base() -> Iterator[Path]:
    """A daemon's folders (roots data and model), no daemon running yet."""
    folder = short_tmp_dir()
    for name in ("data", "model", "run"):
        (folder / name).mkdir()
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


class Daemons:
    """Daemons started on one base, one after the other; all stopped at teardown."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.started: list[DaemonProcess] = []

    def start(self) -> DaemonProcess:
        daemon = DaemonProcess(self.base)
        self.started.append(daemon)
        daemon.wait_serving()
        return daemon

    def stop_all(self) -> None:
        for daemon in self.started:
            if daemon.alive():
                daemon.stop()


@pytest.fixture
def daemons(base: Path) -> Iterator[Daemons]:
    started = Daemons(base)
    try:
        yield started
    finally:
        started.stop_all()


def cli(base: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``lineage --socket BASE/run/lineaged.sock ARGS...`` as a process."""
    return subprocess.run(
        [sys.executable, "-m", "lineage_client.cli", "--socket", str(base / "run" / "lineaged.sock"),
         *args],
        capture_output=True, text=True, timeout=120, cwd=cwd or base,
    )  # fmt: skip


def io_of(client: Client, run_id: str) -> tuple[dict[str, str], dict[str, str]]:
    """(inputs, outputs) of a run as path -> digest, from its lineage."""
    graph = client.lineage(StartNode(run_id=run_id), Direction.BOTH, max_depth=1)
    versions = {f"version:{v.id}": v for v in graph.versions}
    inputs: dict[str, str] = {}
    outputs: dict[str, str] = {}
    for edge in graph.edges:
        if edge.source != f"run:{run_id}" or edge.target not in versions:
            continue
        version = versions[edge.target]
        if edge.kind == "read" and edge.role == "data":
            inputs[version.path] = version.digest
        elif edge.kind == "wrote":
            outputs[version.path] = version.digest
    return inputs, outputs


def edge_count(client: Client, run_id: str) -> int:
    """How many edges (reads, code included, and writes) a run has."""
    graph = client.lineage(StartNode(run_id=run_id), Direction.BOTH, max_depth=1)
    return sum(edge.source == f"run:{run_id}" for edge in graph.edges)


def spooled(private_spool: Path) -> list[Path]:
    return sorted(private_spool.glob("*.run.json")) if private_spool.exists() else []


def test_run_with_no_daemon_spools_its_capture_and_sync_delivers_it_once(
    base: Path, daemons: Daemons, private_spool: Path
) -> None:
    raw = base / "data" / "raw.csv"
    raw.write_bytes(b"a,b\n1,2\n")
    model = base / "model" / "model.bin"
    script = base / "train.py"
    script.write_text(
        f"data = open({str(raw)!r}, 'rb').read()\n"
        f"open({str(model)!r}, 'wb').write(data * 3)\n"
        "raise SystemExit(3)\n"
    )
    done = cli(base, "run", "--name", "train", "--", sys.executable, str(script))
    assert done.returncode == 3, done.stderr  # the command ran, its status is kept
    assert "lineaged is not running" in done.stderr
    assert "running the command anyway" in done.stderr
    assert model.read_bytes() == raw.read_bytes() * 3
    [entry] = spooled(private_spool)
    assert str(entry) in done.stderr
    assert stat.S_IMODE(entry.stat().st_mode) == 0o600
    assert stat.S_IMODE(private_spool.stat().st_mode) == 0o700
    body = json.loads(entry.read_text())
    run_id = body["run_id"]
    assert body["format"] == "lineage-spool/2"
    digests = {access["path"]: access.get("digest", "") for access in body["accesses"]}
    # The client hashed what the run read and wrote: no daemon could tie them to versions.
    assert digests[str(raw)] == b3(raw.read_bytes())
    assert digests[str(model)] == b3(model.read_bytes())
    assert body["begin"]["env"]["pythonVersion"]
    keep = base / "copy.json"
    shutil.copy(entry, keep)

    daemon = daemons.start()
    synced = cli(base, "sync")
    assert synced.returncode == 0, synced.stderr
    assert f"delivered 1 spooled run: {run_id}" in synced.stdout
    assert spooled(private_spool) == []
    client = daemon.client()
    run = client.get_run(run_id)
    assert (run.status, run.exit_code, run.name) == (RunStatus.FAILED, 3, "train")
    assert run.env is not None and run.env.python_version
    assert any("delivered late from the spool" in w for w in run.warnings)
    # How completely the run was seen travels with the spool (docs/capture.md).
    assert run.capture is not None and run.capture.method == body["end"]["capture"]["method"]
    assert run.capture.complete is body["end"]["capture"]["complete"]
    expected = ({str(raw): b3(raw.read_bytes())}, {str(model): b3(model.read_bytes())})
    assert io_of(client, run_id) == expected
    edges = edge_count(client, run_id)

    # Delivered again (a crash between the delivery and the removal of the file): the
    # daemon holds the run already; nothing is added.
    shutil.copy(keep, entry)
    again = cli(base, "sync")
    assert again.returncode == 0 and f"delivered 1 spooled run: {run_id}" in again.stdout
    assert spooled(private_spool) == []
    assert io_of(client, run_id) == expected and edge_count(client, run_id) == edges
    assert [r.run_id for r in client.iter_runs()] == [run_id]

    # Cut short after its accesses were sent and before the run was ended: sent again, the
    # accesses merge into the same edges and the run is ended once.
    partial_id = run_id[:-1] + ("1" if run_id.endswith("0") else "0")
    entry.write_bytes(keep.read_bytes().replace(run_id.encode(), partial_id.encode()))
    from lineage_client import spool

    [pending] = spool.pending(private_spool)
    client.begin_run(pending.start)
    client.record_accesses(partial_id, list(pending.accesses))
    assert client.get_run(partial_id).status is RunStatus.RUNNING
    final = cli(base, "status")  # any command that reaches the daemon delivers the spool
    assert final.returncode == 0, final.stderr
    assert f"delivered 1 spooled run: {partial_id}" in final.stderr
    assert client.get_run(partial_id).status is RunStatus.FAILED
    assert io_of(client, partial_id) == expected
    assert edge_count(client, partial_id) == edges


def test_require_daemon_refuses_to_start_the_command(base: Path, private_spool: Path) -> None:
    marker = base / "data" / "ran"
    done = cli(base, "run", "--require-daemon", "--", "touch", str(marker))
    assert done.returncode == 4
    assert "Error: lineaged is not running at" in done.stderr
    assert "--require-daemon: the command was not started" in done.stderr
    assert not marker.exists()
    assert spooled(private_spool) == []


def test_a_daemon_stopped_mid_run_loses_nothing_and_the_run_completes(
    base: Path, daemons: Daemons, private_spool: Path
) -> None:
    daemon = daemons.start()
    raw = base / "data" / "in.csv"
    raw.write_bytes(b"x,y\n" * 100)
    model = base / "model" / "out.bin"
    ready, go = base / "ready", base / "go"
    script = base / "step.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import os, time
            data = open({str(raw)!r}, 'rb').read()
            open({str(ready)!r}, 'w').close()
            while not os.path.exists({str(go)!r}):
                time.sleep(0.02)
            with open({str(model)!r}, 'wb') as out:
                out.write(data[::-1])
            """
        )
    )
    wrapper = subprocess.Popen(
        [sys.executable, "-m", "lineage_client.cli", "--socket", str(daemon.socket), "run",
         "--name", "step", "--", sys.executable, str(script)],
        cwd=base, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        client = daemon.client()
        wait_for(ready.exists, what="the step to read its input")
        runs = wait_for(
            lambda: [r for r in client.iter_runs() if r.status is RunStatus.RUNNING],
            what="the run to be begun",
        )
        assert isinstance(runs, list)
        run_id = runs[0].run_id
        # Its read was sent while it ran: the daemon has that much.
        wait_for(lambda: io_of(client, run_id)[0], what="the read to be recorded while it runs")
        assert daemon.stop() == 0
        go.touch()
        _, stderr = wrapper.communicate(timeout=120)
    finally:
        if wrapper.poll() is None:
            wrapper.kill()
            wrapper.wait()
    assert wrapper.returncode == 0, stderr
    [entry] = spooled(private_spool)
    assert f"run {run_id} was not recorded" in stderr and str(entry) in stderr

    # The wrapper is gone when the daemon starts again: the run is abandoned, not running.
    daemon = daemons.start()
    client = daemon.client()
    abandoned = client.get_run(run_id)
    assert abandoned.status is RunStatus.ABANDONED
    assert any("abandoned" in w for w in abandoned.warnings)
    assert io_of(client, run_id) == ({str(raw): b3(raw.read_bytes())}, {})

    keep = base / "entry.json"
    shutil.copy(entry, keep)
    synced = cli(base, "sync")
    assert synced.returncode == 0 and f"delivered 1 spooled run: {run_id}" in synced.stdout
    run = client.get_run(run_id)
    assert (run.status, run.exit_code) == (RunStatus.SUCCEEDED, 0)
    edges = edge_count(client, run_id)
    shutil.copy(keep, entry)  # delivered twice: the second time adds nothing
    assert f"delivered 1 spooled run: {run_id}" in cli(base, "sync").stdout
    assert client.get_run(run_id) == run and edge_count(client, run_id) == edges
    expected = (
        {str(raw): b3(raw.read_bytes())},
        {str(model): b3(model.read_bytes()), str(ready): b3(b"")},  # ready: an output too
    )
    assert io_of(client, run_id) == expected
    trace = client.trace(str(model))
    assert [r.run_id for r in trace.runs] == [run_id]


def test_daemon_start_marks_only_runs_whose_wrapper_is_gone_abandoned(
    base: Path, daemons: Daemons
) -> None:
    daemon = daemons.start()
    client = daemon.client()
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    host = socket.gethostname()
    dead = client.begin_run(RunStart(name="dead", host=host, pid=gone.pid)).run_id
    alive = client.begin_run(RunStart(name="alive", host=host, pid=os.getpid())).run_id
    # A process that took the pid after the run began is not its wrapper.
    reused = client.begin_run(RunStart(name="reused", host=host, pid=os.getpid(), started_at=1))
    elsewhere = client.begin_run(RunStart(name="elsewhere", host="another-host", pid=1)).run_id
    assert daemon.stop() == 0
    if os.path.exists(f"/proc/{gone.pid}"):
        pytest.skip("the pid of the finished process was taken again")
    client = daemons.start().client()
    assert client.get_run(dead).status is RunStatus.ABANDONED
    assert client.get_run(reused.run_id).status is RunStatus.ABANDONED
    assert client.get_run(alive).status is RunStatus.RUNNING
    assert client.get_run(elsewhere).status is RunStatus.RUNNING  # young: not decided
    abandoned = [r.run_id for r in client.iter_runs(status=RunStatus.ABANDONED)]
    assert abandoned == [reused.run_id, dead]
    # An abandoned run may still be ended (by its spooled capture).
    ended = client.end_run(dead, status=RunStatus.SUCCEEDED, exit_code=0)
    assert ended.status is RunStatus.SUCCEEDED
    client.end_run(alive, status=RunStatus.INTERRUPTED)


def test_a_spooled_child_waits_for_its_parent_then_both_are_delivered_in_order(
    base: Path, daemons: Daemons, private_spool: Path
) -> None:
    from lineage_client import spool
    from lineage_core.models import Access, AccessMode, new_run_id

    daemon = daemons.start()
    client = daemon.client()
    out = base / "model" / "child.bin"
    out.write_bytes(b"made by the child")
    parent = RunStart(name="parent", run_id=new_run_id(), started_at=1_000)
    child = RunStart(
        name="child", run_id=new_run_id(), parent_run_id=parent.run_id, started_at=2_000
    )
    write = Access(str(out), AccessMode.WRITE, 2_100, 2_200, digest=b3(out.read_bytes()))
    common = {"status": RunStatus.SUCCEEDED, "exit_code": 0, "warnings": (), "reason": "test"}
    target = client.target
    spool.write_run(target=target, start=child, accesses=[write], ended_at=3_000, **common)
    waiting = spool.deliver(client)
    assert waiting.delivered == [] and [r for r, _ in waiting.waiting] == [child.run_id]
    assert "its parent run" in waiting.waiting[0][1]
    # An entry for another daemon is left alone.
    elsewhere = RunStart(name="elsewhere", run_id=new_run_id(), started_at=500)
    spool.write_run(
        target="unix:/nowhere.sock", start=elsewhere, accesses=(), ended_at=600, **common
    )
    spool.write_run(target=target, start=parent, accesses=(), ended_at=4_000, **common)
    report = spool.deliver(client)
    assert report.delivered == [parent.run_id, child.run_id] and report.waiting == []
    assert client.get_run(child.run_id).parent_run_id == parent.run_id
    assert io_of(client, child.run_id) == ({}, {str(out): b3(out.read_bytes())})
    assert [e.run_id for e in spool.pending()] == [elsewhere.run_id]
    assert spool.deliver(client, every_target=True).delivered == [elsewhere.run_id]


def test_an_entry_spooled_with_access_columns_is_still_read(private_spool: Path) -> None:
    """Entries of lineage-spool/1 (accesses column by column, as the wire had them) spooled
    before an upgrade are still read; one whose columns disagree is left for the user."""
    from lineage_client import spool
    from lineage_core.models import Access, AccessMode, new_run_id

    start = RunStart(name="old", run_id=new_run_id(), started_at=1_000)
    spool.write_run(
        target="unix:/nowhere.sock", start=start, accesses=(), status=RunStatus.SUCCEEDED,
        exit_code=0, ended_at=3_000, warnings=(), reason="test",
    )  # fmt: skip
    [entry] = spooled(private_spool)
    body = json.loads(entry.read_text())
    # What lineage-spool/1 held: protobuf's JSON form of an AccessColumns message.
    body["format"] = "lineage-spool/1"
    body["accesses"] = {
        "path": ["/m/out", "/d/in"], "mode": ["ACCESS_MODE_WRITE", "ACCESS_MODE_READ"],
        "firstAtNs": ["2100", "2000"], "lastAtNs": ["2200", "2300"],
        "how": ["ACCESS_HOW_TRACED", "ACCESS_HOW_DECLARED"],
        "role": ["ACCESS_ROLE_DATA", "ACCESS_ROLE_CODE"], "digest": ["ab" * 32, ""],
        "size": ["0", "5"], "mtimeNs": ["0", "7"],
    }  # fmt: skip
    entry.write_text(json.dumps(body))
    [read] = spool.pending()
    assert read.accesses == (
        Access("/m/out", AccessMode.WRITE, 2100, 2200, digest="ab" * 32),
        Access("/d/in", AccessMode.READ, 2000, 2300, "declared", "code", size=5, mtime_ns=7),
    )
    body["accesses"] = {"path": ["/d/in"], "mode": ["ACCESS_MODE_READ"], "firstAtNs": ["1"]}
    entry.write_text(json.dumps(body))
    assert spool.pending()[0].accesses == (Access("/d/in", AccessMode.READ, 1, 1),)
    body["accesses"]["size"] = ["0", "5"]
    entry.write_text(json.dumps(body))
    assert spool.pending() == []


def test_the_spool_holds_no_secret(base: Path, private_spool: Path) -> None:
    """The spool is private, and still never holds a secret from argv (docs/security.md)."""
    script = base / "noop.py"
    script.write_text("pass\n")
    secret = "hunter2-spooled-secret"
    done = cli(
        base, "run", "--", sys.executable, str(script), f"--password={secret}", "--token", secret
    )
    assert done.returncode == 0, done.stderr
    [entry] = spooled(private_spool)
    text = entry.read_text()
    assert secret not in text
    assert "--password=<redacted>" in text

"""The Python client against a real lineaged: typed results, runs, lineage, errors mapped back."""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import sys
import textwrap
import time
import uuid
from dataclasses import replace
from pathlib import Path

import blake3
import pytest
from lineage_client import Client, Page, digest_file, parse_time
from lineage_client.render import rfc3339
from lineage_core.errors import (
    AmbiguousDigest,
    DaemonUnavailable,
    InvalidArgument,
    NotFound,
)
from lineage_core.models import (
    Access,
    AccessMode,
    Direction,
    Event,
    Run,
    RunStart,
    RunStatus,
    StartNode,
    VerifyState,
    Version,
    run_node_id,
    version_node_id,
)

from tests.conftest import REPO, DaemonProcess
from tests.helpers import b3, wait_for


@pytest.fixture
def client(module_daemon: DaemonProcess) -> Client:
    return module_daemon.client()


@pytest.fixture
def area(module_daemon: DaemonProcess) -> dict[str, Path]:
    """Per-test folders under the data and model roots, plus one outside every root."""
    name = uuid.uuid4().hex[:8]
    folders = {
        "data": module_daemon.data / name,
        "models": module_daemon.models / name,
        "outside": module_daemon.base / "outside" / name,
    }
    for folder in folders.values():
        folder.mkdir(parents=True)
    return folders


def write(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return b3(data)


def current(client: Client, path: Path) -> Version | None:
    try:
        page = client.history(path, page_size=1)
    except NotFound:
        return None
    return page.items[0] if page.items else None


def wait_version(client: Client, path: Path, digest: str) -> Version:
    """Wait until the daemon's current version of ``path`` has ``digest``."""
    found = wait_for(
        lambda: (v := current(client, path)) is not None and v.digest == digest and v,
        what=f"{path} at {digest[:12]}",
    )
    assert isinstance(found, Version)
    return found


def test_status(client: Client, module_daemon: DaemonProcess) -> None:
    status = client.status()
    assert status.pid == module_daemon.proc.pid
    assert status.serving
    assert {(r.path, r.role.value) for r in status.roots} == {
        (str(module_daemon.data), "data"),
        (str(module_daemon.models), "model"),
    }
    assert status.socket == str(module_daemon.socket)
    assert status.started_at <= time.time_ns()


def test_history_is_newest_first_and_paginated(client: Client, area: dict[str, Path]) -> None:
    path = area["data"] / "a.csv"
    digests = []
    for i in range(5):
        digests.append(write(path, f"row {i}\n".encode()))
        wait_version(client, path, digests[-1])
    everything = list(client.iter_history(path))
    assert [v.digest for v in everything] == digests[::-1]
    assert [v.id for v in everything] == sorted((v.id for v in everything), reverse=True)
    assert everything[0].valid_until is None
    assert all(
        v.valid_until == newer.valid_from for v, newer in itertools.pairwise(everything[::-1])
    )

    pages: list[Page[Version]] = [client.history(path, page_size=2)]
    while pages[-1].next_page_token:
        pages.append(client.history(path, page_size=2, page_token=pages[-1].next_page_token))
    assert [len(p.items) for p in pages] == [2, 2, 1]
    assert [v for p in pages for v in p.items] == everything

    middle = everything[2]
    assert client.version_at(path, middle.valid_from) == middle
    assert client.get_version(middle.id) == middle
    with pytest.raises(NotFound):
        client.version_at(path, middle.valid_from - 10**12)


def test_relative_paths_are_made_absolute(
    client: Client, area: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    digest = write(area["data"] / "rel.txt", b"relative")
    wait_version(client, area["data"] / "rel.txt", digest)
    monkeypatch.chdir(area["data"])
    assert client.history("rel.txt").items[0].digest == digest


def test_find_digest_full_prefix_and_ambiguous(client: Client, area: dict[str, Path]) -> None:
    first = write(area["data"] / "one.bin", b"same bytes")
    write(area["models"] / "copy.bin", b"same bytes")
    wait_version(client, area["models"] / "copy.bin", first)
    wait_version(client, area["data"] / "one.bin", first)
    found = {v.path for v in client.find_digest(first)}
    assert {str(area["data"] / "one.bin"), str(area["models"] / "copy.bin")} <= found
    assert {v.path for v in client.find_digest(first[:10].upper())} == found

    # Two contents whose digests share their first 8 hex characters (found by brute force).
    by_prefix: dict[str, bytes] = {}
    for i in itertools.count():
        data = b"%d" % i
        prefix = blake3.blake3(data).hexdigest()[:8]
        if prefix in by_prefix:
            pair = (by_prefix[prefix], data)
            break
        by_prefix[prefix] = data
    for index, data in enumerate(pair):
        wait_version(
            client, area["data"] / f"twin{index}", write(area["data"] / f"twin{index}", data)
        )
    with pytest.raises(AmbiguousDigest) as ambiguous:
        client.find_digest(prefix)
    assert blake3.blake3(pair[0]).hexdigest()[:12] in ambiguous.value.message

    with pytest.raises(NotFound):
        client.find_digest("0" * 64)
    with pytest.raises(InvalidArgument, match="8 to 64 hex"):
        client.find_digest("abc")


def test_run_records_inputs_outputs_and_lineage(client: Client, area: dict[str, Path]) -> None:
    train = write(area["data"] / "train.csv", b"x,y\n1,2\n")
    wait_version(client, area["data"] / "train.csv", train)
    config = write(area["outside"] / "config.yaml", b"lr: 0.1\n")
    with client.run("train", params={"lr": 0.1, "epochs": 3}, argv=["train.py"]) as run:
        run.input(area["data"] / "train.csv")
        run.input(area["outside"] / "config.yaml")
        model = write(area["models"] / "model.pkl", b"weights")
        run.output(area["models"] / "model.pkl")
        outside_out = area["outside"] / "metrics.json"
        metrics = write(outside_out, b'{"acc": 1}')
        run.output(outside_out)
    assert run.result is not None
    result = run.result
    assert (result.status, result.exit_code, result.name) == (RunStatus.SUCCEEDED, 0, "train")
    assert dict(result.params) == {"lr": "0.1", "epochs": "3"}
    assert result.argv == ("train.py",) and result.pid == os.getpid()
    assert client.get_run(result.run_id[:10]) == client.get_run(result.run_id)

    graph = client.trace(str(area["models"] / "model.pkl"))
    by_path = {v.path: v for v in graph.versions}
    assert by_path[str(area["models"] / "model.pkl")].digest == model
    assert by_path[str(area["data"] / "train.csv")].digest == train
    assert by_path[str(area["outside"] / "config.yaml")].digest == config
    assert by_path[str(area["outside"] / "config.yaml")].external
    assert [r.run_id for r in graph.runs] == [result.run_id]
    node = run_node_id(result.run_id)
    kinds = {(e.source, e.target, e.kind) for e in graph.edges}
    assert (node, version_node_id(by_path[str(area["data"] / "train.csv")].id), "read") in kinds
    assert (node, version_node_id(by_path[str(area["models"] / "model.pkl")].id), "wrote") in kinds
    assert not graph.truncated

    downstream = client.impact(str(area["data"] / "train.csv"))
    assert {v.digest for v in downstream.versions} >= {model, metrics}

    # A copy anywhere on disk is hashed by the client and traced by digest.
    copy = area["outside"] / "model-copy.pkl"
    shutil.copy(area["models"] / "model.pkl", copy)
    assert [r.run_id for r in client.trace(str(copy)).runs] == [result.run_id]
    # Other spellings of the same start: run id, node id, digest prefix, PATH@TIME.
    assert client.trace(result.run_id).runs[0].run_id == result.run_id
    model_version = by_path[str(area["models"] / "model.pkl")]
    assert client.trace(f"version:{model_version.id}").runs[0].run_id == result.run_id
    assert client.trace(model[:12]).runs[0].run_id == result.run_id
    when = model_version.valid_from + 1_000_000
    at = f"{area['models'] / 'model.pkl'}@{rfc3339(when)}"
    assert client.resolve(at) == [
        StartNode(path=str(area["models"] / "model.pkl"), at=when // 1000 * 1000)
    ]
    assert client.lineage(at, Direction.UPSTREAM).runs[0].run_id == result.run_id


def test_a_copy_under_a_root_is_bridged_by_digest(client: Client, area: dict[str, Path]) -> None:
    """The model copied into another root: tracing the copy reaches the run that wrote the
    original, through a same_digest edge that keeps its kind over the wire."""
    with client.run("train") as run:
        model = write(area["models"] / "model.pkl", b"bridged weights")
        run.output(area["models"] / "model.pkl")
    assert run.result is not None
    copy = area["data"] / "model-copy.pkl"
    shutil.copy(area["models"] / "model.pkl", copy)
    copied = wait_version(client, copy, model)
    graph = client.trace(str(copy))
    assert [r.run_id for r in graph.runs] == [run.result.run_id]
    original = next(v for v in graph.versions if v.path == str(area["models"] / "model.pkl"))
    bridges = [e for e in graph.edges if e.kind == "same_digest"]
    assert [(e.source, e.target, e.how) for e in bridges] == [
        (version_node_id(original.id), version_node_id(copied.id), "digest")
    ]


@pytest.mark.parametrize(
    ("error", "status", "exit_code"),
    [
        (ValueError("boom"), RunStatus.FAILED, 1),
        (KeyboardInterrupt(), RunStatus.INTERRUPTED, 130),
        (SystemExit(3), RunStatus.FAILED, 3),
        (SystemExit(0), RunStatus.SUCCEEDED, 0),
    ],
)
def test_run_ends_with_the_exception(
    client: Client, area: dict[str, Path], error: BaseException, status: RunStatus, exit_code: int
) -> None:
    with pytest.raises(type(error)), client.run("fails") as run:
        raise error
    assert run.result is not None
    assert (run.result.status, run.result.exit_code) == (status, exit_code)
    assert run.result.ended_at is not None


def test_verify_reports_changed_and_missing_inputs(client: Client, area: dict[str, Path]) -> None:
    kept = write(area["data"] / "kept.csv", b"kept")
    changed = write(area["data"] / "changed.csv", b"before")
    gone = write(area["data"] / "gone.csv", b"gone")
    outside = write(area["outside"] / "ext.txt", b"outside before")
    for name, digest in (("kept.csv", kept), ("changed.csv", changed), ("gone.csv", gone)):
        wait_version(client, area["data"] / name, digest)
    with client.run("make") as run:
        for name in ("kept.csv", "changed.csv", "gone.csv"):
            run.input(area["data"] / name)
        run.input(area["outside"] / "ext.txt")
        wait_version(client, area["models"] / "out.bin", write(area["models"] / "out.bin", b"o"))
        run.output(area["models"] / "out.bin")
    assert {i.state for i in client.verify(str(area["models"] / "out.bin"))} == {VerifyState.MATCH}

    now_changed = write(area["data"] / "changed.csv", b"after")
    wait_version(client, area["data"] / "changed.csv", now_changed)
    (area["data"] / "gone.csv").unlink()
    wait_for(lambda: current(client, area["data"] / "gone.csv").valid_until is not None)  # type: ignore[union-attr]
    now_outside = write(area["outside"] / "ext.txt", b"outside after")

    items = {i.path: i for i in client.verify(str(area["models"] / "out.bin"))}
    assert items[str(area["data"] / "kept.csv")].state is VerifyState.MATCH
    assert items[str(area["data"] / "changed.csv")].state is VerifyState.CHANGED
    assert items[str(area["data"] / "changed.csv")].current_digest == now_changed
    assert items[str(area["data"] / "gone.csv")].state is VerifyState.MISSING
    # Outside every root the daemon cannot look; the client hashed it as the user.
    assert items[str(area["outside"] / "ext.txt")].state is VerifyState.CHANGED
    assert items[str(area["outside"] / "ext.txt")].current_digest == now_outside
    assert items[str(area["outside"] / "ext.txt")].recorded_digest == outside


def test_list_runs_filters_and_pages(client: Client) -> None:
    name = f"list-{uuid.uuid4().hex[:6]}"
    before = time.time_ns()
    made: list[Run] = []
    for status in ("succeeded", "failed", "succeeded"):
        run = client.begin_run(RunStart(name=name, argv=("job",), cwd="/"))
        made.append(
            client.end_run(run.run_id, status=status, exit_code=0 if status == "succeeded" else 1)
        )
    runs = list(client.iter_runs(name=name))
    assert [r.run_id for r in runs] == [r.run_id for r in reversed(made)]
    first = client.list_runs(name=name, page_size=2)
    assert len(first.items) == 2 and first.next_page_token
    rest = client.list_runs(name=name, page_size=2, page_token=first.next_page_token)
    assert [r.run_id for r in first.items + rest.items] == [r.run_id for r in runs]
    assert not rest.next_page_token
    assert [r.run_id for r in client.iter_runs(name=name, since=before, limit=2)] == [
        r.run_id for r in runs[:2]
    ]
    assert list(client.iter_runs(name=name, until=before)) == []
    succeeded = list(client.iter_runs(name=name, status="succeeded"))
    assert [r.run_id for r in succeeded] == [made[2].run_id, made[0].run_id]
    assert [r.run_id for r in client.iter_runs(name=name, status=RunStatus.FAILED)] == [
        made[1].run_id
    ]


def test_end_run_with_explicit_status(client: Client) -> None:
    run = client.begin_run(RunStart(name="manual", argv=("x",), cwd="/", pid=1))
    assert run.status is RunStatus.RUNNING and run.ended_at is None
    ended = client.end_run(run.run_id, status="failed", exit_code=7, warnings=["oops"])
    assert (ended.status, ended.exit_code, ended.warnings) == (RunStatus.FAILED, 7, ("oops",))
    assert next(r.run_id for r in client.iter_runs(name="manual", status="failed")) == run.run_id


def test_record_accesses_batches_beyond_the_per_call_cap(
    client: Client, area: dict[str, Path]
) -> None:
    run = client.begin_run(RunStart(name="many", cwd="/"))
    now = time.time_ns()
    accesses = [
        Access(path=f"{area['outside']}/f{i}", mode=AccessMode.READ, first_at=now, last_at=now,
               digest="ab" * 32, size=1, mtime_ns=now)
        for i in range(10_001)
    ]  # fmt: skip
    # The first and the last access (one in each batch) carry digests of their own.
    accesses[0] = replace(accesses[0], digest="ef" * 32)
    accesses[-1] = replace(accesses[-1], digest="cd" * 32)
    assert client.record_accesses(run.run_id, accesses) == 10_001
    client.end_run(run.run_id, status="succeeded", exit_code=0)
    # Both batches were stored, not only counted: each end's version leads to the run.
    for digest in ("ef" * 32, "cd" * 32):
        assert run.run_id in {r.run_id for r in client.impact(digest).runs}


def test_subscribe_streams_new_versions(client: Client, area: dict[str, Path]) -> None:
    stream = client.subscribe(str(area["data"]) + "/")
    events: list[Event] = []
    digest = ""
    with stream:
        for i in itertools.count():
            digest = write(area["data"] / "live.txt", b"live %d" % i)
            event = next(iter(stream))
            events.append(event)
            if event.version is not None and event.version.digest == digest:
                break
    assert events[-1].kind == "version"
    assert events[-1].version is not None
    assert events[-1].version.path == str(area["data"] / "live.txt")


def test_daemon_not_running_is_daemon_unavailable(socket_dir: Path) -> None:
    missing = socket_dir / "nothing.sock"
    with Client(socket=missing) as client, pytest.raises(DaemonUnavailable) as caught:
        client.status()
    assert caught.value.message == (
        f"lineaged is not running at {missing}; start it with `lineaged` or `make run`"
    )
    assert caught.value.exit_code == 4


def test_default_client_finds_the_socket_or_says_where_it_looked(
    module_daemon: DaemonProcess, socket_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RUNTIME_DIRECTORY", raising=False)
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.setenv("LINEAGE_SOCKET", str(module_daemon.socket))
    with Client() as client:
        assert client.status().pid == module_daemon.proc.pid
    monkeypatch.setenv("LINEAGE_SOCKET", str(socket_dir / "absent.sock"))
    from lineage_core.paths import candidate_sockets

    if any(p.exists() for p in candidate_sockets()):
        pytest.skip("a lineaged socket exists at a default place on this machine")
    with pytest.raises(DaemonUnavailable) as caught:
        Client()
    assert str(socket_dir / "absent.sock") in caught.value.message
    assert "start it with" in caught.value.message


def test_another_user_cannot_connect(module_daemon: DaemonProcess) -> None:
    if os.geteuid() != 0:
        pytest.skip("switching to another user needs root")
    script = textwrap.dedent(
        f"""
        import os, sys
        # Import first: the interpreter's own files may not be readable by nobody.
        from lineage_client import Client
        from lineage_core.errors import LineageError
        os.setgroups([]); os.setgid(65534); os.setuid(65534)
        try:
            Client(socket={str(module_daemon.socket)!r}).status()
        except LineageError as exc:
            print(type(exc).__name__, exc.message)
            sys.exit(exc.exit_code)
        print("connected")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=REPO
    )
    assert "connected" not in result.stdout
    assert result.returncode == 5, result.stdout + result.stderr
    assert result.stdout.startswith("PermissionDenied permission denied on")


def test_digest_file_matches_b3sum(socket_dir: Path) -> None:
    path = socket_dir / "big.bin"
    data = os.urandom(3 * 1024 * 1024 + 17)
    path.write_bytes(data)
    digest, size, mtime_ns = digest_file(path)
    assert (digest, size, mtime_ns) == (b3(data), len(data), path.stat().st_mtime_ns)


def test_parse_time_forms() -> None:
    now = 1_700_000_000 * 10**9
    assert parse_time("2h", now=now) == now - 2 * 3600 * 10**9
    assert parse_time("30m ago", now=now) == now - 1800 * 10**9
    assert parse_time("1700000000", now=now) == now
    assert parse_time("2023-11-14T22:13:20Z") == now
    assert parse_time("2023-11-14T22:13:20+00:00") == now
    assert parse_time(now) == now
    with pytest.raises(InvalidArgument, match="cannot read"):
        parse_time("next tuesday")

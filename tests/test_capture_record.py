"""Recording a traced run in the daemon: the bulk lookups behind RecordAccesses give the
answers the one-by-one rules gave, and a client's waits skip the writer's batching delay."""

from __future__ import annotations

import os
import sqlite3
import sys
import time
import zipfile
from importlib import metadata
from pathlib import Path

import pytest
from lineage_client.capture._envprobe import installed, scanned
from lineage_core.errors import NotFound, PathOutsideRoots
from lineage_core.models import (
    Access,
    AccessMode,
    ChangeKind,
    Direction,
    Role,
    Root,
    RunStart,
    RunStatus,
    StartNode,
)

from lineaged.config import DEFAULT_IGNORE, Config, IgnoreRules
from lineaged.engine import Engine
from lineaged.engine.runs import _PathFacts
from lineaged.store import Store, Writer
from lineaged.watching.indexer import Indexer, RootSet, WatchedRoot
from tests.helpers import EngineHarness, b3, wait_for


def _start() -> RunStart:
    return RunStart(
        name="traced",
        argv=("python", "x.py"),
        cwd="/",
        host="h",
        user="u",
        pid=1,
        started_at=time.time_ns(),
        params={},
        parent_run_id="",
        code=None,
        env=None,
    )


def _read(path: Path | str, at: int) -> Access:
    return Access(
        path=str(path), mode=AccessMode.READ, first_at=at, last_at=at, how="traced", role="data"
    )


def _one_by_one(store: Store, path: str, at: int) -> int | None:
    """What the engine asked per read before the bulk query: version_at, else current."""
    try:
        return store.version_at(path, at).id
    except NotFound:
        current = store.current_version(path)
        return current.id if current is not None else None


def _read_digests(harness: EngineHarness, run_id: str) -> dict[str, str]:
    graph = harness.store.lineage(
        StartNode(run_id=run_id), Direction.UPSTREAM, max_depth=1, max_nodes=1000
    )
    by_id = {f"version:{v.id}": v for v in graph.versions}
    return {by_id[e.target].path: by_id[e.target].digest for e in graph.edges if e.kind == "read"}


def test_read_versions_equal_version_at_then_current(tmp_path: Path) -> None:
    harness = EngineHarness(tmp_path)
    changed = harness.data / "a.txt"
    changed.write_bytes(b"one")
    os.utime(changed, ns=(10**18, 10**18))  # a known valid_from for the first version
    steady = harness.data / "b.txt"
    steady.write_bytes(b"steady")
    harness.start()
    try:
        changed.write_bytes(b"two")
        harness.expect(changed, b"two")
        store = harness.store
        newest, oldest = store.history(str(changed), limit=10)
        times = [0, oldest.valid_from - 1, oldest.valid_from, newest.valid_from, time.time_ns()]
        paths = [str(changed), str(steady), str(harness.data / "never.txt")]
        answers = set()
        for path in paths:
            for at in times:
                expected = _one_by_one(store, path, at)
                found = store.read_versions([(path, at)]).get((path, at))
                assert found == expected, (path, at)
                answers.add(found)
        # Every case was met: before any version, the old one, the new one, no artifact.
        assert {oldest.id, newest.id, None} <= answers
        many = store.read_versions([(paths[0], oldest.valid_from), (paths[1], 0)])
        assert many == {
            (paths[0], oldest.valid_from): oldest.id,
            (paths[1], 0): _one_by_one(store, paths[1], 0),
        }
    finally:
        harness.stop()


def test_two_reads_of_a_path_in_one_call_find_the_version_of_each_first_open(
    tmp_path: Path,
) -> None:
    harness = EngineHarness(tmp_path)
    path = harness.data / "twice.txt"
    path.write_bytes(b"first")
    os.utime(path, ns=(10**18, 10**18))  # the first version is valid from here
    harness.start()
    try:
        path.write_bytes(b"second")
        harness.expect(path, b"second")
        newest, oldest = harness.store.history(str(path), limit=10)
        assert oldest.valid_until == newest.valid_from
        engine = harness.engine
        run = engine.runs.begin_run(_start())
        # One call, two opens of the same path: one while each version was current.
        accesses = [_read(path, oldest.valid_from), _read(path, newest.valid_from)]
        assert engine.runs.record_accesses(run.run_id, accesses) == 2
        engine.runs.end_run(run.run_id, exit_code=0, status=RunStatus.SUCCEEDED, ended_at=0)
        graph = harness.store.lineage(
            StartNode(run_id=run.run_id), Direction.UPSTREAM, max_depth=1, max_nodes=100
        )
        reads = {e.target for e in graph.edges if e.kind == "read"}
        assert reads == {f"version:{oldest.id}", f"version:{newest.id}"}
    finally:
        harness.stop()


def test_a_read_is_kept_as_its_edge_or_else_as_a_raw_access(tmp_path: Path) -> None:
    """A read tied to a version is stored as the edge alone; reads the daemon cannot tie to a
    version (an ignored file under a root, a file gone) stay as raw accesses, as writes do."""
    harness = EngineHarness(tmp_path)
    tracked = harness.data / "train.csv"
    tracked.write_bytes(b"a,b\n")
    ignored = harness.data / "scratch.tmp"  # *.tmp is ignored everywhere
    ignored.write_bytes(b"temp")
    harness.start()
    try:
        engine = harness.engine
        run = engine.runs.begin_run(_start())
        now = time.time_ns()
        gone = harness.data / "gone.csv"
        output = harness.models / "model.pkl"
        output.write_bytes(b"weights")
        accesses = [
            _read(tracked, now),
            _read(ignored, now),
            _read(gone, now),
            Access(str(output), AccessMode.WRITE, now, now),
        ]
        assert engine.runs.record_accesses(run.run_id, accesses) == 4
        engine.runs.end_run(run.run_id, exit_code=0, status=RunStatus.SUCCEEDED, ended_at=0)
        assert set(_read_digests(harness, run.run_id)) == {str(tracked)}
        with sqlite3.connect(harness.db) as conn:
            raw = conn.execute(
                "SELECT a.path, a.mode FROM accesses a JOIN runs r ON r.id = a.run_id "
                "WHERE r.run_id = ? ORDER BY a.path",
                (run.run_id,),
            ).fetchall()
        conn.close()
        assert raw == [(str(gone), "read"), (str(ignored), "read"), (str(output), "write")]
    finally:
        harness.stop()


def test_a_read_the_watcher_has_not_seen_yet_is_hashed_first(tmp_path: Path) -> None:
    # A settle time far beyond the test: only the run's own stat check can see the change.
    harness = EngineHarness(tmp_path, settle_ms=600_000)
    path = harness.data / "late.txt"
    path.write_bytes(b"before")
    # Old mtimes: outside the racy window, only the stat key comparison can tell.
    os.utime(path, ns=(10**18, 10**18))
    harness.start()
    try:
        path.write_bytes(b"after the scan, longer")
        os.utime(path, ns=(10**18 + 10**9, 10**18 + 10**9))
        engine = harness.engine
        run = engine.runs.begin_run(_start())
        engine.runs.record_accesses(run.run_id, [_read(path, time.time_ns())])
        engine.runs.end_run(run.run_id, exit_code=0, status=RunStatus.SUCCEEDED, ended_at=0)
        assert _read_digests(harness, run.run_id) == {str(path): b3(b"after the scan, longer")}
    finally:
        harness.stop()


def test_many_reads_link_each_file_once_and_links_are_refused(tmp_path: Path) -> None:
    harness = EngineHarness(tmp_path)
    folder = harness.data / "many"
    folder.mkdir()
    files = [folder / f"f{i:03d}" for i in range(200)]
    for index, file in enumerate(files):
        file.write_bytes(b"%d" % index)
    (harness.data / "link").symlink_to(folder)
    harness.start()
    try:
        engine = harness.engine
        run = engine.runs.begin_run(_start())
        now = time.time_ns()
        assert engine.runs.record_accesses(run.run_id, [_read(f, now) for f in files]) == len(files)
        # Reported twice (a second batch): still one edge per file.
        engine.runs.record_accesses(run.run_id, [_read(f, now + 1) for f in files[:10]])
        with pytest.raises(PathOutsideRoots, match="symbolic link"):
            engine.runs.record_accesses(run.run_id, [_read(harness.data / "link" / "f000", now)])
        engine.runs.end_run(run.run_id, exit_code=0, status=RunStatus.SUCCEEDED, ended_at=0)
        assert _read_digests(harness, run.run_id) == {
            str(f): b3(b"%d" % i) for i, f in enumerate(files)
        }
    finally:
        harness.stop()


def test_a_waited_on_job_does_not_wait_for_the_batch_to_fill(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "store.db")
    # An hour's batching: a job that waited for company would time out below.
    writer = Writer(store, batch_seconds=3600)
    writer.start()
    try:
        assert writer.call(lambda s: 42, timeout=60) == 42
        assert writer.submit(lambda s: 7, urgent=True).result(timeout=60) == 7
    finally:
        writer.stop()
        store.close()


def test_an_observe_that_is_waited_for_does_not_wait_for_the_batch_to_fill(
    tmp_path: Path,
) -> None:
    # A run's end waits for its outputs to be indexed: that job is not held for batching.
    data = tmp_path / "data"
    data.mkdir()
    model = data / "model.bin"
    model.write_bytes(b"weights")
    store = Store.open(tmp_path / "store.db")
    writer = Writer(store, batch_seconds=3600)  # an hour: a held job would time out below
    writer.start()
    try:
        root_id = writer.call(lambda s: s.ensure_root(str(data), Role.DATA))
        root = Root(str(data), Role.DATA, id=root_id)
        roots = RootSet([WatchedRoot(root, root_id, IgnoreRules(DEFAULT_IGNORE))])
        Indexer(store, writer, roots).observe({str(model): ChangeKind.MODIFIED}, wait=True)
        current = store.current_version(str(model))
        assert current is not None and current.digest == b3(b"weights")
    finally:
        writer.stop()
        store.close()


def test_installed_distributions_match_importlib_metadata() -> None:
    seen: dict[str, str] = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if name and name.lower() not in seen:
            seen[name.lower()] = f"{name}=={dist.version}"
    assert installed() == sorted(seen.values(), key=str.lower)
    assert any(item.startswith("grpcio==") for item in installed())
    assert scanned(sys.path) is not None  # the test's own venv took the folder scan


def _dist(folder: Path, entry: str, name: str, version: str, filename: str = "METADATA") -> None:
    (folder / entry).mkdir(parents=True)
    (folder / entry / filename).write_text(
        f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n\nlong text\nName: x\n"
    )


def test_the_folder_scan_finds_what_importlib_metadata_finds(tmp_path: Path) -> None:
    first, second, missing = tmp_path / "first", tmp_path / "second", tmp_path / "missing"
    _dist(first, "alpha-1.0.dist-info", "alpha", "1.0")
    _dist(first, "Beta_Pkg-2.0.DIST-INFO", "Beta.Pkg", "2.0")
    _dist(first, "gamma-0.1.egg-info", "gamma", "0.1", filename="PKG-INFO")
    _dist(first, "noversion-1.dist-info", "noversion", "", filename="OTHER")  # no METADATA
    (first / "delta-3.egg-info").write_text("Name: delta\nVersion: 3\n")  # a file
    (first / "not-a-dist").mkdir()
    # Found later on the path: alpha 9.0 is shadowed by alpha 1.0, as an import would be.
    _dist(second, "alpha-9.0.dist-info", "alpha", "9.0")
    _dist(second, "epsilon-5.dist-info", "epsilon", "5")
    # One folder, two entries of one name: the order inside the folder decides.
    _dist(second, "zeta-1.dist-info", "zeta", "1")
    _dist(second, "ZETA-2.dist-info", "zeta", "2")
    # Entries are taken group by group (the name before the first "-"), not in folder order:
    # a name listed in two groups resolves as importlib.metadata resolves it. Several
    # spellings, so that some folder order (the file system's) sets the groups apart.
    for n in range(20):
        _dist(second, f"theta{n}-1.dist-info", f"other{n}", "1")
        _dist(second, f"iota{n}-1.dist-info", f"iota{n}", "1")
        _dist(second, f"theta{n}-2.dist-info", f"iota{n}", "2")
    path = [str(first), str(missing), str(second)]
    folders = scanned(path)
    assert folders is not None
    got = installed(folders)
    assert got == installed(metadata.distributions(path=path))
    assert "alpha==1.0" in got and "epsilon==5" in got and "Beta.Pkg==2.0" in got


def test_the_folder_scan_leaves_zips_and_eggs_to_importlib_metadata(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = tmp_path / "bundle.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        bundle.writestr("inzip-1.dist-info/METADATA", "Name: inzip\nVersion: 1\n")
    egg = tmp_path / "legacy-1.0.egg"
    (egg / "EGG-INFO").mkdir(parents=True)
    assert scanned([str(archive)]) is None
    assert scanned([str(egg)]) is None
    # A zip on the interpreter's own path: installed() asks importlib.metadata, which reads it.
    monkeypatch.setattr(sys, "path", [*sys.path, str(archive)])
    assert "inzip==1" in installed()


def test_per_folder_answers_equal_the_root_set_path_by_path(tmp_path: Path) -> None:
    # The engine works out roots, exclusions and ignored folders once per folder; each
    # answer must equal what RootSet gives for the whole path.
    data, other = tmp_path / "data", tmp_path / "other"
    state = data / "state"  # excluded from the root it lies in
    for folder in (data / "sub" / "deep", data / "cache" / "x", other, state):
        folder.mkdir(parents=True)
    ignore = ("*.tmp", "cache/", "sub/skip.txt")
    config = Config(
        roots=(Root(str(data), Role.DATA, ignore=ignore), Root(str(other), Role.MODEL)),
        state_dir=state,
        socket=tmp_path / "sock" / "s",
        settle_ms=50,
        scan_interval=0,
    )
    store = Store.open(tmp_path / "store.db")
    engine = Engine(config, store)
    engine.start()
    try:
        wait_for(lambda: engine.serving, what="initial scan")
        names = ["a.txt", "b.tmp", "skip.txt", "cache", "state"]
        folders = [data, data / "sub", data / "sub" / "deep", data / "cache", data / "cache" / "x"]
        folders += [other, state, tmp_path, tmp_path / "elsewhere"]
        paths = [str(folder / name) for folder in folders for name in names]
        paths += [str(data), str(other), str(state), "/", str(tmp_path)]
        roots = engine.roots
        facts = _PathFacts(frozenset([*(r.path for r in roots.roots), *roots.excluded]))
        answers = {}
        for path in paths:
            access = _read(path, 1)
            under_root, tracked = engine.runs._place_access(access, facts)
            answers[path] = (under_root, tracked)
        assert answers == {
            path: (roots.root_for(path) is not None, roots.tracked(path) is not None)
            for path in paths
        }
        # Every kind of answer was met.
        assert {(True, True), (True, False), (False, False)} <= set(answers.values())
    finally:
        engine.stop()
        store.close()

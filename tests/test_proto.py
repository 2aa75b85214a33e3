"""The wire contract: committed stubs match the .proto, models round-trip, requests are validated."""

from __future__ import annotations

import filecmp
import itertools
from collections.abc import Callable
from pathlib import Path

import pytest
from google.protobuf import text_format, timestamp_pb2
from hypothesis import given, settings
from hypothesis import strategies as st
from lineage_core import gate, limits, wire
from lineage_core._proto.lineage.v1 import lineage_pb2 as pb
from lineage_core.errors import InvalidArgument
from lineage_core.models import (
    Access,
    AccessMode,
    ChangeKind,
    CodeState,
    Counts,
    Edge,
    EnvState,
    Event,
    Graph,
    Role,
    Root,
    Run,
    RunStart,
    RunStatus,
    ScanState,
    SourceFile,
    StartNode,
    Status,
    VerifyItem,
    VerifyState,
    Version,
)

from lineaged import _protogen

REPO = Path(__file__).resolve().parent.parent
PROTO = REPO / "proto" / "lineage" / "v1" / "lineage.proto"
STUBS = REPO / "clients" / "lineage_core" / "_proto"
NOW = 1_700_000_000_000_000_000

# --- the stubs ---------------------------------------------------------------------------


def _files(root: Path) -> set[Path]:
    return {
        p.relative_to(root) for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts
    }


def test_committed_stubs_are_what_protogen_makes(tmp_path: Path) -> None:
    _protogen.generate(PROTO, tmp_path)
    assert _files(tmp_path) == _files(STUBS)
    different = [
        str(name)
        for name in sorted(_files(tmp_path))
        if not filecmp.cmp(tmp_path / name, STUBS / name, shallow=False)
    ]
    assert not different, f"run `make proto`: {different} differ from {PROTO.name}"


def test_stubs_import_each_other_inside_the_package() -> None:
    grpc_stub = (STUBS / "lineage" / "v1" / "lineage_pb2_grpc.py").read_text()
    assert "from lineage_core._proto.lineage.v1 import lineage_pb2" in grpc_stub
    assert pb.DESCRIPTOR.name == "lineage/v1/lineage.proto"
    assert pb.DESCRIPTOR.package == "lineage.v1"


def test_every_enum_starts_with_unspecified_zero() -> None:
    for name, enum in pb.DESCRIPTOR.enum_types_by_name.items():
        assert enum.values_by_number[0].name.endswith("_UNSPECIFIED"), name


def test_service_methods() -> None:
    service = pb.DESCRIPTOR.services_by_name["LineageService"]
    assert {m.name for m in service.methods} == {
        "GetStatus", "GetHistory", "FindDigest", "GetVersionAt", "GetVersion", "BeginRun",
        "RecordAccesses", "EndRun", "GetRun", "ListRuns", "GetLineage", "Verify", "Subscribe",
        "ExportOpenLineage",
        "GetRunFiles", "ReadVersionBytes", "PinVersions", "CollectGarbage", "LinkReproduction",
    }  # fmt: skip
    assert service.methods_by_name["Subscribe"].server_streaming
    assert service.methods_by_name["ExportOpenLineage"].server_streaming
    assert service.methods_by_name["ReadVersionBytes"].server_streaming


# --- strategies --------------------------------------------------------------------------

texts = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=12)
segments = st.text(
    st.characters(exclude_categories=("Cs",), exclude_characters="\x00/"), min_size=1, max_size=8
).filter(lambda s: s not in (".", ".."))
paths = st.lists(segments, min_size=1, max_size=4).map(lambda parts: "/" + "/".join(parts))
digests = st.binary(min_size=32, max_size=32).map(bytes.hex)
times = st.just(0) | st.integers(min_value=-(2**63), max_value=2**63 - 1)
small = st.integers(min_value=0, max_value=2**62)

versions = st.builds(
    Version,
    id=st.integers(1, 2**62),
    path=paths,
    digest=digests,
    size=small,
    mtime_ns=times,
    valid_from=times,
    valid_until=st.none() | times,
    seen=st.sampled_from(ChangeKind),
    closed_by=st.none() | st.sampled_from(ChangeKind),
    external=st.booleans(),
)
codes = st.builds(
    CodeState,
    commit=texts,
    branch=texts,
    remote=texts,
    dirty=st.booleans(),
    diff=st.binary(max_size=64),
    diff_digest=digests,
    diff_size=small,
    diff_truncated=st.booleans(),
    untracked=st.lists(paths, max_size=3).map(tuple),
    sources=st.lists(st.builds(SourceFile, path=paths, digest=digests), max_size=3).map(tuple),
)
envs = st.builds(
    EnvState,
    python_version=texts,
    implementation=texts,
    platform=texts,
    packages=st.lists(texts, max_size=3).map(tuple),
    packages_digest=digests,
    variables=st.dictionaries(texts, texts, max_size=3),
)
runs = st.builds(
    Run,
    run_id=st.from_regex(r"[0-9a-f]{32}", fullmatch=True),
    name=texts,
    argv=st.lists(texts, max_size=4).map(tuple),
    cwd=paths,
    host=texts,
    user=texts,
    pid=st.integers(0, 2**31 - 1),
    started_at=times,
    ended_at=st.none() | times,
    status=st.sampled_from(RunStatus),
    exit_code=st.none() | st.integers(-(2**31), 2**31 - 1),
    params=st.dictionaries(texts, texts, max_size=3),
    parent_run_id=st.just("") | st.from_regex(r"[0-9a-f]{32}", fullmatch=True),
    code=st.none() | codes,
    env=st.none() | envs,
    warnings=st.lists(texts, max_size=2).map(tuple),
    id=st.integers(0, 2**62),
)


# --- round trips -------------------------------------------------------------------------


@settings(max_examples=60)
@given(versions)
def test_version_round_trip(version: Version) -> None:
    decoded = pb.Version.FromString(wire.version_to_pb(version).SerializeToString())
    assert wire.version_from_pb(decoded) == version


@settings(max_examples=60)
@given(runs)
def test_run_round_trip(run: Run) -> None:
    decoded = pb.Run.FromString(wire.run_to_pb(run).SerializeToString())
    assert wire.run_from_pb(decoded) == run


@settings(max_examples=60)
@given(st.lists(versions, max_size=3), st.lists(runs, max_size=3), st.booleans())
def test_graph_round_trip_leaves_diffs_out(
    graph_versions: list[Version], graph_runs: list[Run], truncated: bool
) -> None:
    edges = tuple(
        Edge(source=f"run:{r.run_id}", target=f"version:{v.id}", kind=kind, how=how, role=role)
        for r in graph_runs
        for v, kind, how, role in zip(
            graph_versions,
            ("read", "wrote", "read"),
            ("declared", "traced", "traced"),
            ("data", "code", "data"),
            strict=False,
        )
    )
    # A copy: the first version's bytes elsewhere (an edge only a graph has).
    edges += tuple(
        Edge(f"version:{a.id}", f"version:{b.id}", "same_digest", "digest")
        for a, b in itertools.pairwise(graph_versions)
    )
    graph = Graph(tuple(graph_versions), tuple(graph_runs), edges, truncated, ("version:1",))
    back = wire.graph_from_pb(pb.Graph.FromString(wire.graph_to_pb(graph).SerializeToString()))
    assert back.versions == graph.versions
    assert back.edges == graph.edges
    assert (back.truncated, back.start) == (truncated, ("version:1",))
    for sent, got in zip(graph.runs, back.runs, strict=True):
        expected_code = None if sent.code is None else CodeState(**{
            **{f: getattr(sent.code, f) for f in CodeState.__slots__}, "diff": b""
        })  # fmt: skip
        assert got == Run(**{**{f: getattr(sent, f) for f in Run.__slots__}, "code": expected_code})


def test_runs_sharing_an_environment_each_carry_it() -> None:
    # graph_from_pb decodes equal code and environments once and shares the value.
    shared = EnvState(
        "3.11.7", "CPython", "Linux-x86_64", ("numpy==2.1.0",), "a" * 64, {"LANG": "C"}
    )
    own = EnvState("3.12.1", "CPython", "Linux-x86_64", ("torch==2.5.0",), "b" * 64, {})
    code = CodeState("c" * 40, "main", sources=(SourceFile("/srv/train.py", "d" * 64),))
    other_code = CodeState("e" * 40, "main", dirty=True)
    graph_runs = tuple(
        Run(f"{i:032x}", "train", ("python",), "/srv", "host", "me", 1, 10**18, None,
            RunStatus.RUNNING, None, {}, "", code, env, (), i + 1)
        for i, (env, code) in enumerate(
            ((shared, code), (None, None), (shared, code), (own, other_code), (shared, code))
        )
    )  # fmt: skip
    graph = Graph((), graph_runs, (), False, ())
    back = wire.graph_from_pb(pb.Graph.FromString(wire.graph_to_pb(graph).SerializeToString()))
    assert [r.env for r in back.runs] == [shared, None, shared, own, shared]
    assert [r.code for r in back.runs] == [code, None, code, other_code, code]
    assert back.runs[0].env is back.runs[2].env is back.runs[4].env
    assert back.runs[0].code is back.runs[4].code


@settings(max_examples=40)
@given(
    st.builds(
        RunStart,
        name=texts.filter(str.strip),
        argv=st.lists(texts, max_size=3).map(tuple),
        cwd=paths,
        host=texts,
        user=texts,
        pid=st.integers(0, 2**31 - 1),
        started_at=times.filter(bool),
        params=st.dictionaries(texts, texts, max_size=3),
        code=st.none() | codes,
        env=st.none() | envs,
    )
)
def test_begin_run_request_round_trip(start: RunStart) -> None:
    decoded = pb.BeginRunRequest.FromString(wire.begin_run_to_pb(start).SerializeToString())
    assert gate.parse_begin_run(decoded, now=NOW) == start


accesses = st.builds(
    Access,
    path=paths,
    mode=st.sampled_from(AccessMode),
    first_at=st.integers(0, 2**62),
    last_at=st.just(2**62),
    how=st.sampled_from(["declared", "traced"]),
    role=st.sampled_from(["data", "code"]),
    digest=st.just("") | digests,
    size=small,
    mtime_ns=st.integers(1, 2**62),
)
# As lineage run reports them: the defaults everywhere.
traced_reads = st.builds(
    Access,
    path=paths,
    mode=st.just(AccessMode.READ),
    first_at=st.integers(0, 2**62),
    last_at=st.integers(0, 2**62),
).map(lambda a: Access(a.path, a.mode, min(a.first_at, a.last_at), max(a.first_at, a.last_at)))


def _access_row(access: Access) -> pb.Access:
    """An access as any client may build it: an encoding independent of ``access_to_pb``."""
    message = pb.Access(
        path=access.path,
        mode=pb.ACCESS_MODE_READ if access.mode is AccessMode.READ else pb.ACCESS_MODE_WRITE,
        how=pb.AccessHow.Value(f"ACCESS_HOW_{access.how.upper()}"),
        role=pb.AccessRole.Value(f"ACCESS_ROLE_{access.role.upper()}"),
        digest=access.digest,
        size=access.size,
    )
    message.first_at.FromNanoseconds(access.first_at)
    message.last_at.FromNanoseconds(access.last_at)
    if access.mtime_ns:
        message.mtime.FromNanoseconds(access.mtime_ns)
    return message


@settings(max_examples=40)
@given(accesses)
def test_access_row_is_read(access: Access) -> None:
    decoded = pb.Access.FromString(_access_row(access).SerializeToString())
    assert gate.parse_access(decoded, "accesses[0]", now=NOW) == access


@settings(max_examples=60)
@given(accesses | traced_reads)
def test_access_round_trip(access: Access) -> None:
    decoded = pb.Access.FromString(wire.access_to_pb(access).SerializeToString())
    assert gate.parse_access(decoded, "accesses[0]", now=NOW) == access
    assert decoded == _access_row(access)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda a: setattr(a, "path", "/a/../b"), r"accesses\[1\]\.path must be normalised"),
        (lambda a: setattr(a, "path", "/a\x00b"), r"accesses\[1\]\.path contains a NUL"),
        (lambda a: setattr(a, "mode", 9), r"accesses\[1\]\.mode has an unknown value 9"),
        (lambda a: a.last_at.FromNanoseconds(5), r"accesses\[1\]\.last_at is before"),
        (lambda a: setattr(a, "how", pb.ACCESS_HOW_DIGEST), r"accesses\[1\]\.how has an unknown"),
        (lambda a: setattr(a, "digest", "xyz"), r"accesses\[1\]\.digest"),
        (lambda a: setattr(a, "size", -1), r"accesses\[1\]\.size must be between"),
    ],
    ids=["unnormalised", "nul", "mode", "last before first", "how", "digest", "negative size"],
)  # fmt: skip
def test_bad_accesses_are_refused_by_name(
    damage: Callable[[pb.Access], None], message: str
) -> None:
    access = wire.access_to_pb(Access("/d/b", AccessMode.READ, 10, 10))
    damage(access)
    with pytest.raises(InvalidArgument, match=message):
        gate.parse_access(access, "accesses[1]", now=NOW)


def test_status_verify_event_round_trip() -> None:
    status = Status(
        version="0.1.0", pid=42, started_at=NOW, state_dir="/s", socket="/r/l.sock",
        roots=(Root(path="/data", role=Role.DATA, ignore=("*.tmp",), id=1, health="ok", polling=True),),
        counts=Counts(1, 2, 3, 4, 5),
        scan=ScanState(True, True, 10, 5, 1000, NOW, NOW + 1, 2),
        queue_depth=3, serving=True, degraded=("inotify watch limit reached",),
    )  # fmt: skip
    assert wire.status_from_pb(wire.status_to_pb(status)) == status
    item = VerifyItem("/d/a", "ab" * 32, VerifyState.CHANGED, "cd" * 32, 3, "r" * 32, True)
    assert wire.verify_item_from_pb(wire.verify_item_to_pb(item)) == item
    version = Version(1, "/d/a", "ab" * 32, 1, 2, 3, None, ChangeKind.CREATED)
    assert wire.event_from_pb(wire.event_to_pb(Event("version", version=version))) == Event(
        "version", version=version
    )


@given(times)
def test_timestamps_round_trip(ns: int) -> None:
    ts = wire.ns_to_ts(ns)
    assert 0 <= ts.nanos < 1_000_000_000
    assert wire.ns_from_ts(ts) == ns


@pytest.mark.parametrize(
    "start",
    [
        StartNode(path="/d/a"),
        StartNode(path="/d/a", at=NOW),
        StartNode(digest="abcdef12"),
        StartNode(version_id=5),
        StartNode(run_id="0123456789abcdef"),
    ],
)
def test_start_node_round_trip(start: StartNode) -> None:
    assert gate.parse_start(wire.start_to_pb(start)) == start


# --- validation at the edge --------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("", "required"),
        ("data/a.csv", "absolute"),
        ("/data/\x00a", "NUL"),
        ("/data/../etc/passwd", "normalised"),
        ("/data/./a", "normalised"),
        ("/data//a", "normalised"),
        ("//data/a", "normalised"),
        ("/data/", "normalised"),
        ("/" + "a" * 5000, "longer than 4096"),
    ],
)
def test_bad_paths(path: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        gate.check_path(path)


@pytest.mark.parametrize(
    ("digest", "ok"),
    [("abcdef12", True), ("ABCDEF12", True), ("ab" * 32, True), ("abcdef1", False),
     ("ab" * 33, False), ("xyzxyzxy", False), ("", False)],
)  # fmt: skip
def test_digest_prefixes(digest: str, ok: bool) -> None:
    if ok:
        assert gate.check_digest_prefix(digest) == digest.lower()
    else:
        with pytest.raises(InvalidArgument, match="digest"):
            gate.check_digest_prefix(digest)


@pytest.mark.parametrize("size", [-1, 1001, 2**31 - 1])
def test_absurd_page_sizes(size: int) -> None:
    with pytest.raises(InvalidArgument, match="between 1 and 1000"):
        gate.parse_page_size(size)
    assert gate.parse_page_size(0) == limits.DEFAULT_PAGE_SIZE


def test_page_tokens() -> None:
    token = gate.encode_page_token("runs", 42)
    assert gate.decode_page_token(token, "runs") == 42
    assert gate.decode_page_token("", "runs") is None
    for bad in ("garbage!", "djE6cnVuczp4", gate.encode_page_token("history", 42)):
        with pytest.raises(InvalidArgument, match="page_token"):
            gate.decode_page_token(bad, "runs")


def test_absurd_timestamps() -> None:
    request = pb.GetVersionAtRequest(path="/d/a", at=timestamp_pb2.Timestamp(seconds=1, nanos=-1))
    with pytest.raises(InvalidArgument, match="nanos"):
        gate.parse_time(request, "at")
    request.at.CopyFrom(timestamp_pb2.Timestamp(seconds=10**12))
    with pytest.raises(InvalidArgument, match="out of range"):
        gate.parse_time(request, "at")
    with pytest.raises(InvalidArgument, match="required"):
        gate.parse_time(pb.GetVersionAtRequest(), "at", required=True)


def test_unknown_enum_numbers() -> None:
    with pytest.raises(InvalidArgument, match="unknown value 99"):
        gate.parse_list_runs(pb.ListRunsRequest(status=99))  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="direction"):
        gate.parse_lineage(pb.GetLineageRequest(start=pb.StartNode(version_id=1)))
    with pytest.raises(InvalidArgument, match="unknown value 7"):
        gate.parse_lineage(
            pb.GetLineageRequest(start=pb.StartNode(version_id=1), direction=7)  # type: ignore[arg-type]
        )
    access = pb.Access(path="/d/a", mode=5)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match=r"accesses\[3\]\.mode"):
        gate.parse_access(access, "accesses[3]", now=NOW)


def test_end_run_needs_a_final_status() -> None:
    for status in (pb.RUN_STATUS_UNSPECIFIED, pb.RUN_STATUS_RUNNING):
        with pytest.raises(InvalidArgument, match="status must be"):
            gate.parse_end_run(pb.EndRunRequest(run_id="r" * 32, status=status), now=NOW)
    run_id, exit_code, status, ended_at, _ = gate.parse_end_run(
        pb.EndRunRequest(run_id="r" * 32, status=pb.RUN_STATUS_FAILED, exit_code=3), now=NOW
    )
    assert (run_id, exit_code, status, ended_at) == ("r" * 32, 3, RunStatus.FAILED, NOW)


def test_lineage_limits() -> None:
    start = pb.StartNode(version_id=1)
    query = gate.parse_lineage(pb.GetLineageRequest(start=start, direction=pb.DIRECTION_BOTH))
    assert (query.max_depth, query.max_nodes) == (
        limits.DEFAULT_MAX_DEPTH,
        limits.DEFAULT_MAX_NODES,
    )
    for field, value in (
        ("max_depth", -1),
        ("max_depth", 10**6),
        ("max_nodes", -3),
        ("max_nodes", 10**6),
    ):
        request = pb.GetLineageRequest(
            start=start, direction=pb.DIRECTION_UPSTREAM, **{field: value}
        )
        with pytest.raises(InvalidArgument, match=field):
            gate.parse_lineage(request)
    with pytest.raises(InvalidArgument, match="start is required"):
        gate.parse_lineage(pb.GetLineageRequest(direction=pb.DIRECTION_UPSTREAM))


def test_run_id_and_names() -> None:
    for bad in ("", "has space", "x" * 200, "nul\x00"):
        with pytest.raises(InvalidArgument, match="run_id"):
            gate.parse_run_id(bad)
    with pytest.raises(InvalidArgument, match="name is required"):
        gate.parse_begin_run(pb.BeginRunRequest(name="  "), now=NOW)
    with pytest.raises(InvalidArgument, match=r"argv\[1\] contains a NUL"):
        gate.parse_begin_run(pb.BeginRunRequest(name="t", argv=["a", "b\x00"]), now=NOW)
    too_many = pb.BeginRunRequest(name="t", argv=["a"] * (limits.MAX_REPEATED + 1))
    with pytest.raises(InvalidArgument, match="at most 10000"):
        gate.parse_begin_run(too_many, now=NOW)


def test_runs_of_a_graph_share_one_code_and_environment() -> None:
    code, env = CodeState(commit="c0ffee"), EnvState(packages=("numpy==2.1",))
    shared = [
        Run(f"{i:032x}", "stage", (), "/", "", "", 0, i, None, RunStatus.RUNNING, None, {}, "",
            code, env)
        for i in range(3)
    ]  # fmt: skip
    message = wire.graph_to_pb(Graph((), tuple(shared), (), False))
    back = wire.graph_from_pb(pb.Graph.FromString(message.SerializeToString()))
    assert back.runs == tuple(shared)
    assert back.runs[0].env is back.runs[2].env  # decoded once


def test_a_graph_is_plain_messages() -> None:
    # What grpcurl and reflection show: a message per node and per edge, fields by name.
    version = Version(1, "/d/x", "ab" * 32, 1, 0, 0, None, ChangeKind.SCAN)
    run = Run("f" * 32, "s", ("a",), "/", "", "", 0, 0, None, RunStatus.RUNNING, None, {}, "",
              CodeState(diff=b"left out"), None)  # fmt: skip
    edge = Edge(f"run:{run.run_id}", "version:1", "read")
    message = wire.graph_to_pb(Graph((version,), (run,), (edge,), True, ("version:1",)))
    assert message == pb.Graph(
        truncated=True,
        start=["version:1"],
        versions=[wire.version_to_pb(version)],
        runs=[wire.run_to_pb(run, with_diff=False)],
        edges=[
            pb.Edge(
                source=f"run:{run.run_id}",
                target="version:1",
                kind=pb.EDGE_KIND_READ,
                how=pb.ACCESS_HOW_TRACED,
                role=pb.ACCESS_ROLE_DATA,
            )
        ],
    )
    assert not message.runs[0].code.diff
    text = text_format.MessageToString(message)
    assert 'versions {\n  id: 1\n  path: "/d/x"' in text
    assert "edges {" in text and "kind: EDGE_KIND_READ" in text

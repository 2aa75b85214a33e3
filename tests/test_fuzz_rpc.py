"""Bad input reaching every RPC of a real lineaged: refused with INVALID_ARGUMENT or NOT_FOUND,
never a crash, never a write.

Raw bytes go through an untyped channel (identity serializers). Where the bytes are not a
valid message, grpc itself answers INTERNAL "Exception deserializing request!" before any of
our code runs: that is the one INTERNAL accepted here (and only with that exact message).
Subscribe is a stream without an end, so a request it accepts ends at the test's deadline.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from google.protobuf import timestamp_pb2
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from lineage_core import gate, limits
from lineage_core._proto.lineage.v1 import lineage_pb2 as pb
from lineage_core.errors import LineageError

from tests.conftest import DaemonProcess
from tests.helpers import b3, wait_for

SERVICE = "/lineage.v1.LineageService/"
REQUESTS: dict[str, type[Any]] = {
    "GetStatus": pb.GetStatusRequest,
    "GetHistory": pb.GetHistoryRequest,
    "FindDigest": pb.FindDigestRequest,
    "GetVersionAt": pb.GetVersionAtRequest,
    "GetVersion": pb.GetVersionRequest,
    "BeginRun": pb.BeginRunRequest,
    "RecordAccesses": pb.RecordAccessesRequest,
    "EndRun": pb.EndRunRequest,
    "GetRun": pb.GetRunRequest,
    "ListRuns": pb.ListRunsRequest,
    "GetLineage": pb.GetLineageRequest,
    "Verify": pb.VerifyRequest,
    "Subscribe": pb.SubscribeRequest,
}
WRITES = {"BeginRun", "RecordAccesses", "EndRun"}
REFUSALS = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND}
DESERIALIZATION = "Exception deserializing request!"
FUZZ = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture(scope="module")
def fuzz_daemon(module_daemon: DaemonProcess) -> Iterator[DaemonProcess]:
    """The module daemon with one file and one finished run to aim at."""
    client = module_daemon.client()
    path = module_daemon.data / "seed.csv"
    path.write_bytes(b"seed")
    wait_for(lambda: _indexed(client, path), what="seed.csv indexed")
    with client.run("seed") as run:
        run.input(path)
    yield module_daemon


def _indexed(client: Any, path: Any) -> bool:
    try:
        return bool(client.history(path).items[0].digest == b3(b"seed"))
    except LineageError:
        return False


@pytest.fixture
def channel(fuzz_daemon: DaemonProcess) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(f"unix:{fuzz_daemon.socket}") as opened:
        yield opened


@pytest.fixture
def unchanged(fuzz_daemon: DaemonProcess) -> Iterator[None]:
    """The store's logical content is the same after the test, and the daemon still answers."""
    before = fuzz_daemon.logical_digest()
    yield
    assert fuzz_daemon.alive(), fuzz_daemon.log_text()[-4000:]
    assert fuzz_daemon.client().status().serving
    assert fuzz_daemon.logical_digest() == before, "a refused request changed the store"
    # grpc logs its own deserialization failures with a traceback; ours must never appear.
    assert "raised an unexpected exception" not in fuzz_daemon.log_text()


def call(channel: grpc.Channel, method: str, payload: bytes) -> tuple[grpc.StatusCode, str]:
    """Send raw bytes; (status code, details)."""
    try:
        if method == "Subscribe":
            stream = channel.unary_stream(SERVICE + method)(payload, timeout=0.3)
            for _ in stream:
                pass
        else:
            channel.unary_unary(SERVICE + method)(payload, timeout=10)
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


def check(method: str, code: grpc.StatusCode, details: str, *, parsed: bool) -> None:
    if code == grpc.StatusCode.INTERNAL:
        assert not parsed and details == DESERIALIZATION, (method, details)
        return
    if method == "Subscribe" and code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return  # an accepted subscription streams until the caller's deadline
    if method in WRITES:
        assert code in REFUSALS, (method, code, details)
    else:
        assert code in REFUSALS | {grpc.StatusCode.OK}, (method, code, details)
    if code != grpc.StatusCode.OK:
        assert details and "Traceback" not in details


def _valid_write(method: str, payload: bytes) -> bool:
    """True when raw bytes happen to form a write request the daemon would accept."""
    try:
        message = REQUESTS[method].FromString(payload)
        if method == "BeginRun":
            gate.parse_begin_run(message, now=0)
            return True
    except Exception:
        return False
    return False  # RecordAccesses/EndRun name a run id that does not exist: NOT_FOUND


@pytest.mark.parametrize("method", sorted(REQUESTS))
@FUZZ
@given(payload=st.binary(max_size=200))
def test_raw_bytes(channel: grpc.Channel, unchanged: None, method: str, payload: bytes) -> None:
    assume(method not in WRITES or not _valid_write(method, payload))
    try:
        REQUESTS[method].FromString(payload)
        parsed = True
    except Exception:
        parsed = False
    code, details = call(channel, method, payload)
    check(method, code, details, parsed=parsed)


# --- structured bad messages -------------------------------------------------------------

bad_strings = st.sampled_from(
    ["", "relative/path", "/data/../etc/passwd", "../../x", "/a/\x00b", "\x00", "/a/./b",
     "//x", "/x/", "/" + "a" * 5000, "a" * 70_000, "ab" * 40, "zzzzzzzz", "abc"]
)  # fmt: skip
any_strings = bad_strings | st.text(max_size=30)
enum_numbers = st.integers(-(2**31), 2**31 - 1)
int32s = st.sampled_from([-(2**31), -1, 0, 1001, 10**6, 2**31 - 1]) | st.integers(
    -(2**31), 2**31 - 1
)
int64s = st.sampled_from([-(2**63), -1, 0, 2**63 - 1]) | st.integers(-(2**63), 2**63 - 1)
timestamps = st.builds(
    timestamp_pb2.Timestamp,
    seconds=st.sampled_from([-(2**62), -(10**12), 0, 10**12, 2**62]) | st.integers(-(2**40), 2**40),
    nanos=st.sampled_from([-1, 0, 10**9, 2**31 - 1]) | st.integers(-(2**31), 2**31 - 1),
)
run_ids = st.sampled_from(["", "nope", "x" * 300, "has space", "a\x00b"]) | st.uuids().map(
    lambda u: u.hex
)
start_nodes = st.one_of(
    st.builds(lambda p: pb.StartNode(path=p), any_strings),
    st.builds(lambda p, t: pb.StartNode(path_at=pb.PathAt(path=p, at=t)), any_strings, timestamps),
    st.builds(lambda d: pb.StartNode(digest=d), any_strings),
    st.builds(lambda v: pb.StartNode(version_id=v), int64s),
    st.builds(lambda r: pb.StartNode(run_id=r), run_ids),
    st.just(pb.StartNode()),
)


def _begin_run(field: str, value: Any) -> pb.BeginRunRequest:
    """A valid BeginRun with exactly one bad field, so nothing may be recorded."""
    request = pb.BeginRunRequest(name="fuzz", argv=["x"], cwd="/tmp", pid=1)
    if field == "argv":
        request.argv.extend(value)
    elif field == "params":
        request.params.update(value)
    elif field in ("started_at",):
        request.started_at.CopyFrom(value)
    elif field == "source":
        request.code.sources.add(path=value[0], digest=value[1])
    elif field == "env_vars":
        request.env.variables.update(value)
    else:
        setattr(request, field, value)
    return request


bad_begin_runs = st.one_of(
    st.builds(lambda v: _begin_run("name", v), st.sampled_from(["", " ", "a\x00", "n" * 2000])),
    st.builds(lambda v: _begin_run("cwd", v), st.sampled_from(["rel", "/a/../b", "/a\x00", "/x/"])),
    st.builds(lambda v: _begin_run("pid", v), st.sampled_from([-1, 2**31, 2**63 - 1])),
    st.builds(lambda v: _begin_run("parent_run_id", v), st.sampled_from(["a b", "\x00", "x" * 300])),
    st.builds(lambda v: _begin_run("started_at", v), timestamps.filter(lambda t: not 0 <= t.nanos < 10**9)),
    st.builds(lambda v: _begin_run("argv", v), st.sampled_from([["a\x00"], ["x"] * 10_001])),
    st.builds(lambda v: _begin_run("params", v), st.sampled_from([{"k": "\x00"}, {"\x00": "v"}])),
    st.builds(lambda v: _begin_run("source", v), st.sampled_from([("rel", "ab" * 32), ("/a", "xyz")])),
    st.builds(lambda v: _begin_run("env_vars", v), st.sampled_from([{"A": "b\x00"}])),
)  # fmt: skip


def _accesses(count: int, path: str, mode: int, digest: str) -> pb.RecordAccessesRequest:
    access = pb.Access(path=path, mode=mode, digest=digest)  # type: ignore[arg-type]
    return pb.RecordAccessesRequest(run_id=uuid.uuid4().hex, accesses=[access] * count)


def _accesses_of(
    paths: list[str],
    modes: list[int],
    firsts: list[timestamp_pb2.Timestamp],
    lasts: list[timestamp_pb2.Timestamp],
    digests: list[str],
) -> pb.RecordAccessesRequest:
    """Accesses that differ in every field: bad times, last before first, unknown modes."""
    accesses = [
        pb.Access(path=path, mode=mode, first_at=first, last_at=last, digest=digest)  # type: ignore[arg-type]
        for path, mode, first, last, digest in zip(
            paths, modes, firsts, lasts, digests, strict=False
        )
    ]
    return pb.RecordAccessesRequest(run_id=uuid.uuid4().hex, accesses=accesses)


structured: dict[str, Any] = {
    "GetHistory": st.builds(pb.GetHistoryRequest, path=any_strings, page_size=int32s, page_token=any_strings),
    "FindDigest": st.builds(pb.FindDigestRequest, digest=any_strings, page_size=int32s),
    "GetVersionAt": st.builds(pb.GetVersionAtRequest, path=any_strings, at=timestamps),
    "GetVersion": st.builds(pb.GetVersionRequest, version_id=int64s),
    "BeginRun": bad_begin_runs,
    "RecordAccesses": st.builds(
        _accesses, st.sampled_from([1, 3]), any_strings, enum_numbers, st.sampled_from(["", "xyz", "ab" * 32])
    )
    # Over the per-call cap, but short paths: under 4 MiB, so our check answers, not grpc's limit.
    | st.builds(
        _accesses, st.just(limits.MAX_ACCESSES + 1), any_strings.filter(lambda p: len(p) < 100),
        enum_numbers, st.sampled_from(["", "ab" * 32]),
    )
    | st.builds(pb.RecordAccessesRequest, run_id=run_ids)
    | st.builds(
        _accesses_of, st.lists(any_strings, max_size=3), st.lists(enum_numbers, max_size=3),
        st.lists(timestamps, max_size=3), st.lists(timestamps, max_size=3),
        st.lists(st.sampled_from(["", "xyz", "ab" * 32]), max_size=3),
    ),
    "EndRun": st.builds(
        pb.EndRunRequest, run_id=run_ids, status=enum_numbers, ended_at=timestamps,
        warnings=st.lists(any_strings, max_size=3),
    ),
    "GetRun": st.builds(pb.GetRunRequest, run_id=run_ids),
    "ListRuns": st.builds(
        pb.ListRunsRequest, name=any_strings, status=enum_numbers, since=timestamps,
        until=timestamps, page_size=int32s, page_token=any_strings,
    ),
    "GetLineage": st.builds(
        pb.GetLineageRequest, start=start_nodes, direction=enum_numbers, max_depth=int32s,
        max_nodes=int32s,
    ),
    "Verify": st.builds(pb.VerifyRequest, start=start_nodes),
    "Subscribe": st.builds(pb.SubscribeRequest, path_prefix=bad_strings),
}  # fmt: skip


@pytest.mark.parametrize("method", sorted(structured))
@FUZZ
@given(data=st.data())
def test_structured_bad_messages(
    channel: grpc.Channel, unchanged: None, method: str, data: st.DataObject
) -> None:
    message = data.draw(structured[method])
    code, details = call(channel, method, message.SerializeToString())
    check(method, code, details, parsed=True)


def test_huge_repeated_fields_are_refused_with_a_reason(
    channel: grpc.Channel, unchanged: None
) -> None:
    request = _accesses(limits.MAX_ACCESSES + 1, "/tmp/x", pb.ACCESS_MODE_READ, "")
    code, details = call(channel, "RecordAccesses", request.SerializeToString())
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "send at most 10000 per call" in details

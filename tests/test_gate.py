"""One gate for input: a real daemon holds every request to ``lineage_core.limits`` at the gRPC
edge, with the gate's message, and a value at the limit goes through whole."""

from __future__ import annotations

import ast
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from lineage_core import limits
from lineage_core._proto.lineage.v1 import lineage_pb2 as pb
from lineage_core._proto.lineage.v1 import lineage_pb2_grpc as pb_grpc
from lineage_core.errors import NotFound

from tests.conftest import DaemonProcess
from tests.helpers import wait_for


@pytest.fixture(scope="module")
def stub(module_daemon: DaemonProcess) -> Iterator[pb_grpc.LineageServiceStub]:
    # Answers up to what the Python client accepts, as it does.
    options = [("grpc.max_receive_message_length", limits.MAX_ANSWER_BYTES)]
    with grpc.insecure_channel(f"unix:{module_daemon.socket}", options=options) as channel:
        yield pb_grpc.LineageServiceStub(channel)


def _refused(call: object, request: object) -> str:
    with pytest.raises(grpc.RpcError) as caught:
        call(request, timeout=30)  # type: ignore[operator]
    error = caught.value
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT, error.details()
    return str(error.details())


def _begin(stub: pb_grpc.LineageServiceStub, name: str = "gate") -> str:
    return str(stub.BeginRun(pb.BeginRunRequest(name=name, argv=["x"]), timeout=30).run.run_id)


def test_a_run_name_is_held_to_one_limit(stub: pb_grpc.LineageServiceStub) -> None:
    longest = "n" * limits.MAX_RUN_NAME
    run_id = _begin(stub, longest)
    assert stub.GetRun(pb.GetRunRequest(run_id=run_id), timeout=30).run.name == longest
    runs = stub.ListRuns(pb.ListRunsRequest(), timeout=30).runs
    message = _refused(stub.BeginRun, pb.BeginRunRequest(name=longest + "n", argv=["x"]))
    assert f"1 to {limits.MAX_RUN_NAME} characters" in message
    assert len(stub.ListRuns(pb.ListRunsRequest(), timeout=30).runs) == len(runs)


def test_warnings_and_capture_reasons_are_held_at_the_edge(
    stub: pb_grpc.LineageServiceStub,
) -> None:
    run_id = _begin(stub)
    too_many = ["w"] * (limits.MAX_WARNINGS + 1)
    ended = pb.RUN_STATUS_SUCCEEDED
    message = _refused(
        stub.EndRun, pb.EndRunRequest(run_id=run_id, status=ended, warnings=too_many)
    )
    assert f"at most {limits.MAX_WARNINGS}" in message
    too_long = ["w" * (limits.MAX_WARNING_CHARS + 1)]
    message = _refused(
        stub.EndRun, pb.EndRunRequest(run_id=run_id, status=ended, warnings=too_long)
    )
    assert f"longer than {limits.MAX_WARNING_CHARS} characters" in message
    both = pb.RunCapture(complete=True, reasons=["missed a read"], method="preload")
    message = _refused(stub.EndRun, pb.EndRunRequest(run_id=run_id, status=ended, capture=both))
    assert "complete capture" in message
    # Nothing of the refused calls stuck: the run is still running, and the limit itself passes.
    running = stub.GetRun(pb.GetRunRequest(run_id=run_id), timeout=30).run
    assert running.status == pb.RUN_STATUS_RUNNING
    most = ["w" * limits.MAX_WARNING_CHARS] * limits.MAX_WARNINGS
    stub.EndRun(pb.EndRunRequest(run_id=run_id, status=ended, warnings=most), timeout=30)
    done = stub.GetRun(pb.GetRunRequest(run_id=run_id), timeout=30).run
    assert list(done.warnings) == most


def test_run_ids_and_walks_are_held_to_the_limits(stub: pb_grpc.LineageServiceStub) -> None:
    message = _refused(stub.GetRun, pb.GetRunRequest(run_id="a" * (limits.MAX_RUN_ID + 1)))
    assert f"1 to {limits.MAX_RUN_ID} characters" in message
    start = pb.StartNode(run_id=_begin(stub))
    upstream = pb.DIRECTION_UPSTREAM
    for field, limit in (("max_depth", limits.MAX_DEPTH), ("max_nodes", limits.MAX_NODES)):
        request = pb.GetLineageRequest(start=start, direction=upstream, **{field: limit + 1})
        assert f"{field} must be between 1 and {limit}" in _refused(stub.GetLineage, request)
        request = pb.GetLineageRequest(start=start, direction=upstream, **{field: limit})
        assert stub.GetLineage(request, timeout=30).graph.start


def _runs_reading(
    stub: pb_grpc.LineageServiceStub, path: str, count: int, env: pb.EnvState
) -> None:
    """``count`` finished runs that each read ``path``, all in one environment."""
    read = pb.Access(path=path, mode=pb.ACCESS_MODE_READ)
    for _ in range(count):
        begin = pb.BeginRunRequest(name="wide", argv=["x"], env=env)
        run_id = stub.BeginRun(begin, timeout=30).run.run_id
        stub.RecordAccesses(pb.RecordAccessesRequest(run_id=run_id, accesses=[read]), timeout=30)
        stub.EndRun(pb.EndRunRequest(run_id=run_id, status=pb.RUN_STATUS_SUCCEEDED), timeout=30)


def _indexed(daemon: DaemonProcess, path: Path) -> None:
    client = daemon.client()

    def seen() -> bool:
        try:
            return bool(client.history(path).items)
        except NotFound:
            return False

    wait_for(seen, what=f"{path.name} indexed")


def test_a_graph_may_be_bigger_than_a_request(
    module_daemon: DaemonProcess, stub: pb_grpc.LineageServiceStub
) -> None:
    """A request is held to 4 MiB; a downstream graph of 600 runs, each carrying its
    200-package environment whole, is about 7 MiB and comes back whole."""
    path = module_daemon.data / "popular.csv"
    path.write_bytes(b"used by many runs\n")
    _indexed(module_daemon, path)
    packages = [f"package-number-{i:03d}-with-a-long-name==1.{i}.0" for i in range(200)]
    env = pb.EnvState(python_version="3.11.9", packages=packages)
    _runs_reading(stub, str(path), 600, env)
    start = pb.StartNode(path=str(path))
    request = pb.GetLineageRequest(start=start, direction=pb.DIRECTION_DOWNSTREAM)
    answer = stub.GetLineage(request, timeout=60)
    assert answer.ByteSize() > limits.DEFAULT_MAX_MESSAGE_BYTES
    assert len(answer.graph.runs) == 600 and not answer.graph.truncated
    assert all(list(run.env.packages) == packages for run in answer.graph.runs)


def test_a_graph_bigger_than_an_answer_may_be_is_refused_with_what_to_ask(
    make_daemon: Callable[..., DaemonProcess],
) -> None:
    daemon = make_daemon("--max-message-bytes", str(32 << 20))
    path = daemon.data / "popular.csv"
    path.write_bytes(b"used by many runs\n")
    _indexed(daemon, path)
    huge = pb.EnvState(packages=[f"{i:05d}" + "p" * 995 for i in range(limits.MAX_REPEATED)])
    with grpc.insecure_channel(
        f"unix:{daemon.socket}",
        options=[
            ("grpc.max_send_message_length", 32 << 20),
            ("grpc.max_receive_message_length", limits.MAX_ANSWER_BYTES),
        ],
    ) as channel:
        stub = pb_grpc.LineageServiceStub(channel)
        _runs_reading(stub, str(path), 7, huge)  # 7 runs of 10 MB: more than 64 MiB
        start = pb.StartNode(path=str(path))
        request = pb.GetLineageRequest(start=start, direction=pb.DIRECTION_DOWNSTREAM)
        with pytest.raises(grpc.RpcError) as caught:
            stub.GetLineage(request, timeout=120)
        assert caught.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "ask for fewer nodes (max_nodes)" in str(caught.value.details())
        request.max_nodes = 4  # the version and three runs: 30 MB
        assert len(stub.GetLineage(request, timeout=120).graph.runs) == 3


def test_every_limit_is_defined_once() -> None:
    """No module of the daemon or the client defines a limit of ``lineage_core.limits`` again
    (the engine, the store and the wire codecs once each had their own, and disagreed)."""
    names = set(limits.__all__)
    repo = Path(__file__).resolve().parent.parent
    again = []
    for path in sorted([*(repo / "lineaged").rglob("*.py"), *(repo / "clients").rglob("*.py")]):
        if "_proto" in path.parts or path.name == "limits.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            targets = (
                node.targets
                if isinstance(node, ast.Assign)
                else [node.target]
                if isinstance(node, ast.AnnAssign)
                else []
            )
            again += [
                f"{path.relative_to(repo)}:{node.lineno} {target.id}"
                for target in targets
                if isinstance(target, ast.Name) and target.id.lstrip("_") in names
            ]
    assert again == []

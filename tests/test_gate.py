"""One gate for input: a real daemon holds every request to ``lineage_core.limits`` at the gRPC
edge, with the gate's message, and a value at the limit goes through whole."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from lineage_core import limits
from lineage_core._proto.lineage.v1 import lineage_pb2 as pb
from lineage_core._proto.lineage.v1 import lineage_pb2_grpc as pb_grpc

from tests.conftest import DaemonProcess


@pytest.fixture(scope="module")
def stub(module_daemon: DaemonProcess) -> Iterator[pb_grpc.LineageServiceStub]:
    with grpc.insecure_channel(f"unix:{module_daemon.socket}") as channel:
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

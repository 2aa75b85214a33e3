"""The domain values are frozen, slotted dataclasses (docs/design.md), and every closed set of
strings among their fields is a ``StrEnum`` whose members the store and the wire give back."""

from __future__ import annotations

import dataclasses
import json
import shutil
import uuid
from enum import StrEnum
from pathlib import Path

import pytest
from lineage_client import Client, render
from lineage_core import gate, models, wire
from lineage_core._proto.lineage.v1 import lineage_pb2 as pb
from lineage_core.errors import InvalidArgument, NotFound
from lineage_core.models import (
    Access,
    AccessHow,
    AccessMode,
    AccessRole,
    Direction,
    EdgeKind,
    EventKind,
    RunStart,
    RunStatus,
    StartNode,
)

from lineaged.store import Store
from tests.conftest import DaemonProcess
from tests.helpers import wait_for

MODELS = [
    value
    for value in vars(models).values()
    if isinstance(value, type) and dataclasses.is_dataclass(value)
]


def test_every_model_is_a_frozen_slotted_dataclass() -> None:
    assert len(MODELS) >= 17
    for cls in MODELS:
        assert cls.__dataclass_params__.frozen, cls  # type: ignore[attr-defined]
        assert "__slots__" in cls.__dict__, cls


# --- closed sets of strings are enums, wherever a value is built --------------------------


def _is_member(value: object, enum: type[StrEnum]) -> bool:
    return type(value) is enum


def test_values_decoded_from_the_store_are_enum_members(tmp_path: Path) -> None:
    """Edges, run files, accesses and datasets read back from SQLite carry members."""
    store = Store.open(tmp_path / "lineaged.db")
    try:
        store.begin()
        source = store.record_external("/elsewhere/train.py", "01" * 32, 1, 1, 1_000)
        model = store.record_external("/elsewhere/model.pkl", "02" * 32, 1, 2, 2_000)
        copy = store.record_external("/elsewhere/copy.pkl", "02" * 32, 1, 3, 3_000)
        run_id = store.begin_run(RunStart(name="train", started_at=10_000))
        read = Access("/elsewhere/train.py", AccessMode.READ, 10_000, 10_000, role=AccessRole.CODE)
        wrote = Access("/elsewhere/model.pkl", AccessMode.WRITE, 10_000, 10_000)
        store.link(run_id, source, EdgeKind.READ, read)
        store.link(
            run_id, model, EdgeKind.WROTE, dataclasses.replace(wrote, how=AccessHow.DECLARED)
        )
        store.add_accesses(run_id, [wrote])
        (access,) = store.run_accesses(run_id, AccessMode.WRITE)
        store.end_run(run_id, exit_code=0, status=RunStatus.SUCCEEDED, ended_at=20_000, warnings=())
        store.commit()

        assert _is_member(access.how, AccessHow) and _is_member(access.role, AccessRole)
        graph = store.lineage(
            StartNode(version_id=copy), Direction.UPSTREAM, max_depth=10, max_nodes=100
        )
        assert {(e.kind, e.how, e.role) for e in graph.edges} == {
            (EdgeKind.READ, AccessHow.TRACED, AccessRole.CODE),
            (EdgeKind.WROTE, AccessHow.DECLARED, AccessRole.DATA),
            (EdgeKind.SAME_DIGEST, AccessHow.DIGEST, AccessRole.DATA),
        }
        for edge in graph.edges:
            assert _is_member(edge.kind, EdgeKind), edge
            assert _is_member(edge.how, AccessHow), edge
            assert _is_member(edge.role, AccessRole), edge
        files = store.run_files(run_id)
        assert {(f.kind, f.role) for f in files} == {
            (EdgeKind.READ, AccessRole.CODE),
            (EdgeKind.WROTE, AccessRole.DATA),
        }
        assert all(_is_member(f.kind, EdgeKind) and _is_member(f.role, AccessRole) for f in files)
        datasets = store.run_datasets(run_id)
        assert [kind for kind, _, _ in datasets] == [EdgeKind.WROTE]
        assert all(_is_member(kind, EdgeKind) for kind, _, _ in datasets)
    finally:
        store.close()


def test_values_decoded_from_the_wire_are_enum_members() -> None:
    """Every codec that reads one of these sets back gives a member, defaults included."""
    access = gate.parse_access(
        pb.Access(
            path="/elsewhere/x",
            mode=pb.ACCESS_MODE_READ,
            how=pb.ACCESS_HOW_DECLARED,
            role=pb.ACCESS_ROLE_CODE,
        ),
        "accesses[0]",
        now=1,
    )
    assert _is_member(access.how, AccessHow) and _is_member(access.role, AccessRole)
    unset = gate.parse_access(pb.Access(path="/elsewhere/x", mode=pb.ACCESS_MODE_READ), "a", now=1)
    assert (unset.how, unset.role) == (AccessHow.TRACED, AccessRole.DATA)
    assert _is_member(unset.how, AccessHow) and _is_member(unset.role, AccessRole)

    graph = wire.graph_from_pb(
        pb.Graph(
            edges=[
                pb.Edge(
                    source="version:1",
                    target="version:2",
                    kind=pb.EDGE_KIND_SAME_DIGEST,
                    how=pb.ACCESS_HOW_DIGEST,
                ),
                pb.Edge(source="run:r", target="version:1"),  # all unset: the defaults
            ]
        )
    )
    assert [(e.kind, e.how, e.role) for e in graph.edges] == [
        (EdgeKind.SAME_DIGEST, AccessHow.DIGEST, AccessRole.DATA),
        (EdgeKind.READ, AccessHow.TRACED, AccessRole.DATA),
    ]
    for edge in graph.edges:
        assert _is_member(edge.kind, EdgeKind) and _is_member(edge.how, AccessHow)
        assert _is_member(edge.role, AccessRole)

    version = pb.Version(id=1, path="/elsewhere/x", digest="01" * 32)
    run_file = wire.run_file_from_pb(pb.RunFile(version=version, kind="wrote", role="code"))
    assert (run_file.kind, run_file.role) == (EdgeKind.WROTE, AccessRole.CODE)
    assert _is_member(run_file.kind, EdgeKind) and _is_member(run_file.role, AccessRole)
    # What the daemon sends is what it stored: plain text on the wire, as before.
    sent = wire.run_file_to_pb(run_file)
    assert (sent.kind, sent.role) == ("wrote", "code")

    event = wire.event_from_pb(pb.Event(version=version))
    assert _is_member(event.kind, EventKind) and event.kind is EventKind.VERSION
    assert wire.event_from_pb(pb.Event()).kind is EventKind.UNKNOWN


def _bridged(client: Client, copy: Path) -> bool:
    try:
        return any(edge.kind is EdgeKind.SAME_DIGEST for edge in client.trace(str(copy)).edges)
    except NotFound:  # not hashed yet
        return False


@pytest.fixture
def client(module_daemon: DaemonProcess) -> Client:
    return module_daemon.client()


def test_a_graph_through_a_real_daemon_has_members_and_its_json_plain_strings(
    client: Client, module_daemon: DaemonProcess
) -> None:
    """A declared run read back through the daemon and the Python client: enum members in
    the values, the same plain strings as before in ``--json`` (docs/json.md)."""
    area = module_daemon.data / f"enums-{uuid.uuid4().hex[:8]}"
    area.mkdir()
    (area / "train.py").write_text("print('train')\n")
    (area / "in.csv").write_text("a,b\n")
    with client.run("train") as run:
        run.input(area / "train.py", role="code")
        run.input(area / "in.csv")
        (area / "model.pkl").write_bytes(b"weights for enums")
        run.output(area / "model.pkl")
    assert run.result is not None
    with pytest.raises(InvalidArgument, match="role is data or code"):
        run.input(area / "in.csv", role="model")
    shutil.copy(area / "model.pkl", area / "copy.pkl")
    wait_for(lambda: _bridged(client, area / "copy.pkl"), what="the copy bridged to the model")
    graph = client.trace(str(area / "copy.pkl"))
    # (The recorder adds the modules this process loaded as traced code reads.)
    assert {(e.kind, e.how, e.role) for e in graph.edges} >= {
        (EdgeKind.READ, AccessHow.DECLARED, AccessRole.CODE),
        (EdgeKind.READ, AccessHow.DECLARED, AccessRole.DATA),
        (EdgeKind.WROTE, AccessHow.DECLARED, AccessRole.DATA),
        (EdgeKind.SAME_DIGEST, AccessHow.DIGEST, AccessRole.DATA),
    }
    for edge in graph.edges:
        assert _is_member(edge.kind, EdgeKind) and _is_member(edge.how, AccessHow)
        assert _is_member(edge.role, AccessRole)
    files = client.run_files(run.result.run_id).files
    assert all(_is_member(f.kind, EdgeKind) and _is_member(f.role, AccessRole) for f in files)

    # The JSON objects hold plain str, and the printed JSON the same strings as ever.
    graph_json = render.graph_json(graph)
    assert {type(edge["kind"]) for edge in graph_json["edges"]} == {str}
    traced = module_daemon.run_cli("trace", "--json", str(area / "copy.pkl"))
    assert traced.returncode == 0, traced.stderr
    assert "Kind" not in traced.stdout and "AccessHow" not in traced.stdout
    assert {e["kind"] for e in json.loads(traced.stdout)["edges"]} == {
        "read",
        "wrote",
        "same_digest",
    }
    detail = render.run_detail_json(run.result, client.trace(run.result.run_id))
    for item in detail["inputs"] + detail["outputs"]:
        assert type(item["how"]) is str and type(item["role"]) is str
    shown = module_daemon.run_cli("show", "--json", run.result.run_id)
    assert shown.returncode == 0, shown.stderr
    inputs = json.loads(shown.stdout)["inputs"]
    assert {(i["how"], i["role"]) for i in inputs} == {
        ("declared", "code"),
        ("declared", "data"),
        ("traced", "code"),  # the modules this process loaded
    }

"""Copies are copies: a version whose bytes equal a version another run wrote is shown as
"same bytes as X", with X "written by" that run, never as written by it — and the text trace,
``trace --json`` and ``verify`` credit the same runs. ``verify`` of a target that no longer
exists says so."""

from __future__ import annotations

import json
import re
import shutil
import uuid
from pathlib import Path

from lineage_client import Client
from lineage_core.errors import NotFound
from lineage_core.models import Direction

from tests.conftest import DaemonProcess
from tests.helpers import wait_for


def indexed(client: Client, path: Path) -> bool:
    try:
        return bool(client.history(path).items)
    except NotFound:
        return False


def declared_run(client: Client, name: str, source: Path, output: Path, data: bytes) -> str:
    with client.run(name, capture=False) as run:
        run.input(source)
        output.write_bytes(data)
        run.output(output)
    return run.run_id


def answers(daemon: DaemonProcess, target: Path) -> tuple[list[str], dict, dict, int]:  # type: ignore[type-arg]
    """(text tree lines, trace JSON, verify JSON, verify exit status) for ``target``."""
    text = daemon.run_cli("trace", "--full", str(target))
    assert text.returncode == 0, text.stderr
    as_json = daemon.run_cli("trace", "--json", str(target))
    assert as_json.returncode == 0, as_json.stderr
    verify = daemon.run_cli("verify", "--json", str(target))
    return (
        text.stdout.splitlines(),
        json.loads(as_json.stdout),
        json.loads(verify.stdout),
        (verify.returncode),
    )


def text_runs(lines: list[str]) -> dict[str, str]:
    """run id -> how the text tree reaches it: "writer" (written by, under the start) or
    "copy" (written by, under a "same bytes as" line)."""
    found: dict[str, str] = {}
    via_copy_depth: int | None = None
    for line in lines[1:]:
        depth = len(re.match(r"^[│ ]*", line).group(0)) // 3  # type: ignore[union-attr]
        if via_copy_depth is not None and depth <= via_copy_depth:
            via_copy_depth = None
        if "same bytes as" in line:
            via_copy_depth = depth
        match = re.search(r"written by run ([0-9a-f]{32})", line)
        if match:
            found[match.group(1)] = "copy" if via_copy_depth is not None else "writer"
    return found


def json_runs(graph: dict, target: Path) -> dict[str, str]:  # type: ignore[type-arg]
    """run id -> "writer" (a wrote edge into the target's version) or "copy" (into a version
    bridged to it by same_digest)."""
    start = next(n["id"] for n in graph["nodes"] if n.get("path") == str(target))
    copies = {e["source"] for e in graph["edges"] if e["kind"] == "same_digest"}
    copies &= {e["source"] for e in graph["edges"] if e["target"] == start}
    found: dict[str, str] = {}
    for edge in graph["edges"]:
        if edge["kind"] != "wrote":
            continue
        run_id = edge["source"].removeprefix("run:")
        if edge["target"] == start:
            found[run_id] = "writer"
        elif edge["target"] in copies:
            found.setdefault(run_id, "copy")
    return found


def test_text_json_and_verify_agree_on_copies(module_daemon: DaemonProcess) -> None:
    client = module_daemon.client()
    tag = uuid.uuid4().hex[:6]
    first_input = module_daemon.data / f"a-{tag}.csv"
    first_input.write_bytes(b"a\n" + tag.encode())
    second_input = module_daemon.data / f"b-{tag}.csv"
    second_input.write_bytes(b"b\n" + tag.encode())
    weights = b"weights " + tag.encode()
    original = module_daemon.models / f"m1-{tag}.bin"
    maker = declared_run(client, "make", first_input, original, weights)

    # A plain copy: no run wrote it.
    copy = module_daemon.models / f"copy-{tag}.bin"
    shutil.copyfile(original, copy)
    wait_for(lambda: indexed(client, copy), what="the copy to be indexed")
    lines, graph, verify, status = answers(module_daemon, copy)
    assert text_runs(lines) == json_runs(graph, copy) == {maker: "copy"}
    assert any(f"same bytes as {original}" in line for line in lines)
    assert {i["run_id"] for i in verify["items"]} == {maker}
    assert [i["path"] for i in verify["items"]] == [str(first_input)]
    assert status == 0 and verify["ok"] and verify["target_exists"]

    # Another run that made the same bytes: its own writer, the first run a copy's writer.
    again = module_daemon.models / f"m2-{tag}.bin"
    remaker = declared_run(client, "remake", second_input, again, weights)
    lines, graph, verify, status = answers(module_daemon, again)
    assert text_runs(lines) == json_runs(graph, again) == {remaker: "writer", maker: "copy"}
    assert {i["run_id"] for i in verify["items"]} == {maker, remaker}
    assert status == 0

    # The target deleted: verify says so, and fails.
    again.unlink()
    wait_for(
        lambda: client.history(again).items[0].valid_until is not None,
        what="the deletion to be recorded",
    )
    done = module_daemon.run_cli("verify", str(again))
    assert done.returncode == 1
    assert f"the target {again} no longer exists" in done.stdout
    assert "all inputs match" not in done.stdout
    as_json = json.loads(module_daemon.run_cli("verify", "--json", str(again)).stdout)
    assert as_json["target_exists"] is False and as_json["ok"] is False
    # Still its inputs are the same answer as trace's.
    graph = client.lineage(str(again), Direction.UPSTREAM)
    assert {r.run_id for r in graph.runs} == {i["run_id"] for i in as_json["items"]}

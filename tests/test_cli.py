"""The ``lineage`` CLI against a real lineaged: output, ``--json`` keys, formats, exit codes.

Most tests call ``cli.main`` in-process (fast); a few run the real command in a subprocess
to pin what a shell sees (exit status, stderr).
"""

from __future__ import annotations

import json
import re
import shutil
import sys
import types
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from lineage_client import Client, cli
from lineage_core.models import Run, Version

from tests.conftest import DaemonProcess
from tests.helpers import b3, wait_for

RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")
VERSION_NODE_KEYS = {"id", "kind", "path", "digest", "size", "valid_from", "valid_until"}
RUN_NODE_KEYS = {
    "id", "kind", "run_id", "name", "argv", "cwd", "started_at", "ended_at", "exit_code",
    "status", "code", "env", "capture",
}  # fmt: skip
VERSION_KEYS = {
    "id", "version_id", "path", "digest", "size", "mtime", "valid_from", "valid_until", "seen",
    "closed_by", "external",
}  # fmt: skip


@dataclass
class Scenario:
    """data/train.csv --read--> run "train" --wrote--> models/model.pkl, plus an outside file."""

    daemon: DaemonProcess
    train: Path
    model: Path
    outside: Path
    run: Run
    model_version: Version


def wait_current(client: Client, path: Path, digest: str) -> Version:
    def current() -> Version | None:
        try:
            items = client.history(path, page_size=1).items
        except Exception:
            return None
        return items[0] if items and items[0].digest == digest else None

    found = wait_for(current, what=f"{path} indexed")
    assert isinstance(found, Version)
    return found


@pytest.fixture(scope="module")
def scenario(module_daemon: DaemonProcess) -> Scenario:
    client = module_daemon.client()
    name = uuid.uuid4().hex[:6]
    train = module_daemon.data / f"train-{name}.csv"
    model = module_daemon.models / f"model-{name}.pkl"
    outside = module_daemon.base / f"params-{name}.json"
    train.write_bytes(b"x,y\n1,2\n")
    outside.write_bytes(b'{"lr": 0.1}')
    wait_current(client, train, b3(train.read_bytes()))
    with client.run(
        "train", params={"lr": "0.1"}, argv=["python", "train.py"], capture=False
    ) as run:
        run.input(train)
        run.input(outside)
        model.write_bytes(b"weights " + name.encode())
        run.output(model)
    assert run.result is not None
    model_version = wait_current(client, model, b3(model.read_bytes()))
    return Scenario(module_daemon, train, model, outside, run.result, model_version)


@pytest.fixture
def lineage(
    module_daemon: DaemonProcess, capsys: pytest.CaptureFixture[str]
) -> Callable[..., tuple[int, str, str]]:
    """Run ``lineage --socket S ARGS...`` in-process: (exit code, stdout, stderr)."""

    def run(*args: str) -> tuple[int, str, str]:
        code = cli.main(["--socket", str(module_daemon.socket), *args])
        out, err = capsys.readouterr()
        return code, out, err

    return run


def test_status_human_and_json_before_or_after_the_command(lineage, module_daemon) -> None:
    code, out, _ = lineage("status")
    assert code == 0
    assert f"pid {module_daemon.proc.pid}" in out and str(module_daemon.data) in out
    for args in (("--json", "status"), ("status", "--json")):
        code, out, _ = lineage(*args)
        data = json.loads(out)
        assert code == 0 and data["pid"] == module_daemon.proc.pid and data["serving"] is True
        assert set(data) == {
            "version", "pid", "started_at", "uptime_seconds", "serving", "state_dir", "socket",
            "roots", "counts", "scan", "queue_depth", "degraded", "openlineage",
        }  # fmt: skip
        assert data["openlineage"] == {"transport": None, "backlog": 0, "last_error": None}
        assert {r["role"] for r in data["roots"]} == {"data", "model"}
        assert RFC3339.fullmatch(data["started_at"])


def test_log(lineage, scenario: Scenario) -> None:
    digest = b3(scenario.train.read_bytes())
    code, out, _ = lineage("log", str(scenario.train))
    assert code == 0 and digest[:12] in out and digest not in out
    code, out, _ = lineage("log", str(scenario.train), "--full")
    assert digest in out
    code, out, _ = lineage("--json", "log", str(scenario.train))
    data = json.loads(out)
    assert data["path"] == str(scenario.train)
    (version,) = data["versions"]
    assert set(version) == VERSION_KEYS
    assert (version["digest"], version["valid_until"], version["external"]) == (digest, None, False)
    assert version["id"] == f"version:{version['version_id']}"


def test_where(lineage, scenario: Scenario) -> None:
    digest = scenario.model_version.digest
    code, out, _ = lineage("where", digest[:10], "--json")
    data = json.loads(out)
    assert code == 0 and data["digest"] == digest[:10]
    assert [v["path"] for v in data["versions"]] == [str(scenario.model)]
    code, out, _ = lineage("where", digest)
    assert str(scenario.model) in out


def test_trace_json_has_exactly_the_documented_keys(lineage, scenario: Scenario) -> None:
    code, out, _ = lineage("trace", str(scenario.model), "--json")
    assert code == 0
    graph = json.loads(out)
    assert set(graph) == {"nodes", "edges", "truncated"} and graph["truncated"] is False
    versions = [n for n in graph["nodes"] if n["kind"] == "version"]
    runs = [n for n in graph["nodes"] if n["kind"] == "run"]
    assert all(set(n) == VERSION_NODE_KEYS for n in versions)
    assert all(set(n) == RUN_NODE_KEYS for n in runs)
    (run,) = runs
    assert run["id"] == f"run:{scenario.run.run_id}" and run["run_id"] == scenario.run.run_id
    assert (run["name"], run["argv"], run["status"], run["exit_code"]) == (
        "train", ["python", "train.py"], "succeeded", 0,
    )  # fmt: skip
    assert RFC3339.fullmatch(run["started_at"]) and RFC3339.fullmatch(run["ended_at"])
    paths = {n["path"]: n for n in versions}
    assert set(paths) == {str(scenario.train), str(scenario.outside), str(scenario.model)}
    assert all(re.fullmatch(r"[0-9a-f]{64}", n["digest"]) for n in versions)
    assert paths[str(scenario.model)]["valid_until"] is None
    ids = {n["id"] for n in graph["nodes"]}
    for edge in graph["edges"]:
        assert {edge["source"], edge["target"]} <= ids
        if edge["kind"] == "read":
            assert set(edge) == {"source", "target", "kind", "changed_during_run"}
        else:
            assert edge["kind"] == "wrote" and set(edge) == {"source", "target", "kind"}
    assert {(e["kind"], e["target"]) for e in graph["edges"]} == {
        ("read", paths[str(scenario.train)]["id"]),
        ("read", paths[str(scenario.outside)]["id"]),
        ("wrote", paths[str(scenario.model)]["id"]),
    }


def test_trace_and_impact_trees(lineage, scenario: Scenario) -> None:
    code, out, _ = lineage("trace", str(scenario.model))
    lines = out.splitlines()
    assert code == 0 and lines[0].startswith(str(scenario.model))
    assert "written by run" in lines[1] and "'train'" in lines[1]
    assert any(str(scenario.train) in line and "read" in line for line in lines[2:])
    code, out, _ = lineage("impact", str(scenario.train))
    assert code == 0 and "read by run" in out and f"wrote {scenario.model}" in out


def test_trace_formats(lineage, scenario: Scenario) -> None:
    code, dot, _ = lineage("trace", str(scenario.model), "--format", "dot")
    assert code == 0 and dot.startswith("digraph lineage {") and dot.rstrip().endswith("}")
    assert f'"version:{scenario.model_version.id}"' in dot
    assert dot.count(" -> ") == 3
    code, mermaid, _ = lineage("trace", str(scenario.model), "--format", "mermaid")
    assert code == 0 and mermaid.startswith("flowchart LR")
    assert mermaid.count("-->|read|") == 2 and mermaid.count("-->|wrote|") == 1


def test_trace_of_a_copy_outside_every_root(lineage, scenario: Scenario, tmp_path: Path) -> None:
    copy = tmp_path / "downloaded.pkl"
    shutil.copy(scenario.model, copy)
    code, out, _ = lineage("trace", str(copy), "--json")
    runs = [n["run_id"] for n in json.loads(out)["nodes"] if n["kind"] == "run"]
    assert code == 0 and runs == [scenario.run.run_id]


def test_runs_and_show(lineage, scenario: Scenario) -> None:
    code, out, _ = lineage("runs", "--name", "train", "--status", "succeeded", "--since", "1h")
    assert code == 0 and scenario.run.run_id[:12] in out
    code, out, _ = lineage("runs", "--json", "--limit", "1", "--name", "train")
    (run,) = json.loads(out)["runs"]
    assert run["run_id"] == scenario.run.run_id and run["params"] == {"lr": "0.1"}
    code, out, _ = lineage("runs", "--until", "2000-01-01")
    assert code == 0 and out.strip() == "no runs"

    code, out, _ = lineage("show", scenario.run.run_id[:8])
    assert code == 0 and "inputs (2)" in out and "outputs (1)" in out and "lr=0.1" in out
    code, out, _ = lineage("show", scenario.run.run_id, "--json")
    data = json.loads(out)
    assert set(data) == {"run", "inputs", "outputs", "children"}
    assert [o["path"] for o in data["outputs"]] == [str(scenario.model)]
    assert sorted(i["path"] for i in data["inputs"]) == sorted(
        [str(scenario.train), str(scenario.outside)]
    )


def test_verify_exit_status_follows_the_inputs(lineage, module_daemon: DaemonProcess) -> None:
    client = module_daemon.client()
    source = module_daemon.data / f"verify-{uuid.uuid4().hex[:6]}.csv"
    output = module_daemon.models / f"{source.stem}.out"
    source.write_bytes(b"v1")
    wait_current(client, source, b3(b"v1"))
    with client.run("verify-me", capture=False) as run:
        run.input(source)
        output.write_bytes(b"out")
        run.output(output)
    code, out, _ = lineage("verify", str(output))
    assert code == 0 and "all inputs match" in out
    source.write_bytes(b"v2")
    wait_current(client, source, b3(b"v2"))
    code, out, _ = lineage("verify", str(output), "--json")
    data = json.loads(out)
    assert code == 1 and data["ok"] is False
    (item,) = data["items"]
    assert (item["state"], item["current_digest"]) == ("changed", b3(b"v2"))


@pytest.mark.parametrize(
    ("args", "exit_code", "message"),
    [
        (("log", "/never/seen/file.csv"), 3, "has never been seen"),
        (("where", "0" * 64), 3, "ever held"),
        (("where", "abc"), 2, "8 to 64 hex"),
        (("show", "ffffffffffff"), 3, "no run"),
        (("runs", "--since", "someday"), 2, "cannot read 'someday' as a time"),
        (("trace", "version:999999999"), 3, "999999999"),
    ],
)
def test_errors_are_one_line_with_the_exit_code(
    lineage, args, exit_code: int, message: str
) -> None:
    code, out, err = lineage(*args)
    assert code == exit_code
    assert out == ""
    assert err.startswith("Error: ") and message in err and err.count("\n") == 1


def test_shell_sees_exit_codes_and_messages(module_daemon: DaemonProcess, socket_dir: Path) -> None:
    ok = module_daemon.run_cli("status", "--json")
    assert ok.returncode == 0 and json.loads(ok.stdout)["serving"] is True
    usage = module_daemon.run_cli("trace")
    assert usage.returncode == 2 and "usage:" in usage.stderr
    missing = socket_dir / "no.sock"
    down = module_daemon.run_cli("--socket", str(missing), "status")
    assert down.returncode == 4
    assert down.stderr == (
        f"Error: lineaged is not running at {missing}; start it with `lineaged` or `make run`\n"
    )


def test_every_command_is_registered() -> None:
    parser = cli.build_parser()
    commands = next(a for a in parser._actions if a.dest == "command_name").choices
    assert commands is not None
    expected = {
        "status", "log", "where", "trace", "impact", "runs", "show", "verify", "run", "ui",
        "export", "sync", "pin", "gc", "restore", "checkout", "reproduce",
    }  # fmt: skip
    assert set(commands) == expected


def test_run_seam_hands_the_command_to_runcmd(
    monkeypatch: pytest.MonkeyPatch, socket_dir: Path
) -> None:
    # A stand-in module: the real runcmd.py is written elsewhere; this pins the seam's contract.
    seen: list[tuple[str, list[str], list[str], bool]] = []
    runcmd = types.ModuleType("lineage_client.runcmd")
    runcmd.main_run = lambda args, client: (
        seen.append(  # type: ignore[attr-defined]
            (args.name, args.param, args.command, args.json)
        )
        or 7
    )
    monkeypatch.setitem(sys.modules, "lineage_client.runcmd", runcmd)
    argv = ["--socket", str(socket_dir / "s"), "run", "--name", "t", "--param", "a=1"]
    assert cli.main([*argv, "--", "python", "x.py", "--json"]) == 7
    assert seen == [("t", ["a=1"], ["python", "x.py", "--json"], False)]

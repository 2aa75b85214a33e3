"""OpenLineage events from a real daemon to a real HTTP endpoint, checked against the spec.

Every event a daemon process sends is validated with ``jsonschema`` against the OpenLineage
2-0-2 schema (``tests/data/openlineage``, vendored from the spec repository) and, facet by
facet, against the schema its ``_schemaURL`` names (the spec's facet files, and lineaged's own
``lineaged/schemas`` for its custom facets), plus checks the schema leaves to formats:
UUID run ids, RFC 3339 times, producer URIs, and the version facet equal to ``b3sum``.
"""

from __future__ import annotations

import datetime as dt
import http.server
import json
import re
import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("openlineage.client", reason="the openlineage extra is not installed")
jsonschema = pytest.importorskip("jsonschema")
referencing = pytest.importorskip("referencing")

from conftest import DaemonProcess  # noqa: E402
from helpers import b3, live_digests, wait_for  # noqa: E402
from lineage_core.errors import ConfigError  # noqa: E402
from lineage_core.models import Access, AccessMode, CodeState, Run, RunStart, RunStatus  # noqa: E402

import lineaged  # noqa: E402
from lineaged import ol_events  # noqa: E402
from lineaged.config import Config  # noqa: E402
from lineaged.ol_delivery import settings_from  # noqa: E402
from lineaged.store import DB_NAME  # noqa: E402

DATA = Path(__file__).parent / "data" / "openlineage"
SPEC = "https://openlineage.io/spec/2-0-2/OpenLineage.json"
RFC3339 = re.compile(
    r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$", re.IGNORECASE
)


# --- the spec ------------------------------------------------------------------------------


def _registry() -> Any:
    from referencing.jsonschema import DRAFT202012

    schemas = [json.loads(p.read_text()) for p in DATA.rglob("*.json")]
    schemas.append(json.loads(ol_events.facet_schema()))
    return referencing.Registry().with_resources(
        (schema["$id"], DRAFT202012.create_resource(schema)) for schema in schemas
    )


REGISTRY = _registry()


def _validate(instance: Any, schema_url: str) -> None:
    """Validate against the schema at ``schema_url`` (an ``$id`` plus a JSON pointer)."""
    validator = jsonschema.Draft202012Validator({"$ref": schema_url}, registry=REGISTRY)
    errors = sorted(validator.iter_errors(instance), key=str)
    assert not errors, f"{schema_url}: " + "; ".join(e.message for e in errors[:5])


def _facets(event: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    yield from event["run"].get("facets", {}).items()
    yield from event["job"].get("facets", {}).items()
    for dataset in event.get("inputs", []) + event.get("outputs", []):
        yield from dataset.get("facets", {}).items()
        yield from dataset.get("inputFacets", {}).items()
        yield from dataset.get("outputFacets", {}).items()


def check_event(event: dict[str, Any]) -> None:
    """The event is a valid 2-0-2 RunEvent, and so is each facet by its own schema."""
    _validate(event, f"{SPEC}#/$defs/RunEvent")
    assert event["schemaURL"] == f"{SPEC}#/$defs/RunEvent"
    assert uuid.UUID(event["run"]["runId"]).version == 7
    assert RFC3339.match(event["eventTime"]), event["eventTime"]
    dt.datetime.fromisoformat(event["eventTime"])
    assert event["producer"].startswith("https://")
    assert event["eventType"] in {"START", "COMPLETE", "FAIL", "ABORT"}
    for name, facet in _facets(event):
        assert facet["_producer"].startswith("https://"), name
        url = facet["_schemaURL"]
        assert "#/$defs/" in url, (name, url)
        # A facet's schema names it under its key too: the spec's files and ours.
        _validate({name: facet}, url.partition("#")[0])
        _validate(facet, url)
    for dataset in event.get("inputs", []) + event.get("outputs", []):
        assert dataset["namespace"] == f"file://{socket.gethostname()}"
        assert dataset["name"].startswith("/")
        version = dataset["facets"]["version"]["datasetVersion"]
        assert re.fullmatch(r"blake3:[0-9a-f]{64}", version)
        assert dataset["facets"]["lineaged"]["digest"] == version.removeprefix("blake3:")
        RFC3339.match(dataset["facets"]["lineaged"]["validFrom"])


# --- a lineage server ----------------------------------------------------------------------


class LineageServer:
    """An HTTP endpoint on 127.0.0.1 recording the OpenLineage events POSTed to it; it answers
    503 to the first ``fail_first`` requests, and to all while ``down`` is set."""

    def __init__(self, fail_first: int = 0) -> None:
        self.events: list[dict[str, Any]] = []
        self.failed = 0
        self.fail_first = fail_first
        self.down = False
        self.hold = threading.Event()  # cleared: requests wait for it (a slow server)
        self.hold.set()
        self.waiting = threading.Event()  # set while a request waits on hold
        self.lock = threading.Lock()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if not server.hold.is_set():
                    server.waiting.set()
                    server.hold.wait(60)
                with server.lock:
                    refuse = server.down or server.fail_first > 0
                    if refuse:
                        server.fail_first = max(0, server.fail_first - 1)
                        server.failed += 1
                    else:
                        server.events.append(json.loads(body))
                self.send_response(503 if refuse else 201)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="lineage-server")
        self.thread.start()

    def received(self) -> list[dict[str, Any]]:
        with self.lock:
            return list(self.events)

    def close(self) -> None:
        self.hold.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


@pytest.fixture
def lineage_server() -> Iterator[LineageServer]:
    server = LineageServer()
    yield server
    server.close()


def ol_config(base: Path, url: str, *, timeout: int = 5, **extra: str) -> Path:
    """A lineaged TOML config sending events over HTTP to ``url`` (no retries inside the
    transport: the daemon's own backoff is what is tested)."""
    base.mkdir(parents=True, exist_ok=True)
    lines = [
        "[openlineage]",
        "backoff_seconds = 0.1",
        "max_backoff_seconds = 0.5",
        *(f"{key} = {value}" for key, value in extra.items()),
        "[openlineage.transport]",
        'type = "http"',
        f'url = "{url}"',
        f"timeout = {timeout}",
        "retry = { total = 0 }",
    ]
    path = base / "lineaged.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _read(path: Path, at: int = 0) -> Access:
    return Access(path=str(path), mode=AccessMode.READ, first_at=at, last_at=at, how="declared")


def _wrote(path: Path) -> Access:
    return Access(path=str(path), mode=AccessMode.WRITE, first_at=0, last_at=0, how="declared")


def _record_pipeline(daemon: DaemonProcess) -> dict[str, Run]:
    """A parent run, a child reading data and writing a model, a failed and an interrupted
    run; returns the ended runs by role."""
    client = daemon.client()
    train = daemon.data / "train.csv"
    train.write_bytes(b"a,b\n1,2\n")
    model = daemon.models / "model.bin"
    db = daemon.state_dir / DB_NAME
    wait_for(lambda: str(train) in live_digests(db), what="train.csv indexed")
    code = CodeState(
        commit="0" * 40,
        branch="main",
        remote="https://user:secret@example.com/team/repo.git",
        dirty=True,
    )
    parent = client.begin_run(
        RunStart(name="pipeline", argv=("make", "all"), params={"epochs": "3"}, code=code)
    )
    child = client.begin_run(
        RunStart(name="train", argv=("python", "train.py"), parent_run_id=parent.run_id)
    )
    client.record_accesses(child.run_id, [_read(train), _wrote(model)])
    model.write_bytes(b"weights")
    ended = {
        "child": client.end_run(child.run_id, status=RunStatus.SUCCEEDED, exit_code=0),
        "parent": client.end_run(parent.run_id, status=RunStatus.SUCCEEDED, exit_code=0),
    }
    failed = client.begin_run(RunStart(name="broken", argv=("python", "broken.py")))
    ended["failed"] = client.end_run(failed.run_id, status=RunStatus.FAILED, exit_code=2)
    stopped = client.begin_run(RunStart(name="long", argv=("sleep", "1000")))
    ended["interrupted"] = client.end_run(stopped.run_id, status=RunStatus.INTERRUPTED)
    return ended


def _by_run(events: list[dict[str, Any]]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for event in events:
        found.setdefault(event["run"]["runId"], []).append(event["eventType"])
    return found


# --- tests ---------------------------------------------------------------------------------


def test_daemon_sends_valid_events_of_every_run(
    make_daemon: Callable[..., DaemonProcess], lineage_server: LineageServer, tmp_path: Path
) -> None:
    daemon = make_daemon("--config", str(ol_config(tmp_path, lineage_server.url)))
    runs = _record_pipeline(daemon)
    events = wait_for(
        lambda: len(lineage_server.received()) >= 8 and lineage_server.received(),
        what="8 events delivered",
    )
    assert isinstance(events, list) and len(events) == 8
    for event in events:
        check_event(event)

    uuids = {role: ol_events.run_uuid(run.run_id, run.started_at) for role, run in runs.items()}
    assert _by_run(events) == {
        uuids["parent"]: ["START", "COMPLETE"],
        uuids["child"]: ["START", "COMPLETE"],
        uuids["failed"]: ["START", "FAIL"],
        uuids["interrupted"]: ["START", "ABORT"],
    }
    ends = {e["run"]["runId"]: e for e in events if e["eventType"] != "START"}
    child = ends[uuids["child"]]
    assert child["job"]["name"] == "train"
    assert child["job"]["namespace"] == f"lineaged://{socket.gethostname()}"
    assert child["run"]["facets"]["parent"]["run"]["runId"] == uuids["parent"]
    assert child["run"]["facets"]["parent"]["job"]["name"] == "pipeline"
    engine = child["run"]["facets"]["processing_engine"]
    assert (engine["name"], engine["version"]) == ("lineaged", lineaged.__version__)
    # One dataset per file, its version the BLAKE3 of the bytes (b3sum when installed).
    [read] = child["inputs"]
    assert read["name"] == str(daemon.data / "train.csv")
    assert read["facets"]["version"]["datasetVersion"] == "blake3:" + b3(b"a,b\n1,2\n")
    assert read["facets"]["lineaged"]["size"] == 8
    assert read["facets"]["lineaged"]["changedDuringRun"] is False
    [wrote] = child["outputs"]
    assert wrote["name"] == str(daemon.models / "model.bin")
    assert wrote["facets"]["version"]["datasetVersion"] == "blake3:" + b3(b"weights")

    parent = ends[uuids["parent"]]
    location = parent["job"]["facets"]["sourceCodeLocation"]
    assert location["url"] == "https://example.com/team/repo.git"  # credentials stripped
    assert "secret" not in json.dumps(parent)
    assert location["version"] == "0" * 40
    assert parent["job"]["facets"]["lineaged_code"]["dirty"] is True
    assert parent["job"]["facets"]["lineaged_code"]["commit"] == "0" * 40
    assert parent["job"]["facets"]["jobType"]["integration"] == "LINEAGED"
    assert parent["run"]["facets"]["executionParameters"]["parameters"] == [
        {"key": "epochs", "value": "3"}
    ]
    assert "errorMessage" not in parent["run"]["facets"]
    failure = ends[uuids["failed"]]["run"]["facets"]["errorMessage"]
    assert "exit status 2" in failure["message"]

    status = daemon.client().status()
    assert (status.openlineage, status.openlineage_backlog, status.openlineage_error) == (
        "http",
        0,
        "",
    )

    # The backfill writes the events that were sent, byte for byte as JSON values.
    out = daemon.run_cli("export", "--openlineage")
    assert out.returncode == 0, out.stderr
    exported = [json.loads(line) for line in out.stdout.splitlines()]
    key = lambda e: (e["run"]["runId"], e["eventType"])  # noqa: E731
    assert sorted(exported, key=key) == sorted(events, key=key)
    one = daemon.run_cli("export", "--openlineage", runs["failed"].run_id[:12])
    assert [json.loads(line)["eventType"] for line in one.stdout.splitlines()] == ["START", "FAIL"]
    later = daemon.run_cli("export", "--openlineage", "--since", "2100-01-01")
    assert (later.returncode, later.stdout) == (0, "")
    bad = daemon.run_cli("export")
    assert bad.returncode == 2 and "--openlineage" in bad.stderr


def test_server_down_then_flaky_retries_in_order_once_across_restart(
    socket_dir: Path, make_daemon: Callable[..., DaemonProcess], tmp_path: Path
) -> None:
    server = LineageServer()
    base = socket_dir  # removed after make_daemon's daemons stopped (fixture order)
    first = DaemonProcess(base, "--config", str(ol_config(tmp_path, server.url)))
    try:
        server.down = True
        config = tmp_path / "lineaged.toml"
        first.wait_serving()
        runs = _record_pipeline(first)  # recording does not wait for the server
        status = wait_for(
            lambda: (s := first.client().status()).openlineage_error and s,
            what="a delivery error in status",
        )
        assert "503" in status.openlineage_error, status.openlineage_error
        assert status.openlineage_backlog == 8
        out = first.run_cli("status")
        assert "8 events waiting" in out.stdout and "503" in out.stdout
        assert server.received() == [] and server.failed >= 1

        # Stopped with the whole backlog queued; the next daemon sends it, through a server
        # that still refuses its first requests.
        assert first.stop() == 0
        server.down, server.fail_first = False, 2
        second = make_daemon("--config", str(config), base=first.base)
        events = wait_for(lambda: len(server.received()) >= 8 and server.received(), what="8")
        wait_for(lambda: second.client().status().openlineage_backlog == 0, what="no backlog")
        assert isinstance(events, list) and len(events) == 8  # none twice
        assert server.fail_first == 0
        assert len({(e["run"]["runId"], e["eventType"]) for e in events}) == 8
        order = [ol_events.run_uuid(r.run_id, r.started_at) for r in runs.values()]
        by_run = _by_run(events)
        assert {run_uuid: by_run[run_uuid][0] for run_uuid in order} == dict.fromkeys(
            order, "START"
        )
        # The queue's order: each event after those queued before it.
        starts = [e["run"]["runId"] for e in events if e["eventType"] == "START"]
        assert starts[:2] == [order[1], order[0]]  # the parent began first
        for event in events:
            check_event(event)
        assert second.client().status().openlineage_error == ""
    finally:
        if first.alive():
            first.proc.kill()
            first.proc.wait()
        server.close()


def test_a_slow_server_never_holds_recording_up(
    make_daemon: Callable[..., DaemonProcess], lineage_server: LineageServer, tmp_path: Path
) -> None:
    lineage_server.hold.clear()  # every request waits until the test lets it go
    # A transport timeout longer than the hold: a request the server answers after the
    # client gave up would be sent again (see docs/openlineage.md), and counted twice here.
    config = ol_config(tmp_path, lineage_server.url, timeout=120, max_delay_seconds="0")
    daemon = make_daemon("--config", str(config))
    client = daemon.client()
    first = client.begin_run(RunStart(name="first", argv=("true",)))
    assert lineage_server.waiting.wait(30)  # the daemon is stuck sending first's START
    runs = _record_pipeline(daemon)  # four more runs, recorded while it is stuck
    client.end_run(first.run_id, status=RunStatus.SUCCEEDED, exit_code=0)
    assert all(run.status is not RunStatus.RUNNING for run in runs.values())
    assert lineage_server.received() == []
    assert client.status().openlineage_backlog >= 9
    lineage_server.hold.set()
    events = wait_for(lambda: len(lineage_server.received()) >= 10 and lineage_server.received())
    assert isinstance(events, list) and len(events) == 10
    assert events[0]["job"]["name"] == "first" and events[0]["eventType"] == "START"


def test_recording_goes_on_with_a_dead_endpoint(
    make_daemon: Callable[..., DaemonProcess], tmp_path: Path
) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    daemon = make_daemon("--config", str(ol_config(tmp_path, f"http://127.0.0.1:{port}")))
    runs = _record_pipeline(daemon)
    assert all(run.status is not RunStatus.RUNNING for run in runs.values())
    status = wait_for(lambda: (s := daemon.client().status()).openlineage_error and s)
    assert "Connection" in status.openlineage_error
    assert status.openlineage_backlog == 8


def test_settings_follow_the_client_configuration(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    assert settings_from(None, {}) is None
    (tmp_path / ".openlineage").mkdir()
    (tmp_path / ".openlineage" / "openlineage.yml").write_text("transport:\n  type: console\n")
    found = settings_from(None, {})
    assert found is not None and found.source.endswith(".openlineage/openlineage.yml")
    (tmp_path / "openlineage.yml").write_text("transport:\n  type: console\n")
    found = settings_from(None, {})
    assert found is not None and found.source == str(tmp_path / "openlineage.yml")
    assert settings_from(None, {"OPENLINEAGE_URL": "http://x"}) is not None
    assert settings_from(None, {"OPENLINEAGE__TRANSPORT__TYPE": "console"}) is not None
    assert (
        settings_from(None, {"OPENLINEAGE_URL": "http://x", "OPENLINEAGE_DISABLED": "true"}) is None
    )
    assert settings_from({"enabled": False}, {"OPENLINEAGE_URL": "http://x"}) is None
    section = {"namespace": "team", "transport": {"type": "console"}}
    settings = settings_from(section, {"OPENLINEAGE_NAMESPACE": "other"})
    assert settings is not None and settings.namespace == "team"
    assert dict(settings.client_config) == {"transport": {"type": "console"}}
    for bad in ({"transprot": {}}, {"transport": {"url": "x"}}, {"backoff_seconds": -1}):
        with pytest.raises(ConfigError):
            settings_from(bad, {})


def test_a_status_nobody_mapped_ends_as_abort() -> None:
    run = Run(
        run_id="0" * 32, name="x", argv=(), cwd="", host="h", user="u", pid=1, started_at=10**18,
        ended_at=10**18 + 1, status=RunStatus.SUCCEEDED, exit_code=0, params={},
        parent_run_id="", code=None, env=None,
    )  # fmt: skip

    class Later(str):
        value = "abandoned"  # a status another version of lineaged may record

    from dataclasses import replace

    later = replace(run, status=Later("abandoned"))  # type: ignore[arg-type]
    assert ol_events.event_type(later, "end").value == "ABORT"
    assert ol_events.event_type(run, "end").value == "COMPLETE"
    event = ol_events.as_dict(ol_events.build_event(later, "end", namespace="n"))
    check_event(dict(event))
    assert "errorMessage" in event["run"]["facets"]
    # Stable: the same run, the same runId; another run, another.
    assert ol_events.run_uuid(run.run_id, run.started_at) == event["run"]["runId"]
    assert ol_events.run_uuid("1" * 32, run.started_at) != event["run"]["runId"]


@pytest.mark.parametrize(
    ("transport", "words"),
    [
        ({"type": "no-such-transport"}, "OpenLineage configuration"),
        ({"type": "http", "url": "not a url"}, "OpenLineage configuration"),
    ],
)
def test_the_daemon_refuses_a_bad_openlineage_section(
    tmp_path: Path, transport: dict[str, str], words: str
) -> None:
    from lineaged.engine import Engine
    from lineaged.store import Store

    config = Config(
        roots=(), state_dir=tmp_path, socket=tmp_path / "s", openlineage={"transport": transport}
    )
    store = Store.open(tmp_path / "lineaged.db")
    try:
        with pytest.raises(ConfigError, match=words):
            Engine(config, store)
    finally:
        store.close()


def test_sending_waits_for_a_pause_in_recording_but_not_forever(tmp_path: Path) -> None:
    import time

    from lineaged.ol_delivery import QUIET_SECONDS, OpenLineageDelivery, OpenLineageSettings
    from lineaged.store import Store, Writer

    store = Store.open(tmp_path / "lineaged.db")
    try:
        settings = OpenLineageSettings(source="test", max_delay_seconds=60)
        delivery = OpenLineageDelivery(store, Writer(store), settings, client=object())
        now = time.time_ns()
        assert delivery._may_send(now)  # nothing recorded yet: idle
        delivery.busy()
        assert not delivery._may_send(now)  # a run is being recorded: wait
        assert delivery._may_send(now - 61 * 10**9)  # but not past max_delay_seconds
        delivery._last_activity -= QUIET_SECONDS  # recording paused
        assert delivery._may_send(now)
    finally:
        store.close()


def test_configured_as_openlineage_python_is_file_transport(
    make_daemon: Callable[..., DaemonProcess], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No lineaged config at all: OPENLINEAGE_CONFIG names an openlineage.yml (file transport)."""
    events = tmp_path / "events.ndjson"
    yml = tmp_path / "openlineage.yml"
    yml.write_text(f"transport:\n  type: file\n  log_file_path: {events}\n  append: true\n")
    monkeypatch.setenv("OPENLINEAGE_CONFIG", str(yml))
    monkeypatch.setenv("OPENLINEAGE_NAMESPACE", "team-a")
    daemon = make_daemon()
    client = daemon.client()
    run = client.begin_run(RunStart(name="step", argv=("true",)))
    client.end_run(run.run_id, status=RunStatus.SUCCEEDED, exit_code=0)
    lines = wait_for(
        lambda: events.exists() and len(events.read_text().splitlines()) >= 2 and events,
        what="two events in the file",
    )
    sent = [json.loads(line) for line in Path(str(lines)).read_text().splitlines()]
    assert [e["eventType"] for e in sent] == ["START", "COMPLETE"]
    assert {e["job"]["namespace"] for e in sent} == {"team-a"}
    for event in sent:
        check_event(event)
    assert client.status().openlineage == "file"


def test_a_store_from_before_the_outbox_gets_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sqlite3

    from lineaged.store import Store
    from lineaged.store import migrations as store_module

    db = tmp_path / "lineaged.db"
    everything = store_module.MIGRATIONS
    before = everything[: everything.index(store_module._migration_openlineage)]
    with monkeypatch.context() as older:  # lineaged as it was before this migration
        older.setattr(store_module, "MIGRATIONS", before)
        older.setattr(store_module, "SCHEMA_VERSION", len(before))
        Store.open(db).close()
    store = Store.open(db)
    try:
        store.openlineage_outbox = True
        store.begin()
        run_id = store.begin_run(RunStart(name="x", started_at=1))
        store.commit()
        assert [(e.run_id, e.phase) for e in store.openlineage_pending(10)] == [(run_id, "start")]
        assert store.openlineage_backlog() == (1, "")
    finally:
        store.close()
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == len(everything)
    conn.close()


def test_lineaged_says_why_it_will_not_start(tmp_path: Path) -> None:
    import subprocess
    import sys

    config = tmp_path / "lineaged.toml"
    config.write_text('[openlineage]\nnamespace = 3\n[openlineage.transport]\ntype = "console"\n')
    (tmp_path / "data").mkdir()
    result = subprocess.run(
        [sys.executable, "-m", "lineaged", "--config", str(config), "--watch",
         str(tmp_path / "data"), "--state-dir", str(tmp_path / "state"), "--socket",
         str(tmp_path / "s.sock")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().endswith("[openlineage] namespace must be a string")


def test_openlineage_url_alone_turns_it_on(
    make_daemon: Callable[..., DaemonProcess],
    lineage_server: LineageServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OPENLINEAGE_URL", lineage_server.url)
    daemon = make_daemon()
    client = daemon.client()
    run = client.begin_run(RunStart(name="step", argv=("true",)))
    client.end_run(run.run_id, status=RunStatus.FAILED, exit_code=1)
    events = wait_for(lambda: len(lineage_server.received()) >= 2 and lineage_server.received())
    assert isinstance(events, list)
    assert [e["eventType"] for e in events] == ["START", "FAIL"]
    for event in events:
        check_event(event)
    assert client.status().openlineage == "http"

"""``lineage ui`` over HTTP against a real daemon: every page and its JSON endpoint, escaping,
the security rules (read-only, loopback Host, token, CSP), and the ``lineage ui`` command."""

from __future__ import annotations

import dataclasses
import html.parser
import os
import re
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

import pytest
from lineage_client import Client
from lineage_client.ui import _pages, _views
from lineage_client.ui._assets import asset_url
from lineage_client.ui.server import CSP, UiServer
from lineage_core.errors import ConfigError
from lineage_core.models import Capture, CodeState

from tests.conftest import DaemonProcess
from tests.helpers import b3, wait_for
from tests.ui_helpers import (
    HOSTILE_NAME,
    Pipeline,
    current_version,
    fetch,
    make_pipeline,
    page,
    run_page,
)


@pytest.fixture(scope="module")
def pipeline(module_daemon: DaemonProcess) -> Pipeline:
    return make_pipeline(module_daemon)


@pytest.fixture(scope="module")
def ui(pipeline: Pipeline) -> Iterator[str]:
    """A UI server on an ephemeral loopback port; its base URL."""
    server = UiServer(pipeline.daemon.client(), "127.0.0.1", 0).start()
    try:
        yield server.url
    finally:
        server.close()


class _Markup(html.parser.HTMLParser):
    """Collects what a CSP without 'unsafe-inline' would refuse, and every text node."""

    def __init__(self) -> None:
        super().__init__()
        self.scripts: list[dict[str, str | None]] = []
        self.inline: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        names = dict(attrs)
        if tag == "script":
            self.scripts.append(names)
        self.inline += [f"{tag} {key}" for key in names if key == "style" or key.startswith("on")]
        if tag == "style":
            self.inline.append("style element")

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def markup(text: str) -> _Markup:
    parser = _Markup()
    parser.feed(text)
    return parser


def assert_safe_page(text: str) -> _Markup:
    """No inline script, style or handler: only the bundle and JSON data blocks."""
    parsed = markup(text)
    assert parsed.inline == []
    for script in parsed.scripts:
        assert script.get("src") == asset_url("app.js") or script.get("type") == "application/json"
    assert {"src": asset_url("app.js"), "defer": None} in parsed.scripts
    return parsed


# --- pages and their JSON ---------------------------------------------------------------


def test_home_shows_status_and_recent_runs(ui: str, pipeline: Pipeline) -> None:
    answer = fetch(ui, "/")
    assert answer.status == 200
    assert answer.headers["Content-Type"] == "text/html; charset=utf-8"
    parsed = assert_safe_page(answer.text)
    text = " ".join(parsed.text)
    assert str(pipeline.daemon.data) in text and str(pipeline.daemon.models) in text
    assert pipeline.train.run_id[:12] in text and pipeline.prepare.run_id[:12] in text
    assert run_page(pipeline.train.run_id) in answer.text
    status = fetch(ui, "/api/status").json()
    assert status["socket"] == str(pipeline.daemon.socket)
    assert {root["path"] for root in status["roots"]} == {
        str(pipeline.daemon.data),
        str(pipeline.daemon.models),
    }
    assert {"running", "files_seen", "files_hashed"} <= set(status["scan"])
    home = fetch(ui, "/api/").json()
    assert pipeline.train.run_id in {run["run_id"] for run in home["runs"]}


def test_trace_draws_the_pipeline_upstream(ui: str, pipeline: Pipeline) -> None:
    view = fetch(ui, "/api" + page("trace", path=pipeline.model)).json()
    nodes = {node["id"]: node for node in view["nodes"]}
    by_path = {node["path"]: node for node in view["nodes"] if node["kind"] == "version"}
    runs = {node["name"]: node for node in view["nodes"] if node["kind"] == "run"}
    assert set(runs) == {"prepare", "train"}
    assert (
        by_path[str(pipeline.raw)]["digest"] == pipeline.raw_digest == b3(pipeline.raw.read_bytes())
    )
    assert by_path[str(pipeline.model)]["start"] is True
    assert by_path[str(pipeline.notes)]["role"] == "data"
    code = {Path(node["path"]).name for node in view["nodes"] if node.get("role") == "code"}
    assert {"prepare.py", "train.py"} <= code
    edges = {(e["source"], e["target"], e["kind"]) for e in view["edges"]}
    train = runs["train"]["id"]
    assert (train, by_path[str(pipeline.clean)]["id"], "read") in edges
    assert (train, by_path[str(pipeline.model)]["id"], "wrote") in edges
    assert all(e["source"] in nodes and e["target"] in nodes for e in view["edges"])
    assert view["truncated"] is False and view["expand"] is None
    assert view["counts"]["runs"] == 2
    assert view["cli"] == f"lineage trace {pipeline.model}"
    # The page draws from the same data and lists every node as text, digests in full.
    answer = fetch(ui, page("trace", path=pipeline.model))
    assert answer.status == 200
    parsed = assert_safe_page(answer.text)
    text = " ".join(parsed.text)
    for node in view["nodes"]:
        assert f'data-node="{node["id"]}"' in answer.text
        if node["kind"] == "version":
            assert node["digest"] in text
        else:
            assert node["run_id"] in text
    assert 'id="lineage-data"' in answer.text and 'id="graph"' in answer.text


def test_trace_by_digest_run_version_and_time(ui: str, pipeline: Pipeline) -> None:
    def runs(path: str) -> set[str]:
        view = fetch(ui, "/api" + path).json()
        return {node["run_id"] for node in view["nodes"] if node["kind"] == "run"}

    both = {pipeline.prepare.run_id, pipeline.train.run_id}
    digest = pipeline.model_version.digest
    assert runs(page("trace", digest=digest[:12])) == both
    assert runs(page("trace", run=pipeline.train.run_id[:12])) == both
    assert runs(page("trace", version=pipeline.model_version.id)) == both
    when = pipeline.model_version.valid_from + 1_000_000
    assert runs(page("trace", path=f"{pipeline.model}@{when / 1e9:.3f}")) == both


def test_impact_counts_what_a_version_reached(ui: str, pipeline: Pipeline) -> None:
    view = fetch(ui, "/api" + page("impact", path=pipeline.raw)).json()
    assert view["direction"] == "downstream"
    reached = {node.get("path") or node["name"] for node in view["nodes"] if not node["start"]}
    assert {"prepare", "train", str(pipeline.clean), str(pipeline.model)} <= reached
    assert view["counts"]["runs"] == 2
    assert view["counts"]["versions"] == len(
        [n for n in view["nodes"] if n["kind"] == "version" and not n["start"]]
    )
    # Of the versions reached, the model is the one under a root of role "model".
    models = [n["path"] for n in view["nodes"] if n.get("root_role") == "model"]
    assert models == [str(pipeline.model)] and view["counts"]["models"] == 1
    answer = fetch(ui, page("impact", path=pipeline.raw))
    assert answer.status == 200
    assert "reached 2 runs and" in answer.text and "1 of them under model roots" in answer.text


def test_run_page_shows_code_env_io_and_verify(ui: str, pipeline: Pipeline) -> None:
    run = pipeline.train
    view = fetch(ui, "/api" + run_page(run.run_id)).json()
    assert view["run"]["run_id"] == run.run_id
    assert view["run"]["params"] == {"seed": "7"}
    assert view["cli"] == f"lineage show {run.run_id} --diff"
    assert [i["path"] for i in view["inputs"] if i["role"] == "data"] == [str(pipeline.clean)]
    assert {i["verify"] for i in view["inputs"]} == {"match"}
    assert [o["path"] for o in view["outputs"]] == [str(pipeline.model)]
    assert view["outputs"][0]["digest"] == b3(pipeline.model.read_bytes())
    assert view["run"]["env"]["packages"], "the environment's packages are recorded"
    answer = fetch(ui, run_page(run.run_id))
    assert answer.status == 200
    parsed = assert_safe_page(answer.text)
    text = " ".join(parsed.text)
    assert "MATCH" in text and str(pipeline.clean) in text and str(pipeline.model) in text
    assert f"lineage show {run.run_id} --diff" in text
    assert "seed" in text and "train.py" in text
    assert view["run"]["env"]["packages"][0] in text
    # A unique prefix of the id finds the run too.
    assert fetch(ui, "/api" + run_page(run.run_id[:12])).json()["run"]["run_id"] == run.run_id


def test_path_page_is_the_version_history(ui: str, pipeline: Pipeline) -> None:
    first = pipeline.raw.read_bytes()
    second = first + b"d,4\n"
    pipeline.raw.write_bytes(second)
    current_version(pipeline.client, pipeline.raw, b3(second))
    view = fetch(ui, "/api" + page("path", path=pipeline.raw)).json()
    assert [v["digest"] for v in view["versions"]] == [b3(second), b3(first)]
    assert view["versions"][0]["valid_until"] is None and view["more"] is False
    answer = fetch(ui, page("path", path=pipeline.raw))
    assert answer.status == 200
    assert answer.text.index(b3(second)) < answer.text.index(b3(first))  # newest first
    assert 'class="timeline"' in answer.text
    # The run that read the first version now sees it changed.
    run = fetch(ui, "/api" + run_page(pipeline.prepare.run_id)).json()
    states = {i["path"]: i["verify"] for i in run["inputs"]}
    assert states[str(pipeline.raw)] == "changed"
    assert "CHANGED" in fetch(ui, run_page(pipeline.prepare.run_id)).text
    pipeline.raw.write_bytes(first)  # back as it was, for the other tests
    current_version(pipeline.client, pipeline.raw, b3(first))


def test_a_name_holding_html_is_text(ui: str, pipeline: Pipeline) -> None:
    answer = fetch(ui, page("trace", path=pipeline.model))
    assert "<script>window.pwned" not in answer.text
    assert "<img src=x" not in answer.text
    assert "&lt;script&gt;window.pwned=2&lt;script&gt;" in answer.text
    parsed = assert_safe_page(answer.text)
    assert any(HOSTILE_NAME in text for text in parsed.text)
    block = re.search(
        r'<script type="application/json" id="lineage-data">(.*?)</script>', answer.text, re.S
    )
    assert block is not None and "<" not in block.group(1)
    history = fetch(ui, page("path", path=pipeline.notes))
    assert history.status == 200 and "<script>" not in history.text.split("</head>", 1)[1]


def test_copies_and_changed_inputs_are_marked(ui: str, pipeline: Pipeline) -> None:
    client = pipeline.client
    folder = pipeline.daemon.data / f"ui-marks-{uuid.uuid4().hex[:8]}"
    folder.mkdir()
    source = folder / "input.csv"
    source.write_bytes(b"before\n")
    current_version(client, source, b3(b"before\n"))
    output = folder / "out.bin"
    with client.run("changes-input", capture=False) as run:
        run.input(source)
        run.flush()
        source.write_bytes(b"after, while the run used it\n")
        current_version(client, source, b3(b"after, while the run used it\n"))
        output.write_bytes(b"result")
        run.output(output)
    copy = pipeline.daemon.models / f"copy-{uuid.uuid4().hex[:8]}.bin"
    shutil.copy(output, copy)
    current_version(client, copy, b3(b"result"))
    view = fetch(ui, "/api" + page("trace", path=copy)).json()
    copies = [node for node in view["nodes"] if node.get("copy")]
    assert [node["path"] for node in copies] == [str(copy)]
    assert [e["kind"] for e in view["edges"] if e["target"] == copies[0]["id"]] == ["same_digest"]
    assert view["counts"]["changed_during_run"] == 1
    text = fetch(ui, page("trace", path=copy)).text
    assert "a copy of" in text and "changed during the run" in text


def test_truncated_graphs_link_to_a_bigger_walk(ui: str, pipeline: Pipeline) -> None:
    view = fetch(ui, "/api" + page("trace", path=pipeline.model, max_depth=1)).json()
    assert view["truncated"] is True
    assert view["expand"] == page("trace", path=pipeline.model, max_depth=4, max_nodes=4000)
    answer = fetch(ui, page("trace", path=pipeline.model, max_depth=1))
    assert "Truncated" in answer.text and 'id="expand"' in answer.text
    bigger = fetch(ui, "/api" + view["expand"]).json()
    assert len(bigger["nodes"]) > len(view["nodes"])
    assert bigger["cli"] == f"lineage trace {pipeline.model} --depth 4 --max-nodes 4000"


def test_search_leads_to_the_right_page(ui: str, pipeline: Pipeline) -> None:
    run = fetch(ui, page("search", q=pipeline.train.run_id[:12]))
    assert (run.status, run.headers["Location"]) == (303, run_page(pipeline.train.run_id))
    digest = fetch(ui, page("search", q=pipeline.raw_digest[:16]))
    assert digest.headers["Location"] == page("trace", digest=pipeline.raw_digest[:16])
    path = fetch(ui, page("search", q=str(pipeline.model)))
    assert path.headers["Location"] == page("trace", path=pipeline.model)
    assert fetch(ui, "/api" + page("search", q=str(pipeline.model))).json()["kind"] == "path"
    missing = fetch(ui, page("search", q="0123456789abcdef0123"))
    assert missing.status == 404 and "nothing recorded matches" in missing.text


# --- errors and safety -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "status", "message"),
    [
        ("/trace", 400, "name exactly one start"),
        ("/trace?path=a&digest=abcdef01", 400, "name exactly one start"),
        ("/trace?digest=xyz", 400, "digest must be 8 to 64 hex"),
        ("/trace?path=/x&max_depth=0", 400, "max_depth must be a whole number"),
        ("/trace?path=/x&path=/y", 400, "give path once"),
        ("/trace?path=%00", 400, "NUL"),
        ("/run/no-such-run-0000", 404, "no-such-run-0000"),
        ("/path?path=/nowhere/at/all", 404, ""),
        ("/nope", 404, "no page /nope"),
        ("/static/../server.py", 404, ""),
    ],
)
def test_bad_requests_get_a_clear_error(ui: str, path: str, status: int, message: str) -> None:
    answer = fetch(ui, path)
    assert answer.status == status, answer.text
    assert message in answer.text
    assert "Traceback" not in answer.text
    error = fetch(ui, "/api" + path).json()["error"] if not path.startswith("/static") else None
    if error is not None:
        assert error["status"] == status and message in error["message"]


def test_read_only_and_hardened_headers(ui: str) -> None:
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        answer = fetch(ui, "/", method=method)
        assert answer.status == 405 and "read-only" in answer.text
    answer = fetch(ui, "/")
    assert answer.headers["Content-Security-Policy"] == CSP
    assert "script-src 'self';" in CSP and "unsafe-inline" not in CSP
    assert answer.headers["X-Content-Type-Options"] == "nosniff"
    assert answer.headers["Referrer-Policy"] == "no-referrer"
    head = fetch(ui, "/", method="HEAD")
    assert head.status == 200 and head.body == b""


def test_a_foreign_host_header_is_refused(ui: str) -> None:
    """DNS rebinding: a page on evil.example resolving to 127.0.0.1 reaches no data."""
    assert fetch(ui, "/api/status", headers={"Host": "evil.example:8765"}).status == 403
    for host in ("localhost", "127.0.0.1:1234", "[::1]:80"):
        assert fetch(ui, "/api/status", headers={"Host": host}).status == 200


def test_assets_ship_in_the_package(ui: str) -> None:
    static = resources.files("lineage_client.ui").joinpath("static")
    script = fetch(ui, "/static/app.js")
    assert script.status == 200 and script.headers["Content-Type"].startswith("text/javascript")
    assert script.body == static.joinpath("app.js").read_bytes()
    assert script.headers["Cache-Control"] == "no-cache"
    # Pages link assets by content: those addresses may be kept for good.
    versioned = fetch(ui, asset_url("app.js"))
    assert versioned.body == script.body and "immutable" in versioned.headers["Cache-Control"]
    assert "immutable" not in fetch(ui, "/static/app.js?v=0000").headers["Cache-Control"]
    style = fetch(ui, "/static/style.css")
    assert style.body == static.joinpath("style.css").read_bytes()
    for asset in (script.text, style.text):
        assert not re.search(r"https?://(?!www\.w3\.org/2000/svg)", asset), "no network asset"
    licenses = fetch(ui, "/static/THIRD-PARTY-LICENSES.txt").text
    assert "@dagrejs/dagre" in licenses and "MIT" in licenses


def test_a_token_guards_every_page(pipeline: Pipeline) -> None:
    token = "s3cret-" + uuid.uuid4().hex
    with UiServer(pipeline.daemon.client(), "127.0.0.1", 0, token=token).start() as server:
        url = server.url
        refused = fetch(url, "/api/status")
        assert refused.status == 401 and refused.headers["WWW-Authenticate"] == "Bearer"
        assert "needs its token" in refused.json()["error"]["message"]
        assert fetch(url, "/static/style.css").status == 200  # no data in the package's assets
        assert fetch(url, "/", headers={"Authorization": "Bearer wrong"}).status == 401
        ok = fetch(url, "/api/status", headers={"Authorization": f"Bearer {token}"})
        assert ok.status == 200
        # A browser presents it once in the address; it comes back as a cookie, out of the URL.
        login = fetch(url, f"/trace?token={token}&path={pipeline.model}")
        assert login.status == 303
        assert login.headers["Location"] == f"/trace?path={pipeline.model}"
        cookie = login.headers["Set-Cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
        with_cookie = fetch(url, "/api/status", headers={"Cookie": cookie.split(";")[0]})
        assert with_cookie.status == 200
        assert token not in fetch(url, "/").text


def test_other_addresses_need_a_token(pipeline: Pipeline, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="without authentication"):
        UiServer(pipeline.daemon.client(), "0.0.0.0", 0)
    empty = tmp_path / "empty"
    empty.write_text("")
    result = pipeline.daemon.run_cli("ui", "--listen", "0.0.0.0:0")
    assert result.returncode == 2 and "--listen-token-file" in result.stderr
    result = pipeline.daemon.run_cli(
        "ui", "--listen", "0.0.0.0:0", "--listen-token-file", str(empty)
    )
    assert result.returncode == 2 and "is empty" in result.stderr
    result = pipeline.daemon.run_cli("ui", "--listen", "nonsense")
    assert result.returncode == 2 and "HOST:PORT" in result.stderr


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])
def test_lineage_ui_prints_its_url_and_serves(pipeline: Pipeline, stop: signal.Signals) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "lineage_client.cli", "--socket", str(pipeline.daemon.socket),
         "ui", "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=pipeline.daemon.base,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        first = process.stdout.readline()
        match = re.fullmatch(r"lineage ui: (http://127\.0\.0\.1:\d+/)\n", first)
        assert match, first + (process.stderr.read() if process.poll() is not None else "")
        url = match.group(1)
        view = fetch(url, "/api" + page("trace", path=pipeline.model)).json()
        assert {n["name"] for n in view["nodes"] if n["kind"] == "run"} == {"prepare", "train"}
        assert fetch(url, "/").status == 200
    finally:
        process.send_signal(stop)
        assert process.wait(timeout=30) == 0
        process.stdout.close()  # type: ignore[union-attr]
        process.stderr.close()  # type: ignore[union-attr]


def test_lineage_ui_without_a_daemon_says_so(socket_dir: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "lineage_client.cli", "--socket", str(socket_dir / "none.sock"),
         "ui", "--port", "0"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 4
    assert result.stderr.startswith("Error: lineaged is not running")


def test_a_port_in_use_is_a_clear_error(ui: str, pipeline: Pipeline) -> None:
    port = int(ui.rstrip("/").rsplit(":", 1)[1])
    result = pipeline.daemon.run_cli("ui", "--port", str(port))
    assert result.returncode == 2
    assert "cannot listen on 127.0.0.1" in result.stderr and "--port" in result.stderr


# --- the capture marker ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("capture", "shown", "partial"),
    [
        (None, {}, False),
        (Capture(complete=True, method="interposer"), {"state": "complete", "method": "interposer"}, False),
        (
            Capture(complete=False, reasons=("strace is not installed",), method="none"),
            {"state": "partial", "method": "none", "reasons": ["strace is not installed"]},
            True,
        ),
    ],
)  # fmt: skip
def test_a_runs_capture_is_shown(
    pipeline: Pipeline, capture: Capture | None, shown: dict[str, object], partial: bool
) -> None:
    run = dataclasses.replace(pipeline.client.get_run(pipeline.train.run_id), capture=capture)
    found = _views._capture(run)
    assert found == shown
    assert _views._partial(found) is partial


def test_a_partial_run_is_marked_on_the_page(pipeline: Pipeline) -> None:
    """A run whose capture was partial (as ``lineage run`` records it) is drawn and listed as
    partial, with its reasons."""
    graph = pipeline.client.trace(str(pipeline.model))
    train = next(run for run in graph.runs if run.name == "train")
    partial = Capture(
        complete=False,
        reasons=("a static binary ran: its reads are not seen",),
        method="interposer",
    )
    marked = dataclasses.replace(
        graph,
        runs=tuple(
            dataclasses.replace(r, capture=partial) if r is train else r for r in graph.runs
        ),
    )
    view = _views.graph_json(marked)
    node = next(n for n in view["nodes"] if n["kind"] == "run" and n["name"] == "train")
    assert node["partial"] is True
    assert node["capture"]["reasons"] == ["a static binary ran: its reads are not seen"]
    others = [n for n in view["nodes"] if n["kind"] == "run" and n["name"] != "train"]
    assert [n["partial"] for n in others] == [False]
    view.update(
        page="trace", direction="upstream", start={"path": str(pipeline.model)}, max_depth=100,
        max_nodes=1000, link="/trace", expand=None, cli="lineage trace x",
        counts={"runs": 2, "versions": 5, "code": 2, "copies": 0, "partial_runs": 1,
                "changed_during_run": 0},
    )  # fmt: skip
    text = _pages.graph_page(view)
    assert "partial capture" in text and "1 runs have a partial capture" not in text
    assert "1 run has a partial capture" in text


def test_the_run_page_renders_the_code_diff(ui: str, pipeline: Pipeline) -> None:
    diff = (
        b"diff --git a/train.py b/train.py\n--- a/train.py\n+++ b/train.py\n@@ -1,2 +1,2 @@\n"
        b"-lr = 0.1\n+lr = 0.2  # <script>window.pwned=1</script>\n context\n"
    )
    code = CodeState(
        commit="a" * 40, branch="main", dirty=True, diff=diff, diff_digest=b3(diff),
        diff_size=len(diff),
    )  # fmt: skip
    with pipeline.client.run("with-diff", code=code, params={"lr": "0.2"}) as run:
        pass
    view = fetch(ui, "/api" + run_page(run.run_id)).json()
    assert view["diff"] == diff.decode()
    assert view["run"]["code"]["commit"] == "a" * 40 and view["run"]["code"]["dirty"] is True
    text = fetch(ui, run_page(run.run_id)).text
    assert '<span class="del">-lr = 0.1</span>' in text
    assert (
        '<span class="add">+lr = 0.2  # &lt;script&gt;window.pwned=1&lt;/script&gt;</span>' in text
    )
    assert '<span class="hunk">@@ -1,2 +1,2 @@</span>' in text
    assert "<script>window.pwned" not in text


def test_open_hands_the_url_to_the_browser(pipeline: Pipeline, tmp_path: Path) -> None:
    """``--open`` asks the user's browser ($BROWSER here: a script noting what it was given)."""
    seen = tmp_path / "opened"
    browser = tmp_path / "browser"
    browser.write_text(f'#!/bin/sh\necho "$1" > {seen}\n')
    browser.chmod(0o755)
    process = subprocess.Popen(
        [sys.executable, "-m", "lineage_client.cli", "--socket", str(pipeline.daemon.socket),
         "ui", "--port", "0", "--open"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "BROWSER": str(browser)},
    )  # fmt: skip
    try:
        assert process.stdout is not None
        url = process.stdout.readline().removeprefix("lineage ui: ").strip()
        assert url.startswith("http://127.0.0.1:")
        wait_for(lambda: seen.exists() and seen.read_text().strip() == url, what="the browser")
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
        process.stdout.close()  # type: ignore[union-attr]
        process.stderr.close()  # type: ignore[union-attr]


def test_a_daemon_that_stops_gives_a_clear_error(socket_dir: Path) -> None:
    daemon = DaemonProcess(socket_dir)
    try:
        daemon.wait_serving()
        # A client of its own: stop() closes the clients the daemon handed out.
        with (
            Client(socket=daemon.socket) as client,
            UiServer(client, "127.0.0.1", 0).start() as server,
        ):
            assert fetch(server.url, "/api/status").status == 200
            assert daemon.stop() == 0
            page_answer = fetch(server.url, "/")
            assert page_answer.status == 503
            assert "lineaged is not running" in page_answer.text
            assert "Traceback" not in page_answer.text
            error = fetch(server.url, "/api/status").json()["error"]
            assert error["class"] == "DaemonUnavailable" and error["status"] == 503
    finally:
        if daemon.alive():
            daemon.proc.kill()
            daemon.proc.wait()

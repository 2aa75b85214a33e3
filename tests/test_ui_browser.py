"""``lineage ui`` in a real browser: headless Chromium, driven by Selenium, draws the trace of
a model made by a two-stage ``lineage run`` pipeline; clicking the run opens its details; a
file name holding HTML shows as text and runs nothing. Skipped when Chromium is not installed."""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from lineage_client.ui import _pages
from lineage_client.ui._assets import asset_url
from lineage_client.ui.server import UiServer

from tests.conftest import DaemonProcess
from tests.helpers import b3, wait_for
from tests.ui_helpers import (
    HOSTILE_NAME,
    Pipeline,
    browser_missing,
    current_version,
    make_pipeline,
    page,
    start_chromium,
)

pytestmark = pytest.mark.skipif(bool(browser_missing()), reason=browser_missing())


@pytest.fixture(scope="module")
def pipeline(module_daemon: DaemonProcess) -> Pipeline:
    return make_pipeline(module_daemon)


@pytest.fixture(scope="module")
def ui(pipeline: Pipeline) -> Iterator[str]:
    server = UiServer(pipeline.daemon.client(), "127.0.0.1", 0).start()
    try:
        yield server.url.rstrip("/")
    finally:
        server.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    profile = Path(tempfile.mkdtemp(prefix="lineage-ui-chromium-"))
    driver = start_chromium(profile)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def open_page(browser: Any, url: str) -> None:
    """Load ``url`` and wait until the bundle says the page is interactive."""
    browser.get(url)
    wait_for(
        lambda: browser.execute_script("return document.documentElement.dataset.ready") == "true",
        what=f"{url} interactive",
    )


def node_text(browser: Any, node_id: str) -> str:
    return str(
        browser.execute_script(
            "const n = document.querySelector(`svg.graph g.node[data-node='${arguments[0]}']`);"
            " return n ? [...n.querySelectorAll('text')].map(t => t.textContent).join(' | ') : null;",
            node_id,
        )
    )


def test_trace_of_a_two_stage_pipeline_is_drawn(
    browser: Any, ui: str, pipeline: Pipeline, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By

    open_page(browser, ui + page("trace", path=pipeline.model))
    data = browser.execute_script(
        "return JSON.parse(document.getElementById('lineage-data').textContent)"
    )
    nodes = {n.get("path") or n["name"]: n for n in data["nodes"]}
    raw = nodes[str(pipeline.raw)]
    train = nodes["train"]
    # The raw data node is drawn with its name and (short) digest; the training run is drawn.
    assert "raw.csv" in node_text(browser, raw["id"])
    assert pipeline.raw_digest[:12] in node_text(browser, raw["id"])
    assert "train" in node_text(browser, train["id"])
    drawn = browser.find_elements(By.CSS_SELECTOR, "svg.graph g.node:not(.ghost)")
    assert len(drawn) == len(data["nodes"])
    assert len(browser.find_elements(By.CSS_SELECTOR, "svg.graph path.edge")) >= 5
    # The full digest is in the text list beside the drawing, for a screen reader or a copy.
    item = browser.find_element(By.CSS_SELECTOR, f"#node-list li[data-node='{raw['id']}']")
    assert pipeline.raw_digest in item.text
    # Click the training run: its details open.
    browser.find_element(By.CSS_SELECTOR, f"svg.graph g.node[data-node='{train['id']}']").click()
    details = browser.find_element(By.ID, "details")
    wait_for(lambda: pipeline.train.run_id in details.text, what="run details")
    assert "Run" in details.text and "train" in details.text and "succeeded" in details.text
    link = details.find_element(By.LINK_TEXT, "open the run page")
    assert link.get_attribute("href").endswith(f"/run/{pipeline.train.run_id}")
    selected = browser.find_elements(By.CSS_SELECTOR, "svg.graph g.node.selected")
    assert [n.get_attribute("data-node") for n in selected] == [train["id"]]
    assert browser.execute_script("return location.hash") == f"#{train['id'].replace(':', '%3A')}"
    browser.save_screenshot(str(tmp_path / "trace.png"))
    assert (tmp_path / "trace.png").stat().st_size > 10_000
    # The run page it links to shows the run.
    link.click()
    wait_for(lambda: "/run/" in browser.current_url, what="the run page")
    facts = browser.find_element(By.ID, "run-facts").text
    assert pipeline.train.run_id in facts and "succeeded" in facts
    browser.save_screenshot(str(tmp_path / "run.png"))


def test_a_file_named_with_html_shows_as_text(browser: Any, ui: str, pipeline: Pipeline) -> None:
    from selenium.webdriver.common.by import By

    open_page(browser, ui + page("trace", path=pipeline.model))
    assert browser.execute_script("return window.pwned === undefined")
    scripts = browser.execute_script(
        "return [...document.scripts].map(s => s.getAttribute('src') || s.type)"
    )
    assert sorted(scripts) == [asset_url("app.js"), "application/json"]
    assert browser.find_elements(By.CSS_SELECTOR, "img") == []
    data = browser.execute_script(
        "return JSON.parse(document.getElementById('lineage-data').textContent)"
    )
    notes = next(n for n in data["nodes"] if n.get("path") == str(pipeline.notes))
    # The drawing shows the name's start as text; its title and the list hold it whole.
    assert node_text(browser, notes["id"]).startswith("notes <img src=x")
    item = browser.find_element(By.CSS_SELECTOR, f"#node-list li[data-node='{notes['id']}']")
    assert HOSTILE_NAME in item.text
    item.find_element(By.CSS_SELECTOR, "button[data-select]").click()
    details = browser.find_element(By.ID, "details")
    wait_for(lambda: HOSTILE_NAME in details.text, what="details of the hostile name")
    assert browser.execute_script("return window.pwned === undefined")
    refused = [e for e in browser.get_log("browser") if "Content Security Policy" in e["message"]]
    assert refused == []


def test_the_drawing_pans_and_zooms(browser: Any, ui: str, pipeline: Pipeline) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    open_page(browser, ui + page("trace", path=pipeline.model))

    def transform() -> str:
        return str(
            browser.execute_script(
                "return document.querySelector('svg.graph g.viewport').getAttribute('transform')"
            )
        )

    fitted = transform()
    browser.find_element(By.ID, "zoom-in").click()
    zoomed = transform()
    assert zoomed != fitted
    svg = browser.find_element(By.CSS_SELECTOR, "svg.graph")
    ActionChains(browser).move_to_element_with_offset(svg, 5, 5).click_and_hold().move_by_offset(
        120, 40
    ).release().perform()
    assert transform() != zoomed
    browser.find_element(By.ID, "zoom-fit").click()
    assert transform() == fitted


def test_a_deep_link_to_a_node_opens_its_details(browser: Any, ui: str, pipeline: Pipeline) -> None:
    from selenium.webdriver.common.by import By

    open_page(browser, ui + page("trace", path=pipeline.model))
    data = browser.execute_script(
        "return JSON.parse(document.getElementById('lineage-data').textContent)"
    )
    raw = next(n for n in data["nodes"] if n.get("path") == str(pipeline.raw))
    open_page(browser, ui + "/")  # a new document: a change of fragment alone does not load
    open_page(browser, ui + page("trace", path=pipeline.model) + f"#{raw['id']}")
    details = browser.find_element(By.ID, "details")
    assert pipeline.raw_digest in details.text and "Data version" in details.text


def test_a_script_every_run_read_is_drawn_beside_each_run(
    browser: Any, ui: str, pipeline: Pipeline
) -> None:
    """A chain whose runs all read one code file: the file is drawn once per run (so no
    edge spans the whole chain), and each drawing of it selects the same node."""
    from selenium.webdriver.common.by import By

    client = pipeline.client
    folder = pipeline.daemon.data / f"ui-chain-{uuid.uuid4().hex[:8]}"
    folder.mkdir()
    code = folder / "step.py"
    code.write_bytes(b"print('step')\n")
    current = folder / "v0.csv"
    current.write_bytes(b"0\n")
    current_version(client, code, b3(code.read_bytes()))
    current_version(client, current, b3(current.read_bytes()))
    for step in range(1, 4):
        output = folder / f"v{step}.csv"
        with client.run(f"step-{step}", capture=False) as run:
            run.input(current)
            run.input(code, role="code")
            output.write_bytes(f"{step}\n".encode())
            run.output(output)
        current = output
    open_page(browser, ui + page("trace", path=current))
    data = browser.execute_script(
        "return JSON.parse(document.getElementById('lineage-data').textContent)"
    )
    script = next(n for n in data["nodes"] if n.get("path") == str(code))
    drawings = browser.find_elements(
        By.CSS_SELECTOR, f"svg.graph g.node[data-node='{script['id']}']"
    )
    assert len(drawings) == 3
    assert len(browser.find_elements(By.CSS_SELECTOR, "svg.graph g.node.ghost")) == 2
    ghost = browser.find_element(
        By.CSS_SELECTOR, f"svg.graph g.node.ghost[data-node='{script['id']}']"
    )
    ghost.click()
    details = browser.find_element(By.ID, "details")
    wait_for(lambda: script["digest"] in details.text, what="the script's details")
    selected = browser.find_elements(By.CSS_SELECTOR, "svg.graph g.node.selected")
    assert len(selected) == 3 and {n.get_attribute("data-node") for n in selected} == {script["id"]}


def test_a_graph_past_the_draw_limit_waits_to_be_asked(
    browser: Any, ui: str, pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past the limit the page is usable at once (the list, the details) and the drawing
    comes when asked for; the limit is lowered here to the size of the pipeline's graph."""
    from selenium.webdriver.common.by import By

    monkeypatch.setattr(_pages, "DRAW_LIMIT", 3)
    open_page(browser, ui + page("trace", path=pipeline.model))
    assert browser.find_elements(By.CSS_SELECTOR, "svg.graph") == []
    note = browser.find_element(By.ID, "draw-note")
    assert "laying it out takes several seconds" in note.text
    item = browser.find_element(By.CSS_SELECTOR, "#node-list li[data-node] button[data-select]")
    item.click()
    details = browser.find_element(By.ID, "details")
    wait_for(
        lambda: pipeline.model_version.digest in details.text, what="details without a drawing"
    )
    browser.find_element(By.ID, "draw-anyway").click()
    wait_for(
        lambda: len(browser.find_elements(By.CSS_SELECTOR, "svg.graph g.node")) >= 8,
        what="the drawing",
    )
    assert browser.find_elements(By.ID, "draw-note") == []

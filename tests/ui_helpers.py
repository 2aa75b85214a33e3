"""Shared by the ``lineage ui`` tests: a two-stage pipeline recorded by ``lineage run``, and a
UI server on an ephemeral loopback port over a real daemon."""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from lineage_client import Client
from lineage_core.models import Run, Version

from tests.conftest import DaemonProcess
from tests.helpers import b3, wait_for

# A file name that is HTML: it must show as text, and no script of it may run.
HOSTILE_NAME = 'notes <img src=x onerror="window.pwned=1"><script>window.pwned=2<script>.txt'

PREPARE = """\
import sys
raw, notes, clean = sys.argv[1:4]
with open(raw) as f:
    rows = [line.strip() for line in f if line.strip()]
with open(notes) as f:
    f.read()
with open(clean, "w") as f:
    f.write("\\n".join(sorted(rows)) + "\\n")
"""

TRAIN = """\
import sys
clean, model = sys.argv[1:3]
with open(clean) as f:
    weights = sum(len(line) for line in f)
with open(model, "w") as f:
    f.write(f"weights={weights}\\n")
"""


@dataclass
class Pipeline:
    """raw.csv + notes --prepare.py--> clean.csv --train.py--> model.pkl, by ``lineage run``."""

    daemon: DaemonProcess
    client: Client
    raw: Path
    notes: Path
    clean: Path
    model: Path
    prepare: Run
    train: Run
    raw_digest: str
    model_version: Version


def current_version(client: Client, path: Path, digest: str) -> Version:
    """Wait until the daemon's current version of ``path`` has ``digest``."""

    def found() -> Version | None:
        try:
            items = client.history(path, page_size=1).items
        except Exception:
            return None
        return items[0] if items and items[0].digest == digest else None

    version = wait_for(found, what=f"{path} indexed")
    assert isinstance(version, Version)
    return version


def lineage_run(daemon: DaemonProcess, name: str, script: Path, *args: Path, cwd: Path) -> Run:
    """``lineage run --name NAME -- python SCRIPT ARGS``; the recorded run."""
    result = daemon.run_cli(
        "run", "--name", name, "--param", "seed=7", "--", sys.executable, str(script),
        *map(str, args), cwd=cwd,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    client = daemon.client()
    runs = [run for run in client.iter_runs(name=name, limit=10) if run.cwd == str(cwd)]
    assert runs, f"no run {name} recorded"
    return runs[0]


def make_pipeline(daemon: DaemonProcess) -> Pipeline:
    """A two-stage pipeline in folders of its own under the daemon's roots."""
    tag = uuid.uuid4().hex[:8]
    data = daemon.data / f"ui-{tag}"
    models = daemon.models / f"ui-{tag}"
    code = daemon.base / f"ui-src-{tag}"  # outside every root: the scripts are code inputs
    for folder in (data, models, code):
        folder.mkdir(parents=True)
    client = daemon.client()
    raw = data / "raw.csv"
    raw.write_bytes(b"b,2\na,1\nc,3\n")
    notes = data / HOSTILE_NAME
    notes.write_bytes(b"hand-written notes\n")
    current_version(client, raw, b3(raw.read_bytes()))
    current_version(client, notes, b3(notes.read_bytes()))
    prepare_py = code / "prepare.py"
    prepare_py.write_text(PREPARE)
    train_py = code / "train.py"
    train_py.write_text(TRAIN)
    clean = data / "clean.csv"
    model = models / "model.pkl"
    prepare = lineage_run(daemon, "prepare", prepare_py, raw, notes, clean, cwd=code)
    current_version(client, clean, b3(clean.read_bytes()))
    train = lineage_run(daemon, "train", train_py, clean, model, cwd=code)
    model_version = current_version(client, model, b3(model.read_bytes()))
    return Pipeline(
        daemon=daemon,
        client=client,
        raw=raw,
        notes=notes,
        clean=clean,
        model=model,
        prepare=prepare,
        train=train,
        raw_digest=b3(raw.read_bytes()),
        model_version=model_version,
    )


@dataclass
class Answer:
    """One HTTP answer."""

    status: int
    headers: Mapping[str, str]
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8")

    def json(self) -> Any:
        assert self.headers["Content-Type"].startswith("application/json"), self.headers
        return json.loads(self.body)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


def fetch(
    base: str, path: str, *, method: str = "GET", headers: Mapping[str, str] | None = None
) -> Answer:
    """``method`` ``base + path``, redirects not followed; errors are answers too."""
    request = urllib.request.Request(
        base.rstrip("/") + path, method=method, headers=dict(headers or {})
    )
    try:
        with _OPENER.open(request, timeout=60) as response:
            return Answer(response.status, dict(response.headers), response.read())
    except urllib.error.HTTPError as error:
        return Answer(error.code, dict(error.headers), error.read())


def page(name: str, **params: object) -> str:
    """``/name?params`` with the values URL-encoded."""
    return f"/{name}?{urlencode({key: str(value) for key, value in params.items()})}"


def run_page(run_id: str) -> str:
    return "/run/" + quote(run_id, safe="")


CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1400,900",
)


def browser_missing() -> str:
    """Why headless Chromium cannot run here, or "" when it can."""
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not Path(path).exists()]
    if missing:
        return (
            f"{' and '.join(missing)} not installed (Debian: apt-get install chromium"
            " chromium-driver)"
        )
    return ""


def start_chromium(profile: Path) -> Any:
    """Headless Chromium driven by Selenium, with a fresh profile in ``profile``."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    return webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))

"""Make docs/img/trace.png: the README tour's pipeline recorded by `lineage run`, its model
copied elsewhere, and the trace of that copy in `lineage ui`, shot by headless Chromium.

    .venv/bin/python docs/img/make_screenshots.py    # needs chromium and chromium-driver
"""

from __future__ import annotations

import base64
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlencode

from lineage_client import Client
from lineage_client.ui.server import UiServer

OUT = Path(__file__).resolve().parent / "trace.png"
BIN = Path(sys.executable).parent

PREPARE = """\
import csv
rows = list(csv.reader(open("data/raw.csv")))
with open("data/clean.csv", "w", newline="") as f:
    csv.writer(f).writerows(r for r in rows if all(r))
"""
FEATURES = """\
def features(row):
    return [float(x) for x in row[:-1]]
"""
TRAIN = """\
import csv, pickle
from features import features
rows = list(csv.reader(open("data/clean.csv")))[1:]
model = {"weights": [sum(features(r)[i] for r in rows) for i in range(3)]}
pickle.dump(model, open("models/model.pkl", "wb"))
"""


def main() -> None:
    base = Path(tempfile.mkdtemp(prefix="tour-", dir="/tmp"))
    for folder in ("data", "models", "deploy"):
        (base / folder).mkdir()
    (base / "data" / "raw.csv").write_text(
        "a,b,c,label\n1.0,2.0,3.0,1\n4.0,,6.0,0\n7.0,8.0,9.0,1\n2.0,1.0,0.5,0\n"
    )
    (base / "prepare.py").write_text(PREPARE)
    (base / "features.py").write_text(FEATURES)
    (base / "train.py").write_text(TRAIN)
    (base / ".gitignore").write_text("data/\nmodels/\ndeploy/\n__pycache__/\n")
    subprocess.run(["git", "init", "-q"], cwd=base, check=True)
    subprocess.run(
        ["git", "add", ".gitignore", "prepare.py", "features.py", "train.py"], cwd=base, check=True
    )
    subprocess.run(
        ["git", "-c", "user.name=tour", "-c", "user.email=tour@example.org", "commit", "-qm",
         "pipeline"], cwd=base, check=True,
    )  # fmt: skip
    state = Path(tempfile.mkdtemp(prefix="tour-state-", dir="/tmp"))  # outside the work tree
    socket = state / "run" / "lineaged.sock"
    daemon = subprocess.Popen(
        [BIN / "lineaged", "--state-dir", state / "state", "--socket", socket,
         "--watch", f"{base / 'data'}:data", "--watch", f"{base / 'models'}:model",
         "--watch", f"{base / 'deploy'}:model", "--log-level", "warning"],
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while not socket.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        with Client(socket=socket) as client:
            while not client.status().serving:
                time.sleep(0.1)
            lineage = [BIN / "lineage", "--socket", str(socket), "run"]
            subprocess.run([*lineage, "--", sys.executable, "prepare.py"], cwd=base, check=True)
            subprocess.run(
                [*lineage, "--param", "epochs=3", "--", sys.executable, "train.py"],
                cwd=base, check=True,
            )  # fmt: skip
            copy = base / "deploy" / "model.pkl"
            shutil.copy(base / "models" / "model.pkl", copy)
            while True:
                try:
                    client.history(copy, page_size=1)
                    break
                except Exception:
                    time.sleep(0.1)
            with UiServer(client, "127.0.0.1", 0).start() as server:
                shoot(server.url + "trace?" + urlencode({"path": str(copy)}))
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=30)
        shutil.rmtree(base, ignore_errors=True)
        shutil.rmtree(state, ignore_errors=True)


def shoot(url: str) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from tests.ui_helpers import start_chromium

    profile = Path(tempfile.mkdtemp(prefix="chromium-"))
    browser = start_chromium(profile)
    try:
        browser.set_window_size(1280, 860)
        browser.get(url)
        while browser.execute_script("return document.documentElement.dataset.ready") != "true":
            time.sleep(0.05)
        train = browser.execute_script(
            "return JSON.parse(document.getElementById('lineage-data').textContent)"
            ".nodes.find(n => n.name === 'train.py').id"
        )
        browser.find_element("css selector", f"svg.graph g.node[data-node='{train}']").click()
        time.sleep(0.3)
        # Down to the end of the drawing and its details panel: the text list follows below.
        bottom = browser.execute_script(
            "return document.querySelector('.layout').getBoundingClientRect().bottom"
        )
        width = browser.execute_script("return document.documentElement.clientWidth")
        clip = {"x": 0, "y": 0, "width": width, "height": bottom + 14, "scale": 1}
        shot = browser.execute_cdp_cmd("Page.captureScreenshot", {"format": "png", "clip": clip})
        OUT.write_bytes(base64.b64decode(shot["data"]))
    finally:
        browser.quit()
        shutil.rmtree(profile, ignore_errors=True)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()

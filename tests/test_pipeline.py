"""Acceptance: a real three-stage scikit-learn pipeline run through ``lineage run``.

prepare.py (raw CSV -> cleaned CSV), train.py (cleaned CSV -> models/model.pkl through a
temporary file and a rename, importing a local helper module), evaluate.py (model + data ->
models/metrics.json), in a git repository, against a real daemon. Digests are checked
against b3sum of the bytes (the blake3 package where b3sum is missing).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import DaemonProcess, short_tmp_dir
from tests.helpers import b3

pytest.importorskip("sklearn")

PREPARE = """
import csv

with open("data/raw.csv", newline="") as f:
    rows = list(csv.reader(f))
header, body = rows[0], rows[1:]
clean = [r for r in body if all(cell.strip() for cell in r)]
with open("data/clean.csv", "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(header)
    writer.writerows(clean)
"""

FEATURES = """
def split(rows):
    features = [[float(x) for x in r[:-1]] for r in rows]
    labels = [int(r[-1]) for r in rows]
    return features, labels
"""

TRAIN = """
import csv
import os
import pickle
import tempfile

from sklearn.linear_model import LogisticRegression

from features import split

with open("data/clean.csv", newline="") as f:
    rows = list(csv.reader(f))[1:]
X, y = split(rows)
model = LogisticRegression(max_iter=500).fit(X, y)
fd, tmp = tempfile.mkstemp(dir="models", prefix=".model-", suffix=".partial")
with os.fdopen(fd, "wb") as out:
    pickle.dump(model, out)
os.replace(tmp, "models/model.pkl")
"""

EVALUATE = """
import csv
import json
import pickle

from features import split

with open("models/model.pkl", "rb") as f:
    model = pickle.load(f)
with open("data/clean.csv", newline="") as f:
    rows = list(csv.reader(f))[1:]
X, y = split(rows)
with open("models/metrics.json", "w") as f:
    json.dump({"accuracy": round(float(model.score(X, y)), 6), "rows": len(rows)}, f)
"""

STAGE_SH = """#!/bin/sh
set -e
tail -n +2 data/clean.csv | sort -t, -k5,5 -k1,1 > data/sorted.csv
awk -F, '{ n[$5]++ } END { for (k in n) print k "," n[k] }' data/sorted.csv | sort > models/counts.csv
"""


def git(repo: Path, *args: str) -> str:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.invalid",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.invalid",
    }
    out = subprocess.run(
        ["git", "-C", str(repo), *args], capture_output=True, text=True, env=env, check=True
    )
    return out.stdout.strip()


def write_raw(path: Path, *, drop_every: int) -> None:
    """Iris, shipped with scikit-learn, with a few blank cells for prepare.py to drop."""
    from sklearn.datasets import load_iris

    iris = load_iris()
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["sepal_length", "sepal_width", "petal_length", "petal_width", "species"])
        for i, (features, label) in enumerate(zip(iris.data, iris.target, strict=True)):
            row = [f"{x:.1f}" for x in features] + [str(int(label))]
            if i % drop_every == 0:
                row[1] = ""
            writer.writerow(row)


class Pipeline:
    def __init__(self, daemon: DaemonProcess, repo: Path) -> None:
        self.daemon = daemon
        self.repo = repo

    def lineage(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = self.daemon.run_cli(*args, cwd=self.repo)
        if check:
            assert result.returncode == 0, (
                f"lineage {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
            )
        return result

    def run_stage(self, *command: str) -> str:
        result = self.lineage("run", "--", *command)
        run_id = result.stderr.split("lineage: run ", 1)[1].split()[0]
        return run_id

    def all_stages(self) -> dict[str, str]:
        return {
            "prepare": self.run_stage(sys.executable, "prepare.py"),
            "train": self.run_stage(sys.executable, "train.py"),
            "evaluate": self.run_stage(sys.executable, "evaluate.py"),
        }

    def graph(self, *args: str) -> dict[str, Any]:
        return json.loads(self.lineage(*args, "--json").stdout)  # type: ignore[no-any-return]


def digests(graph: dict[str, Any]) -> dict[str, set[str]]:
    """path -> every digest of that path among the graph's version nodes."""
    found: dict[str, set[str]] = {}
    for node in graph["nodes"]:
        if node["kind"] == "version":
            found.setdefault(os.path.basename(node["path"]), set()).add(node["digest"])
    return found


def runs(graph: dict[str, Any]) -> list[dict[str, Any]]:
    return [n for n in graph["nodes"] if n["kind"] == "run"]


@pytest.fixture
def pipeline() -> Iterator[Pipeline]:
    base = short_tmp_dir()
    repo = base / "repo"
    (repo / "data").mkdir(parents=True)
    (repo / "models").mkdir()
    for name, text in {
        "prepare.py": PREPARE,
        "features.py": FEATURES,
        "train.py": TRAIN,
        "evaluate.py": EVALUATE,
        "stage.sh": STAGE_SH,
        ".gitignore": "data/\nmodels/\n__pycache__/\n",
    }.items():
        (repo / name).write_text(text)
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "pipeline")
    daemon = DaemonProcess(
        base, "--watch", f"{repo / 'data'}:data", "--watch", f"{repo / 'models'}:model", roles=()
    )
    try:
        daemon.wait_serving()
        yield Pipeline(daemon, repo)
        daemon.finish()
    finally:
        if daemon.alive():
            daemon.proc.kill()
            daemon.proc.wait()
        shutil.rmtree(base, ignore_errors=True)


def test_three_stage_pipeline_end_to_end(pipeline: Pipeline) -> None:
    repo = pipeline.repo
    head = git(repo, "rev-parse", "HEAD")
    write_raw(repo / "data" / "raw.csv", drop_every=17)
    raw_v1 = b3((repo / "data" / "raw.csv").read_bytes())
    first = pipeline.all_stages()
    clean_v1 = b3((repo / "data" / "clean.csv").read_bytes())
    model_v1 = b3((repo / "models" / "model.pkl").read_bytes())
    metrics_v1 = b3((repo / "models" / "metrics.json").read_bytes())

    # Upstream of the model: both data versions, the commit of each stage, the sources.
    graph = pipeline.graph("trace", "models/model.pkl")
    found = digests(graph)
    assert found["model.pkl"] == {model_v1}
    assert found["clean.csv"] == {clean_v1}
    assert found["raw.csv"] == {raw_v1}
    stage_runs = {r["run_id"]: r for r in runs(graph)}
    assert set(stage_runs) == {first["prepare"], first["train"]}
    for run in stage_runs.values():
        assert run["code"]["commit"] == head
        assert run["code"]["dirty"] is False
        assert run["exit_code"] == 0 and run["status"] == "succeeded"
    sources = {
        os.path.basename(s["path"]): s["digest"]
        for s in stage_runs[first["train"]]["code"]["sources"]
    }
    assert sources["train.py"] == b3((repo / "train.py").read_bytes())
    assert sources["features.py"] == b3((repo / "features.py").read_bytes())
    assert not any("sklearn" in path for path in sources)  # site-packages are the environment
    reads = [e for e in graph["edges"] if e["kind"] == "read"]
    assert reads and all(e["changed_during_run"] is False for e in reads)
    # The temporary file of the atomic save left no trace.
    assert not any(".partial" in n.get("path", "") for n in graph["nodes"])

    # Keep a copy of the first model outside every root, change the raw data, rerun.
    outside = pipeline.daemon.base / "outside"
    outside.mkdir()
    shutil.copy(repo / "models" / "model.pkl", outside / "model-v1.pkl")
    write_raw(repo / "data" / "raw.csv", drop_every=5)
    raw_v2 = b3((repo / "data" / "raw.csv").read_bytes())
    second = pipeline.all_stages()
    clean_v2 = b3((repo / "data" / "clean.csv").read_bytes())
    model_v2 = b3((repo / "models" / "model.pkl").read_bytes())
    assert len({raw_v1, raw_v2}) == 2 and len({clean_v1, clean_v2}) == 2

    new = digests(pipeline.graph("trace", "models/model.pkl"))
    assert new["model.pkl"] == {model_v2}
    assert new["clean.csv"] == {clean_v2} and new["raw.csv"] == {raw_v2}

    old = pipeline.graph("trace", str(outside / "model-v1.pkl"))
    old_found = digests(old)
    assert old_found["clean.csv"] == {clean_v1} and old_found["raw.csv"] == {raw_v1}
    assert first["train"] in {r["run_id"] for r in runs(old)}

    # Downstream of the first raw data: the first model and metrics, not the second.
    impact = digests(pipeline.graph("impact", raw_v1[:12]))
    assert impact["model.pkl"] == {model_v1}
    assert impact["metrics.json"] == {metrics_v1}
    assert second["train"] not in json.dumps(pipeline.graph("impact", raw_v1[:12]))

    # verify: every input of the first model has changed since.
    verify = pipeline.lineage("verify", str(outside / "model-v1.pkl"), "--json", check=False)
    assert verify.returncode == 1
    states = {os.path.basename(i["path"]): i["state"] for i in json.loads(verify.stdout)["items"]}
    assert states["raw.csv"] == "changed" and states["clean.csv"] == "changed"


def test_dirty_tree_records_dirty_and_the_diff(pipeline: Pipeline) -> None:
    repo = pipeline.repo
    write_raw(repo / "data" / "raw.csv", drop_every=11)
    pipeline.run_stage(sys.executable, "prepare.py")
    (repo / "train.py").write_text(TRAIN.replace("max_iter=500", "max_iter=800"))
    run_id = pipeline.run_stage(sys.executable, "train.py")
    shown = json.loads(pipeline.lineage("show", run_id, "--json").stdout)
    code = shown["run"]["code"]
    assert code["dirty"] is True
    assert code["diff_size"] > 0 and len(code["diff_digest"]) == 64
    diff = pipeline.lineage("show", run_id, "--diff").stdout
    assert "-model = LogisticRegression(max_iter=500)" in diff
    assert "+model = LogisticRegression(max_iter=800)" in diff


def test_shell_stage_is_traced_with_strace(pipeline: Pipeline) -> None:
    if not shutil.which("strace"):
        pytest.skip("strace is not installed: non-Python commands are recorded without I/O")
    repo = pipeline.repo
    write_raw(repo / "data" / "raw.csv", drop_every=13)
    pipeline.run_stage(sys.executable, "prepare.py")
    clean = b3((repo / "data" / "clean.csv").read_bytes())
    run_id = pipeline.run_stage("sh", "stage.sh")
    # Both outputs trace back to what the script read; the file it wrote and read back
    # itself is an intermediate of the run, not one of its inputs.
    for output in ("models/counts.csv", "data/sorted.csv"):
        graph = pipeline.graph("trace", output)
        found = digests(graph)
        assert found[os.path.basename(output)] == {b3((repo / output).read_bytes())}
        assert found["clean.csv"] == {clean}
        assert run_id in {r["run_id"] for r in runs(graph)}


def test_declared_io_through_client_run(pipeline: Pipeline) -> None:
    repo = pipeline.repo
    write_raw(repo / "data" / "raw.csv", drop_every=7)
    raw = b3((repo / "data" / "raw.csv").read_bytes())
    client = pipeline.daemon.client()
    with client.run("declared", params={"lr": 0.1}, capture=False) as run:
        run.input(repo / "data" / "raw.csv")
        (repo / "models" / "summary.txt").write_text("150 rows\n")
        run.output(repo / "models" / "summary.txt")
    graph = client.trace(str(repo / "models" / "summary.txt"))
    assert {v.digest for v in graph.versions} == {raw, b3(b"150 rows\n")}
    (ran,) = graph.runs
    assert ran.run_id == run.run_id and ran.params == {"lr": "0.1"}
    assert {e.how for e in graph.edges} == {"declared"}

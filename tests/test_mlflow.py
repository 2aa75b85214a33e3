"""The MLflow bridge against a real MLflow tracking store (SQLite, in a temporary directory).

A scikit-learn script that logs to MLflow and registers its model runs under ``lineage run``
in a git repository; the MLflow run must carry the lineage run id (set by lineaged's run
context provider plugin at ``mlflow.start_run()``), the commit and dirty flag, the data inputs
as MLflow dataset inputs with their BLAKE3 digests (checked against b3sum), and the outputs;
``lineage trace models:/NAME/1`` must reach the data versions. MLflow is slow to import: the
whole flow is one test.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import DaemonProcess, short_tmp_dir
from tests.helpers import b3
from tests.test_pipeline import git, write_raw

pytest.importorskip("sklearn")
# Not importorskip: importing MLflow changes the process (see CHECK); it runs in subprocesses.
pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("mlflow") is None, reason="the mlflow extra is not installed"
)

TRAIN = """
import csv
import pickle

import mlflow
import mlflow.sklearn
from sklearn.linear_model import LogisticRegression

with open("data/train.csv", newline="") as f:
    rows = [r for r in list(csv.reader(f))[1:] if all(r)]
X = [[float(x) for x in r[:-1]] for r in rows]
y = [int(r[-1]) for r in rows]
with mlflow.start_run() as run:
    model = LogisticRegression(max_iter=500).fit(X, y)
    mlflow.log_param("max_iter", 500)
    mlflow.log_metric("accuracy", float(model.score(X, y)))
    mlflow.sklearn.log_model(model, name="model", registered_model_name="iris")
    with open("models/model.pkl", "wb") as out:
        pickle.dump(model, out)
    print("MLFLOW_RUN", run.info.run_id)
"""


@pytest.fixture
def project() -> Iterator[tuple[DaemonProcess, Path]]:
    base = short_tmp_dir()
    repo = base / "repo"
    (repo / "data").mkdir(parents=True)
    (repo / "models").mkdir()
    (repo / "train.py").write_text(TRAIN)
    (repo / ".gitignore").write_text("data/\nmodels/\nmlruns/\nmlartifacts/\n*.db\n")
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "train")
    (repo / "notes.txt").write_text("untracked: the work tree is dirty\n")
    daemon = DaemonProcess(
        base, "--watch", f"{repo / 'data'}:data", "--watch", f"{repo / 'models'}:model", roles=()
    )
    try:
        daemon.wait_serving()
        yield daemon, repo
        daemon.finish()
    finally:
        if daemon.alive():
            daemon.proc.kill()
            daemon.proc.wait()
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.timeout(1200)  # MLflow starts slowly on a busy 2-core machine (4.5 min seen)
def test_mlflow_run_under_lineage_run_and_trace_of_the_registered_model(
    project: tuple[DaemonProcess, Path],
) -> None:
    daemon, repo = project
    write_raw(repo / "data" / "train.csv", drop_every=13)
    data_digest = b3((repo / "data" / "train.csv").read_bytes())
    tracking = f"sqlite:///{repo / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking}
    # MLflow takes a minute or two to start here (imports, migrating its SQLite schema).
    result = subprocess.run(
        [sys.executable, "-m", "lineage_client.cli", "--socket", str(daemon.socket), "run",
         "--", sys.executable, "train.py"],
        capture_output=True, text=True, timeout=900, cwd=repo, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lineage_id = result.stderr.split("lineage: run ", 1)[1].split()[0]
    mlflow_id = result.stdout.split("MLFLOW_RUN ", 1)[1].split()[0]
    assert f"lineage: MLflow run {mlflow_id}" in result.stderr

    found = json.loads(_in_subprocess(CHECK, repo, env, str(daemon.socket), mlflow_id))
    tags = found["tags"]
    assert tags["lineage.run_id"] == lineage_id
    assert tags["lineage.git.commit"] == git(repo, "rev-parse", "HEAD")
    assert tags["lineage.git.dirty"] == "true"
    assert tags["lineage.status"] == "succeeded"
    model_digest = b3((repo / "models" / "model.pkl").read_bytes())
    assert f"blake3:{model_digest} {repo / 'models' / 'model.pkl'}" in tags["lineage.outputs"]
    inputs = {d["name"]: d for d in found["inputs"]}
    dataset = inputs[str(repo / "data" / "train.csv")]
    assert dataset["digest"] == data_digest[:32]  # MLflow caps digests at 36 characters
    assert dataset["tags"]["lineage.digest"] == f"blake3:{data_digest}"
    assert json.loads(dataset["source"]) == {"uri": str(repo / "data" / "train.csv")}
    assert all(not name.endswith(".py") for name in inputs)  # code is not a dataset

    # From the other side: the registered model traces to the data (the CLI, as a user would).
    traced = subprocess.run(
        [sys.executable, "-m", "lineage_client.cli", "--socket", str(daemon.socket), "trace",
         "models:/iris/1", "--json"],
        capture_output=True, text=True, timeout=900, cwd=repo, env=env,
    )  # fmt: skip
    assert traced.returncode == 0, traced.stderr
    graph = json.loads(traced.stdout)
    versions = {n["path"]: n["digest"] for n in graph["nodes"] if n["kind"] == "version"}
    assert versions[str(repo / "data" / "train.csv")] == data_digest
    assert any(n["kind"] == "run" and n["run_id"] == lineage_id for n in graph["nodes"])
    # The MLflow run by id, through the Python client, and names that resolve to nothing.
    assert data_digest in found["traced_run"]
    assert found["errors"] == {
        "models:/iris/7": ["NotFound", True],
        "mlflow:0123456789abcdef0123456789abcdef": ["NotFound", True],
        "models:/iris": ["InvalidArgument", True],
    }


# What the test reads from MLflow, in a process of its own: importing MLflow installs an
# importlib.metadata finder of its own (the importlib_metadata backport) and logging handlers
# that other tests of this session must not inherit.
CHECK = """
import json, sys, warnings
warnings.simplefilter("ignore")
from mlflow import MlflowClient
from lineage_client import Client
from lineage_core.errors import LineageError

socket, run_id = sys.argv[1:]
run = MlflowClient().get_run(run_id)
inputs = [
    {"name": d.dataset.name, "digest": d.dataset.digest, "source": d.dataset.source,
     "tags": {t.key: t.value for t in d.tags}}
    for d in run.inputs.dataset_inputs
]
expected = {"models:/iris/7": "no registered model version",
            "mlflow:0123456789abcdef0123456789abcdef": "no MLflow run", "models:/iris": "VERSION"}
errors = {}
with Client(socket=socket) as client:
    traced_run = [v.digest for v in client.trace("mlflow:" + run_id).versions]
    for target, words in expected.items():
        try:
            client.trace(target)
        except LineageError as exc:
            errors[target] = [type(exc).__name__, words in exc.message]
print(json.dumps({"tags": run.data.tags, "inputs": inputs, "traced_run": traced_run,
                  "errors": errors}))
"""


def _in_subprocess(script: str, cwd: Path, env: dict[str, str], *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", script, *args],
        capture_output=True, text=True, timeout=900, cwd=cwd, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1]


def test_mlflow_names_need_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from lineage_client import mlflow_bridge
    from lineage_core.errors import FailedPrecondition

    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if MLflow were not installed
    with pytest.raises(FailedPrecondition, match=r"lineaged\[mlflow\]"):
        mlflow_bridge.lineage_run_id("models:/iris/1")

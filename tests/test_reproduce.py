"""Acceptance: keep the bytes, restore them, check a run out and reproduce it bit for bit.

One scikit-learn pipeline per module (prepare -> train, plus a stage that stamps the time
and one that reads a file its root does not keep), run with ``lineage run`` in a real git
repository against a real daemon; the raw data and the code change, then the old versions
are restored and the first runs reproduced. Digests are checked against b3sum.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from lineage_client.reproduce import materialise
from lineage_core.errors import CorruptObject, NotFound
from lineage_core.models import Access, AccessMode

from tests.conftest import DaemonProcess, short_tmp_dir
from tests.helpers import b3, wait_for
from tests.test_pipeline import FEATURES, PREPARE, git, write_raw

pytest.importorskip("sklearn")

# Deterministic: the solver is, and the model is saved with a fixed pickle protocol.
TRAIN = """
import csv
import pickle

from sklearn.linear_model import LogisticRegression

from features import split

with open("data/clean.csv", newline="") as f:
    rows = list(csv.reader(f))[1:]
X, y = split(rows)
model = LogisticRegression(max_iter=500).fit(X, y)
with open("models/model.pkl", "wb") as out:
    pickle.dump(model, out, protocol=4)
"""

STAMP = """
import time

with open("data/clean.csv") as f:
    rows = sum(1 for _ in f)
with open("models/report.txt", "w") as out:
    out.write(f"{rows} rows at {time.time_ns()}\\n")
"""

SCRATCH = """
import sys

with open(sys.argv[1]) as f:
    text = f.read()
with open("models/copy.txt", "w") as out:
    out.write(text.upper())
"""


@dataclass
class Pipeline:
    daemon: DaemonProcess
    repo: Path
    scratch: Path  # a root that keeps nothing
    shared: Path  # a root that keeps every version
    runs: dict[str, str] = field(default_factory=dict)
    digests: dict[str, str] = field(default_factory=dict)
    raw_v1: bytes = b""

    def lineage(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = self.daemon.run_cli(*args, cwd=self.repo)
        if check:
            assert result.returncode == 0, (
                f"lineage {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
            )
        return result

    def json(self, *args: str, code: int = 0) -> Any:
        result = self.lineage(*args, "--json", check=False)
        assert result.returncode == code, f"{args}: {result.returncode}\n{result.stderr}"
        return json.loads(result.stdout)

    def run_stage(self, *command: str) -> str:
        result = self.lineage("run", "--", *command)
        return result.stderr.split("lineage: run ", 1)[1].split()[0]

    def digest(self, relative: str) -> str:
        return b3((self.repo / relative).read_bytes())


@pytest.fixture(scope="module")
def pipeline() -> Iterator[Pipeline]:
    base = short_tmp_dir()
    repo = base / "repo"
    (repo / "data").mkdir(parents=True)
    (repo / "models").mkdir()
    scratch, shared = repo / "scratch", base / "shared"
    scratch.mkdir()
    shared.mkdir()
    for name, text in {
        "prepare.py": PREPARE,
        "features.py": FEATURES,
        "train.py": TRAIN,
        "stamp.py": STAMP,
        "scratch.py": SCRATCH,
        ".gitignore": "data/\nmodels/\nscratch/\n__pycache__/\n",
    }.items():
        (repo / name).write_text(text)
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "pipeline")
    config = base / "lineaged.toml"
    config.write_text(
        # gc frees what exceeds this: everything but what is upstream of a pin.
        "objects_budget = 1\n"
        f'[[roots]]\npath = "{repo / "data"}"\nrole = "data"\n'
        f'[[roots]]\npath = "{repo / "models"}"\nrole = "model"\n'
        f'[[roots]]\npath = "{scratch}"\nrole = "data"\nkeep = "none"\n'
        f'[[roots]]\npath = "{shared}"\nrole = "data"\nkeep = "all"\n'
    )
    daemon = DaemonProcess(base, "--config", str(config), roles=())
    try:
        daemon.wait_serving()
        p = Pipeline(daemon, repo, scratch, shared)
        write_raw(repo / "data" / "raw.csv", drop_every=17)
        p.raw_v1 = (repo / "data" / "raw.csv").read_bytes()
        p.runs["prepare1"] = p.run_stage(sys.executable, "prepare.py")
        p.runs["train1"] = p.run_stage(sys.executable, "train.py")
        p.runs["stamp"] = p.run_stage(sys.executable, "stamp.py")
        for name in ("data/raw.csv", "data/clean.csv", "models/model.pkl"):
            p.digests[name + "@1"] = p.digest(name)
        (scratch / "input.txt").write_text("not kept\n")
        p.runs["scratch"] = p.run_stage(sys.executable, "scratch.py", "scratch/input.txt")
        # The raw data and the code change; the pipeline runs again.
        write_raw(repo / "data" / "raw.csv", drop_every=5)
        (repo / "train.py").write_text(TRAIN.replace("max_iter=500", "max_iter=900, C=0.5"))
        git(repo, "commit", "-q", "-am", "stronger regularisation")
        p.runs["prepare2"] = p.run_stage(sys.executable, "prepare.py")
        p.runs["train2"] = p.run_stage(sys.executable, "train.py")
        for name in ("data/raw.csv", "data/clean.csv", "models/model.pkl"):
            p.digests[name + "@2"] = p.digest(name)
        yield p
        daemon.finish()
    finally:
        if daemon.alive():
            daemon.proc.kill()
            daemon.proc.wait()
        shutil.rmtree(base, ignore_errors=True)


def _object(pipeline: Pipeline, digest: str) -> Path:
    return pipeline.daemon.state_dir / "objects" / digest[:2] / digest[2:]


def test_runs_keep_what_they_read_and_wrote_and_nothing_else(pipeline: Pipeline) -> None:
    d = pipeline.digests
    assert d["data/raw.csv@1"] != d["data/raw.csv@2"]
    assert d["models/model.pkl@1"] != d["models/model.pkl@2"]
    for name, digest in d.items():
        assert _object(pipeline, digest).exists(), f"{name} was not kept"
        assert b3(_object(pipeline, digest).read_bytes()) == digest
    client = pipeline.daemon.client()
    files = client.run_files(pipeline.runs["train1"]).files
    kept = {(Path(f.version.path).name, f.kind): f.kept for f in files}
    assert kept[("clean.csv", "read")] and kept[("model.pkl", "wrote")]
    assert not kept[("train.py", "read")]  # code outside every root: git has it
    scratch = client.run_files(pipeline.runs["scratch"]).files
    read = next(f for f in scratch if f.version.path.endswith("input.txt"))
    assert not read.kept  # its root keeps nothing


def test_restore_the_old_raw_version(pipeline: Pipeline) -> None:
    raw = pipeline.repo / "data" / "raw.csv"
    v1 = pipeline.digests["data/raw.csv@1"]
    restored = pipeline.json("restore", f"data/raw.csv@{v1[:16]}")
    assert restored["version"]["digest"] == v1 and restored["unchanged"] is False
    assert raw.read_bytes() == pipeline.raw_v1
    assert b3(raw.read_bytes()) == v1
    # To another place, through the Python client: the same bytes.
    client = pipeline.daemon.client()
    elsewhere = pipeline.daemon.base / "restored"
    elsewhere.mkdir(exist_ok=True)
    done = client.restore(f"{raw}@{v1}", to=elsewhere)
    assert Path(done.path) == elsewhere / "raw.csv"
    assert (elsewhere / "raw.csv").read_bytes() == pipeline.raw_v1
    # The stream a client gets when it may not read the daemon's objects (a root daemon).
    version, where = client.locate_version(str(raw), digest=v1)
    assert where and Path(where).is_file()
    streamed = elsewhere / "streamed.csv"
    assert materialise(client, version, "", str(streamed)) == len(pipeline.raw_v1)
    assert streamed.read_bytes() == pipeline.raw_v1

    # Content lineaged does not keep is not overwritten without --force.
    raw.write_bytes(b"edited by hand, never read by a run\n")
    refused = pipeline.lineage("restore", f"data/raw.csv@{v1}", check=False)
    assert refused.returncode == 1 and "unsaved changes" in refused.stderr
    assert raw.read_bytes() == b"edited by hand, never read by a run\n"
    forced = pipeline.lineage("restore", f"data/raw.csv@{v1}", "--force")
    assert "restored version" in forced.stdout and v1[:12] in forced.stdout
    assert raw.read_bytes() == pipeline.raw_v1


def test_reproduce_the_first_model_identical(pipeline: Pipeline) -> None:
    original = pipeline.runs["train1"]
    result = pipeline.json("reproduce", original)
    assert result["verdict"] == "identical", result
    (output,) = result["outputs"]
    assert output["path"] == str(pipeline.repo / "models" / "model.pkl")
    assert output["old_digest"] == output["new_digest"] == pipeline.digests["models/model.pkl@1"]
    # The checkout had the first commit's code, not today's.
    checked_out = Path(result["directory"]) / "train.py"
    assert "max_iter=500" in checked_out.read_text()
    client = pipeline.daemon.client()
    assert client.run_files(result["new_run_id"]).reproduces == original
    assert result["new_run_id"] in client.run_files(original).reproduced_by


def test_reproduce_a_stage_that_stamps_the_time_differs(pipeline: Pipeline) -> None:
    client = pipeline.daemon.client()
    result = client.reproduce(pipeline.runs["stamp"])
    assert result.verdict == "differs" and result.exit_status == 1
    (output,) = result.outputs
    assert output.path == str(pipeline.repo / "models" / "report.txt")
    assert output.new_digest and output.new_digest != output.old_digest
    text = pipeline.lineage("reproduce", pipeline.runs["stamp"], check=False)
    assert text.returncode == 1 and "report.txt" in text.stdout


def test_reproduce_a_run_whose_input_was_not_kept_cannot(pipeline: Pipeline) -> None:
    result = pipeline.json("reproduce", pipeline.runs["scratch"], code=3)
    assert result["verdict"] == "cannot" and result["new_run_id"] is None
    (missing,) = result["missing"]
    assert missing["path"] == str(pipeline.scratch / "input.txt")
    assert "not kept" in missing["reason"]


def test_checkout_then_a_commit_missing_from_the_repository(pipeline: Pipeline) -> None:
    client = pipeline.daemon.client()
    run = client.get_run(pipeline.runs["train2"])
    assert run.code is not None
    to = pipeline.daemon.base / "checkout-train2"
    done = pipeline.json("checkout", run.run_id, "--to", str(to))
    assert done["missing"] == [] and done["workdir"] == str(to)
    assert done["code"].startswith(f"git archive {run.code.commit[:12]}")
    assert b3((to / "data" / "clean.csv").read_bytes()) == pipeline.digests["data/clean.csv@2"]
    assert {f["path"] for f in done["files"]} == {str(to / "data" / "clean.csv")}
    assert "C=0.5" in (to / "train.py").read_text()
    assert (to / "models").is_dir()  # where the run wrote, ready for it to write again
    # The second commit dropped and pruned: a repository that lost that history.
    git(pipeline.repo, "reset", "-q", "--hard", "HEAD~1")
    git(pipeline.repo, "reflog", "expire", "--expire=now", "--all")
    git(pipeline.repo, "gc", "-q", "--prune=now")
    try:
        result = pipeline.json("reproduce", run.run_id, code=3)
        reasons = " ".join(m["reason"] for m in result["missing"])
        assert f"commit {run.code.commit} is not in the repository" in reasons
    finally:
        (pipeline.repo / "train.py").write_text(
            TRAIN.replace("max_iter=500", "max_iter=900, C=0.5")
        )


def test_deduplication_two_paths_one_object(pipeline: Pipeline) -> None:
    data = os.urandom(1 << 20)
    (pipeline.shared / "a.bin").write_bytes(data)
    (pipeline.shared / "copy-of-a.bin").write_bytes(data)
    digest = b3(data)
    client = pipeline.daemon.client()

    def recorded(path: Path) -> bool:
        try:
            return any(v.digest == digest for v in client.iter_history(path))
        except NotFound:
            return False

    wait_for(
        lambda: recorded(pipeline.shared / "a.bin") and recorded(pipeline.shared / "copy-of-a.bin"),
        what="both copies recorded",
    )
    wait_for(lambda: client.kept_version(digest=digest), what="the bytes kept")
    folder = pipeline.daemon.state_dir / "objects" / digest[:2]
    assert [p.name for p in folder.iterdir() if not p.name.startswith(".")].count(digest[2:]) == 1
    assert _object(pipeline, digest).read_bytes() == data


def test_a_corrupt_object_is_refused(pipeline: Pipeline) -> None:
    victim = pipeline.shared / "victim.bin"
    victim.write_bytes(b"bytes to damage\n" * 4096)
    digest = b3(victim.read_bytes())
    client = pipeline.daemon.client()
    wait_for(lambda: client.kept_version(digest=digest), what="the bytes kept")
    stored = _object(pipeline, digest)
    os.chmod(stored, 0o600)
    damaged = bytearray(stored.read_bytes())
    damaged[-1] ^= 0x01
    stored.write_bytes(bytes(damaged))
    dest = pipeline.daemon.base / "victim-restored.bin"
    result = pipeline.lineage("restore", f"{victim}@{digest}", "--to", str(dest), check=False)
    assert result.returncode == 1
    assert "no longer holds the bytes" in result.stderr and "Traceback" not in result.stderr
    assert not dest.exists()
    version, _ = client.locate_version(str(victim), digest=digest)
    with pytest.raises(CorruptObject, match="no longer holds"):  # streamed: DATA_LOSS
        materialise(client, version, "", str(dest))
    assert not dest.exists() and not list(dest.parent.glob(".victim-restored.bin.*"))


def test_a_version_that_changed_before_it_could_be_kept_is_recorded_not_kept(
    pipeline: Pipeline,
) -> None:
    client = pipeline.daemon.client()
    path = pipeline.repo / "data" / "volatile.csv"

    def current() -> str:
        try:
            return client.history(path).items[0].digest
        except NotFound:
            return ""

    path.write_bytes(b"first\n")
    first = b3(b"first\n")
    wait_for(lambda: current() == first, what="the first version recorded")
    opened_at = time.time_ns()  # the run opened the first version ...
    path.write_bytes(b"second, written before the run reported its read\n")
    wait_for(lambda: current() == b3(path.read_bytes()), what="the second version recorded")
    with client.run("volatile") as run:  # ... and reports the read only now
        read = Access(str(path), AccessMode.READ, first_at=opened_at, last_at=opened_at)
        client.record_accesses(run.run_id, [read])
    (item,) = [f for f in client.run_files(run.run_id).files if f.version.path == str(path)]
    assert item.version.digest == first and not item.kept
    assert "changed before its bytes could be kept" in item.not_kept
    refused = pipeline.lineage("restore", f"data/volatile.csv@{first}", check=False)
    assert refused.returncode == 3 and "changed before its bytes could be kept" in refused.stderr


def test_gc_keeps_what_is_upstream_of_a_pinned_model(pipeline: Pipeline) -> None:
    d = pipeline.digests
    model_v1 = d["models/model.pkl@1"]
    pinned = pipeline.json("pin", model_v1)
    # Every version that held these bytes: the model and the reproduction's copy of it.
    assert {v["digest"] for v in pinned["pinned"]} == {model_v1}
    assert pinned["upstream_versions"] >= 3 and pinned["upstream_kept"] == 3
    upstream = {model_v1, d["data/clean.csv@1"], d["data/raw.csv@1"]}
    by_run = pipeline.json("pin", pipeline.runs["train1"])  # the run: its inputs and outputs
    assert {model_v1, d["data/clean.csv@1"]} <= {v["digest"] for v in by_run["pinned"]}
    dry = pipeline.json("gc", "--dry-run")
    assert dry["dry_run"] is True and dry["freed_objects"] > 0
    assert all(_object(pipeline, digest).exists() for digest in dry["freed"])
    freed = pipeline.json("gc")
    assert freed["freed_objects"] == dry["freed_objects"]
    assert freed["freed_bytes"] == dry["freed_bytes"] > 0
    assert not upstream & set(freed["freed"])
    for digest in upstream:  # the pinned model's upstream survives and restores
        assert b3(_object(pipeline, digest).read_bytes()) == digest
    for later in (d["models/model.pkl@2"], d["data/clean.csv@2"], d["data/raw.csv@2"]):
        assert later in freed["freed"] and not _object(pipeline, later).exists()
    assert freed["kept_objects"] == freed["protected_objects"] == len(upstream)
    again = pipeline.json("gc")
    assert again["freed_objects"] == 0
    client = pipeline.daemon.client()
    assert client.kept_version(digest=d["models/model.pkl@2"]) is None
    out = pipeline.daemon.base / "model-v1.pkl"
    client.restore(f"{pipeline.repo / 'models' / 'model.pkl'}@{model_v1}", to=out)
    assert b3(out.read_bytes()) == model_v1

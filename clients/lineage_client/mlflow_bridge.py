"""The MLflow bridge: what ``lineage run`` recorded, written into the MLflow runs the command
started; and MLflow names (``mlflow:RUN_ID``, ``runs:/RUN_ID/...``, ``models:/NAME/VERSION``)
resolved to the lineage run behind them.

How a lineage run reaches MLflow (docs/mlflow.md):

1. At ``mlflow.start_run()`` in the command, MLflow's run context provider plugin
   (``mlflow_context.py``) tags the MLflow run ``lineage.run_id`` and notes the tracking URI in
   the file ``lineage run`` named in ``$LINEAGE_MLFLOW_NOTES``.
2. When the command has ended and the lineage run is recorded, ``lineage run`` reads the notes
   and, only if the command used MLflow, calls :func:`annotate`: for each tracking URI it finds
   the MLflow runs tagged with the lineage run id (``MlflowClient.search_runs``) and adds tags
   ``lineage.git.commit``, ``lineage.git.branch``, ``lineage.git.dirty``, ``lineage.status``
   and ``lineage.outputs`` (each output's ``blake3:<digest>`` and path), and logs every data
   input as an MLflow dataset input: name and source the file's absolute path, digest its
   BLAKE3 (MLflow caps dataset digests at 36 characters, so the 128-bit BLAKE3 — what
   ``b3sum --length 16`` prints — with the full 256-bit digest in the input tag
   ``lineage.digest``).

MLflow is an optional extra (``pip install 'lineaged[mlflow]'``) and slow to import: it is
imported here, and this module only when MLflow is needed.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from lineage_core.errors import FailedPrecondition, InvalidArgument, NotFound
from lineage_core.models import run_node_id, version_node_id

if TYPE_CHECKING:
    from lineage_core.models import Graph, Run, Version

__all__ = [
    "MLFLOW_DIGEST_HEX",
    "NOTES_ENV",
    "RUN_TAG",
    "annotate",
    "is_mlflow_target",
    "lineage_run_id",
    "read_notes",
]

RUN_TAG = "lineage.run_id"  # as mlflow_context.RUN_TAG (that module imports MLflow)
NOTES_ENV = "LINEAGE_MLFLOW_NOTES"
MLFLOW_DIGEST_HEX = 32  # MLflow's dataset digests are at most 36 characters
MAX_TAG = 8000  # MLflow's longest tag value
_PREFIXES = ("mlflow:", "runs:/", "models:/")
INSTALL_HINT = "install the extra: pip install 'lineaged[mlflow]'"


def is_mlflow_target(target: str) -> bool:
    """Whether ``target`` names an MLflow run or registered model version."""
    return target.startswith(_PREFIXES)


def _mlflow() -> Any:
    try:
        # (c) optional: MLflow may not be installed
        import mlflow
    except ImportError:
        raise FailedPrecondition(f"MLflow is not installed here; {INSTALL_HINT}") from None
    return mlflow


def _mlflow_run(client: Any, run_id: str) -> Any:
    # (c) optional: MLflow may not be installed
    from mlflow.exceptions import MlflowException

    try:
        return client.get_run(run_id)
    except MlflowException as exc:
        raise NotFound(
            f"no MLflow run {run_id!r} at {client.tracking_uri}: {exc.message}"
        ) from None


def lineage_run_id(target: str) -> str:
    """The lineage run behind an MLflow run or a registered model version (its source run),
    read from the MLflow run's ``lineage.run_id`` tag; the tracking and registry URIs come
    from MLflow's own configuration (``MLFLOW_TRACKING_URI``, ``MLFLOW_REGISTRY_URI``)."""
    mlflow = _mlflow()
    # (c) optional: MLflow may not be installed
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient()
    if target.startswith("models:/"):
        name, sep, version = target.removeprefix("models:/").strip("/").rpartition("/")
        alias = ""
        if not sep:
            name, sep, alias = target.removeprefix("models:/").partition("@")
        if not name or not (version.isdigit() or alias):
            raise InvalidArgument(
                f"{target!r}: name a registered model version as models:/NAME/VERSION"
                " or models:/NAME@ALIAS"
            )
        try:
            model = (
                client.get_model_version_by_alias(name, alias)
                if alias
                else client.get_model_version(name, version)
            )
        except MlflowException as exc:
            raise NotFound(f"no registered model version {target}: {exc.message}") from None
        if not model.run_id:
            raise NotFound(f"{target} was registered from no MLflow run: nothing to trace")
        run_id, what = model.run_id, f"{target} (MLflow run {model.run_id})"
    else:
        rest = target.removeprefix("mlflow:").removeprefix("runs:/")
        run_id = rest.strip("/").partition("/")[0]
        if not run_id:
            raise InvalidArgument(f"{target!r}: name an MLflow run as mlflow:RUN_ID")
        what = f"MLflow run {run_id}"
    lineage_id: str | None = _mlflow_run(client, run_id).data.tags.get(RUN_TAG)
    if not lineage_id:
        raise NotFound(
            f"{what} has no {RUN_TAG} tag: it was not started under `lineage run` (or "
            "without lineaged's MLflow plugin installed in its environment)"
        )
    return lineage_id


def read_notes(path: str) -> list[str]:
    """The tracking URIs the plugin noted, each once, in order."""
    try:
        with open(path, encoding="utf-8") as handle:
            lines = [line.strip() for line in handle]
    except OSError:
        return []
    return list(dict.fromkeys(line for line in lines if line))


def _io(run_id: str, graph: Graph) -> tuple[list[tuple[Version, bool]], list[Version]]:
    """The run's data inputs (with changed_during_run) and its outputs, by path."""
    node = run_node_id(run_id)
    versions = {version_node_id(v.id): v for v in graph.versions}
    inputs: dict[str, tuple[Version, bool]] = {}
    outputs: dict[str, Version] = {}
    for edge in graph.edges:
        if node not in (edge.source, edge.target):
            continue
        other = edge.target if edge.source == node else edge.source
        version = versions.get(other)
        if version is None:
            continue
        if edge.kind == "read" and edge.role == "data":
            inputs[version.path] = (version, edge.changed_during_run)
        elif edge.kind == "wrote":
            outputs[version.path] = version
    return [inputs[p] for p in sorted(inputs)], [outputs[p] for p in sorted(outputs)]


def _outputs_tag(outputs: Sequence[Version]) -> str:
    lines = [f"blake3:{v.digest} {v.path}" for v in outputs]
    text = "\n".join(lines)
    if len(text) <= MAX_TAG:
        return text
    kept: list[str] = []
    for line in lines:
        if sum(len(k) + 1 for k in kept) + len(line) > MAX_TAG - 100:
            break
        kept.append(line)
    return "\n".join([*kept, f"... {len(lines) - len(kept)} more: lineage show RUN_ID"])


def annotate(tracking_uris: Iterable[str], run: Run, graph: Graph) -> list[str]:
    """Write the lineage run into every MLflow run tagged with it; returns what was done, one
    line per MLflow run. ``graph`` is the run's neighbourhood (``Direction.BOTH``, depth 1)."""
    mlflow = _mlflow()
    # (c) optional: MLflow may not be installed
    from mlflow.entities import Dataset, DatasetInput, InputTag, RunTag, ViewType

    inputs, outputs = _io(run.run_id, graph)
    tags = {
        "lineage.status": run.status.value,
        "lineage.outputs": _outputs_tag(outputs),
    }
    if run.code is not None and run.code.commit:
        tags["lineage.git.commit"] = run.code.commit
        tags["lineage.git.branch"] = run.code.branch
        tags["lineage.git.dirty"] = "true" if run.code.dirty else "false"
    datasets = [
        DatasetInput(
            Dataset(
                name=version.path,
                digest=version.digest[:MLFLOW_DIGEST_HEX],
                source_type="local",
                source=json.dumps({"uri": version.path}),
            ),
            tags=[
                InputTag("mlflow.data.context", "lineage"),
                InputTag("lineage.digest", f"blake3:{version.digest}"),
                InputTag("lineage.version_id", str(version.id)),
                InputTag("lineage.size", str(version.size)),
                InputTag("lineage.changed_during_run", "true" if changed else "false"),
            ],
        )
        for version, changed in inputs
    ]
    done: list[str] = []
    for uri in tracking_uris:
        client = mlflow.MlflowClient(tracking_uri=uri)
        experiments = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)]
        found = client.search_runs(
            experiments,
            filter_string=f"tags.`{RUN_TAG}` = '{run.run_id}'",
            run_view_type=ViewType.ALL,
        )
        for mlflow_run in found:
            run_id = mlflow_run.info.run_id
            client.log_batch(run_id, tags=[RunTag(key, value) for key, value in tags.items()])
            if datasets:
                client.log_inputs(run_id, datasets=datasets)
            done.append(
                f"MLflow run {run_id} ({uri}): {len(datasets)} inputs, {len(outputs)} outputs"
            )
    return done

"""A recorded run as OpenLineage ``RunEvent``s (spec 2-0-2), built with ``openlineage-python``.

A run gives two events: ``START`` at its start, and at its end ``COMPLETE`` (succeeded),
``FAIL`` (failed) or ``ABORT`` (interrupted, and any status this module does not know, such
as one added later). The same run always gives the same events: the run id becomes a UUID
derived from the run id and its start time, every time in an event is one the store holds,
and history is append-only. That is what lets the outbox keep only which event a run owes and
build it when it is delivered, and what makes ``lineage export --openlineage`` write the
events the daemon sent.

Content (docs/openlineage.md has the full table): the job is ``(namespace, run name)``; its
facets are ``jobType``, ``sourceCodeLocation`` (git remote without credentials, commit, branch)
and ``lineaged_code`` (dirty flag, diff digest, the source files the run executed). Run facets:
``processing_engine``, ``parent`` for a nested run, ``executionParameters`` and
``errorMessage`` on failure. Each data file the run read or wrote is one dataset
``file://HOST`` + absolute path with the ``version`` facet ``blake3:<digest>`` and the
``lineaged`` facet (digest, size, validity interval, changed during the run).

openlineage-python is an optional dependency (``lineaged[openlineage]``): import this module
only when OpenLineage is wanted.
"""

from __future__ import annotations

import datetime as dt
import socket
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from importlib import resources
from typing import Any

import attr
from lineage_core.models import EdgeKind, Run, RunStatus, Version
from openlineage.client import event_v2
from openlineage.client.constants import __version__ as openlineage_version
from openlineage.client.facet_v2 import (
    DatasetFacet,
    JobFacet,
    RunFacet,
    dataset_version_dataset,
    error_message_run,
    execution_parameters_run,
    job_type_job,
    parent_run,
    processing_engine_run,
    source_code_location_job,
)
from openlineage.client.serde import Serde
from openlineage.client.uuid import generate_static_uuid

from lineaged import __version__

__all__ = [
    "FACET_SCHEMA_URL",
    "PRODUCER",
    "EventSource",
    "LineagedCodeJobFacet",
    "LineagedDatasetFacet",
    "RunDatasets",
    "SourceFileDigest",
    "as_dict",
    "build_event",
    "default_namespace",
    "event_json",
    "event_source",
    "event_type",
    "facet_schema",
    "run_uuid",
]

# Who produced an event (the spec: a URI naming the producer and its version).
PRODUCER = f"https://github.com/lineaged/lineaged/tree/v{__version__}"
# lineaged's own facets are defined in this JSON schema, shipped in the package
# (lineaged/schemas/); a custom facet's _schemaURL points at its definition there.
FACET_SCHEMA_URL = (
    "https://github.com/lineaged/lineaged/blob/main/lineaged/schemas/LineagedFacets-1-0-0.json"
)
_SCHEMA_FILE = "LineagedFacets-1-0-0.json"

# An ended run's status to the event type; a status missing here ends as ABORT.
_END_TYPES = {
    RunStatus.SUCCEEDED.value: event_v2.RunState.COMPLETE,
    RunStatus.FAILED.value: event_v2.RunState.FAIL,
    RunStatus.INTERRUPTED.value: event_v2.RunState.ABORT,
}

# The datasets of a run: (read or wrote, changed during the run, version).
RunDatasets = Sequence[tuple[EdgeKind, bool, Version]]


@attr.define
class LineagedDatasetFacet(DatasetFacet):
    """The exact bytes behind a dataset: BLAKE3 digest, size, when the path held them."""

    digest: str
    size: int
    validFrom: str
    validUntil: str | None = attr.field(default=None)
    changedDuringRun: bool = attr.field(default=False)
    external: bool = attr.field(default=False)

    @staticmethod
    def _get_schema() -> str:
        return FACET_SCHEMA_URL + "#/$defs/LineagedDatasetFacet"


@attr.define
class SourceFileDigest:
    """A source file the run executed or imported, and its BLAKE3 digest."""

    path: str
    digest: str


@attr.define
class LineagedCodeJobFacet(JobFacet):
    """The code a run ran that sourceCodeLocation cannot say: dirty flag, diff, sources."""

    dirty: bool
    commit: str | None = attr.field(default=None)
    branch: str | None = attr.field(default=None)
    diffDigest: str | None = attr.field(default=None)
    untracked: int = attr.field(default=0)
    sources: list[SourceFileDigest] = attr.field(factory=list)

    @staticmethod
    def _get_schema() -> str:
        return FACET_SCHEMA_URL + "#/$defs/LineagedCodeJobFacet"


def facet_schema() -> str:
    """The JSON schema of lineaged's custom facets, as shipped in the package."""
    return resources.files("lineaged").joinpath("schemas", _SCHEMA_FILE).read_text("utf-8")


def _time(ns: int) -> str:
    """RFC 3339, UTC, microseconds."""
    return dt.datetime.fromtimestamp(ns / 1e9, tz=dt.UTC).isoformat(timespec="microseconds")


def run_uuid(run_id: str, started_at: int) -> str:
    """The OpenLineage runId of a lineaged run: a UUIDv7 of its start time whose other bits
    come from the run id (openlineage-python's ``generate_static_uuid``), so the same run
    always has the same runId and runIds sort by start time as OpenLineage recommends."""
    instant = dt.datetime.fromtimestamp(started_at // 1_000_000 / 1000, tz=dt.UTC)
    return str(generate_static_uuid(instant, b"lineaged:" + run_id.encode()))


def event_type(run: Run, phase: str) -> event_v2.RunState:
    """START for the "start" phase; the run's end status mapped for "end"."""
    if phase == "start":
        return event_v2.RunState.START
    return _END_TYPES.get(str(run.status.value), event_v2.RunState.ABORT)


def _without_credentials(url: str) -> str:
    """A git remote without user or password (scp-like ``git@host:path`` is kept as is)."""
    parts = urllib.parse.urlsplit(url)
    if not parts.scheme or "@" not in parts.netloc:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit(parts._replace(netloc=host))


def _job(run: Run, namespace: str, phase: str) -> event_v2.Job:
    facets: dict[str, JobFacet] = {
        "jobType": job_type_job.JobTypeJobFacet(
            processingType="BATCH", integration="LINEAGED", jobType="COMMAND", producer=PRODUCER
        )
    }
    code = run.code
    if code is not None and code.remote and code.commit:
        remote = _without_credentials(code.remote)
        facets["sourceCodeLocation"] = source_code_location_job.SourceCodeLocationJobFacet(
            type="git",
            url=remote,
            repoUrl=remote,
            path=run.cwd or None,
            version=code.commit,
            branch=code.branch or None,
            producer=PRODUCER,
        )
    if code is not None:
        facets["lineaged_code"] = LineagedCodeJobFacet(
            dirty=code.dirty,
            commit=code.commit or None,  # also without a remote (no sourceCodeLocation then)
            branch=code.branch or None,
            diffDigest=f"blake3:{code.diff_digest}" if code.diff_digest else None,
            untracked=len(code.untracked),
            sources=[SourceFileDigest(s.path, f"blake3:{s.digest}") for s in code.sources],
            producer=PRODUCER,
        )
    return event_v2.Job(namespace=namespace, name=run.name, facets=facets)


def _run_facets(
    run: Run, phase: str, namespace: str, parent: Run | None, state: event_v2.RunState
) -> dict[str, RunFacet]:
    facets: dict[str, RunFacet] = {
        "processing_engine": processing_engine_run.ProcessingEngineRunFacet(
            version=__version__,
            name="lineaged",
            openlineageAdapterVersion=openlineage_version,
            producer=PRODUCER,
        )
    }
    if parent is not None:
        facets["parent"] = parent_run.ParentRunFacet(
            run=parent_run.Run(runId=run_uuid(parent.run_id, parent.started_at)),
            job=parent_run.Job(namespace=namespace, name=parent.name),
            producer=PRODUCER,
        )
    if run.params:
        facets["executionParameters"] = execution_parameters_run.ExecutionParametersRunFacet(
            parameters=[
                execution_parameters_run.ExecutionParameter(key=key, value=value)
                for key, value in sorted(run.params.items())
            ],
            producer=PRODUCER,
        )
    if phase == "end" and state is not event_v2.RunState.COMPLETE:
        why = f"exit status {run.exit_code}" if run.exit_code is not None else "no exit status"
        facets["errorMessage"] = error_message_run.ErrorMessageRunFacet(
            message=f"run {run.status.value} ({why}): {' '.join(run.argv) or run.name}"[:4096],
            programmingLanguage=_language(run.argv),
            stackTrace="\n".join(run.warnings) or None,
            producer=PRODUCER,
        )
    return facets


def _language(argv: Sequence[str]) -> str:
    program = argv[0].rpartition("/")[2] if argv else ""
    return "python" if program.startswith("python") else (program or "unknown")


def _dataset_facets(
    version: Version, changed: bool, host: str
) -> tuple[str, dict[str, DatasetFacet]]:
    facets: dict[str, DatasetFacet] = {
        "version": dataset_version_dataset.DatasetVersionDatasetFacet(
            datasetVersion=f"blake3:{version.digest}", producer=PRODUCER
        ),
        "lineaged": LineagedDatasetFacet(
            digest=version.digest,
            size=version.size,
            validFrom=_time(version.valid_from),
            validUntil=_time(version.valid_until) if version.valid_until is not None else None,
            changedDuringRun=changed,
            external=version.external,
            producer=PRODUCER,
        ),
    }
    return f"file://{host}", facets


def build_event(
    run: Run,
    phase: str,
    *,
    namespace: str,
    datasets: RunDatasets = (),
    parent: Run | None = None,
) -> event_v2.RunEvent:
    """The OpenLineage event of ``run`` for ``phase`` ("start" or "end").

    ``datasets`` are the run's data edges (only an "end" event lists them: at the start the
    reads are not known yet), ``parent`` the run ``run.parent_run_id`` names.
    """
    state = event_type(run, phase)
    here = socket.gethostname()
    inputs: list[event_v2.InputDataset] = []
    outputs: list[event_v2.OutputDataset] = []
    if phase == "end":
        for kind, changed, version in datasets:
            # Files outside every root were hashed by the client, on the run's host.
            host = (run.host or here) if version.external else here
            dataset_namespace, facets = _dataset_facets(version, changed, host)
            if kind is EdgeKind.READ:
                inputs.append(
                    event_v2.InputDataset(
                        namespace=dataset_namespace, name=version.path, facets=facets
                    )
                )
            else:
                outputs.append(
                    event_v2.OutputDataset(
                        namespace=dataset_namespace, name=version.path, facets=facets
                    )
                )
    at = run.started_at if phase == "start" else (run.ended_at or run.started_at)
    return event_v2.RunEvent(
        eventType=state,
        eventTime=_time(at),
        run=event_v2.Run(
            runId=run_uuid(run.run_id, run.started_at),
            facets=_run_facets(run, phase, namespace, parent, state),
        ),
        job=_job(run, namespace, phase),
        inputs=inputs,
        outputs=outputs,
        producer=PRODUCER,
    )


def event_json(event: event_v2.RunEvent) -> str:
    """One event as the JSON the transports send (openlineage-python's ``Serde``)."""
    return Serde.to_json(event)


def default_namespace(run: Run) -> str:
    """The job namespace when none is configured: one per host."""
    return f"lineaged://{run.host or socket.gethostname()}"


EventSource = Callable[[str, str], event_v2.RunEvent]


def event_source(
    get_run: Callable[[str], Run],
    run_datasets: Callable[[str], RunDatasets],
    namespace: str = "",
) -> EventSource:
    """``(run_id, phase) -> event`` reading the run, its parent and its datasets through the
    given store methods (``Store.get_run``, ``Store.run_datasets``)."""

    def source(run_id: str, phase: str) -> event_v2.RunEvent:
        run = get_run(run_id)
        parent = get_run(run.parent_run_id) if run.parent_run_id else None
        datasets = run_datasets(run.run_id) if phase == "end" else ()
        return build_event(
            run,
            phase,
            namespace=namespace or default_namespace(run),
            datasets=datasets,
            parent=parent,
        )

    return source


def as_dict(event: event_v2.RunEvent) -> Mapping[str, Any]:
    """One event as a JSON-ready dict."""
    return Serde.to_dict(event)

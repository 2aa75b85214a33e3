"""MLflow run context provider: an MLflow run started under ``lineage run`` is tagged with it.

Registered under MLflow's ``mlflow.run_context_provider`` entry point group (pyproject.toml),
so MLflow loads it in every process that starts a run with ``mlflow.start_run()``. Under
``lineage run`` (``$LINEAGE_RUN_ID`` set) it tags the new MLflow run ``lineage.run_id`` and
notes the tracking URI in the file ``lineage run`` names in ``$LINEAGE_MLFLOW_NOTES``, so that
when the command has ended ``lineage run`` knows which tracking servers to annotate
(mlflow_bridge.py) — and imports MLflow only when the command used it.

MLflow imports this module itself; nothing else should (it imports MLflow).
"""

from __future__ import annotations

import os

import mlflow
from mlflow.tracking.context.abstract_context import RunContextProvider

from lineage_client._reach import PARENT_ENV

__all__ = ["NOTES_ENV", "RUN_TAG", "LineageRunContextProvider"]

RUN_TAG = "lineage.run_id"
NOTES_ENV = "LINEAGE_MLFLOW_NOTES"


class LineageRunContextProvider(RunContextProvider):
    """Tags MLflow runs started under ``lineage run`` with the lineage run's id."""

    def in_context(self) -> bool:
        """Whether this process runs under ``lineage run``."""
        return bool(os.environ.get(PARENT_ENV))

    def tags(self) -> dict[str, str]:
        """``lineage.run_id``; notes the tracking URI for ``lineage run``'s end."""
        notes = os.environ.get(NOTES_ENV, "")
        if notes:
            try:
                with open(notes, "a", encoding="utf-8") as handle:
                    handle.write(mlflow.get_tracking_uri() + "\n")
            except OSError:  # never break the user's run: the tag below still links it
                pass
        return {RUN_TAG: os.environ[PARENT_ENV]}

"""Writing a study to MLflow: one parent run per study invocation, one nested child run per trial.

A :class:`Tracker` is a dlbench plugin: it subscribes to
the lifecycle hooks, so the training loop never sees it. Metrics are buffered and written with
``log_batch`` (one store round-trip per flush, not per value).
"""

from __future__ import annotations

from pathlib import Path

from mlflow.tracking import MlflowClient

from dlbench.settings import DEFAULT_TRACKING_URI, default_tracking_uri
from dlbench.tracking.base import BATCH_LIMIT, EXPERIMENT_KIND, StudyContext
from dlbench.tracking.observer import MLFLOW_STATUS, Observer
from dlbench.tracking.study_run import (IDENTITY_TAGS, PROCESS_TAG, SEARCH_TAGS, StudyRunClaims,
                                        study_hash_of)

__all__ = ["BATCH_LIMIT", "DEFAULT_TRACKING_URI", "EXPERIMENT_KIND", "IDENTITY_TAGS", "MLFLOW_STATUS", "PROCESS_TAG",
           "SEARCH_TAGS", "StudyContext", "Tracker", "attach_report", "default_tracking_uri",
           "study_hash_of"]

def attach_report(tracking_uri: str, run_id: str, directory: Path) -> None:
    """Attach a report folder to a study's parent run (finished or not) as ``reports/<folder>``."""
    MlflowClient(tracking_uri).log_artifacts(run_id, str(directory), artifact_path=f"reports/{directory.name}")


class Tracker(StudyRunClaims, Observer):
    """Logs a study to MLflow. Register it with the plugin manager for the study's duration.

    Its two jobs live in their own modules: the study run and the claims on its trials
    (:class:`~dlbench.tracking.study_run.StudyRunClaims`), the hook implementations that log each
    trial (:class:`~dlbench.tracking.observer.Observer`); the state they share is set up by
    :class:`~dlbench.tracking.base.TrackerBase`."""

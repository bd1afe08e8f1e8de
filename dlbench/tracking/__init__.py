"""MLflow tracking: the only package that imports mlflow.

``writer`` logs a running study (parent and child runs) with its ``Tracker``: the study run and
the claims on its trials (``study_run``) and the hook implementations that log each trial
(``observer``), on the state they share (``base``). Readers of finished studies (reports,
reproduction) live beside it.
"""

import os

os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no tqdm bars in our output

from dlbench.tracking.writer import DEFAULT_TRACKING_URI, StudyContext, Tracker, default_tracking_uri

__all__ = ["DEFAULT_TRACKING_URI", "StudyContext", "Tracker", "default_tracking_uri"]

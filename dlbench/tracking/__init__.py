"""MLflow tracking: the only package that imports mlflow.

``writer`` logs a running study (parent and child runs); readers of finished studies (reports,
reproduction) live beside it.
"""

import os

os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no tqdm bars in our output

from dlbench.tracking.writer import DEFAULT_TRACKING_URI, StudyContext, Tracker, default_tracking_uri

__all__ = ["DEFAULT_TRACKING_URI", "StudyContext", "Tracker", "default_tracking_uri"]

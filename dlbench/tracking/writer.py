"""Writing a study to MLflow: one parent run per study invocation, one nested child run per trial.

A :class:`Tracker` is a dlbench plugin: it subscribes to
the lifecycle hooks, so the training loop never sees it. Metrics are buffered and written with
``log_batch`` (one store round-trip per flush, not per value).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from dlbench import hookimpl
from dlbench.errors import UserError
from dlbench.provenance import command_line, environment, git_commit
from dlbench.study import Trial, flatten

logging.getLogger("mlflow").setLevel(logging.WARNING)  # no "creating tables" chatter on first use
logging.getLogger("alembic").setLevel(logging.WARNING)

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"  # MLflow's own default: ./mlflow.db, artifacts in ./mlruns
BATCH_LIMIT = 1000  # MLflow accepts at most 1000 metrics per log_batch call
MLFLOW_STATUS = {"finished": "FINISHED", "diverged": "FAILED", "failed": "FAILED", "interrupted": "KILLED"}


def default_tracking_uri() -> str:
    """MLFLOW_TRACKING_URI when set, else ``sqlite:///mlflow.db`` in the working directory."""
    return os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def attach_report(tracking_uri: str, run_id: str, directory: Path) -> None:
    """Attach a report folder to a study's parent run (finished or not) as ``reports/<folder>``."""
    MlflowClient(tracking_uri).log_artifacts(run_id, str(directory), artifact_path=f"reports/{directory.name}")


class Tracker:
    """Logs a study to MLflow. Register it with the plugin manager for the study's duration."""

    def __init__(self, tracking_uri: str, experiment: str, flush_seconds: float = 5.0):
        self.tracking_uri = tracking_uri
        self.client = MlflowClient(tracking_uri)
        self.experiment = experiment
        self.flush_seconds = flush_seconds
        self.parent_id: str | None = None
        self.run_ids: dict[int, str] = {}  # trial index -> child run id
        self._buffer: dict[str, list[Metric]] = {}
        self._last_flush = time.monotonic()
        self._device = None
        try:
            exp = self.client.get_experiment_by_name(experiment)
            self.experiment_id = exp.experiment_id if exp else self.client.create_experiment(experiment)
        except Exception as exc:
            raise UserError(f"cannot open the MLflow tracking store {tracking_uri!r}: {exc}. Check --tracking-uri "
                            "(e.g. sqlite:///mlflow.db, a directory, or http://127.0.0.1:5000 of a running "
                            "`mlflow server`).") from exc

    # -- the study (parent run) --------------------------------------------------------------

    def start_study(self, study_file, trials: list[Trial], device) -> str:
        self._device = device
        commit, dirty = git_commit(study_file.path.resolve().parent)
        tags = {
            "mlflow.runName": study_file.name,
            "mlflow.source.name": str(study_file.path),
            "mlflow.source.type": "LOCAL",
            "dlbench.role": "study",
            "dlbench.study_file": str(study_file.path),
            "dlbench.command": command_line(),
            **environment(device),
        }
        if commit:
            tags |= {"mlflow.source.git.commit": commit, "dlbench.git_dirty": str(dirty).lower()}
        run = self.client.create_run(self.experiment_id, run_name=study_file.name, tags=tags)
        self.parent_id = run.info.run_id
        self._commit = commit
        params = {
            "studies": ",".join(dict.fromkeys(t.study for t in trials)),
            "num_trials": str(len(trials)),
            **{f"baseline.{k}": v for k, v in flatten(study_file.baseline).items()},
        }
        self.client.log_batch(self.parent_id, params=[Param(k, v) for k, v in params.items()])
        self.client.log_text(self.parent_id, study_file.text, Path(study_file.path).name)
        return self.parent_id

    def end_study(self, status: str, summary: dict[str, int]) -> None:
        tags = [RunTag(f"dlbench.trials_{k}", str(v)) for k, v in summary.items()]
        self.client.log_batch(self.parent_id, tags=tags)
        self.client.set_terminated(self.parent_id, status)

    def log_report(self, directory: Path) -> None:
        """Attach a built report folder to the parent run."""
        self.client.log_artifacts(self.parent_id, str(directory), artifact_path=f"reports/{directory.name}")

    # -- trials (child runs), as hook implementations -------------------------------------------

    def _child(self, trial: Trial) -> str:
        if trial.index in self.run_ids:
            return self.run_ids[trial.index]
        tags = {
            "mlflow.parentRunId": self.parent_id,
            "mlflow.runName": trial.run_name,
            "dlbench.role": "trial",
            "dlbench.study": trial.study,
            "dlbench.level": trial.level,
            "dlbench.seed": str(trial.seed),
            "dlbench.config_hash": trial.config_hash,
            "dlbench.group_hash": trial.group_hash,
            "dlbench.trial_index": str(trial.index),
            **{f"dlbench.factor.{f}": lvl for f, lvl in trial.levels.items()},
            **environment(self._device),
        }
        if self._commit:
            tags["mlflow.source.git.commit"] = self._commit
        run = self.client.create_run(self.experiment_id, run_name=trial.run_name, tags=tags)
        run_id = run.info.run_id
        self.run_ids[trial.index] = run_id
        # study, level and factors as params too: the UI's "group by" and parallel-coordinates
        # plots list params, so a level groups its seeds in one click
        params = {"study": trial.study, "level": trial.level,
                  **{f"factor.{f}": lvl for f, lvl in trial.levels.items()}, **flatten(trial.config)}
        plist = [Param(k, v) for k, v in params.items()]
        for i in range(0, len(plist), 100):
            self.client.log_batch(run_id, params=plist[i:i + 100])
        return run_id

    @hookimpl
    def dlbench_trial_start(self, trial: Trial, model, info: dict) -> None:
        run_id = self._child(trial)
        self.client.log_batch(run_id, tags=[RunTag("dlbench.dataset_hash", info["dataset_hash"]),
                                            RunTag("dlbench.num_params", str(info["num_params"]))])
        self.client.log_text(run_id, repr(model), "model.txt")

    @hookimpl
    def dlbench_epoch_end(self, trial: Trial, epoch: int, metrics: dict[str, float]) -> None:
        now = int(time.time() * 1000)
        run_id = self._child(trial)
        self._buffer.setdefault(run_id, []).extend(Metric(k, float(v), now, epoch) for k, v in metrics.items())
        if time.monotonic() - self._last_flush >= self.flush_seconds:
            self.flush()

    @hookimpl
    def dlbench_diagnostics(self, trial: Trial, step: int, values: dict[str, float]) -> None:
        # buffered like the epoch metrics; their step is the optimizer step, not the epoch
        now = int(time.time() * 1000)
        self._buffer.setdefault(self._child(trial), []).extend(Metric(k, float(v), now, step) for k, v in values.items())

    @hookimpl
    def dlbench_trial_end(self, trial: Trial, result) -> None:
        run_id = self._child(trial)
        self.flush()
        tags = [RunTag("dlbench.status", result.status), RunTag("dlbench.duration_s", f"{result.seconds:.2f}"),
                RunTag("dlbench.epochs_run", str(result.epochs_run))]
        self.client.log_batch(run_id, tags=tags)
        if result.error:
            self.client.log_text(run_id, result.error, "error.txt")
        self.client.set_terminated(run_id, MLFLOW_STATUS[result.status])

    def flush(self) -> None:
        for run_id, metrics in self._buffer.items():
            for i in range(0, len(metrics), BATCH_LIMIT):
                self.client.log_batch(run_id, metrics=metrics[i:i + BATCH_LIMIT])
        self._buffer.clear()
        self._last_flush = time.monotonic()


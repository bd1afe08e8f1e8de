"""The observer half of a :class:`~dlbench.tracking.writer.Tracker`: the hook implementations that
log each trial to its run (tags, buffered metrics, the dataset, its end), and the reports
attached to the study's parent run.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
from mlflow.data.meta_dataset import MetaDataset
from mlflow.data.sources import LocalArtifactDatasetSource
from mlflow.entities import DatasetInput, InputTag, Metric, RunTag
from mlflow.exceptions import MlflowException

from dlbench import hookimpl
from dlbench.trial import Trial, TrialInfo
from dlbench.tracking import keys
from dlbench.tracking.base import BATCH_LIMIT, TrackerBase

# a pruned tuning trial ended as its search wanted: FINISHED (never resumed), dlbench.status = pruned
MLFLOW_STATUS = {"finished": "FINISHED", "pruned": "FINISHED", "diverged": "FAILED", "failed": "FAILED",
                 "interrupted": "KILLED"}


FLOAT32_MAX = float(np.finfo(np.float32).max)


def shortest(value: float) -> float:
    """A float32 value (a loss, a learning rate, a norm: what PyTorch computed) as the shortest
    decimal that reads back as it (``0.2945295``, not ``0.2945294976234436``); any other value (an
    accuracy, an exact fraction ``k / n`` in float64) unchanged. Nothing is lost: the float32 is
    the same, and ``dlbench reproduce`` compares float32 values."""
    if not math.isfinite(value) or abs(value) > FLOAT32_MAX:
        return value
    single = np.float32(value)
    return float(str(single)) if float(single) == value else value


class Observer(TrackerBase):
    """Logs each trial to its run as the training loop's hooks report it. Metrics are buffered and
    written with ``log_batch`` (one store round-trip per flush, not per value)."""

    @hookimpl
    def dlbench_trial_start(self, trial: Trial, model, info: TrialInfo) -> None:
        run_id = self.open_run(trial)
        # where it trains: the worker's device, threads and host (this process opened the run)
        tags = {keys.key(k): v for k, v in (info.environment or {}).items()}
        if run_id in self._started:  # trained again after its worker died (a Ray task's retry)
            self._restarts[run_id] = self._restarts.get(run_id, 0) + 1
            tags["dlbench.retries"] = str(self._restarts[run_id])
        if info.resumed_from_epoch is not None:
            tags["dlbench.resumed_from_epoch"] = str(info.resumed_from_epoch)
        if run_id in self._started or info.resumed_from_epoch is not None:
            self._started.add(run_id)
            self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
            return
        self._started.add(run_id)
        tags |= {"dlbench.dataset_hash": info.dataset_hash, "dlbench.num_params": str(info.num_params),
                 "dlbench.num_classes": str(info.num_classes),
                 **{keys.key(k): v for k, v in self._context.plugin_tags(trial).items()}}
        if info.preprocessing:  # what each step fitted on this dataset, in order
            tags["dlbench.preprocessing"] = "; ".join(info.preprocessing)
        stack = info.stack
        tags["dlbench.stack_size"] = str(stack.size if stack else 1)  # how it ran: `reproduce` does the same
        if stack:
            tags |= {"dlbench.stack_id": stack.id, "dlbench.stack_member": str(stack.member),
                     "dlbench.cuda_graphs": str(bool(stack.cuda_graphs)).lower(),
                     "dlbench.stacked_init": str(bool(stack.stacked_init)).lower()}
            self.client.log_dict(run_id, {"stack_id": stack.id, "members": stack.members}, "stack.json")
        self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
        self.client.log_text(run_id, repr(model), "model.txt")
        self._log_dataset(run_id, info)

    @hookimpl
    def dlbench_epoch_end(self, trial: Trial, epoch: int, metrics: dict[str, float]) -> None:
        now = int(time.time() * 1000)
        run_id = self.open_run(trial)
        self._buffer_new(run_id, metrics, now, epoch)
        if time.monotonic() - self._last_flush >= self.flush_seconds:
            self.flush(wait=False)  # a tracking server away: training goes on, the metrics held

    @hookimpl
    def dlbench_diagnostics(self, trial: Trial, step: int, values: dict[str, float]) -> None:
        # buffered like the epoch metrics; their step is the optimizer step, not the epoch
        now = int(time.time() * 1000)
        run_id = self.open_run(trial)
        self._buffer_new(run_id, values, now, step)

    def _buffer_new(self, run_id: str, values: dict[str, float], now: int, step: int) -> None:
        """Buffer the values whose step is past the last one logged: a resumed run, or a trial
        trained again from its checkpoint, sends steps that are logged already."""
        done = self._logged_steps.setdefault(run_id, {})
        fresh = [Metric(k, shortest(float(v)), now, step) for k, v in values.items() if step > done.get(k, -1)]
        self._buffer.setdefault(run_id, []).extend(fresh)
        for metric in fresh:
            done[metric.key] = step

    @hookimpl
    def dlbench_checkpoint(self, trial: Trial, epoch: int) -> None:
        self.flush()

    @hookimpl
    def dlbench_trial_end(self, trial: Trial, result) -> None:
        run_id = self.open_run(trial)
        self.flush(wait=False)  # stored at once, or with the next run's creation if the server is away
        tags = [RunTag("dlbench.status", result.status), RunTag("dlbench.duration_s", f"{result.seconds:.2f}"),
                RunTag("dlbench.epochs_run", str(result.epochs_run))]
        self.client.log_batch(run_id, tags=tags)
        if result.error:
            self.client.log_text(run_id, result.error, "error.txt")
        self.client.set_terminated(run_id, MLFLOW_STATUS[result.status])
        self._ended.add(run_id)

    def flush(self, wait: bool = True) -> None:
        """Send the buffered metrics; ``wait``: until they are stored (a checkpoint, a report
        or the end of the study rely on them), waiting for a tracking server that went away."""
        beat = [RunTag("dlbench.heartbeat", f"{time.time():.0f}")]  # lets other hosts tell a live run
        for run_id, metrics in self._buffer.items():
            for i in range(0, len(metrics), BATCH_LIMIT):
                self.client.log_batch(run_id, metrics=metrics[i:i + BATCH_LIMIT], tags=beat if i == 0 else [])
        self._buffer.clear()
        self._last_flush = time.monotonic()
        if wait:
            self.client.sync()

    def _log_dataset(self, run_id: str, info: TrialInfo) -> None:
        """The dataset as an MLflow input (shown in the UI's Datasets column); the full hashes are tags."""
        source = info.dataset_source or f"dlbench://{info.dataset}"
        dataset = MetaDataset(LocalArtifactDatasetSource(source), name=info.dataset, digest=info.dataset_hash[:32])
        inputs = [DatasetInput(dataset._to_mlflow_entity(), [InputTag("mlflow.data.context", "training")])]
        with self.lock:  # MLflow adds a dataset new to the experiment: a check, then an insert
            try:
                self.client.log_inputs(run_id, inputs)
            except MlflowException:  # no lock (a server): another process inserted it just now
                self.client.log_inputs(run_id, inputs)

    def log_report(self, directory: Path) -> None:
        """Attach a built report folder to the parent run."""
        self.client.log_artifacts(self.parent_id, str(directory), artifact_path=f"reports/{directory.name}")


"""Run a study file: expand, train every trial on one device, track, report.

The executor for one machine. Trials run one after another in this process, so the dataset is
built once and stays on the device for all of them.
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import torch

from dlbench.config import StudyFile
from dlbench.data import DataCache
from dlbench.errors import UserError
from dlbench.plugins import Plugins
from dlbench.progress import Progress
from dlbench.study import Trial
from dlbench.train import TrialResult, run_trial


def resolve_device(spec: str) -> torch.device:
    """``auto`` picks the first GPU when there is one; ``cpu``, ``cuda`` and ``cuda:N`` are checked."""
    if spec == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise UserError(f"--device {spec!r}: not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"--device {spec}: this machine has no usable CUDA GPU (torch {torch.__version__}, "
                            f"CUDA build: {torch.version.cuda or 'no'}); use --device cpu or auto")
        index = device.index or 0
        if index >= torch.cuda.device_count():
            raise UserError(f"--device {spec}: only {torch.cuda.device_count()} GPU(s) here (cuda:0 to "
                            f"cuda:{torch.cuda.device_count() - 1})")
        return torch.device("cuda", index)
    if device.type != "cpu":
        raise UserError(f"--device {spec!r}: unsupported; use auto, cpu, cuda or cuda:N")
    return device


@dataclass
class StudyRun:
    parent_run_id: str
    results: list[tuple[Trial, TrialResult]] = field(default_factory=list)
    reports: list[Path] = field(default_factory=list)

    def count(self, status: str) -> int:
        return sum(r.status == status for _, r in self.results)


def run_study(study_file: StudyFile, trials: list[Trial], plugins: Plugins, *, device: torch.device,
              tracking_uri: str, reports_dir: Path, stream: TextIO, fail_fast: bool = False) -> StudyRun:
    from dlbench.tracking import Tracker  # mlflow is heavy: imported only when a study runs

    tracker = Tracker(tracking_uri, study_file.name)
    progress = Progress(len(trials), stream)
    plugins.pm.register(tracker, name="dlbench.tracking")
    plugins.pm.register(progress, name="dlbench.progress")
    run = StudyRun(tracker.start_study(study_file, trials, device))
    stream.write(f"study {study_file.name!r}: {len(trials)} trials on {device}; "
                 f"MLflow parent run {run.parent_run_id} in {tracking_uri}\n")
    cache = DataCache()
    status = "KILLED"
    try:
        for trial in trials:
            try:
                result = _run_one(trial, plugins, cache, device)
            except KeyboardInterrupt:  # Ctrl-C: the trial's run is closed as KILLED, not left RUNNING
                plugins.hook.dlbench_trial_end(trial=trial, result=TrialResult(status="interrupted"))
                raise
            plugins.hook.dlbench_trial_end(trial=trial, result=result)
            run.results.append((trial, result))
            if fail_fast and result.status == "failed":
                break
        status = "FAILED" if run.count("failed") else "FINISHED"
    finally:
        summary = {s: run.count(s) for s in ("finished", "diverged", "failed")}
        summary["not_run"] = len(trials) - len(run.results)
        tracker.end_study(status, summary)
        plugins.pm.unregister(name="dlbench.tracking")
        plugins.pm.unregister(name="dlbench.progress")
    if run.results:
        run.reports = write_reports(study_file, run.results, reports_dir)
        for folder in run.reports:
            tracker.log_report(folder)
    return run


def _run_one(trial: Trial, plugins: Plugins, cache: DataCache, device: torch.device) -> TrialResult:
    """Train one trial; any exception becomes a failed result with its traceback."""
    try:
        cfg = trial.config
        dataset = plugins.registry.get("dataset", cfg["dataset"]["name"])
        options = {k: v for k, v in cfg["dataset"].items() if k != "name"}
        data = cache.get(dataset, options, cfg["val_fraction"], device)
        return run_trial(trial, plugins.registry, data, device, plugins.hook)
    except KeyboardInterrupt:
        raise
    except Exception as exc:
        return TrialResult(status="failed", error="".join(traceback.format_exception(exc)))


def results_frame(results: list[tuple[Trial, TrialResult]]):
    """One row per trial: study, factors, level, seed, status, final metrics."""
    import pandas as pd

    rows = []
    for trial, result in results:
        rows.append({"study": trial.study, **trial.levels, "level": trial.level, "seed": trial.seed,
                     "status": result.status, "epochs_run": result.epochs_run,
                     "config_hash": trial.config_hash, **result.final})
    return pd.DataFrame(rows)


def write_reports(study_file: StudyFile, results, reports_dir: Path) -> list[Path]:
    from dlbench.report import write_study_report

    frame = results_frame(results)
    folders = []
    for study in study_file.studies:
        if study.name in set(frame["study"]):
            factors = [f.name for f in study.factors]
            rows = frame[frame["study"] == study.name].dropna(axis=1, how="all")
            if "test_accuracy" not in rows:
                rows = rows.assign(test_accuracy=float("nan"))
            folders.append(write_study_report(rows, study.name, factors, study.question, reports_dir / study.name))
    return folders

"""Run a study file: expand, train every trial on one device, track, report.

The executor for one machine. Trials run one after another in this process, so the dataset is
built once and stays on the device for all of them.
"""

from __future__ import annotations

import os
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import torch

from dlbench.config import StudyFile
from dlbench.data import DataCache
from dlbench.diagnostics import Diagnostics
from dlbench.errors import UserError
from dlbench.plugins import Plugins
from dlbench.progress import Progress
from dlbench.study import Trial
from dlbench.provenance import git_commit, git_diff, installed_packages
from dlbench.train import Checkpoints, TrialResult, run_trial


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
    results: list[tuple[Trial, TrialResult]] = field(default_factory=list)  # skipped ones included
    reports: list[Path] = field(default_factory=list)
    skipped: int = 0  # already finished in the store
    busy: int = 0  # being run by another live process

    def count(self, status: str) -> int:
        return sum(r.status == status for _, r in self.results)


def set_determinism(on: bool, device: torch.device) -> None:
    """Deterministic kernels (bit-identical re-runs on the same hardware and software)."""
    if on and device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it for determinism
    torch.use_deterministic_algorithms(on)
    torch.backends.cudnn.benchmark = not on


def plan(previous: list, force: bool):
    """What to do with a trial given its earlier runs (newest first): ``("new", None)``,
    ``("skip", run)`` when it finished or diverged, ``("busy", run)`` when a live process runs
    it, ``("resume", run)`` when it was left RUNNING by a dead process or KILLED."""
    if force or not previous:
        return "new", None
    for run in previous:
        if run.status == "FINISHED" or run.tags.get("dlbench.status") == "diverged":
            return "skip", run
    newest = previous[0]
    if newest.status == "RUNNING":
        return ("busy", newest) if newest.process_alive() else ("resume", newest)
    if newest.status == "KILLED":
        return "resume", newest
    return "new", None


def stored_result(run) -> TrialResult:
    """A finished trial's result as the store has it (its latest metric values)."""
    status = run.tags.get("dlbench.status", "finished")
    return TrialResult(status=status, epochs_run=int(run.tags.get("dlbench.epochs_run", "0")),
                       final={k: v for k, v in run.metrics.items() if "." not in k},
                       seconds=float(run.tags.get("dlbench.duration_s", "0")))


def run_study(study_file: StudyFile, trials: list[Trial], plugins: Plugins, *, device: torch.device,
              tracking_uri: str, reports_dir: Path, stream: TextIO, fail_fast: bool = False,
              force: bool = False, deterministic: bool = True, data_dir: Path | None = None,
              checkpoint_dir: Path = Path(".dlbench/checkpoints"), checkpoint_every: float = 10.0,
              allow_data_mismatch: bool = False) -> StudyRun:
    """Run the trials not already in the store; resume those a dead process left behind.

    Without ``force``, a trial whose config hash already FINISHED (or diverged) in the
    experiment is skipped, and one left RUNNING by a dead process (or KILLED) continues in its
    own run from its last epoch checkpoint, so every trial has exactly one run.
    """
    from dlbench.tracking import StudyContext, Tracker  # mlflow is heavy: imported only when a study runs

    set_determinism(deterministic, device)
    context = StudyContext(tags={"dlbench.deterministic": str(deterministic).lower()}, registry=plugins.registry)
    if data_dir is not None:
        from dlbench.datastore import check_data

        context.tags |= check_data(data_dir, plugins.registry, allow_mismatch=allow_data_mismatch, stream=stream)
    context.artifacts["requirements.txt"] = installed_packages()
    _, dirty = git_commit(study_file.path.resolve().parent)
    if dirty:
        context.artifacts["git.diff"] = git_diff(study_file.path.resolve().parent)

    tracker = Tracker(tracking_uri, study_file.name)
    progress = Progress(len(trials), stream)
    # pluggy calls the last registered first: the tracker closes a trial's run before the
    # progress line says it finished
    plugins.pm.register(progress, name="dlbench.progress")
    plugins.pm.register(Diagnostics(plugins.hook, plugins.registry), name="dlbench.diagnostics")
    plugins.pm.register(tracker, name="dlbench.tracking")
    run = StudyRun(tracker.start_study(study_file, trials, device, context, resume=not force))
    stream.write(f"study {study_file.name!r}: {len(trials)} trials on {device}; "
                 f"MLflow parent run {run.parent_run_id} in {tracking_uri}\n")
    existing = {} if force else tracker.existing_trials()
    cache = DataCache(data_dir)
    status = "KILLED"
    try:
        for trial in trials:
            action, previous = plan(existing.get(trial.config_hash, []), force)
            checkpoints = Checkpoints(checkpoint_dir / f"{trial.config_hash}.pt", checkpoint_every)
            if action in ("skip", "busy"):
                if action == "skip":
                    run.skipped += 1
                    run.results.append((trial, stored_result(previous)))
                else:
                    run.busy += 1
                what = "already done" if action == "skip" else "is running in another live process"
                stream.write(f"[{trial.index}/{len(trials)}] {trial.run_name}  skipped: run {previous.run_id} {what}\n")
                continue
            if action == "resume":
                tracker.adopt(trial, previous)
                stream.write(f"[{trial.index}/{len(trials)}] {trial.run_name}  resuming run {previous.run_id} "
                             f"(left {previous.status} by process {previous.tags.get('dlbench.pid', '?')})\n")
            else:
                checkpoints.clear()  # a checkpoint without its run (or --force) must not leak into a new run
            try:
                result = train_one(trial, plugins, cache, device, checkpoints)
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
        summary["skipped"] = run.skipped
        summary["running_elsewhere"] = run.busy
        summary["not_run"] = len(trials) - len(run.results) - run.busy
        tracker.end_study(status, summary)
        plugins.pm.unregister(name="dlbench.tracking")
        plugins.pm.unregister(name="dlbench.progress")
        plugins.pm.unregister(name="dlbench.diagnostics")
    if run.results:
        run.reports = _reports_from_mlflow(tracking_uri, run.parent_run_id, trials, reports_dir, stream)
    return run


def _reports_from_mlflow(tracking_uri: str, parent_run_id: str, trials: list[Trial], reports_dir: Path,
                         stream: TextIO) -> list[Path]:
    """Each study's report, rebuilt from what MLflow now holds (as `dlbench report` does) and
    attached to the parent run. A failure here loses no result: it says how to retry."""
    from dlbench.report import report_from_mlflow

    try:
        return report_from_mlflow(tracking_uri, parent_run_id, reports_dir, trials=trials)
    except Exception:
        stream.write(f"the report failed; the runs are safe in MLflow. Rebuild it with `dlbench report --run-id "
                     f"{parent_run_id} --tracking-uri {tracking_uri}`.\n{traceback.format_exc()}")
        return []


def train_one(trial: Trial, plugins: Plugins, cache: DataCache, device: torch.device,
             checkpoints: Checkpoints | None = None) -> TrialResult:
    """Train one trial; any exception becomes a failed result with its traceback."""
    try:
        cfg = trial.config
        dataset = plugins.registry.get("dataset", cfg["dataset"]["name"])
        options = {k: v for k, v in cfg["dataset"].items() if k != "name"}
        data = cache.get(dataset, options, cfg["val_fraction"], device)
        return run_trial(trial, plugins.registry, data, device, plugins.hook, checkpoints)
    except KeyboardInterrupt:
        raise
    except Exception as exc:
        return TrialResult(status="failed", error="".join(traceback.format_exception(exc)))


def write_reports(study_file: StudyFile, results, reports_dir: Path) -> list[Path]:
    """Reports from in-memory results, without a tracking store (`run_study` rebuilds them from MLflow)."""
    from dlbench.report import report_from_results

    return report_from_results(study_file, results, reports_dir)

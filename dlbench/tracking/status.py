"""Where a study run stands, read from the store alone (``dlbench status``): each study's trials
done, running and left, the running trials with their host, epoch and whether the process that
trains them still lives, and the progress the running process last published
(:mod:`dlbench.study_progress`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from mlflow.tracking import MlflowClient

from dlbench.eta import duration
from dlbench.study_progress import progress_text
from dlbench.tracking import store
from dlbench.tracking.study_run import PROGRESS_TAG, working_processes


@dataclass(frozen=True)
class RunningTrial:
    """A trial run left RUNNING: trained now, or ``stale`` (the process that trained it died)."""

    title: str
    host: str
    pid: str
    epochs_done: int | None  # None: no epoch logged yet
    epochs: str  # planned ('' when unknown)
    stale: bool


@dataclass
class StudyCount:
    """One study of the study run: its trials done (ended), running and left."""

    name: str
    total: int | None  # None: not known (a study run from before the progress was published)
    done: int = 0
    running: int = 0
    diverged: int = 0
    failed: int = 0

    @property
    def left(self) -> int | None:
        return None if self.total is None else max(self.total - self.done - self.running, 0)


@dataclass(frozen=True)
class StudyStatus:
    tracking_uri: str
    run_id: str
    name: str
    status: str  # the study run's MLflow status
    stale: bool  # RUNNING, but no process that worked on it lives
    progress: dict | None  # as last published (None: never)
    studies: list[StudyCount] = field(default_factory=list)
    running: list[RunningTrial] = field(default_factory=list)


def read_status(tracking_uri: str, run_id: str) -> StudyStatus:
    """The status of the study run ``run_id`` (a study run: ``reader.find_study_run``)."""
    client = MlflowClient(tracking_uri)
    parent = client.get_run(run_id)
    tags = parent.data.tags
    progress = json.loads(tags[PROGRESS_TAG]) if PROGRESS_TAG in tags else None
    children = store.child_runs(client, parent.info.experiment_id, run_id)
    latest = sorted((runs[0] for runs in children.values()), key=lambda r: int(r.tags.get("dlbench.trial_index") or 0))
    studies = _counts(latest, _totals(parent.data.params, progress))
    running = [_running(client, r) for r in latest if r.status == "RUNNING"]
    heartbeat = str(progress["updated"]) if progress else ""
    stale = parent.info.status == "RUNNING" and not any(
        store.process_alive(host, pid, heartbeat) for _, host, pid in working_processes(tags))
    return StudyStatus(tracking_uri, run_id, parent.info.run_name, parent.info.status, stale, progress,
                       studies, running)


def _totals(params: dict[str, str], progress: dict | None) -> dict[str, int | None]:
    """Each study's number of trials: as published, else only a lone study's (the run's num_trials)."""
    if progress and progress.get("studies"):
        return dict(progress["studies"])
    names = store.studies_ran(params)
    total = int(params["num_trials"]) if len(names) == 1 and "num_trials" in params else None
    return {name: total for name in names}


def _counts(runs: list[store.StoredRun], totals: dict[str, int | None]) -> list[StudyCount]:
    counts = {name: StudyCount(name, total) for name, total in totals.items()}
    for run in runs:
        name = run.tags.get("dlbench.study", "")
        count = counts.setdefault(name, StudyCount(name, None))
        if run.status == "RUNNING":
            count.running += 1
        elif run.status != "KILLED":  # KILLED: interrupted, trained again by the next run
            count.done += 1
            outcome = run.tags.get("dlbench.status", "failed" if run.status == "FAILED" else "finished")
            count.diverged += outcome == "diverged"
            count.failed += outcome == "failed"
    return list(counts.values())


def _running(client: MlflowClient, run: store.StoredRun) -> RunningTrial:
    tags = run.tags
    return RunningTrial(run.title, store.trained_on(tags) or "?",
                        tags.get("dlbench.pid", "?"), _epochs_done(client, run), run.params.get("epochs", ""),
                        stale=not run.process_alive())


def _epochs_done(client: MlflowClient, run: store.StoredRun) -> int | None:
    """The epochs a running trial has logged: ``dlbench.epochs_run``, else the latest step of one
    of its per-epoch metrics (step k: after k epochs; step 0 is the model before any training)."""
    if "dlbench.epochs_run" in run.tags:
        return int(run.tags["dlbench.epochs_run"])
    epoch_metrics = sorted(k for k in run.metrics if "." not in k and "/" not in k)
    if not epoch_metrics:
        return None
    history = store.metric_histories(client, run.run_id, epoch_metrics[:1])[epoch_metrics[0]]
    return history[-1][0] if history else None


def render(status: StudyStatus, now: float) -> str:
    """``status`` as the terminal shows it; ``now``: the Unix time, to say how old the progress is."""
    state = status.status + (" (stale: no process working on it is alive; killed?)" if status.stale else "")
    lines = [f"study run {status.run_id} ({status.name}) in {status.tracking_uri}: {state}"]
    lines.append(_progress(status.progress, now))
    for study in status.studies:
        left = "?" if study.left is None else study.left
        lines.append(f"  {study.name}: {study.done} done, {study.running} running, {left} left "
                     f"({study.diverged} diverged, {study.failed} failed)")
    if status.running:
        lines.append("running trials:")
    for trial in status.running:
        epoch = "no epoch yet" if trial.epochs_done is None else f"epoch {trial.epochs_done}/{trial.epochs or '?'}"
        alive = f"stale (process {trial.pid} is gone)" if trial.stale else "alive"
        lines.append(f"  {trial.title}  host {trial.host}  {epoch}  {alive}")
    return "\n".join(lines) + "\n"


def _progress(progress: dict | None, now: float) -> str:
    if progress is None:
        return "progress: none published (a study run from before `dlbench status`)"
    ago = duration(now - progress["updated"])
    return f"progress: {progress_text(progress)} (published {ago} ago)"

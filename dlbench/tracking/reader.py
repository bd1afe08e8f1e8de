"""Reading a finished study back from MLflow into pandas frames: the one reader of runs.

A report is rebuilt from the store alone: the parent run holds the study file (as an artifact)
and each child run its trial's tags (study, level, factors, seed, status) and metric histories:
the per-epoch metrics (step = epoch) and the diagnostics (``diag per step/*``, step = optimizer step;
``diag.*`` in stores written before that name, read as the same). The tuning runs of a tuned study
(``dlbench.role = tuning``) are read from their tags alone, one row each (``dlbench.tuning.runs``).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from dlbench.trial import PROVENANCE
from dlbench.tuning import runs as tuning_runs
from dlbench.errors import UserError, choose_one_of
from dlbench.tracking.keys import DIAG_PREFIX, metric_name, tags_filter
from dlbench.tracking.server import require_reachable
from dlbench.tracking.store import histories_of_runs, search_all, studies_ran, trained_on

STUDY_FILTER = tags_filter({"dlbench.role": "study"})
READ_THREADS = 8  # over HTTP, metric histories are read one (run, key) at a time: overlap the round-trips
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no bar for a one-file download


@dataclass
class StudyRecord:
    """One ``dlbench run`` invocation as MLflow holds it."""

    tracking_uri: str
    parent_run_id: str
    experiment: str
    run_name: str
    status: str  # the parent run's MLflow status: FINISHED, FAILED, KILLED, RUNNING
    start_time: int  # ms since the epoch
    study_file_name: str | None  # the attached study file, None when it is missing
    study_file_text: str | None
    trials: pd.DataFrame  # one row per child run: run_id, study, level, seed, status, factor.<f>, final metrics
    # (a tuned level's also search, tuned: {key: chosen value}, tuned_from: the tuning trial)
    epochs: pd.DataFrame  # run_id, key, step (the epoch), value
    diagnostics: pd.DataFrame  # run_id, key, step (the optimizer step), value
    # one row per tuning run (dlbench.tuning.runs.COLUMNS, factor.<f>, param.<key>); empty when untuned
    tuning: pd.DataFrame = field(default_factory=tuning_runs.empty_frame)


def _client(tracking_uri: str) -> MlflowClient:
    return MlflowClient(tracking_uri)


def find_study_run(tracking_uri: str, run_id: str | None = None, experiment: str | None = None) -> str:
    """The parent run id to report on: ``run_id`` itself (checked), else the latest study run of
    ``experiment``, else the latest study run in the whole store (a reproduction of a study run,
    ``dlbench.reproduces``, only when there is nothing else among the latest 50)."""
    require_reachable(tracking_uri)  # a server that is down: said in a second, not after minutes of retries
    client = _client(tracking_uri)
    try:
        if run_id:
            try:
                run = client.get_run(run_id)
            except MlflowException:
                raise UserError(f"--run-id {run_id}: no such run in {tracking_uri}") from None
            role = run.data.tags.get("dlbench.role")
            if role == "trial":
                parent = run.data.tags.get("mlflow.parentRunId")
                raise UserError(f"--run-id {run_id} is the trial run {run.info.run_name!r}; pass its study "
                                f"(parent) run: --run-id {parent}")
            if role != "study":
                raise UserError(f"--run-id {run_id}: not a dlbench study run (no tag dlbench.role = study)")
            return run_id
        if experiment:
            exp = client.get_experiment_by_name(experiment)
            if exp is None:
                names = [e.name for e in client.search_experiments()]
                raise UserError(f"--experiment {experiment!r}: no such MLflow experiment in {tracking_uri}; "
                                f"{choose_one_of(experiment, names)}")
            ids = [exp.experiment_id]
        else:
            ids = [e.experiment_id for e in client.search_experiments()]
        runs = client.search_runs(ids, STUDY_FILTER, order_by=["attributes.start_time DESC"], max_results=50) if ids else []
        # the latest study run the study file made, not a `dlbench reproduce --study` of one (named by its id)
        runs = [r for r in runs if "dlbench.reproduces" not in r.data.tags] or runs
    except UserError:
        raise
    except Exception as exc:
        raise UserError(f"cannot read the MLflow tracking store {tracking_uri!r}: {exc}. Check --tracking-uri.") from exc
    if not runs:
        where = f"experiment {experiment!r}" if experiment else tracking_uri
        raise UserError(f"no dlbench study run in {where}; run `dlbench run STUDY.toml` first, or check "
                        "--tracking-uri / --experiment")
    return runs[0].info.run_id


def read_study_run(tracking_uri: str, run_id: str, studies: list[str] | None = None,
                   history: Callable[[str], bool] = lambda metric: True) -> StudyRecord:
    """The parent run ``run_id``, its study file and every trial run under it (of ``studies``,
    when named) with the histories of its metrics that ``history`` keeps (a metric's name ->
    whether to read its values by step; default all: a report draws every one). A study run
    holds one run of each of its trials, whatever happened (``dlbench run``): runs of any other
    study run are never read as its own.
    """
    client = _client(tracking_uri)
    parent = client.get_run(run_id)
    experiment = client.get_experiment(parent.info.experiment_id).name
    only = {"dlbench.study": studies[0]} if studies is not None and len(studies) == 1 else {}
    # trials only: a `dlbench reproduce` run nested under the study run is not one of its trials
    children = search_all(client, parent.info.experiment_id,
                          {"mlflow.parentRunId": run_id, "dlbench.role": "trial"} | only)
    if studies is not None:
        children = [r for r in children if r.data.tags.get("dlbench.study") in studies]
    name, text = _study_file(client, parent)

    rows = [_trial_row(r) for r in children]
    trials = pd.DataFrame(rows)
    wanted = {r.info.run_id: [k for k in r.data.metrics if history(metric_name(k))] for r in children}
    records = histories_of_runs(client, wanted, READ_THREADS)
    history = pd.DataFrame(records, columns=["run_id", "key", "step", "value"])
    history = history.sort_values(["run_id", "key", "step"], kind="stable").drop_duplicates(
        ["run_id", "key", "step"], keep="last")
    history["key"] = history["key"].map(metric_name)  # an older store's diag.* too
    is_diag = history["key"].str.startswith(DIAG_PREFIX)
    searches = set(trials["search"].dropna()) if "search" in trials else set()
    return StudyRecord(
        tracking_uri=tracking_uri, parent_run_id=run_id, experiment=experiment, run_name=parent.info.run_name,
        status=parent.info.status, start_time=parent.info.start_time, study_file_name=name, study_file_text=text,
        trials=trials, epochs=history[~is_diag].reset_index(drop=True),
        diagnostics=history[is_diag].reset_index(drop=True),
        tuning=read_tuning_runs(client, parent.info.experiment_id, run_id, studies, searches))


def read_tuning_runs(client: MlflowClient, experiment_id: str, run_id: str, studies: list[str] | None = None,
                     searches: set[str] = frozenset()) -> pd.DataFrame:
    """The tuning runs of the study run ``run_id`` (of ``studies``, when named), one row each, in
    study, level and trial order; plus those of the ``searches`` (the search ids of its final
    trials) that are not its children: a re-run that skips a finished level reports the search
    an earlier invocation ran for it. Tags and latest metrics only: no metric history is read."""
    only = {"dlbench.study": studies[0]} if studies is not None and len(studies) == 1 else {}
    runs = search_all(client, experiment_id, {"mlflow.parentRunId": run_id, "dlbench.role": "tuning"} | only)
    for search in sorted(set(searches) - {r.data.tags.get("dlbench.search") for r in runs}):
        runs += search_all(client, experiment_id, {"dlbench.role": "tuning", "dlbench.search": search})
    if studies is not None:
        runs = [r for r in runs if r.data.tags.get("dlbench.study") in studies]
    if not runs:
        return tuning_runs.empty_frame()
    rows = {r.info.run_id: tuning_runs.tuning_row(r.info.run_id, r.data.tags, r.data.metrics, _status(r))
            for r in runs}  # by run id: a run found both ways counts once
    frame = pd.DataFrame(list(rows.values()))
    return frame.sort_values(["study", "level", "search", "trial"], kind="stable").reset_index(drop=True)


def attached_study_file(tracking_uri: str, run_id: str) -> tuple[str | None, str | None, list[str]]:
    """The study file attached to a study run (name, text) and the studies that run ran."""
    client = _client(tracking_uri)
    parent = client.get_run(run_id)
    return (*_study_file(client, parent), studies_ran(parent.data.params))


def _study_file(client: MlflowClient, parent) -> tuple[str | None, str | None]:
    """The study file attached to the parent run (its name as the ``dlbench.study_file`` tag has it)."""
    path = parent.data.tags.get("dlbench.study_file")
    if not path:
        return None, None
    name = Path(path).name
    try:
        with tempfile.TemporaryDirectory() as tmp:
            local = client.download_artifacts(parent.info.run_id, name, tmp)
            return name, Path(local).read_text(encoding="utf-8")
    except Exception:
        return name, None


def _status(run) -> str:
    """A trial run's status: dlbench's tag, else (a process killed before it set one) MLflow's."""
    return run.data.tags.get("dlbench.status") or {"RUNNING": "running", "KILLED": "interrupted"}.get(
        run.info.status, run.info.status.lower())


def plugins_used(tags: dict[str, str]) -> str:
    """The plugins a trial run used with their origins: ``kind = name [origin]``, joined by ``; ``."""
    return "; ".join(f"{k.removeprefix('dlbench.plugin.')} = {v}" for k, v in sorted(tags.items())
                     if k.startswith("dlbench.plugin."))


def _trial_row(run) -> dict:
    tags = run.data.tags
    status = _status(run)
    row = {
        "run_id": run.info.run_id,
        "run_name": run.info.run_name,
        "study": tags.get("dlbench.study", ""),
        "level": tags.get("dlbench.level", ""),
        "seed": int(tags.get("dlbench.seed", -1)),
        "status": status,
        "trial_index": int(tags.get("dlbench.trial_index", 0)),
        "epochs_run": int(tags.get("dlbench.epochs_run", 0)),
        "duration_s": float(tags.get("dlbench.duration_s", "nan")),
        "config_hash": tags.get("dlbench.config_hash", ""),
        "same_as": tags.get("dlbench.same_as_name", ""),  # the trial whose run it records (trained once)
        "num_classes": int(tags.get("dlbench.num_classes") or 0),  # 0: not recorded (older runs)
        "plugins": plugins_used(tags),
        **{column: tags.get(tag, "") for column, tag in PROVENANCE.items()},
    }
    row["host"] = trained_on(tags)
    if "dlbench.levels" in tags:  # the exact factor names (a tag key holds only some characters)
        row |= {f"factor.{f}": level for f, level in json.loads(tags["dlbench.levels"]).items()}
    else:  # runs from before dlbench.levels
        row |= {f"factor.{k.removeprefix('dlbench.factor.')}": v for k, v in tags.items()
                if k.startswith("dlbench.factor.")}
    row |= {k: v for k, v in run.data.metrics.items() if not metric_name(k).startswith(DIAG_PREFIX)}
    return row | tuning_runs.final_tags(tags)

"""A study run's results as pandas DataFrames: one row per trial, and the per-epoch curves.

The library side of ``docs/results.md``::

    import dlbench

    trials = dlbench.load_trials("ablation.toml")  # the latest study run of the file, default store
    curves = dlbench.load_curves("ablation.toml", metrics=["val_accuracy"])
    trials.groupby(["study", "level"]).test_accuracy.agg(["mean", "std"])

A study run is found as ``dlbench report`` finds it (``tracking.reader.find_study_run``): the
latest study run of a study file (its MLflow experiment), a study run's id, or, given neither,
the latest study run in the store. Its trials are its own child runs only
(``tracking.reader.read_study_run``): a trial recorded from an identical trial's run
(``dlbench.same_as``) is a row like the others, its ``same_as`` naming the trial it records.

A factor ``f`` is the column ``f`` (``activation``, ``depth``; a one-factor study's factor is
named after the study), or ``factor.f`` when ``f`` is also the name of another column (``seed``,
``test_accuracy``, ...). Level names stay strings, as in the study file.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import pandas as pd

from dlbench.config import read_study_file
from dlbench.errors import UserError, choose_one_of
from dlbench.paths import sqlite_file
from dlbench.settings import default_tracking_uri
from dlbench.tracking.keys import DIAG_PREFIX
from dlbench.trial import PROVENANCE
from dlbench.tracking.reader import attached_study_file, find_study_run, read_study_run
from dlbench.tracking.server import is_server, require_reachable
from dlbench.tracking.store import Store

# the final metrics every trial has (NaN where a trial ended before logging one), in this order;
# any other metric a run logged (``lr``, a plugin's) follows them, by name
METRICS = ["test_accuracy", "val_accuracy", "train_accuracy", "test_loss", "val_loss", "train_loss"]
# the trial columns besides the factors and the metrics, in the frame's order: (before the
# factors, between the factors and the metrics, after the metrics)
LEADING = ["study", "level"]
MIDDLE = ["seed", "status"]
TRAILING = ["epochs_run", "duration_s", "same_as", "run_id", "run_name", "config_hash", "trial_index",
            "num_classes", "study_run_id", "plugins", *PROVENANCE]
# what a tuned level's final trials also have (the search, the chosen values, the tuning trial)
TUNED = ["search", "tuned", "tuned_from"]
CURVE_COLUMNS = ["epoch", "metric", "value", "run_id"]  # after study, level, the factors and seed


@dataclass(frozen=True)
class Results:
    """What :func:`load_results` read: both frames of one study run, from one read of the store."""

    trials: pd.DataFrame  # one row per trial (see load_trials)
    curves: pd.DataFrame  # one row per (trial, metric, epoch) (see load_curves)
    study_run_id: str  # the MLflow run id of the study run (``dlbench run`` prints it: "MLflow parent run ...")
    tracking_uri: str
    experiment: str  # the MLflow experiment: the study file's name


def load_trials(study_file: str | Path | None = None, *, run_id: str | None = None, tracking_uri: str | None = None,
                study: str | Iterable[str] | None = None) -> pd.DataFrame:
    """One row per trial of a study run: ``study``, ``level``, one column per factor, ``seed``,
    ``status``, the final metrics (``test_accuracy``, ``val_accuracy``, ``train_accuracy``, the
    losses, then any other metric, e.g. ``lr``), ``epochs_run``, ``duration_s``, ``same_as``,
    ``run_id``, ``run_name``, ``config_hash``, ``trial_index``, ``num_classes``,
    ``study_run_id``, ``plugins`` and where it ran and from what (``dataset_hash``, ``git_commit``,
    the versions, ``device``, ``device_name``, ``torch_threads``, ``host``); a tuned level's trials
    also ``search``, ``tuned`` and ``tuned_from``.

    The study run is the latest one of ``study_file`` (as ``dlbench report STUDY_FILE`` finds
    it), or the study run ``run_id``, or, given neither, the latest study run in the store.
    ``tracking_uri``: the MLflow store (default: ``$MLFLOW_TRACKING_URI``, else
    ``sqlite:///mlflow.db`` in the working directory), a SQLite file or an ``mlflow server``.
    ``study``: only the trials of this study (a name, or several). Rows come in the study file's
    order (study, level, seed). Raises :class:`dlbench.errors.UserError` when there is no such
    store, study run or study.
    """
    return read_results(study_file, run_id, tracking_uri, study, history=lambda metric: False).trials  # no curves


def load_curves(study_file: str | Path | None = None, *, run_id: str | None = None, tracking_uri: str | None = None,
                study: str | Iterable[str] | None = None, metrics: str | Iterable[str] | None = None) -> pd.DataFrame:
    """The per-epoch metrics of every trial of a study run, in long format: one row per trial,
    metric and epoch, with the columns ``study``, ``level``, one per factor, ``seed``, ``epoch``
    (0: the initialized model, before any step; ``k``: after the k-th epoch), ``metric``,
    ``value`` and ``run_id`` (the trial's run, as in :func:`load_trials`).

    ``metrics``: only these (a name, or several: ``"val_accuracy"``); default every metric the
    runs logged (the accuracies and losses of each split, ``lr``, ...). The other arguments are
    those of :func:`load_trials`. One column per metric instead:
    ``curves.pivot_table(index=["run_id", "epoch"], columns="metric", values="value")``.
    """
    return load_results(study_file, run_id=run_id, tracking_uri=tracking_uri, study=study, metrics=metrics).curves


def load_results(study_file: str | Path | None = None, *, run_id: str | None = None, tracking_uri: str | None = None,
                 study: str | Iterable[str] | None = None, metrics: str | Iterable[str] | None = None) -> Results:
    """Both frames of a study run (:func:`load_trials`, :func:`load_curves`) from one read of
    the store: what a notebook that wants both calls, rather than reading the runs twice."""
    return read_results(study_file, run_id, tracking_uri, study, metrics,
                        history=lambda metric: not metric.startswith(DIAG_PREFIX))  # the curves are per epoch


def read_results(study_file, run_id, tracking_uri, study, metrics=None,
                 history: Callable[[str], bool] = lambda metric: True) -> Results:
    """:func:`load_results`, reading the histories of the metrics ``history`` keeps (a metric's
    name -> whether its values by step are read): none for the trials alone, the per-epoch ones
    for the curves (never the diagnostics by optimizer step, which neither frame holds)."""
    if study_file is not None and run_id is not None:
        raise UserError("name the study run once: a study file or run_id=..., not both")
    uri = tracking_uri or default_tracking_uri()
    require_store(uri)
    studies = [study] if isinstance(study, str) else list(study) if study is not None else None
    parent = study_run_of(uri, study_file, run_id)
    record = read_study_run(uri, parent, studies, history)
    trials = trial_frame(record.trials, parent)
    if studies is not None:
        missing = [s for s in studies if s not in set(trials["study"])]
        if missing:
            ran = attached_study_file(uri, parent)[2]
            raise UserError(f"study={missing[0]!r}: study run {parent} has no trials of it; "
                            + (choose_one_of(missing[0], ran) if ran else "it has no trials at all"))
    curves = curve_frame(record.epochs, trials, metrics)
    info = {"study_run_id": parent, "tracking_uri": uri, "experiment": record.experiment}
    trials.attrs.update(info)
    curves.attrs.update(info)
    return Results(trials, curves, parent, uri, record.experiment)


def require_store(tracking_uri: str) -> None:
    """A :class:`UserError` when no store is there: a SQLite file or a local folder that does
    not exist (MLflow would create an empty one, and say nothing), or a server that does not
    answer."""
    if is_server(tracking_uri):
        try:
            require_reachable(tracking_uri)
        except UserError as exc:  # said as this call's argument, not the CLI's option
            raise UserError(str(exc).replace("--tracking-uri ", "tracking_uri=", 1)) from None
        return
    if tracking_uri.startswith("sqlite:"):
        path = sqlite_file(tracking_uri)  # None: an in-memory store (empty: said as "no study run")
    elif tracking_uri.startswith("file:"):
        path = Path(urlparse(tracking_uri).path)
    elif "://" not in tracking_uri and not tracking_uri.startswith("databricks"):
        path = Path(tracking_uri)  # a folder: MLflow's file store
    else:
        path = None  # postgresql://, databricks, ...: MLflow says what is wrong
    if path is None:
        return
    if not path.exists():
        raise UserError(f"no MLflow tracking store at {tracking_uri}: {path.absolute()} does not exist. A relative "
                        "sqlite:///mlflow.db is in the working directory: run from the folder `dlbench run` ran in, or "
                        "pass tracking_uri='sqlite:////absolute/path/mlflow.db' (or an `mlflow server`'s "
                        "http://host:port), or set MLFLOW_TRACKING_URI.")


def study_run_of(tracking_uri: str, study_file: str | Path | None, run_id: str | None) -> str:
    """The id of the study run to load: ``run_id`` (checked: a study run), else the latest study
    run of ``study_file``, else the latest in the store."""
    if run_id is not None:
        return checked_study_run(tracking_uri, run_id)
    if study_file is None:
        return find_study_run(tracking_uri)
    sf = read_study_file(study_file)
    try:
        return find_study_run(tracking_uri, experiment=sf.name)
    except UserError as exc:
        if exc.__cause__ is not None:  # the store could not be read: its own message
            raise
        raise UserError(f"{study_file}: no study run of this study file (MLflow experiment {sf.name!r}) in "
                        f"{tracking_uri}. Run it first (`dlbench run {study_file}`), or pass the tracking_uri it "
                        "ran into, or a study run's run_id.") from None


def checked_study_run(tracking_uri: str, run_id: str) -> str:
    """``run_id`` when it is a dlbench study run; else a :class:`UserError` that says what it is."""
    try:
        run = Store(tracking_uri).run(run_id)
    except UserError:
        raise UserError(f"run_id={run_id!r}: no such run in {tracking_uri}. Pass the study run's id (`dlbench run` "
                        "prints it: 'MLflow parent run <id>') and the tracking_uri it ran into.") from None
    role = run.tags.get("dlbench.role")
    parent = run.tags.get("mlflow.parentRunId")
    if role in ("trial", "tuning") and parent:
        what = "a trial run" if role == "trial" else "a tuning run"
        name = run.tags.get("mlflow.runName", run.trial)
        raise UserError(f"run_id={run_id!r} is {what} ({name}), not a study run. Its study run is "
                        f"run_id={parent!r}: load that (this trial is its row whose run_id is {run_id!r}).")
    if role != "study":
        raise UserError(f"run_id={run_id!r}: not a dlbench study run (its tag dlbench.role is "
                        f"{role!r}, not 'study')")
    return run_id


def trial_frame(runs: pd.DataFrame, study_run_id: str) -> pd.DataFrame:
    """The reader's trial rows (``factor.<f>`` columns, every non-diagnostic final metric) as
    :func:`load_trials` gives them."""
    runs = runs.copy()
    for name, default in (("study", ""), ("level", ""), ("seed", 0), ("status", ""), ("run_id", ""),
                          ("trial_index", 0), ("same_as", "")):
        if name not in runs:
            runs[name] = pd.Series(dtype=type(default))
    runs = runs.sort_values(["trial_index", "seed", "run_id"], kind="stable").reset_index(drop=True)
    runs["study_run_id"] = study_run_id
    runs["same_as"] = runs["same_as"].fillna("")
    for m in METRICS:
        if m not in runs:
            runs[m] = float("nan")
    factors = [c for c in runs if c.startswith("factor.")]
    known = {*LEADING, *MIDDLE, *TRAILING, *TUNED, *factors}
    metrics = METRICS + sorted(c for c in runs if c not in known and c not in METRICS)
    taken = {*LEADING, *MIDDLE, *TRAILING, *TUNED, *metrics}
    names = {c: (c if c.removeprefix("factor.") in taken or not c.removeprefix("factor.")
                 else c.removeprefix("factor.")) for c in factors}
    order = [*LEADING, *factors, *MIDDLE, *metrics, *[c for c in TRAILING if c in runs],
             *[c for c in TUNED if c in runs]]
    return runs[order].rename(columns=names)


def curve_frame(epochs: pd.DataFrame, trials: pd.DataFrame, metrics: str | Iterable[str] | None) -> pd.DataFrame:
    """The reader's metric histories (run_id, key, step, value) joined to each trial's study,
    level, factors and seed, as :func:`load_curves` gives them."""
    logged = list(dict.fromkeys(epochs["key"]))
    if metrics is not None:
        wanted = [metrics] if isinstance(metrics, str) else list(metrics)
        unknown = [m for m in wanted if m not in logged and m not in METRICS]
        if unknown:
            raise UserError(f"metrics: {unknown[0]!r} is not a metric of these runs; "
                            f"{choose_one_of(unknown[0], logged or METRICS)}")
        epochs = epochs[epochs["key"].isin(wanted)]
    factor_end = trials.columns.get_loc("seed")
    meta = trials[[*trials.columns[:factor_end], "seed", "run_id"]]
    curves = epochs.rename(columns={"key": "metric", "step": "epoch"}).merge(meta, on="run_id")
    order = {run: i for i, run in enumerate(trials["run_id"])}
    curves = curves.assign(_trial=curves["run_id"].map(order)).sort_values(
        ["_trial", "metric", "epoch"], kind="stable").drop(columns="_trial")
    curves["epoch"] = curves["epoch"].astype(int)
    return curves[[*meta.columns.drop("run_id"), *CURVE_COLUMNS]].reset_index(drop=True)

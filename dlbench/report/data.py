"""What one study's report is built from: tidy frames of its trials, epochs and diagnostics.

Built from a :class:`dlbench.tracking.reader.StudyRecord` (what MLflow holds) and the study file
attached to the parent run, which gives the question, the level order, the reference levels,
the seeds expected and the claims. Without a readable study file these are inferred from the
runs and the report says so. :func:`record_from_results` makes the same record from in-memory
trial results (no MLflow; no diagnostics, no tuning runs).

In every frame a factor ``f`` is the column ``factor.f`` (as in MLflow's params), so a factor
may be named like a metric or a column (``lr``, ``test_accuracy``, ``epoch``) without clashing.
"""

from __future__ import annotations

import datetime as dt
import itertools
import math
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd

from dlbench.tuning import runs as tuning_runs
from dlbench.config import DEFAULT_ALPHA, Claim, Study, parse_study_file
from dlbench.errors import ConfigError
from dlbench.trial import PROVENANCE, level_label

DIAG_PREFIX = r"^(diag per step/|diag\.)"  # every diagnostic's name: now, and in stores written before
EPOCH_METRICS = ["train_accuracy", "val_accuracy", "test_accuracy", "train_loss", "val_loss", "test_loss"]


@dataclass
class StudyData:
    name: str
    question: str
    levels: dict[str, list[str]]  # factor -> its level names, in study-file order
    reference: dict[str, str]  # factor -> reference level
    claims: list[Claim]
    alpha: float
    seeds: list[int] | None  # the seeds each level should have; None when unknown
    trials: pd.DataFrame  # one row per trial run: factor.<f>, level, seed, status, run_id, final metrics
    epochs: pd.DataFrame  # factor.<f>, level, seed, run_id, epoch, metric, value
    diagnostics: pd.DataFrame  # factor.<f>, level, seed, run_id, step, epoch, kind, layer, value
    source: dict[str, str]  # where it was read from: tracking URI, experiment, parent run ...
    notes: list[str] = field(default_factory=list)  # what is missing or was inferred
    # one row per tuning run of the study (dlbench.tuning.runs.COLUMNS, factor.<f>, param.<key>); empty when untuned
    tuning: pd.DataFrame = field(default_factory=tuning_runs.empty_frame)
    same: list[str] = field(default_factory=list)  # levels that resolve to the same configuration as another

    @property
    def factors(self) -> list[str]:
        return list(self.levels)

    @property
    def columns(self) -> dict[str, list[str]]:
        """The levels keyed by their frame column (``factor.<f>``): what the figures take."""
        return {column(f): lv for f, lv in self.levels.items()}

    @property
    def finished(self) -> pd.DataFrame:
        return self.trials[self.trials["status"] == "finished"]

    def cells(self) -> list[dict[str, str]]:
        """Every level combination in study order."""
        return [dict(zip(self.factors, combo)) for combo in itertools.product(*self.levels.values())]

    def label(self, cell: dict[str, str]) -> str:
        """A level's label, spelled as its runs are named (``relu, depth=8``)."""
        return level_label(cell, self.levels)

    def level_order(self) -> list[str]:
        return [self.label(c) for c in self.cells()]


def column(factor: str) -> str:
    return f"factor.{factor}"


def parse_attached_study_file(name: str | None, text: str | None) -> tuple[object | None, str | None]:
    """(StudyFile, None) or (None, why not)."""
    if text is None:
        return None, ("the study file is not attached to the parent run" if name is None
                      else f"the study file {name} attached to the parent run could not be read")
    try:
        return parse_study_file(tomllib.loads(text), Path(name or "study.toml"), text), None
    except (tomllib.TOMLDecodeError, ConfigError) as exc:
        return None, f"the attached study file {name} no longer parses ({str(exc).splitlines()[0]})"


def study_data(record, study_name: str, study: Study | None, why_no_file: str | None = None) -> StudyData:
    """The report data of study ``study_name`` from a StudyRecord (``study`` from its study file)."""
    trials = record.trials[record.trials["study"] == study_name].sort_values(["trial_index", "seed"])
    notes: list[str] = []
    factor_cols = [c for c in trials.columns if c.startswith("factor.") and trials[c].notna().any()]
    if study is not None:
        levels = {f.name: f.level_names for f in study.factors}
        reference, claims, alpha, seeds = dict(study.reference), list(study.claims), study.alpha, list(study.seeds)
        question = study.question
    else:
        # infer the factors and their level order from the runs (first appearance in trial order)
        levels = {c.removeprefix("factor."): list(dict.fromkeys(trials[c].dropna().astype(str))) for c in factor_cols}
        reference = {f: lv[0] for f, lv in levels.items()}
        claims, alpha, seeds, question = [], DEFAULT_ALPHA, None, ""
        notes.append(f"{why_no_file}: the levels were inferred from the runs, the first level of each "
                     "factor is the reference, and no claims are judged.")
    frame = pd.DataFrame({
        "run_id": trials["run_id"].to_numpy(),
        **{column(f): trials.get(column(f), pd.Series([None] * len(trials))).astype(str).to_numpy() for f in levels},
        # from the factors, not the runs' ``dlbench.level``: one spelling, whichever dlbench wrote the runs
        "level": [level_label({f: str(row.get(column(f))) for f in levels}, levels) for _, row in trials.iterrows()],
        "seed": trials["seed"].to_numpy(),
        "status": trials["status"].to_numpy(),
        "epochs_run": trials["epochs_run"].to_numpy(),
        "config_hash": trials["config_hash"].to_numpy(),
        "num_classes": trials["num_classes"].fillna(0).to_numpy(dtype=int) if "num_classes" in trials else 0,
    })
    for m in EPOCH_METRICS:
        frame[m] = trials[m].to_numpy(dtype=float) if m in trials else math.nan
    frame["generalization_gap"] = frame["train_accuracy"] - frame["test_accuracy"]
    for name in ("plugins", *PROVENANCE):  # where each trial ran and from what (what `dlbench compare` lists)
        if name in trials:
            frame[name] = trials[name].fillna("").astype(str).to_numpy()
    # a tuned level's final trials: the search, the chosen values and the tuning trial they came from
    if "same_as" in trials and (trials["same_as"].fillna("") != "").any():  # recorded from an identical trial's run
        frame["same_as"] = trials["same_as"].fillna("").to_numpy()
    for name in ("search", "tuned", "tuned_from"):
        if name in trials and trials[name].notna().any():
            frame[name] = trials[name].reset_index(drop=True).astype("Int64" if name == "tuned_from" else object)

    meta = frame[["run_id", *map(column, levels), "level", "seed"]]
    epochs = record.epochs[record.epochs["run_id"].isin(frame["run_id"]) & record.epochs["key"].isin(EPOCH_METRICS)]
    epochs = epochs.rename(columns={"key": "metric", "step": "epoch"}).merge(meta, on="run_id")
    diagnostics = _diagnostics(record.diagnostics[record.diagnostics["run_id"].isin(frame["run_id"])], meta)

    data = StudyData(study_name, question, levels, reference, claims, alpha, seeds, frame,
                     epochs.reset_index(drop=True), diagnostics, _source(record), notes, _tuning(record, study_name))
    _note_missing(data)
    _note_same_configs(data)
    return data


def _tuning(record, study_name: str) -> pd.DataFrame:
    """The tuning runs of study ``study_name`` (a record without the field, e.g. one made in a
    test, has none)."""
    tuning = getattr(record, "tuning", None)
    if tuning is None or tuning.empty:
        return tuning_runs.empty_frame()
    rows = tuning[tuning["study"] == study_name].reset_index(drop=True)
    # the factors of other studies are empty columns here; the tuned keys are made again from this
    # study's params alone (a key that other studies tune made an int one float, NaN where absent)
    rows = rows.drop(columns=[c for c in rows if c.startswith(tuning_runs.PARAM)
                              or (c.startswith("factor.") and rows[c].isna().all())])
    keys = list(dict.fromkeys(k for params in rows["params"] for k in params))
    return rows.assign(**{tuning_runs.PARAM + k: rows["params"].map(lambda p, k=k: p.get(k)) for k in keys})


def _diagnostics(diag: pd.DataFrame, meta: pd.DataFrame) -> pd.DataFrame:
    """``diag per step/<kind>.layer<k>`` (or an older store's ``diag.<kind>.layer<k>``) rows -> kind,
    layer; the fractional epoch of each step joined in."""
    cols = ["run_id", "step", "epoch", "kind", "layer", "value"]
    if diag.empty:
        return pd.DataFrame(columns=[*cols, *meta.columns.drop("run_id")])
    parts = diag["key"].str.replace(DIAG_PREFIX, "", regex=True).str.split(".", n=1, expand=True)
    if parts.shape[1] == 1:
        parts[1] = None
    out = diag.assign(kind=parts[0], layer=pd.to_numeric(parts[1].str.removeprefix("layer"), errors="coerce"))
    epoch = out[out["kind"] == "epoch"][["run_id", "step", "value"]].rename(columns={"value": "epoch"})
    out = out[out["kind"] != "epoch"].merge(epoch, on=["run_id", "step"], how="left")
    return out[cols].merge(meta, on="run_id").reset_index(drop=True)


def _source(record) -> dict[str, str]:
    started = dt.datetime.fromtimestamp(record.start_time / 1000).strftime("%Y-%m-%d %H:%M") if record.start_time else ""
    return {"tracking_uri": record.tracking_uri, "experiment": record.experiment, "parent_run_id": record.parent_run_id,
            "run_name": record.run_name, "status": record.status, "started": started}


def _note_missing(data: StudyData) -> None:
    """Say what is missing: trials never run, levels without a finished seed, single seeds."""
    frame = data.trials
    expected = len(data.seeds) if data.seeds is not None else None
    for cell in data.cells():
        mask = np.ones(len(frame), dtype=bool)
        for f, lvl in cell.items():
            mask &= frame[column(f)] == lvl
        rows = frame[mask]
        name = data.label(cell)
        if expected is not None and len(rows) < expected:
            missing = sorted(set(data.seeds) - set(rows["seed"]))
            data.notes.append(f"level {name!r}: {len(missing)} of {expected} seed(s) never ran "
                              f"(seed {', '.join(map(str, missing))}): the study was interrupted, stopped by "
                              "--fail-fast, or run in part")
        if len(rows) and not (rows["status"] == "finished").any():
            data.notes.append(f"level {name!r}: no finished seed ({', '.join(sorted(set(rows['status'])))}); "
                              "it has no statistics and no curves")
    n = frame[frame["status"] == "finished"].groupby("level").size()
    if len(n) and n.max() < 2:
        data.notes.append("every level has at most one finished seed: no intervals, no tests (run with seeds >= 2; "
                          "5 or more make intervals useful)")
    elif len(n) and n.min() == 2:
        data.notes.append("some levels have only 2 finished seeds: their 95% intervals are very wide (the t quantile "
                          "for 1 degree of freedom is 12.7); 5 or more seeds make intervals useful")
    if data.diagnostics.empty and len(frame):
        data.notes.append("no training diagnostics were recorded (diagnostics_every = 0, or runs from before "
                          "diagnostics existed): the gradient and activation figures are left out")


def _note_same_configs(data: StudyData) -> None:
    """Name the levels that resolve to the same configuration: two levels whose trials of the same
    seed have the same config hash (the resolved config, seed included) train the same thing, so
    their difference is zero by construction (a level that repeats the baseline, say)."""
    frame = data.trials
    if frame.empty or "config_hash" not in frame:
        return
    order = {name: i for i, name in enumerate(data.level_order())}
    hashed = frame[frame["config_hash"].notna() & (frame["config_hash"].astype(str) != "")]
    groups: list[list[str]] = []
    for _, rows in hashed.groupby(["seed", "config_hash"], sort=False):
        levels = sorted(dict.fromkeys(rows["level"].astype(str)), key=lambda lvl: (order.get(lvl, len(order)), lvl))
        if len(levels) > 1 and levels not in groups:
            groups.append(levels)
    for levels in groups:
        names = ", ".join(repr(lvl) for lvl in levels[:-1]) + f" and {levels[-1]!r}"
        data.same.append(f"levels {names} resolve to the same configuration (equal config hashes): their "
                         "difference is zero by construction, not a finding")
    if "same_as" in frame:  # a level whose runs record another study's trials (trained once, for both)
        prefix = f"{data.name}/"
        for level, rows in frame[frame["same_as"] != ""].groupby("level", sort=False):
            # the origin's title, ``a/base, seed=0`` (``a/base/seed=0`` in stores written before)
            others = sorted({re.sub(r"(/|, )seed=\d+$", "", name) for name in rows["same_as"]
                             if not name.startswith(prefix)})
            if others:
                data.same.append(f"level {level!r} is the same configuration as {', '.join(others)}: its "
                                 f"{len(rows)} run(s) record those trials' runs (trained once, dlbench.same_as)")


def record_from_results(study_file, results) -> SimpleNamespace:
    """A StudyRecord-like view of in-memory ``(Trial, TrialResult)`` pairs: the per-epoch history
    of each result, no diagnostics; for reports built without a tracking store."""
    trials, epochs = [], []
    for trial, result in results:
        run_id = f"trial-{trial.index}"
        trials.append({"run_id": run_id, "run_name": trial.run_name, "study": trial.study, "level": trial.level,
                       "seed": trial.seed, "status": result.status, "trial_index": trial.index,
                       "epochs_run": result.epochs_run, "duration_s": result.seconds, "config_hash": trial.config_hash,
                       **{column(f): lvl for f, lvl in trial.levels.items()}, **result.final})
        epochs += [(run_id, k, epoch, v) for epoch, metrics in enumerate(result.history) for k, v in metrics.items()]
    return SimpleNamespace(
        tracking_uri="", parent_run_id="", experiment=study_file.name, run_name=study_file.name, status="",
        start_time=0, study_file_name=study_file.path.name, study_file_text=study_file.text,
        trials=pd.DataFrame(trials), epochs=pd.DataFrame(epochs, columns=["run_id", "key", "step", "value"]),
        diagnostics=pd.DataFrame(columns=["run_id", "key", "step", "value"]), tuning=tuning_runs.empty_frame())

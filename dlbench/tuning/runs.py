"""The tuning runs of a study as one tidy frame, read from their MLflow tags (issue 12's contract).

A tuned level (cell) runs a search of ``budget`` tuning trials, each an MLflow child run with
``dlbench.role = tuning``; its final trials (``dlbench.role = trial``) then carry the chosen
values (``dlbench.tuned``) and the tuning trial they came from (``dlbench.tuned_from``). This
module turns those tags into rows and holds the contract's rule for the best trial; it imports
neither mlflow nor seaborn, so the in-memory report path (no store) uses it too.
"""

from __future__ import annotations

import json
import math

import pandas as pd

from dlbench.tuning.space import OBJECTIVES as HIGHER_IS_BETTER  # objective -> higher is better?

# Every tuning frame has these columns, plus factor.<f> per factor and param.<key> per tuned key.
COLUMNS = ["run_id", "study", "level", "seed", "status", "search", "stage", "trial", "strategy", "budget",
           "metric", "objective", "epochs_run", "params", "space"]
PARAM = "param."  # the column prefix of a sampled value: param.optimizer.lr


def empty_frame() -> pd.DataFrame:
    """A tuning frame with no rows: what a study without tuning (or a report without a store) has."""
    return pd.DataFrame(columns=COLUMNS)


def tuning_row(run_id: str, tags: dict[str, str], metrics: dict[str, float], status: str) -> dict:
    """One tuning run as a row: its tags parsed (JSON objects to dicts, numbers to ints), its
    ``status`` (as the reader tells it of any trial run) and its objective, the last logged value
    of the search's metric (NaN when it logged none)."""
    metric = tags.get("dlbench.tuning.metric", "")
    params = _json(tags.get("dlbench.tuning.params"))
    row = {
        "run_id": run_id,
        "study": tags.get("dlbench.study", ""),
        "level": tags.get("dlbench.level", ""),
        "seed": _int(tags.get("dlbench.seed"), -1),
        "status": status,
        "search": tags.get("dlbench.search", ""),
        "stage": _int(tags.get("dlbench.tuning.stage"), 1),
        "trial": _int(tags.get("dlbench.tuning.trial"), 0),
        "strategy": tags.get("dlbench.tuning.strategy", ""),
        "budget": _int(tags.get("dlbench.tuning.budget"), 0),
        "metric": metric,
        "objective": float(metrics.get(metric, math.nan)),
        "epochs_run": _int(tags.get("dlbench.epochs_run"), 0),
        "params": params,
        "space": _json(tags.get("dlbench.tuning.space")),
    }
    row |= {f"factor.{f}": level for f, level in _json(tags.get("dlbench.levels")).items()}
    row |= {PARAM + key: value for key, value in params.items()}
    return row


def final_tags(tags: dict[str, str]) -> dict:
    """What a final trial says of its tuning: the search id, the chosen values, the tuning trial
    they came from; empty for a trial of an untuned level."""
    out: dict = {}
    if "dlbench.search" in tags:
        out["search"] = tags["dlbench.search"]
    if "dlbench.tuned" in tags:
        out["tuned"] = _json(tags["dlbench.tuned"])
    if "dlbench.tuned_from" in tags:
        out["tuned_from"] = _int(tags["dlbench.tuned_from"], 0)
    return out


def best_trial(runs: pd.DataFrame) -> pd.Series | None:
    """The best trial of one search (the contract's rule): among the finished trials of its last
    stage, the best objective (max for val_accuracy, min for val_loss), ties to the lower trial
    number; None when no trial of that stage finished."""
    if runs.empty:
        return None
    last = runs[(runs["stage"] == runs["stage"].max()) & (runs["status"] == "finished")]
    last = last[last["objective"].notna()]
    if last.empty:
        return None
    higher = HIGHER_IS_BETTER.get(str(last["metric"].iloc[0]), True)
    ranked = last.assign(_key=-last["objective"] if higher else last["objective"])
    return ranked.sort_values(["_key", "trial"], kind="stable").drop(columns="_key").iloc[0]


def csv_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with every dict or list cell as JSON text: a CSV cell a reader can parse back
    (pandas would write Python's repr, with single quotes)."""
    out = frame.copy()
    for col in out.columns:
        if out[col].map(lambda v: isinstance(v, (dict, list))).any():
            out[col] = out[col].map(lambda v: json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else v)
    return out


def _json(text: str | None) -> dict:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _int(text: str | None, default: int) -> int:
    try:
        return int(text)
    except (TypeError, ValueError):
        return default

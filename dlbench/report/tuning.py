"""The report's Tuning section, for a study whose levels were tuned before their final trials.

A comparison of tuned levels is only fair when each level got the same chance to be tuned: the
section says each level's strategy, budget, trials spent and stages, and says plainly where
levels differ (budget, strategy, search space, stages, objective, or a level not tuned at all).
Then the chosen values per level (``tuned.csv``), a warning for every chosen value on the edge of
its space (the optimum may lie outside it), and two figures. Everything is read from the tuning
runs' tags (``dlbench.tuning.runs``), not from the study file: a report of an older run, or of a
level that declared its own space, shows what actually ran.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from dlbench.report import tuning_figures
from dlbench.report.data import StudyData, column
from dlbench.report.document import Document, export_table, fmt
from dlbench.tuning.runs import HIGHER_IS_BETTER, best_trial, csv_frame
from dlbench.tuning.space import EDGE, Param

STATUSES = ["finished", "pruned", "failed", "diverged"]


@dataclass
class Search:
    """One level's search as the report tells it."""

    level: str
    cell: dict[str, str]  # factor -> level
    runs: pd.DataFrame  # its tuning runs, in trial order
    strategy: str
    budget: int
    metric: str
    space: dict  # the first stage's: key -> {"kind", "low", "high", "log", "choices"}
    stages: list[tuple[int, int, int]]  # (stage, trials run, epochs of its finished trials; 0 if none)
    chosen: dict = field(default_factory=dict)  # key -> value the final trials trained with
    chosen_trial: int | None = None  # the tuning trial the chosen values came from
    best: float = math.nan  # that trial's objective

    @property
    def counts(self) -> dict[str, int]:
        return {s: int((self.runs["status"] == s).sum()) for s in STATUSES}


def searches(data: StudyData) -> list[Search]:
    """Each tuned level's search, in study level order."""
    tuning = data.tuning
    if tuning.empty:
        return []
    cells = {label: cell for label, cell in zip(data.level_order(), data.cells())}
    order = [lvl for lvl in cells if lvl in set(tuning["level"])]
    order += [lvl for lvl in dict.fromkeys(tuning["level"]) if lvl not in cells]  # not in the study file
    return [_search(data, level, cells.get(level) or _cell_of_runs(data, tuning, level)) for level in order]


def _cell_of_runs(data: StudyData, tuning: pd.DataFrame, level: str) -> dict[str, str]:
    row = tuning[tuning["level"] == level].iloc[0]
    return {f: str(row.get(column(f), level)) for f in data.factors}


def _search(data: StudyData, level: str, cell: dict[str, str]) -> Search:
    runs = data.tuning[data.tuning["level"] == level].sort_values("trial", kind="stable")
    finals = data.trials[data.trials["level"] == level]
    if "search" in finals and finals["search"].notna().any():  # the search the final trials came from
        theirs = runs[runs["search"].isin(set(finals["search"].dropna()))]
        runs = theirs if len(theirs) else runs
    first = runs.iloc[0]
    stages = []
    for stage, group in runs.groupby("stage", sort=True):
        epochs = group.loc[group["status"] == "finished", "epochs_run"]
        stages.append((int(stage), len(group), int(epochs.max()) if len(epochs) else 0))
    search = Search(level, cell, runs, str(first["strategy"]), int(runs["budget"].max()), str(first["metric"]),
                    dict(first["space"]) if isinstance(first["space"], dict) else {}, stages)
    # the values the final trials trained with, as they say; else the contract's best trial
    tagged = finals[finals["tuned"].map(lambda v: isinstance(v, dict))] if "tuned" in finals else finals.iloc[:0]
    best = best_trial(runs)
    if len(tagged):
        search.chosen = dict(tagged["tuned"].iloc[0])
        trial = tagged["tuned_from"].iloc[0] if "tuned_from" in tagged else None
        search.chosen_trial = int(trial) if trial is not None and not pd.isna(trial) else None
    elif best is not None:
        search.chosen, search.chosen_trial = dict(best["params"]), int(best["trial"])
    row = runs[runs["trial"] == search.chosen_trial]
    if len(row):
        search.best = float(row["objective"].iloc[0])
    return search


# -- the space and its edges -------------------------------------------------------------------------


def _param(spec: dict) -> Param:
    """A space entry as the tags record it (``Param.to_json``) back as a Param."""
    return Param.from_json("", spec)


def edge(value, spec: dict) -> str | None:
    """``"low"`` or ``"high"`` when the numeric ``value`` is on the edge of the range (``Param.edge``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or spec.get("kind") == "choices":
        return None
    return _param(spec).edge(value)


def describe(spec: dict) -> str:
    """``log-uniform [0.0001, 0.1]``, ``uniform [0, 0.5]``, ``integers [1, 8] (log scale)``, ``one of 32, 64``."""
    return _param(spec).describe()


def describe_space(space: dict) -> str:
    return "; ".join(f"{key} {describe(spec)}" for key, spec in space.items()) or "(no space recorded)"


def value_text(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def edge_warnings(found: list[Search]) -> list[str]:
    """A sentence for every chosen value on the edge of its level's space."""
    out = []
    for s in found:
        for key, value in s.chosen.items():
            spec = s.space.get(key)
            side = edge(value, spec) if spec else None
            if side:
                out.append(f"level '{s.level}': {key} = {value_text(value)} is at the {side} edge of its space "
                           f"{describe(spec)}: the optimum may lie outside; widen the range")
    return out


# -- the section -----------------------------------------------------------------------------------


def tuning_section(doc: Document, data: StudyData, out_dir: Path) -> bool:
    """Write the Tuning section and ``tuning.csv`` (every tuning run) and ``tuned.csv/.md/.tex``
    (the chosen values per level); False, and nothing written, when the study was not tuned."""
    found = searches(data)
    if not found:
        return False
    order = {s.level: i for i, s in enumerate(found)}
    runs = data.tuning.assign(_o=data.tuning["level"].map(order)).sort_values(["_o", "trial"], kind="stable")
    csv_frame(runs.drop(columns="_o")).to_csv(out_dir / "tuning.csv", index=False)

    metrics = list(dict.fromkeys(s.metric for s in found))
    doc.heading("Tuning")
    doc.text(f"Each tuned level ran its own search of tuning trials on the validation split "
             f"({' / '.join(f'`{m}`' for m in metrics)}), then trained the best configuration found with the "
             "study's seeds: the statistics below compare those final trials, never the tuning trials. "
             "A comparison is only fair if each level had the same chance to be tuned.")
    _fairness(doc, data, found)
    _chosen_table(doc, data, found, out_dir)
    warnings = edge_warnings(found)
    if warnings:
        doc.text(f"**On the edge of the search space** (within {EDGE:.0%} of the range from a bound, in log space "
                 "for a log range):")
        doc.bullets(warnings)
    _figures(doc, data, found, out_dir)
    return True


def _fairness(doc: Document, data: StudyData, found: list[Search]) -> None:
    same_space = len({json.dumps(s.space, sort_keys=True) for s in found}) == 1
    rows = []
    for s in found:
        counts = s.counts
        rows.append({
            **{f: s.cell.get(f, "") for f in data.factors},
            "strategy": s.strategy, "budget": s.budget, "spent": len(s.runs),
            **{status: counts[status] for status in STATUSES},
            "stages": _stages_text(s.stages),
            **({} if same_space else {"space": describe_space(s.space)}),
        })
    doc.table(pd.DataFrame(rows).astype(str),
              "Each level's search: its strategy, its budget (tuning trials planned), the tuning trials it ran "
              "(spent) by outcome (pruned: stopped early as behind the others), and its stages (trials × epochs "
              "of each; a later stage searches a narrower range around the best so far).")
    for sentence in _fairness_sentences(data, found, same_space):
        doc.text(sentence)


def _stages_text(stages: list[tuple[int, int, int]]) -> str:
    return " then ".join(f"{n} × {epochs} ep" if epochs else f"{n}" for _, n, epochs in stages)


def _fairness_sentences(data: StudyData, found: list[Search], same_space: bool) -> list[str]:
    out = []

    def differ(attribute, what: str, unit: str = "") -> bool:
        values = {s.level: getattr(s, attribute) for s in found}
        if len({json.dumps(v, sort_keys=True) for v in values.values()}) <= 1:
            return False
        listed = "; ".join(f"{lvl}: {v}{unit}" for lvl, v in values.items())
        out.append(f"**Unequal {what}:** {listed}.")
        return True

    unequal = [differ("budget", "budgets", " trials"), differ("strategy", "strategies"),
               differ("metric", "objectives")]
    stage_plans = {s.level: [n for _, n, _ in s.stages] for s in found}
    if len({tuple(p) for p in stage_plans.values()}) > 1 and not unequal[0]:
        unequal.append(True)
        out.append("**Unequal stages:** " + "; ".join(f"{lvl}: {' then '.join(map(str, p))} trials"
                                                      for lvl, p in stage_plans.items()) + ".")
    if not same_space:
        unequal.append(True)
        out.append("**Unequal search spaces:** " + "; ".join(f"{s.level}: {describe_space(s.space)}" for s in found)
                   + ". A level that declares its own space searches other values than the others.")
    if any(unequal):
        out.append("The levels were NOT tuned alike: a level given more trials, a better strategy or a better "
                   "space has more chances to find a good configuration, so part of a difference between levels "
                   "may come from the tuning, not from the factor.")
    else:
        s = found[0]
        out.append(f"Every tuned level got the same treatment: {s.strategy} search, a budget of {s.budget} trials "
                   f"({_stages_text(s.stages)}), the same space ({describe_space(s.space)}), on {s.metric}.")
    short = [f"{s.level}: {len(s.runs)} of {s.budget}" for s in found if len(s.runs) < s.budget]
    if short:
        out.append(f"**Searches cut short** (tuning trials run, of the budget): {'; '.join(short)}. The search was "
                   "interrupted or is still running.")
    tuned = {s.level for s in found}
    untuned = [lvl for lvl in dict.fromkeys(data.trials["level"]) if lvl not in tuned]
    if untuned:
        out.append(f"**Not tuned:** {', '.join(untuned)}: trained with the study's configuration as written; a "
                   "tuned level compared with an untuned one has the advantage of its search.")
    return out


def _chosen_table(doc: Document, data: StudyData, found: list[Search], out_dir: Path) -> None:
    keys = list(dict.fromkeys(k for s in found for k in [*s.space, *s.chosen]))
    rows = []
    for s in found:
        row = {f: s.cell.get(f, "") for f in data.factors}
        # a factor named like one of these columns keeps its own (its levels are what a reader looks up)
        for name, value in {"level": s.level, "metric": s.metric, "best_objective": s.best,
                            "tuning_trial": s.chosen_trial, **{k: s.chosen.get(k) for k in keys}}.items():
            row.setdefault(name, value)
        rows.append(row)
    table = pd.DataFrame(rows)
    metric = found[0].metric if len({s.metric for s in found}) == 1 else "objective"
    pretty = pd.DataFrame({
        **{f: table[f] for f in data.factors},
        f"best {metric}": table["best_objective"].map(fmt),
        **{k: table[k].map(lambda v: "—" if v is None else value_text(v)) for k in keys},
        "from tuning trial": table["tuning_trial"].map(lambda v: "—" if v is None or pd.isna(v) else str(int(v))),
    })
    caption = ("The configuration each level's final trials trained with: the best finished tuning trial of the "
               "search's last stage (its objective on the validation split) and the values it sampled.")
    export_table(table, pretty, out_dir, "tuned", caption)
    doc.table(pretty, caption)


def _figures(doc: Document, data: StudyData, found: list[Search], out_dir: Path) -> None:
    levels = [s.level for s in found]
    metric = found[0].metric
    higher = HIGHER_IS_BETTER.get(metric, True)
    staged = any(len(s.stages) > 1 for s in found)
    path = tuning_figures.tuning_curves(data.tuning, levels, metric, higher,
                                        f"{data.name}: tuning curves ({metric}, "
                                        f"{'higher' if higher else 'lower'} is better)", out_dir / "tuning_curves.png")
    doc.figure(path, "Tuning curves",
               f"**Tuning curves.** The best {metric} found so far (line) against the tuning trials spent, one "
               "line per level; each finished tuning trial's own value is a faint point, a pruned trial's (its "
               "value when it was stopped, never taken as the best) an ×. A curve still climbing at the end of "
               "the budget means more trials would likely have found better."
               + (" Dashed vertical lines mark the stage boundaries: the best-so-far restarts at each, since a "
                  "stage may train for another number of epochs and its values are then not comparable with the "
                  "previous stage's." if staged else ""))
    spaces = {s.level: s.space for s in found}
    chosen = {s.level: (s.chosen, s.best) for s in found}
    numeric = [k for k in dict.fromkeys(k for s in found for k in s.space)
               if any(s.space.get(k, {}).get("kind") not in (None, "choices") for s in found)]
    if not numeric:
        return
    path = tuning_figures.objective_vs_params(data.tuning, levels, metric, numeric, spaces, chosen,
                                              f"{data.name}: {metric} of each tuning trial against the tuned values",
                                              out_dir / "tuning_values.png")
    doc.figure(path, "Objective against the tuned values",
               f"**{metric} of each finished tuning trial against each tuned value** (log axis for a log range), one "
               "colour per level; the star and the vertical line mark the value each level chose, the dotted lines "
               "the bounds of its space. A star against a bound means the optimum may lie outside the range; a "
               "flat cloud means the value hardly matters."
               + (" Hollow points are trials of an earlier stage (possibly fewer epochs)." if staged else ""))

"""The report of one study, rebuilt from MLflow: statistics, claims, figures, tables.

``reports/<folder>/`` gets ``index.md`` and a self-contained ``index.html``, every figure as PNG,
every table as CSV (the statistics tables also as Markdown and LaTeX), and the tidy data behind
the figures (``trials.csv``, ``epochs.csv``, ``diagnostics.csv``; ``tuning.csv`` for a tuned
study, whose section is ``tuning.py``). The folder is the study's name when that is a plain one,
else a slug of it with a hash (``dlbench.paths.folder_name``): no study name writes outside
``reports/``. Each folder also gets ``.dlbench-report.json``, naming the study file (its absolute
path), the experiment and the study it is the report of, so that a study of another file with
the same name is refused that folder (``dlbench.paths.check_report_folders``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from dlbench.errors import UserError, choose_one_of
from dlbench.paths import check_report_folders, ends_with, folder_name, read_report_marker, write_report_marker
from dlbench.report import figures
from dlbench.report.data import (StudyData, column, parse_attached_study_file, record_from_results,
                                 study_data)
from dlbench.report.document import Document, export_table, fmt, fmt_p
from dlbench.report.painter import Painter
from dlbench.report.stats import comparisons, judge_claims, summarize
from dlbench.report.tuning import tuning_section
from dlbench.study import expand_plan
from dlbench.trial import level_label
from dlbench.tuning.runs import csv_frame

METRIC = "test_accuracy"  # the study's outcome: final test accuracy of each seed
CHANCE_MARGIN = 0.02  # a level whose mean accuracy is this close to 1/num_classes is at chance
TINY_SPREAD = 0.005  # a pooled std below this (or |g| > 10) makes Hedges' g huge: it is flagged
ENDED = ("finished", "diverged", "failed", "pruned")  # a trial in one of these states will not change


def write_study_report(data: StudyData, out_dir: Path, painter: Painter | None = None) -> Path:
    """Write ``out_dir`` (``reports/<study>``) and return it; ``painter`` draws the figures (in
    processes when it has them: see ``painter.py``), else this process does."""
    out_dir = Path(out_dir)
    figures_of = (painter or Painter()).batch(len(data.trials))
    out_dir.mkdir(parents=True, exist_ok=True)
    src = data.source
    write_report_marker(out_dir, src.get("study_file"), src.get("experiment", ""), data.name)
    csv_frame(data.trials).to_csv(out_dir / "trials.csv", index=False)  # a tuned level's chosen values as JSON
    data.epochs.to_csv(out_dir / "epochs.csv", index=False)
    data.diagnostics.to_csv(out_dir / "diagnostics.csv", index=False)

    doc = Document(data.name)
    if data.question:
        doc.text(f"**Question:** {data.question}")
    origin = (f"From MLflow: experiment `{src['experiment']}`, study run `{src['run_name']}` "
              f"(`{src['parent_run_id']}`, started {src['started']}) in "
              f"`{src['tracking_uri']}`." if src["tracking_uri"] else "From in-memory trial results.")
    doc.text(f"{origin} Study {study_progress(data)}. Outcome: the final {_words(METRIC)} of each seed, after the "
             "last epoch.")
    missing = data.trials[data.trials["status"] != "finished"]
    if data.notes or len(missing):
        doc.heading("What is missing")
        items = list(data.notes)
        if len(missing):
            items.insert(0, f"{len(missing)} trial(s) did not finish and are not in n: " + ", ".join(
                f"{r['level']} seed {r['seed']} ({r['status']})" for _, r in missing.iterrows()))
        doc.bullets(items)

    if data.same:
        doc.heading("Same configurations")
        doc.bullets(data.same)

    if data.claims:
        _claims_section(doc, data, out_dir)
    tuned = tuning_section(doc, data, out_dir)  # before the results: how fairly the levels were tuned
    _levels_section(doc, data, out_dir)
    _comparisons_section(doc, data, out_dir)
    _figures_section(doc, data, out_dir, figures_of.draw)
    figures_of.wait()  # every figure written before the index that shows them

    doc.heading("Files")
    doc.text("Tables: `summary.csv`, `comparisons.csv`" + (", `claims.csv`" if data.claims else "")
             + (", `tuned.csv` (the chosen values per level)" if tuned else "")
             + " (also as `.md` and `.tex`, booktabs). Data behind the figures: `trials.csv` (one row per trial), "
             "`epochs.csv` (per-epoch metrics), `diagnostics.csv` (per-layer diagnostics by optimizer step)"
             + (", `tuning.csv` (one row per tuning run: its level, stage, trial, status, objective and sampled "
                "values)" if tuned else "") + "."
             + (f" Rebuild with `dlbench report --run-id {src['parent_run_id']} --tracking-uri {src['tracking_uri']}`."
                if src["tracking_uri"] else ""))
    (out_dir / "index.md").write_text(doc.to_markdown(), encoding="utf-8")
    (out_dir / "index.html").write_text(doc.to_html(), encoding="utf-8")
    return out_dir


def study_progress(data: StudyData) -> str:
    """Where the study's own trials stand (not its parent run, which covers the whole study file
    and runs on while other studies train): ``complete: all N trials ended`` when every trial
    the study expects has ended (finished, diverged, failed or pruned), ``in progress: k of N
    trials ended`` while some still run, ``incomplete: k of N trials ended`` when some never ran
    or were interrupted and nothing runs them now."""
    status = data.trials["status"].astype(str)
    ended = int(status.isin(ENDED).sum())
    expected = max(len(status), len(data.cells()) * len(data.seeds) if data.seeds is not None else 0)
    if ended == expected:
        return f"complete: all {expected} trials ended"
    if (status == "running").any() or str(data.source.get("status", "")).upper() == "RUNNING":
        return f"in progress: {ended} of {expected} trials ended"
    return f"incomplete: {ended} of {expected} trials ended (see \"What is missing\")"


def _words(metric: str) -> str:
    return metric.replace("_", " ")


# -- tables -----------------------------------------------------------------------------------------


def _levels_section(doc: Document, data: StudyData, out_dir: Path) -> None:
    expected = len(data.seeds) if data.seeds is not None else None
    table = summarize(_all_cells(data), list(data.columns), METRIC, expected)
    table = table.rename(columns={column(f): f for f in data.factors})
    chance, at_chance = chance_levels(data)
    table["at_chance"] = [tuple(str(r[f]) for f in data.factors) in at_chance for _, r in table.iterrows()]
    pretty = pd.DataFrame({
        **{f: table[f] for f in data.factors},
        "n": table["n"].astype(int),
        "mean": table["mean"].map(fmt),
        "std": table["std"].map(fmt),
        "95% CI": [f"[{fmt(lo)}, {fmt(hi)}]" if lo == lo else "—" for lo, hi in zip(table["ci95_low"], table["ci95_high"])],
        "diverged": table["diverged"], "failed": table["failed"],
        **({"not run": table["not_run"]} if "not_run" in table else {}),
        **({"note": table["at_chance"].map({True: "at chance", False: ""})} if at_chance else {}),
    })
    caption = (f"Final {_words(METRIC)} per level over seeds: n finished seeds, mean, standard deviation and "
               "95% Student-t interval of the mean.")
    export_table(table, pretty, out_dir, "summary", caption)
    doc.heading("Results per level")
    doc.table(pretty, caption)
    if at_chance:
        names = [data.label(dict(zip(data.factors, cell))) for cell in at_chance]
        doc.text(f"**At chance:** {len(names)} level(s) ({'; '.join(names)}) end with a mean {_words(METRIC)} within "
                 f"{CHANCE_MARGIN} of 1/{round(1 / chance)} = {chance:.3f}, the accuracy of guessing among {round(1 / chance)} classes: "
                 "these networks did not learn, and their rows differ only by noise.")


def chance_levels(data: StudyData) -> tuple[float | None, list[tuple]]:
    """The chance accuracy (1 / the dataset's number of classes, when the runs recorded it) and the
    levels (a tuple of each factor's level) whose mean final accuracy is within CHANCE_MARGIN of it."""
    finished = data.finished
    classes = set(finished["num_classes"]) - {0} if "num_classes" in finished else set()
    if len(classes) != 1:
        return None, []
    chance = 1 / classes.pop()
    at = []
    for cell in data.cells():
        mask = pd.Series(True, index=finished.index)
        for f, lvl in cell.items():
            mask &= finished[column(f)] == lvl
        values = finished.loc[mask, METRIC].dropna()
        if len(values) and abs(values.mean() - chance) <= CHANCE_MARGIN:
            at.append(tuple(cell.values()))
    return chance, at


def _all_cells(data: StudyData) -> pd.DataFrame:
    """The trials plus an empty placeholder row for every level that has no trial run at all, so
    such levels still get a row (n = 0) in the table."""
    frame = data.trials
    extra = []
    for cell in data.cells():
        mask = pd.Series(True, index=frame.index)
        for f, lvl in cell.items():
            mask &= frame[column(f)] == lvl
        if not mask.any():
            extra.append({**{column(f): lvl for f, lvl in cell.items()}, "level": data.label(cell), "seed": None,
                          "status": "not run"})
    if extra:
        frame = pd.concat([frame, pd.DataFrame(extra)], ignore_index=True)
    order = {data.label(c): i for i, c in enumerate(data.cells())}
    return frame.assign(_o=frame["level"].map(order)).sort_values("_o", kind="stable").drop(columns="_o")


def _comparisons_section(doc: Document, data: StudyData, out_dir: Path) -> None:
    table = comparisons(data.trials, data.levels, data.reference, METRIC)
    if table.empty:
        return
    at_chance = {data.label(dict(zip(data.factors, cell))) for cell in chance_levels(data)[1]}

    def chance(level: str) -> str:
        return f"{level} (at chance)" if level in at_chance else level
    pretty = pd.DataFrame({
        "level": table["level"].map(chance), "vs reference": table["reference"].map(chance),
        "n": [f"{a} vs {b}" for a, b in zip(table["n"], table["n_ref"])],
        "difference": table["diff"].map(lambda v: fmt(v, signed=True)),
        "95% CI": [f"[{fmt(lo, signed=True)}, {fmt(hi, signed=True)}]" if lo == lo else "—"
                   for lo, hi in zip(table["ci95_low"], table["ci95_high"])],
        "p": table["p"].map(fmt_p), "p (Holm)": table["p_holm"].map(fmt_p),
        "Hedges' g": [fmt(g, 2, signed=True) + (" †" if _tiny_spread(g, sd) else "")
                      for g, sd in zip(table["hedges_g"], table["pooled_sd"])],
    })
    testable = int(table["p"].notna().sum())
    caption = (f"Difference in final {_words(METRIC)} from the reference level ("
               + ", ".join(f"{f} = {r}" for f, r in data.reference.items())
               + (", the other factors held fixed" if len(data.factors) > 1 else "")
               + "): Welch 95% interval, two-sided Welch t-test p, "
               + (f"Holm-corrected across the {testable} tested comparison(s) of this study, " if testable else "")
               + "and Hedges' g (standardized difference; |g| of 0.2/0.5/0.8 is small/medium/large).")
    export_table(table, pretty, out_dir, "comparisons", caption)
    doc.heading("Differences from the reference level")
    doc.table(pretty, caption)
    tiny = [lvl for lvl, g, sd in zip(table["level"], table["hedges_g"], table["pooled_sd"]) if _tiny_spread(g, sd)]
    if tiny:
        doc.text(f"† Hedges' g is this large because the seeds barely vary (|g| > 10, or a pooled standard deviation "
                 f"below {TINY_SPREAD}): the difference is divided by a near-zero spread. Read the difference and "
                 f"its interval instead ({'; '.join(tiny)}).")
    untestable = table[table["p"].isna()]
    if len(untestable):
        doc.text(f"{len(untestable)} comparison(s) could not be tested: fewer than 2 finished seeds on a side "
                 f"({', '.join(untestable['level'])}).")


def _tiny_spread(g: float, pooled_sd: float) -> bool:
    """|g| > 10, or a large |g| (> 0.8) from a spread below TINY_SPREAD."""
    return g == g and (abs(g) > 10 or (pooled_sd < TINY_SPREAD and abs(g) > 0.8))


def _claims_section(doc: Document, data: StudyData, out_dir: Path) -> None:
    table = judge_claims(data.trials, data.claims, data.alpha)
    pretty = pd.DataFrame({"claim": table["claim"], "verdict": table["verdict"].map(lambda v: f"**{v}**"),
                           "why": table["why"]})
    interaction = (table["kind"] == "interaction").any()
    caption = (f"Each claim declared in the study file, tested at alpha = {data.alpha:g}: Welch's two-sided t-test"
               + ("; an interaction claim (the effect of one factor, larger at one level of the other than at "
                  "another): a t-test of the difference of differences over the four cells, Welch-Satterthwaite "
                  "degrees of freedom" if interaction else "")
               + ". Holm-corrected across all the study's claims. Supported: significant in the claimed direction; "
               "contradicted: significant in the other; inconclusive: neither, or too few seeds.")
    export_table(table, pretty.assign(verdict=table["verdict"]), out_dir, "claims", caption)
    doc.heading("Claims")
    doc.table(pretty, caption)


# -- figures ----------------------------------------------------------------------------------------


def _figures_section(doc: Document, data: StudyData, out_dir: Path, draw) -> None:
    doc.heading("Figures")
    if data.finished.empty:
        doc.text("No trial finished: there is nothing to plot.")
        return
    levels, name = data.columns, data.name
    two = len(data.factors) == 2  # interaction and heatmap: exactly two factors (more would be pooled)
    first, last = data.factors[0], data.factors[-1]
    seeds = int(data.finished.groupby("level").size().max())
    chance, at_chance = chance_levels(data)
    marks = {"at_chance": set(at_chance)}

    path = draw(figures.final_metric, data.trials, levels, METRIC, f"{name}: final test accuracy per level", out_dir / f"{METRIC}.png",
                                chance=chance, **marks)
    doc.figure(path, "Final test accuracy per level",
               f"**Final test accuracy per level.** Each small point is one seed (up to {seeds} per level); the "
               "diamond beside them is the mean, with its 95% Student-t interval as an error bar. The y axis spans "
               "the seeds and intervals, not the whole range of an accuracy: read differences off its ticks. Look "
               "at whether the intervals of two levels overlap and at the spread of the seeds: a difference smaller "
               "than that spread needs more seeds (the statistics tables above say whether it is significant)."
               + (f" Lines join the means of the levels of {last} for each {', '.join(data.factors[:-1])}."
                  if len(data.factors) > 1 else ""))
    if two:
        path = draw(figures.interaction, data.trials, levels, METRIC, f"{name}: test accuracy vs {data.factors[1]}, by {first}",
                                   out_dir / "interaction.png")
        doc.figure(path, f"Test accuracy vs {data.factors[1]}",
                   f"**Interaction of {first} and {data.factors[1]}.** Mean final test accuracy against "
                   f"{data.factors[1]}, one line per {first}, with the 95% band over seeds (faint points: seeds). "
                   "Parallel lines mean the factors act independently; lines that diverge or cross mean the effect "
                   f"of {first} depends on {data.factors[1]}.")
        path = draw(figures.heatmap, data.trials, levels, METRIC, f"{name}: mean test accuracy", out_dir / "heatmap.png")
        doc.figure(path, "Heatmap of mean test accuracy",
                   f"**Mean final test accuracy for every {first} × {data.factors[1]} cell**, annotated with the mean "
                   "and the half-width of its 95% interval. Look for the best cell and for rows or columns where "
                   "accuracy collapses.")
    path = draw(figures.learning_curves, data.epochs, levels, "accuracy", f"{name}: learning curves (accuracy)",
                                   out_dir / "learning_curves.png", chance=chance, **marks)
    doc.figure(path, "Learning curves (accuracy)",
               "**Learning curves per level.** Train and test accuracy after every epoch (epoch 0: the "
               "initialized model), mean over seeds with a 95% band. A widening gap between train and test is "
               "overfitting; a flat curve near chance"
               + (f" (the dotted line, {chance:.2f} for {round(1 / chance)} classes)" if chance else "")
               + " is a network that does not train"
               + ("; such levels say \"at chance\" in their title." if at_chance else "."))
    path = draw(figures.learning_curves, data.epochs, levels, "loss", f"{name}: learning curves (loss)",
                                   out_dir / "loss_curves.png", **marks)
    doc.figure(path, "Learning curves (loss)",
               "**Loss curves per level.** Train and test cross-entropy per epoch, mean over seeds with a 95% band. "
               "A test loss that turns upward while the train loss keeps falling marks the onset of overfitting "
               "(it often comes before the test accuracy drops).")
    path = draw(figures.final_metric, data.trials, levels, "generalization_gap",
                                f"{name}: generalization gap (train − test accuracy) per level",
                                out_dir / "generalization_gap.png", **marks)
    doc.figure(path, "Generalization gap per level",
               "**Generalization gap per level**: final train accuracy minus final test accuracy, seeds as points, "
               "beside them the mean (diamond) with its 95% interval; the y axis spans the data. A regularizer "
               "that works shrinks the gap; a gap near 0 with a low accuracy is underfitting, not good "
               "generalization.")
    _diagnostic_figures(doc, data, out_dir, marks, draw)


def _zero_gradient_note(diag: pd.DataFrame, levels: dict[str, list[str]]) -> str:
    """Which levels had layers with a gradient of exactly 0, which a log scale cannot draw."""
    zeros = diag[(diag["kind"] == "grad_norm") & (diag["value"] == 0)]
    if zeros.empty:
        return ""
    factors = list(levels)
    cells = []
    for key, group in zeros.groupby(factors, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        label = level_label({f: str(v) for f, v in zip(factors, key)}, levels)
        cells.append(f"{label} (layers {', '.join(str(int(k)) for k in sorted(set(group['layer'])))})")
    return (" **An × on the bottom edge** marks a layer whose gradient was exactly 0 at a record, which a log "
            "scale cannot draw: no gradient flows back to it, as below a step activation (derivative 0 "
            f"almost everywhere) or through all-zero weights, so gradient descent cannot train it. Here: {'; '.join(cells)}.")


def _diagnostic_figures(doc: Document, data: StudyData, out_dir: Path, marks: dict, draw) -> None:
    diag = data.diagnostics
    if diag.empty:
        return
    levels, name = data.columns, data.name
    marks = {**marks, "last_epoch": int(data.epochs["epoch"].max()) if len(data.epochs) else None}
    if (diag["kind"] == "grad_norm").any():
        path = draw(figures.grad_norms, diag, levels, f"{name}: gradient norm per layer", out_dir / "grad_norms.png", **marks)
        doc.figure(path, "Gradient norm per layer",
                   "**Gradient norm per layer** (L2 norm of each weight matrix's gradient, log scale) at the first "
                   "step and at whole epochs about a third, two thirds and all of the way through training; "
                   "geometric mean over seeds. Read each "
                   "line from right (output) to left (input): a line falling by orders of magnitude towards the "
                   "input is a vanishing gradient (the first layers barely learn); a rising one is exploding. "
                   "Healthy networks keep the layers within about one order of magnitude of each other."
                   + _zero_gradient_note(diag, levels))
    if diag["kind"].isin(["act_saturation", "dead_relu"]).any():
        path = draw(figures.saturation, diag, levels, f"{name}: saturated or dead units per layer over training",
                                  out_dir / "saturation.png", **marks)
        doc.figure(path, "Saturated or dead units per layer", saturation_caption(diag, levels, marks["at_chance"]))
    if diag["kind"].isin(["act_mean"]).any():
        path = draw(figures.activations, diag, levels, f"{name}: activation mean ± std per layer over training",
                                   out_dir / "activations.png", **marks)
        doc.figure(path, "Activations per layer",
                   "**Activation statistics per layer over training** on the probe batch: the line is the mean "
                   "activation, the error bars at five moments ± one standard deviation (over units and examples; "
                   "mean over seeds; each layer's bars shifted a little sideways so they do not hide each other), as "
                   "in Glorot & Bengio (2010, figure 2). Bars shrinking to a point mean the units of that layer no "
                   "longer discriminate between examples; a sigmoid layer whose mean moves to 0 or 1 is saturated.")


SATURATED = 0.01  # a layer with a smaller share of saturated (or dead) units, mean over seeds, has none to speak of
VANISHED = 2.0  # orders of magnitude between the last and the first layer's gradient norm: a vanishing gradient


def saturation_caption(diag: pd.DataFrame, levels: dict[str, list[str]], at_chance=frozenset()) -> str:
    """The caption of the saturation figure: what it measures, then what it shows, read from the
    data as drawn (mean over seeds per level, layer and record): the most saturated and the most
    dead layer, the levels where no layer saturates (what their units do instead) and, for those
    of them ``at_chance``, whether their gradient vanishes all the same."""
    kinds = set(diag["kind"])
    text = ["**Saturated or dead units per layer over training**, on a fixed probe batch of 512 training examples "
            "(mean over seeds)."]
    if "act_saturation" in kinds:
        text.append("Sigmoid/tanh: the share of activations within 0.03 of a bound (sigmoid < 0.03 or > 0.97, "
                    "|tanh| > 0.97), where the derivative nearly vanishes.")
    if "dead_relu" in kinds:
        text.append("ReLU: the share of units that are zero for every probe example (dead: they never pass a "
                    "gradient).")
    peaks = _peak_shares(diag, "act_saturation", levels)
    high = peaks[peaks["value"] >= SATURATED]
    low = peaks[peaks["value"] < SATURATED]
    if len(high):
        top = high.iloc[0]
        text.append(f"Most saturated: layer {top['layer']} at {top['cell']}, {top['value']:.0%} of its activations "
                    f"near a bound (epoch {top['epoch']:.0f}). Look for layers that saturate early and stay saturated "
                    "(Glorot & Bengio 2010 saw the top sigmoid layer driven to 0).")
    if len(low):
        where = "here" if high.empty else "at " + "; ".join(low["cell"])
        text.append(f"No sigmoid/tanh layer saturates {where}: {_at_most(low['value'].max(), 'activations lie')} "
                    "near a bound at any record" + _units_instead(diag, levels, low["key"]) + ".")
        text.append(_without_saturation(diag, levels, [k for k in low["key"] if k in set(at_chance)]))
    peaks = _peak_shares(diag, "dead_relu", levels)
    if len(peaks) and peaks["value"].iloc[0] >= SATURATED:
        top = peaks.iloc[0]
        text.append(f"Most dead ReLUs: {top['value']:.0%} of the units of layer {top['layer']} at {top['cell']} (epoch "
                    f"{top['epoch']:.0f}). Look for dead ReLUs growing with depth or learning rate.")
    elif len(peaks):
        text.append(f"No ReLU layer has dead units to speak of: {_at_most(peaks['value'].iloc[0], 'units are')} "
                    "dead at any record.")
    return " ".join(t for t in text if t)


def _at_most(share: float, what: str) -> str:
    """``at most 0.3% of a layer's units are``, ``under 0.1% ...`` or ``none of its units are``."""
    if share <= 0:
        return f"none of a layer's {what}"
    return f"{'under 0.1%' if share < 0.001 else f'at most {share:.1%}'} of a layer's {what}"


def _peak_shares(diag: pd.DataFrame, kind: str, levels: dict[str, list[str]]) -> pd.DataFrame:
    """Per level recording ``kind``, its highest share as the figure draws it (mean over seeds per
    level, layer and record), highest first: columns key (each factor's level), cell (its name),
    value, layer, epoch."""
    factors = list(levels)
    rows = diag[(diag["kind"] == kind) & diag["value"].notna()]
    if rows.empty:
        return pd.DataFrame(columns=["key", "cell", "value", "layer", "epoch"])
    mean = (rows.groupby([*factors, "layer", "step"], observed=True)
            .agg(value=("value", "mean"), epoch=("epoch", "mean")).reset_index())
    top = mean.loc[mean.groupby(factors, observed=True)["value"].idxmax()]
    keys = [tuple(str(v) for v in key) for key in top[factors].itertuples(index=False)]
    return pd.DataFrame({"key": keys, "cell": [_cell_name(k, levels) for k in keys], "value": top["value"].to_numpy(),
                         "layer": top["layer"].astype(int).to_numpy(), "epoch": top["epoch"].to_numpy()}
                        ).sort_values("value", ascending=False, kind="stable").reset_index(drop=True)


def _cell_name(key: tuple, levels: dict[str, list[str]]) -> str:
    """A level's label (``relu, depth=8``) from its values in the frame's ``factor.<f>`` columns."""
    names = {f.removeprefix("factor."): lv for f, lv in levels.items()}
    return level_label({f: str(v) for f, v in zip(names, key)}, names)


def _rows_of(diag: pd.DataFrame, levels: dict[str, list[str]], keys) -> pd.DataFrame:
    """The rows of the levels ``keys`` (tuples of each factor's level)."""
    return diag[pd.MultiIndex.from_frame(diag[list(levels)].astype(str)).isin(list(keys))]


def _units_instead(diag: pd.DataFrame, levels: dict[str, list[str]], keys) -> str:
    """Where the mean activations of the levels ``keys`` stay, when recorded."""
    means = _rows_of(diag[diag["kind"] == "act_mean"], levels, keys)
    if means.empty:
        return ""
    drawn = means.groupby([*levels, "layer", "step"], observed=True)["value"].mean()
    return (f"; {'their' if len(set(keys)) > 1 else 'its'} layers' mean activations stay between {drawn.min():.2f} "
            f"and {drawn.max():.2f} (see the activation figure)")


def _without_saturation(diag: pd.DataFrame, levels: dict[str, list[str]], stuck: list[tuple]) -> str:
    """For the levels ``stuck`` at chance without saturating: whether their gradient vanishes towards
    the input all the same (at each run's last record, mean of log10 over seeds)."""
    if not stuck:
        return ""
    names = "; ".join(_cell_name(k, levels) for k in stuck)
    text = (f"So saturation is not why {'this level' if len(stuck) == 1 else 'these levels'} at chance ({names}) did "
            "not learn.")
    orders = []
    for key in stuck:
        grads = _rows_of(diag[(diag["kind"] == "grad_norm") & (diag["value"] > 0)], levels, [key])
        grads = grads[grads["step"] == grads.groupby("run_id")["step"].transform("max")]
        if grads["layer"].nunique() > 1:
            per_layer = grads.groupby("layer")["value"].apply(lambda v: np.log10(v).mean())
            orders.append(per_layer.iloc[-1] - per_layer.iloc[0])
    if len(orders) == len(stuck) and min(orders) >= VANISHED:
        spread = f"{min(orders):.0f}" + (f" to {max(orders):.0f}" if round(max(orders)) != round(min(orders)) else "")
        text += (f" {'Their' if len(stuck) > 1 else 'Its'} gradient vanishes all the same: at the last record its "
                 f"norm at the first layer is {spread} orders of magnitude below the last layer's (gradient-norm "
                 "figure), as each layer multiplies it by the activation's derivative (a sigmoid's is at most 0.25, at "
                 "its midpoint) and by its weights.")
    return text


# -- sources ---------------------------------------------------------------------------------------


def report_folder(reports_dir: Path, study: str) -> Path:
    """Where the report of ``study`` goes: ``reports_dir/<folder_name(study)>``, never elsewhere."""
    return Path(reports_dir) / folder_name(study)


def report_from_results(study_file, results, reports_dir: Path) -> list[Path]:
    """Reports from in-memory ``(Trial, TrialResult)`` pairs (no tracking store, no diagnostics)."""
    record = record_from_results(study_file, results)
    present = set(record.trials["study"]) if len(record.trials) else set()
    folders = []
    for s in study_file.studies:
        if s.name in present:
            data = study_data(record, s.name, s)
            data.source["study_file"] = str(Path(study_file.path).resolve())
            folders.append(write_study_report(data, report_folder(reports_dir, s.name)))
    return folders


@dataclass
class StudyRunIdentity:
    """Which study file a study run ran, as far as this process can tell: ``study_file`` the
    absolute path (None when the run did not record one); ``tail`` the recorded path when it is
    relative to a working directory other than this one (the file is not there), else None;
    ``experiment``; ``studies`` the studies the run ran."""

    study_file: Path | None
    tail: str | None
    experiment: str
    studies: list[str]

    def check(self, reports_dir: Path, studies, doing: str) -> None:
        """Refuse to write the reports of ``studies`` over those of another study file."""
        if self.study_file is not None:
            check_report_folders(reports_dir, self.study_file, studies, self.experiment, doing=doing, tail=self.tail,
                                 nothing="no report was written")

    def marker_path(self, folder: Path) -> Path | None:
        """The study file to record in ``folder``'s marker: the one a marker already there names
        when the recorded path is relative to another directory and that marker matches it."""
        if self.tail is not None:
            marker = read_report_marker(folder) or {}
            theirs = marker.get("study_file")
            if theirs and marker.get("experiment") == self.experiment and ends_with(theirs, self.tail):
                return Path(theirs)
        return self.study_file


def study_run_identity(tracking_uri: str, run_id: str) -> StudyRunIdentity:
    """The study file (the parent run's tag ``dlbench.study_file``: absolute; a run recorded by an
    older dlbench has it as typed, relative to the working directory of that run, taken from this
    one or matched by its end), experiment and studies of the study run ``run_id``."""
    from dlbench.tracking.store import Store  # mlflow: imported only to read a store

    store = Store(tracking_uri)
    run = store.run(run_id)
    studies = run.studies
    recorded = run.tags.get("dlbench.study_file")
    path = tail = None
    if recorded:
        path = Path(recorded) if os.path.isabs(recorded) else Path.cwd() / recorded
        if not os.path.isabs(recorded) and not path.is_file():
            tail = recorded  # written from another working directory: matched by its end
        path = path.resolve()
    return StudyRunIdentity(path, tail, store.experiment_name(run), studies)



def report_from_mlflow(tracking_uri: str, run_id: str, reports_dir: Path, studies: list[str] | None = None,
                       attach: bool = True, trials=None, registry=None, announce=None,
                       painter: Painter | None = None, identity: StudyRunIdentity | None = None) -> list[Path]:
    """Build ``reports_dir/<folder>/`` (see ``report_folder``) for every study of the MLflow
    study run ``run_id`` (or the ``studies`` named) from what the store holds, and attach each
    folder to that run; ``announce(study, folder)`` is called as each is written.

    The trials of the run are its child runs: one of each trial of the file, whatever happened
    (``runner.run_study``), never a run of another study run. ``trials`` (the expanded trials),
    else the attached study file expanded with ``registry`` when one is given, says which
    studies the invocation ran. ``painter`` draws the figures (see
    :func:`write_study_report`). ``identity`` (read from the run when not given) names the
    study file each folder's marker records.
    """
    from dlbench.tracking.reader import find_study_run, read_study_run  # mlflow: imported only to read a store
    from dlbench.tracking.writer import attach_report

    find_study_run(tracking_uri, run_id=run_id)  # a clear error for a wrong id
    identity = identity or study_run_identity(tracking_uri, run_id)
    ran = None  # the studies the invocation ran, when the trials do not say (a tuned study's come as it runs)
    if trials is None and registry is not None:
        trials, ran = _expand_attached(tracking_uri, run_id, registry)
    record = read_study_run(tracking_uri, run_id, studies)
    present = list(dict.fromkeys(record.trials["study"])) if len(record.trials) else []
    if trials or ran:  # the studies this invocation ran (`dlbench run --study` runs a subset)
        ran = ran or list(dict.fromkeys(t.study for t in trials))
        present = [s for s in ran if s in present]
    sf, why = parse_attached_study_file(record.study_file_name, record.study_file_text)
    known = {s.name: s for s in sf.studies} if sf is not None else {}
    order = [s for s in known if s in present] + [s for s in present if s not in known]
    if studies:
        unknown = [s for s in studies if s not in present]
        if unknown:
            raise UserError(f"--study {unknown[0]!r}: the study run {run_id} has no trials of it; "
                            f"{choose_one_of(unknown[0], present) if present else 'it has no trials at all'}")
        order = [s for s in order if s in studies]
    folders = []
    for name in order:
        study = known.get(name)
        reason = why if sf is None else f"study {name!r} is not in the attached study file"
        data = study_data(record, name, study, None if study is not None else reason)
        out_dir = report_folder(reports_dir, name)
        marker = identity.marker_path(out_dir)
        data.source["study_file"] = str(marker) if marker is not None else None
        folder = write_study_report(data, out_dir, painter)
        if attach:
            attach_report(tracking_uri, run_id, folder)
        if announce is not None:
            announce(name, folder)
        folders.append(folder)
    return folders


def _expand_attached(tracking_uri: str, run_id: str, registry) -> tuple[list | None, list[str] | None]:
    """The trials of the study file attached to ``run_id`` known before it ran (a tuned level's
    are its child runs) and the studies it ran; (None, None) if the file is missing or does not
    expand with these plugins: the report then covers the run's own children only."""
    from dlbench.tracking.reader import attached_study_file  # mlflow: imported only to read a store

    name, text, studies = attached_study_file(tracking_uri, run_id)
    sf, _ = parse_attached_study_file(name, text)
    if sf is None:
        return None, None
    try:  # the studies that invocation ran (`dlbench run --study` runs a subset)
        plan = expand_plan(sf, registry, [s for s in studies if any(x.name == s for x in sf.studies)] or None)
    except UserError:
        return None, None
    return plan.trials, plan.studies

"""The two figures of the Tuning section: tuning curves, and the objective against each tuned value.

``tuning`` is a study's tuning frame (``dlbench.tuning.runs``): one row per tuning run with its
level, stage, trial number (ask order, across stages), status and objective, and ``param.<key>``
per sampled value. ``levels`` gives the levels to draw, in order; each keeps one colour in both.
"""

from __future__ import annotations

import math
from pathlib import Path

# first: figures selects the Agg backend (files only, headless) before pyplot is imported
from dlbench.report.figures import METRIC_LABELS, PAGE_WIDTH, power_of_ten, save_figure, set_theme, wrapped_title

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.ticker import FuncFormatter, MaxNLocator, NullFormatter  # noqa: E402

from dlbench.tuning.runs import PARAM  # noqa: E402


def _label(metric: str) -> str:
    return {**METRIC_LABELS, "val_loss": "validation loss (cross-entropy, nats)"}.get(metric, metric.replace("_", " "))


def _palette(levels: list[str]) -> dict[str, tuple]:
    return dict(zip(levels, sns.color_palette("deep", len(levels))))


def best_so_far(runs: pd.DataFrame, higher: bool) -> pd.Series:
    """The best objective among the finished trials up to each trial of one search, restarting at
    each stage (a stage may train for other epochs: its values do not compare with the previous
    stage's); NaN before a stage's first finished trial. ``runs`` in trial order."""
    finished = runs["objective"].where(runs["status"] == "finished")
    by_stage = finished.groupby(runs["stage"])
    best = by_stage.cummax() if higher else by_stage.cummin()
    return best.groupby(runs["stage"]).ffill()


def tuning_curves(tuning: pd.DataFrame, levels: list[str], metric: str, higher: bool, title: str, path: Path) -> Path:
    """Best objective so far against tuning trials spent, one step line per level and stage; each
    finished trial a faint point, each pruned one an x; stage boundaries as vertical lines."""
    set_theme()
    palette = _palette(levels)
    fig, ax = plt.subplots(figsize=(min(PAGE_WIDTH - 0.8, 7.6), 4.4))
    boundaries: dict[float, set[str]] = {}
    for level in levels:
        runs = tuning[tuning["level"] == level].sort_values("trial", kind="stable")
        if runs.empty:
            continue
        color = palette[level]
        best = best_so_far(runs, higher)
        for i, (stage, idx) in enumerate(runs.groupby("stage", sort=True).groups.items()):
            part = runs.loc[idx]
            # a step after each trial, the last one drawn on to the stage's end (half a trial on)
            x = [*part["trial"], part["trial"].iloc[-1] + 0.5]
            y = [*best.loc[idx], best.loc[idx].iloc[-1]]
            ax.plot(x, y, drawstyle="steps-post", color=color, lw=1.8, label=level if i == 0 else None)
            if i:
                boundaries.setdefault(float(part["trial"].min()) - 0.5, set()).add(level)
        done = runs[runs["status"] == "finished"]
        ax.scatter(done["trial"], done["objective"], color=color, alpha=0.45, s=22, linewidth=0, zorder=3)
        pruned = runs[runs["status"] == "pruned"]
        ax.scatter(pruned["trial"], pruned["objective"], color=color, alpha=0.7, s=22, marker="x", zorder=3)
    drawn = [lvl for lvl in levels if (tuning["level"] == lvl).any()]
    for x, which in sorted(boundaries.items()):
        shared = set(drawn) <= which  # the same boundary for every level: one grey line
        colors = ["0.45"] if shared else [palette[lvl] for lvl in drawn if lvl in which]
        for c in colors:
            ax.axvline(x, color=c, lw=0.9, ls="--", zorder=0)
        ax.text(x, 1.0, " new stage", transform=ax.get_xaxis_transform(), ha="left", va="top", fontsize=8,
                color=colors[0])
    last = int(tuning.loc[tuning["level"].isin(levels), "budget"].max() or 1)
    last = max(last, int(tuning["trial"].max() or 1))
    ax.set_xlim(0.5, last + 0.5)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    handles, labels = ax.get_legend_handles_labels()
    handles.append(plt.Line2D([], [], color="0.4", marker="o", ls="none", alpha=0.5, markersize=4))
    labels.append("finished trial")
    if (tuning["status"] == "pruned").any():  # the x only where a search pruned
        handles.append(plt.Line2D([], [], color="0.4", marker="x", ls="none", markersize=5))
        labels.append("pruned trial")
    ax.legend(handles, labels, title="level", loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    ax.set_title(wrapped_title(title, 60))
    ax.set_xlabel("tuning trials spent")
    ax.set_ylabel(f"best {_label(metric)} so far")
    return save_figure(fig, path)


def objective_vs_params(tuning: pd.DataFrame, levels: list[str], metric: str, keys: list[str],
                        spaces: dict[str, dict], chosen: dict[str, tuple[dict, float]], title: str,
                        path: Path) -> Path:
    """One panel per numeric tuned key: each finished tuning trial's objective against its value
    (log x for a log range), hue = level, earlier stages hollow; the chosen value of each level a
    star on a vertical line, its space's bounds dotted."""
    set_theme()
    palette = _palette(levels)
    cols = min(3, len(keys))
    rows = math.ceil(len(keys) / cols)
    width = min(PAGE_WIDTH - 0.8, 2.4 + 3.4 * cols)
    # constrained layout: room for the suptitle and the legend outside the panels, computed once
    fig, axes = plt.subplots(rows, cols, figsize=(width, 0.6 + 3.2 * rows), squeeze=False, sharey=True,
                             layout="constrained")
    done = tuning[(tuning["status"] == "finished") & tuning["level"].isin(levels)]
    for ax, key in zip(axes.flat, keys):
        specs = {lvl: spaces.get(lvl, {}).get(key) for lvl in levels}
        log = any(s and (s.get("kind") == "log_uniform" or s.get("log")) for s in specs.values())
        for level in levels:
            color, runs = palette[level], done[done["level"] == level]
            if PARAM + key in runs:
                values = pd.to_numeric(runs[PARAM + key], errors="coerce")
                last = runs["stage"] == runs["stage"].max()
                ax.scatter(values[last], runs.loc[last, "objective"], color=color, alpha=0.6, s=20, linewidth=0)
                ax.scatter(values[~last], runs.loc[~last, "objective"], facecolors="none", edgecolors=color,
                           alpha=0.6, s=20, linewidth=0.8)
            values, best = chosen.get(level, ({}, math.nan))
            value = values.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                ax.axvline(value, color=color, lw=1.0, ls="-", alpha=0.6)
                if best == best:
                    ax.scatter([value], [best], color=color, marker="*", s=140, edgecolors="black", linewidth=0.6,
                               zorder=5)
        ranges = {lvl: (s["low"], s["high"]) for lvl, s in specs.items() if s and s.get("kind") != "choices"}
        shared = len(set(ranges.values())) == 1  # one grey pair of bounds; else each level's in its colour
        for lvl, (low, high) in ranges.items():
            for b in (low, high):
                ax.axvline(b, color="0.35" if shared else palette[lvl], lw=0.9, ls=":")
        if log:
            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(FuncFormatter(power_of_ten))  # mathtext is off: 10⁻³ as text
            ax.xaxis.set_minor_formatter(NullFormatter())
        if ranges:
            low = min(r[0] for r in ranges.values())
            high = max(r[1] for r in ranges.values())
            if log and low > 0:
                pad = (high / low) ** 0.04
                ax.set_xlim(low / pad, high * pad)
            else:
                ax.set_xlim(low - 0.04 * (high - low), high + 0.04 * (high - low))
        ax.set_xlabel(key + (" (log scale)" if log else ""))
    for ax in axes.flat[len(keys):]:
        ax.set_visible(False)
    for ax in axes[:, 0]:
        ax.set_ylabel(_label(metric))
    handles = [plt.Line2D([], [], color=palette[lvl], marker="o", ls="none", markersize=5) for lvl in levels]
    handles += [plt.Line2D([], [], color="0.3", marker="*", ls="none", markersize=10)]
    fig.legend(handles, [*levels, "chosen value"], title="level", loc="outside right center", frameon=False)
    fig.suptitle(wrapped_title(title, 90))
    return save_figure(fig, path)

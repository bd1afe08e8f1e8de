"""Seaborn figures. Every figure has a title, labelled axes and is saved as PNG."""

from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display needed, works on headless CI

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from dlbench.report.stats import t_interval  # noqa: E402


def final_metric(frame: pd.DataFrame, factors: list[str], metric: str, title: str, path: Path) -> Path:
    """Final ``metric`` per level: every seed a point, the mean with its 95% t-interval.

    One factor: levels on the x axis. Two or more: the last factor on the x axis (e.g. depth),
    one colour per combination of the others (e.g. activation), so trends read as lines.
    """
    data = frame[frame["status"] == "finished"].copy()
    sns.set_theme(style="whitegrid", context="paper", font_scale=1.1)
    x = factors[-1]
    hue = None
    if len(factors) > 1:
        hue = "group"
        data[hue] = data[factors[:-1]].astype(str).agg(", ".join, axis=1)
    order = list(dict.fromkeys(frame[x]))
    n_hue = data[hue].nunique() if hue and not data.empty else 1
    dodge = 0.8 * (n_hue - 1) / n_hue  # where stripplot's dodge puts each hue: keep means on their points
    width = max(5.0, 1.0 + 0.9 * len(order))
    fig, ax = plt.subplots(figsize=(width, 4.2))
    if not data.empty:
        common = dict(data=data, x=x, y=metric, order=order, hue=hue, ax=ax)
        sns.stripplot(**common, dodge=hue is not None, alpha=0.45, size=5, jitter=0.08 if hue else 0.15, legend=False,
                      palette="deep" if hue else None, color=None if hue else "0.35")
        sns.pointplot(**common, errorbar=t_interval, dodge=dodge if hue else False, capsize=0.12,
                      markers="D", linestyles="-" if hue else "none", palette="deep" if hue else None,
                      color=None if hue else "black")
    if hue:
        ax.legend(title=", ".join(factors[:-1]), frameon=False)
    ax.set_title("\n".join(textwrap.wrap(title, 60)), fontsize=11)
    ax.set_xlabel(x)
    ax.set_ylabel(f"{metric.replace('_', ' ')} (final epoch, fraction)")
    seeds = frame.groupby(factors, sort=False).size().max() if len(frame) else 0
    ax.text(1.0, -0.16, f"points: seeds (up to {seeds} per level); diamonds: mean with 95% t-interval",
            transform=ax.transAxes, ha="right", va="top", fontsize=8, color="0.4")
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)
    return path

"""Seaborn figures of one study. Every figure has a title, labelled axes with units, and is saved
as PNG; the caption saying what to look for lives beside it in the index (see ``build.py``).

Bands and intervals are 95% Student-t intervals of the mean over seeds; quantities spanning
orders of magnitude (gradient norms) are averaged and bounded in log space. ``levels`` maps each
factor's frame column (``factor.<name>``) to its level names in study order.
"""

from __future__ import annotations

import functools
import itertools
import math
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display needed, works on headless CI
matplotlib.rcParams["text.parse_math"] = False  # names are any text: "$\\alpha$" shown as typed, never parsed

import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.text  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.ticker import FuncFormatter, MaxNLocator, NullFormatter, PercentFormatter  # noqa: E402

from dlbench.report.stats import t_interval  # noqa: E402

DPI = 160
# index.html shows a figure at its size in inches, 96 px each, in a column 1100 px wide: a grid is
# laid out for PAGE_WIDTH (legend and labels included), so its text keeps its point size on screen
PAGE_WIDTH = 10.8
# the smallest text of any figure, in points: 12.7 px at 96 px per inch (its capitals about 9 px
# high), the size of a figure's annotations; tick labels and legends are 10 points or more
SMALL_FONT = 9.5
CHANCE_COLOR = "#B03A2E"
MARKERS = "os^DvP"  # one per moment of training in the gradient-norm figure
MAX_COLS = 5  # facets per row; more levels wrap into more rows
SPLIT_COLORS = {"train": "#4C72B0", "val": "#8C8C8C", "test": "#DD8452"}
METRIC_LABELS = {
    "test_accuracy": "test accuracy (fraction correct)",
    "train_accuracy": "train accuracy (fraction correct)",
    "val_accuracy": "validation accuracy (fraction correct)",
    "generalization_gap": "train − test accuracy (fraction)",
    "accuracy": "accuracy (fraction correct)",
    "loss": "cross-entropy loss (nats)",
}


def _name(col: str) -> str:
    """A factor's name from its frame column."""
    return col.removeprefix("factor.")


def set_theme() -> None:
    sns.set_theme(style="whitegrid", context="paper", font_scale=1.15,
                  rc={"axes.titlesize": 10.5, "figure.titlesize": 12, "legend.frameon": False})


def wrapped_title(text: str, width: int = 70) -> str:
    """``text`` in as few lines of at most ``width`` characters as :func:`textwrap.wrap` makes, its
    words spread so that the lines are about equally long: no word alone on a last line (a word
    longer than ``width`` gets a line of its own, unbroken)."""
    words = text.split()
    lines = min(len(textwrap.wrap(text, width)), len(words))
    if lines < 2:
        return " ".join(words)
    ends = _balanced_breaks(tuple(len(w) for w in words), lines)
    return "\n".join(" ".join(words[a:b]) for a, b in zip((0, *ends), ends))


def _balanced_breaks(lengths: tuple[int, ...], lines: int) -> tuple[int, ...]:
    """Where ``lines`` lines of words of ``lengths`` end (each line's last word + 1), the longest
    line as short as it can be, then the lengths as even as they can be (least sum of squares)."""

    @functools.cache
    def best(start: int, count: int) -> tuple[tuple[int, int], tuple[int, ...]]:
        if count == 1:
            size = sum(lengths[start:]) + len(lengths) - start - 1
            return (size, size * size), (len(lengths),)
        options = []
        for end in range(start + 1, len(lengths) - count + 2):
            size = sum(lengths[start:end]) + end - start - 1
            (longest, squares), ends = best(end, count - 1)
            options.append(((max(longest, size), squares + size * size), (end, *ends)))
        return min(options)

    return best(0, lines)[1]


def save_figure(fig, path: Path) -> Path:
    legible(fig)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return path


def legible(fig) -> None:
    """No text of ``fig`` smaller than SMALL_FONT: whatever a figure set, index.html shows every
    label at 12 px or more (the figures keep within its 1100 px column, unscaled)."""
    for text in fig.findobj(matplotlib.text.Text):
        if text.get_fontsize() < SMALL_FONT:
            text.set_fontsize(SMALL_FONT)


def qualitative(count: int) -> list[tuple]:
    """``count`` colours that can be told apart, neighbours included (layers, moments of
    training): tab10 up to 10; up to 20, tab20's dark shades then its light ones (a colour of
    the first ten comes back lighter); beyond, evenly spaced hues taken in strides, so that
    neighbours are far apart on the colour wheel."""
    if count <= 10:
        return sns.color_palette("tab10", count)
    if count <= 20:
        pairs = sns.color_palette("tab20", 20)
        return (pairs[0::2] + pairs[1::2])[:count]
    hues, stride = sns.color_palette("husl", count), math.isqrt(count)
    return [hues[i] for start in range(stride) for i in range(start, count, stride)]


def _grid(data: pd.DataFrame, sharex: bool = True, sharey: bool = True, **kwargs) -> sns.FacetGrid:
    """A FacetGrid that lays itself out once, when saved: seaborn re-runs tight_layout after every
    map and legend, which dominates the time of a many-facet figure. ``sharex``/``sharey`` are
    applied when it is saved (:func:`_share`), not as matplotlib's shared axes."""
    layout = sns.FacetGrid.tight_layout
    sns.FacetGrid.tight_layout = lambda self, *args, **kw: self  # the constructor lays out too
    try:
        grid = sns.FacetGrid(data, sharex=False, sharey=False, **kwargs)
    finally:
        sns.FacetGrid.tight_layout = layout
    grid.tight_layout = lambda *args, **kw: grid
    grid.dlbench_share = (sharex, sharey)
    return grid


def _share(grid: sns.FacetGrid) -> None:
    """What sharing the x or y axis gives (one range over every facet, tick labels on the outer
    facets only), without matplotlib's shared axes: each update of a shared axis visits all its
    siblings, which with 50 facets cost about two thirds of a figure's time."""
    sharex, sharey = grid.dlbench_share
    axes = list(grid.axes.flat)
    with_data = [ax for ax in axes if ax.has_data()] or axes
    for share, axis, inner in ((sharex, "x", grid._not_bottom_axes), (sharey, "y", grid._not_left_axes)):
        if not share:
            continue
        limits = [getattr(ax, f"get_{axis}lim")() for ax in with_data]
        if getattr(axes[0], f"get_{axis}scale")() == "log":  # a facet of zeros alone has no log range
            limits = [lim for lim in limits if lim[0] > 0]
        if limits:
            low, high = min(lim[0] for lim in limits), max(lim[1] for lim in limits)
            for ax in axes:
                getattr(ax, f"set_{axis}lim")(low, high)
        for ax in inner:
            ax.tick_params(axis=axis, **{"labelbottom" if axis == "x" else "labelleft": False})
            getattr(ax, f"{axis}axis").offsetText.set_visible(False)


def _legend(grid: sns.FacetGrid, title: str, colors: dict, markers: dict | None = None) -> None:
    """One legend right of the facets (seaborn's add_legend redraws the figure twice to place it);
    ``markers``: each entry's marker, as drawn."""
    handles = [plt.Line2D([], [], color=c, lw=1.8, marker=(markers or {}).get(k), markersize=6)
               for k, c in colors.items()]
    grid.figure.legend(handles, [str(k) for k in colors], title=title, loc="center left",
                       bbox_to_anchor=(1.0, 0.5), frameon=False)


def _save_grid(grid: sns.FacetGrid, path: Path, title: str) -> Path:
    _share(grid)
    rows = len({round(ax.get_position().y0, 3) for ax in grid.axes.flat})
    cols = len({round(ax.get_position().x0, 3) for ax in grid.axes.flat})
    if rows > 1:  # one y label for all rows: a long label per row runs into the next
        label = grid.axes.flat[0].get_ylabel()
        for ax in grid.axes.flat:
            ax.set_ylabel("")
        grid.figure.supylabel(label, x=0.0, ha="left", fontsize=plt.rcParams["axes.labelsize"])
    if cols > 1:  # one x label, under the middle of the bottom row: a long label per column overlaps
        bottom = [ax for ax in grid.axes.flat if ax.get_xlabel()]
        for ax in bottom:
            if ax is not bottom[len(bottom) // 2]:
                ax.set_xlabel("")
    sns.FacetGrid.tight_layout(grid)
    grid.figure.suptitle(wrapped_title(title, 90), y=1.0, va="bottom")  # above the laid-out facets
    return save_figure(grid.figure, path)


def _bounds(metric: str) -> tuple[float, float]:
    """The range a metric's mean can take: an interval is clipped to it (with 2 seeds a t-interval
    of an accuracy easily runs below 0)."""
    if metric.endswith("accuracy"):
        return (0.0, 1.0)
    if metric == "generalization_gap":
        return (-1.0, 1.0)
    if metric.endswith("loss"):
        return (0.0, math.inf)
    return (-math.inf, math.inf)


def _interval(metric: str):
    low, high = _bounds(metric)

    def interval(values) -> tuple[float, float]:
        a, b = t_interval(values)
        return (max(a, low), min(b, high))

    return interval


def _log_mean(v) -> float:
    v = np.asarray(v, dtype=float)
    v = v[np.isfinite(v) & (v > 0)]
    return float(np.exp(np.log(v).mean())) if len(v) else math.nan


def _numeric(values: list[str]) -> bool:
    try:
        [float(v) for v in values]
        return True
    except ValueError:
        return False


def facet_layout(levels: dict[str, list[str]]) -> dict:
    """FacetGrid layout: one factor -> columns (wrapped); two or more -> rows x columns."""
    factors = list(levels)
    if len(factors) == 1:
        return {"col": factors[0], "col_order": levels[factors[0]], "col_wrap": _columns(levels)}
    return {"row": "_rows", "row_order": _row_order(levels), "col": factors[-1], "col_order": levels[factors[-1]]}


def _row_order(levels: dict[str, list[str]]) -> list[str]:
    return [", ".join(c) for c in _row_cells(levels)]


def _with_rows(frame: pd.DataFrame, levels: dict[str, list[str]]) -> pd.DataFrame:
    factors = list(levels)
    if len(factors) > 1:
        frame = frame.assign(_rows=frame[factors[:-1]].astype(str).agg(", ".join, axis=1))
    return frame


def _facet_titles(grid, levels: dict[str, list[str]]) -> None:
    factors = list(levels)
    if len(factors) == 1:
        grid.set_titles(col_template=f"{_name(factors[0])} = {{col_name}}")
    else:
        grid.set_titles(row_template=f"{', '.join(map(_name, factors[:-1]))} = {{row_name}}",
                        col_template=f"{_name(factors[-1])} = {{col_name}}")


def _mark_empty(grid, present: set) -> None:
    """Write 'no data' in facets without any: a failed level must not look like a flat line."""
    for key, ax in grid.axes_dict.items():
        if key not in present:
            ax.text(0.5, 0.5, "no finished seed", transform=ax.transAxes, ha="center", va="center",
                    color="0.5", fontsize=SMALL_FONT)


def _present(frame: pd.DataFrame, levels: dict[str, list[str]]) -> set:
    factors = list(levels)
    if len(factors) == 1:
        return set(frame[factors[0]])
    return set(zip(frame["_rows"], frame[factors[-1]]))


def _columns(levels: dict[str, list[str]]) -> int:
    """Facets per row: one factor wraps into rows of at most MAX_COLS, as even as they come (10
    levels: 2 rows of 5, 7: 4 + 3); several factors: a column per level of the last one."""
    n = len(levels[list(levels)[-1]])
    return n if len(levels) > 1 else math.ceil(n / math.ceil(n / MAX_COLS))


def _facet_size(levels: dict[str, list[str]]) -> tuple[float, float]:
    """(height, aspect) of a facet so that a row of them, the y label and the legend fill PAGE_WIDTH."""
    width = min(3.2, (PAGE_WIDTH - 2.0) / _columns(levels))
    height = max(2.0 if len(levels) > 1 else 1.6, width / 1.3)  # a row title on the right fits its row
    return height, width / height


def epoch_ticks(last: int) -> list[int]:
    """Whole epochs from 0 to ``last``, at most 7 of them, the last always among them."""
    step = next(s for s in (1, 2, 5, 10, 20, 25, 50, 100, 200, 500, 1000) if last / s <= 6) if last > 0 else 1
    ticks = list(range(0, last + 1, step))
    if ticks[-1] != last:
        ticks[-1 if last - ticks[-1] <= step / 2 else len(ticks):] = [last]  # 0 2 4 7, not 0 2 4 6 7
    return ticks


def _epoch_axis(grid: sns.FacetGrid, last: int) -> None:
    """An x axis of whole epochs running from 0 to the final epoch ``last`` (at least 1)."""
    last = max(1, last)
    for ax in grid.axes.flat:
        ax.set_xticks(epoch_ticks(last))
        ax.set_xlim(-0.03 * last, 1.03 * last)


def _chance_marks(grid: sns.FacetGrid, levels: dict[str, list[str]], at_chance: set[tuple], chance: float | None,
                  accuracy: bool) -> None:
    """Say "at chance" in the title of a level's facet, and draw the chance line on accuracy axes."""
    for key, ax in grid.axes_dict.items():
        if _cell_of(key, levels) in at_chance:
            ax.set_title(f"{ax.get_title()} (at chance)".strip(), color=CHANCE_COLOR)
        if accuracy and chance:
            ax.axhline(chance, color="0.35", lw=0.8, ls=":", zorder=0)
    if accuracy and chance:
        ax = grid.axes.flat[0]
        ax.text(0.02, chance, f" chance ({chance:.2f})", transform=ax.get_yaxis_transform(), va="bottom",
                ha="left", fontsize=SMALL_FONT, color="0.35")


def _cell_of(key, levels: dict[str, list[str]]) -> tuple:
    """The level of every factor of a facet (its key: the level, or (other factors' levels, last))."""
    if len(levels) == 1:
        return (key,)
    row, col = key
    for cell in _row_cells(levels):
        if ", ".join(cell) == row:
            return (*cell, col)
    return (row, col)


def _row_cells(levels: dict[str, list[str]]) -> list[tuple]:
    return list(itertools.product(*list(levels.values())[:-1]))


# -- final metric per level -------------------------------------------------------------------------


def final_metric(frame: pd.DataFrame, levels: dict[str, list[str]], metric: str, title: str, path: Path,
                 at_chance: set[tuple] = frozenset(), chance: float | None = None) -> Path:
    """Final ``metric`` per level: every seed a point and, beside the seeds (never on top of them),
    the mean as a diamond with its 95% t-interval as an error bar.

    One factor: levels on the x axis. Two or more: the last factor on the x axis (e.g. depth),
    one colour per combination of the others (e.g. activation), whose means are joined so that
    trends read as lines. The y axis spans what is drawn (seeds, means, intervals) with a margin,
    not the metric's whole range, so that a difference of 0.02 between levels shows. A reference
    (an accuracy's ``chance``, a gap of 0) within reach of that span is a dotted line; one far
    from it is named at the edge of the axis it lies beyond. Levels ``at_chance`` (tuples of each
    factor's level) say so under their tick.
    """
    set_theme()
    factors = list(levels)
    data = frame[frame["status"] == "finished"].dropna(subset=[metric])
    x, order = factors[-1], levels[factors[-1]]
    several = len(factors) > 1
    groups = _row_order(levels) if several else [""]
    group_of = (data[factors[:-1]].astype(str).agg(", ".join, axis=1) if several and len(data)
                else pd.Series("", index=data.index))
    colors = dict(zip(groups, sns.color_palette("deep", len(groups)))) if several else {"": "0.15"}
    slot = 0.8 / len(groups)  # each group's share of a level's width on the x axis
    width = min(PAGE_WIDTH - 0.8, max(6.0, 1.5 + 1.0 * len(order) * (1 + 0.3 * (len(groups) - 1))))
    # marks as large as a group's slot allows (about 150 points wide for two levels, 13 for 50):
    # seeds and mean stay side by side however many levels share the axis
    room = (width - 1.3) * 72 / len(order) * slot
    mean_size, seed_size = min(6.5, 0.2 * room), min(5.5, 0.15 * room)
    fig, ax = plt.subplots(figsize=(width, 4.2))
    rng = np.random.default_rng(0)  # the jitter: the same figure, byte for byte, in any process
    interval = _interval(metric)
    shown = {}  # level (its index) -> every value drawn there: the y axis spans them
    for g, group in enumerate(groups):
        centre = (g - (len(groups) - 1) / 2) * slot
        means = []
        for i, lvl in enumerate(order):
            values = data.loc[(data[x] == lvl) & (group_of == group), metric].to_numpy(dtype=float)
            if not len(values):
                continue
            # seeds in the left half of the group's slot, the mean in the right half
            ax.scatter(i + centre + slot * (rng.uniform(-0.12, 0.12, len(values)) - 0.2), values, s=seed_size ** 2,
                       color=colors[group] if several else "0.45", alpha=0.65, linewidths=0, zorder=2)
            mean = float(values.mean())
            low, high = interval(values)
            low, high = min(low, mean), max(high, mean)  # a mean outside the metric's bounds: no bar that side
            ax.errorbar(i + centre + 0.2 * slot, mean, yerr=[[mean - low], [high - mean]], fmt="D",
                        color=colors[group], markersize=mean_size, capsize=min(4.0, 0.2 * room), elinewidth=1.5,
                        capthick=1.5, zorder=3)
            means.append((i + centre + 0.2 * slot, mean))
            shown.setdefault(i, []).extend([*values, low, high])
        if several and means:
            ax.plot(*zip(*means), color=colors[group], lw=1.5, zorder=2.5)
    if several:
        handles = [plt.Line2D([], [], color=colors[g], marker="D", markersize=6.5, lw=1.5) for g in groups]
        ax.legend(handles, groups, title=", ".join(map(_name, factors[:-1])), loc="best")
    for i, lvl in enumerate(order):
        if not (data[x] == lvl).any():
            ax.text(i, 0.5, "no finished\nseed", transform=ax.get_xaxis_transform(), ha="center", va="center",
                    color="0.5", fontsize=SMALL_FONT)
    ax.set_xlim(-0.6, len(order) - 0.4)
    ax.grid(axis="x", visible=False)  # a level's seeds and mean sit either side of its tick
    ax.set_xticks(range(len(order)), [_tick(lvl, levels, at_chance) for lvl in order])
    if max(map(len, order)) * 0.6 * plt.rcParams["xtick.labelsize"] > (width - 1.3) * 72 / len(order):
        ax.tick_params(axis="x", labelrotation=90)  # names wider than their level's room: upright
    for tick, lvl in zip(ax.get_xticklabels(), order):
        if any(cell[-1] == lvl for cell in at_chance):
            tick.set_color(CHANCE_COLOR)
    reference = None
    if chance and metric.endswith("accuracy"):
        reference = (chance, f"chance ({chance:.2f})")
    elif metric == "generalization_gap":
        reference = (0.0, "no gap (0)")
    _value_axis(ax, shown, reference)
    ax.set_title(wrapped_title(title, 60))
    ax.set_xlabel(_name(x))
    ax.set_ylabel(METRIC_LABELS.get(metric, metric.replace("_", " ")))
    return save_figure(fig, path)


REFERENCE_REACH = 0.5  # a reference this many data spans away from the data still gets its line
VALUE_MARGIN = 0.1  # of the data span, above and below it


def _value_axis(ax, shown: dict[int, list[float]], reference: tuple[float, str] | None) -> None:
    """The y range of the values ``shown`` at each x position, with a margin of VALUE_MARGIN of
    their span each side. The ``reference`` (value, label) is drawn as a dotted line when it lies
    within REFERENCE_REACH spans of them (the range then takes it in), labelled at the end of the
    axis whose values are further from it; further away it is only named, with an arrow, at the
    edge of the axis it lies beyond, so that the data keep the axis."""
    values = [v for vs in shown.values() for v in vs if math.isfinite(v)]
    if not values:
        return
    low, high = min(values), max(values)
    span = max(high - low, 0.02 * max(abs(low), abs(high)), 1e-3)  # one value: a little room round it
    if reference is not None:
        value, label = reference
        if low - REFERENCE_REACH * span <= value <= high + REFERENCE_REACH * span:
            low, high = min(low, value), max(high, value)
            span = max(high - low, span)
            ax.axhline(value, color="0.35", lw=0.9, ls=":", zorder=0)
            near = [min((abs(v - value) for v in shown[k] if math.isfinite(v)), default=math.inf)
                    for k in (min(shown), max(shown))]
            right = near[1] >= near[0]
            ax.text(1.0 if right else 0.0, value, f" {label} ", transform=ax.get_yaxis_transform(),
                    ha="right" if right else "left", va="bottom", fontsize=SMALL_FONT, color="0.35")
        else:
            below = value < low
            ax.text(0.995, 0.01 if below else 0.99, f"{label} {'↓ below' if below else '↑ above'} this axis",
                    transform=ax.transAxes, ha="right", va="bottom" if below else "top", fontsize=SMALL_FONT,
                    color="0.35")
    middle = (low + high) / 2
    half = max(high - low, span) / 2 + VALUE_MARGIN * span
    ax.set_ylim(middle - half, middle + half)


def _tick(level: str, levels: dict[str, list[str]], at_chance: set[tuple]) -> str:
    """A level on the x axis; under it, which of its cells are at chance."""
    if len(levels) == 1:
        return f"{level}\n(at chance)" if (level,) in at_chance else level
    groups = [", ".join(cell) for cell in _row_cells(levels) if (*cell, level) in at_chance]
    return "\n".join([level, *(f"{g}:\nat chance" for g in groups)])


# -- two factors: the interaction and a heatmap ----------------------------------------------------


def interaction(frame: pd.DataFrame, levels: dict[str, list[str]], metric: str, title: str, path: Path) -> Path:
    """``metric`` against the second factor, one line per level of the first, 95% bands."""
    set_theme()
    first, second = list(levels)[:2]
    data = frame[frame["status"] == "finished"].dropna(subset=[metric]).copy()
    numeric = _numeric(levels[second])
    data["_x"] = data[second].astype(float) if numeric else data[second].map({v: i for i, v in enumerate(levels[second])})
    fig, ax = plt.subplots(figsize=(6.8, 4.4))
    palette = dict(zip(levels[first], sns.color_palette("deep", len(levels[first]))))
    if not data.empty:
        sns.lineplot(data=data, x="_x", y=metric, hue=first, hue_order=levels[first], palette=palette,
                     errorbar=_interval(metric), err_kws={"alpha": 0.18}, marker="o", markersize=6, ax=ax)
        sns.scatterplot(data=data, x="_x", y=metric, hue=first, hue_order=levels[first], palette=palette,
                        alpha=0.35, s=14, legend=False, ax=ax, linewidth=0)
        ax.legend(title=_name(first), loc="best")
    ticks = [float(v) for v in levels[second]] if numeric else list(range(len(levels[second])))
    ax.set_xticks(ticks, levels[second])
    ax.set_title(wrapped_title(title, 60))
    ax.set_xlabel(_name(second))
    ax.set_ylabel(METRIC_LABELS.get(metric, metric))
    return save_figure(fig, path)


def heatmap(frame: pd.DataFrame, levels: dict[str, list[str]], metric: str, title: str, path: Path) -> Path:
    """Mean ``metric`` per cell of the first two factors, annotated with mean and CI half-width."""
    set_theme()
    first, second = list(levels)[:2]
    data = frame[frame["status"] == "finished"].dropna(subset=[metric])
    mean = pd.DataFrame(np.nan, index=levels[first], columns=levels[second])
    text = pd.DataFrame("no data", index=levels[first], columns=levels[second])
    for (a, b), group in data.groupby([first, second]):
        values = group[metric].to_numpy()
        low, high = t_interval(values)
        mean.loc[a, b] = values.mean()
        text.loc[a, b] = f"{values.mean():.3f}\n±{(high - low) / 2:.3f}" if len(values) > 1 else f"{values.mean():.3f}\n(n=1)"
    width = min(PAGE_WIDTH - 0.8, max(5.6, 1.4 + 1.2 * len(levels[second])))
    fig, ax = plt.subplots(figsize=(width, max(2.8, 0.6 + 1.0 * len(levels[first]))))
    sns.heatmap(mean.astype(float), annot=text.to_numpy(), fmt="", cmap="viridis", ax=ax, linewidths=0.5,
                cbar_kws={"label": METRIC_LABELS.get(metric, metric)}, annot_kws={"fontsize": SMALL_FONT})
    ax.set_title(wrapped_title(title, 60))
    ax.set_xlabel(_name(second))
    ax.set_ylabel(_name(first))
    ax.tick_params(axis="y", rotation=0)
    return save_figure(fig, path)


# -- learning curves ---------------------------------------------------------------------------


def learning_curves(epochs: pd.DataFrame, levels: dict[str, list[str]], quantity: str, title: str,
                    path: Path, at_chance: set[tuple] = frozenset(), chance: float | None = None) -> Path:
    """Per level: train and test ``quantity`` (accuracy or loss) per epoch, mean and 95% band over seeds;
    levels ``at_chance`` say so in their title, accuracies get the ``chance`` line."""
    set_theme()
    splits = ["train", "test"]
    data = epochs[epochs["metric"].isin([f"{s}_{quantity}" for s in splits])].copy()
    data["split"] = data["metric"].str.removesuffix(f"_{quantity}")
    data = _with_rows(data, levels)
    height, aspect = _facet_size(levels)
    grid = _grid(_with_rows(data, levels), **facet_layout(levels), height=height, aspect=aspect,
                         sharex=True, sharey=True, margin_titles=len(levels) > 1, despine=False)
    grid.map_dataframe(sns.lineplot, x="epoch", y="value", hue="split", hue_order=splits, palette=SPLIT_COLORS,
                       errorbar=_interval(quantity), err_kws={"alpha": 0.2}, linewidth=1.4, legend=False)
    _mark_empty(grid, _present(data, levels))
    _facet_titles(grid, levels)
    grid.set_axis_labels("epoch", METRIC_LABELS[quantity])
    _epoch_axis(grid, int(data["epoch"].max()) if len(data) else 1)
    _chance_marks(grid, levels, at_chance, chance, accuracy=quantity == "accuracy")
    if quantity == "loss" and (data["value"] > 0).all() and len(data) and data["value"].max() / max(data["value"].min(), 1e-12) > 30:
        grid.set(yscale="log")
        for ax in grid.axes.flat:
            ax.yaxis.set_major_formatter(FuncFormatter(power_of_ten))
            ax.yaxis.set_minor_formatter(NullFormatter())
    _legend(grid, "split", {s: SPLIT_COLORS[s] for s in splits})
    return _save_grid(grid, path, title)


# -- diagnostics --------------------------------------------------------------------------------


def snapshots(diag: pd.DataFrame, count: int = 4, last: int | None = None) -> pd.DataFrame:
    """The rows of ``diag`` at a few moments of training: the first recorded step and the steps
    nearest the whole epochs about 1/3, 2/3 and all of the way to the final epoch ``last`` (by
    default the last recorded one), chosen per run (a moment whose step an earlier one took is
    left out); column ``when`` labels them."""
    if diag.empty:
        return diag.assign(when=pd.Series(dtype=str))
    last = last if last is not None else round(diag["epoch"].max())
    targets = [0] + list(dict.fromkeys(max(1, round(last * (i + 1) / (count - 1))) for i in range(count - 1)))
    labels = ["step 1 (start)"] + [_epoch_label(t) for t in targets[1:]]
    steps = diag.drop_duplicates(["run_id", "step"])[["run_id", "step", "epoch"]]
    runs = steps["run_id"]
    chosen = [steps.groupby(runs, sort=True)["step"].first()]  # each run's first recorded step
    for target in targets[1:]:  # the first of the steps nearest the target epoch
        nearest = (steps["epoch"] - target).abs().groupby(runs, sort=True).idxmin()
        chosen.append(pd.Series(steps.loc[nearest.to_numpy(), "step"].to_numpy(), index=nearest.index))
    table = pd.concat(chosen, axis=1, keys=range(len(labels)))  # run x moment -> step
    picks = []
    for i, label in enumerate(labels):
        fresh = ~table.iloc[:, :i].eq(table[i], axis=0).any(axis=1)  # its step not an earlier moment's
        picks.append(pd.DataFrame({"run_id": table.index[fresh], "step": table[i][fresh].to_numpy(), "when": label,
                                   "_moment": i}))
    wanted = pd.concat(picks, ignore_index=True)
    rows = diag.assign(_row=np.arange(len(diag)))
    out = wanted.merge(rows, on=["run_id", "step"]).sort_values(["run_id", "_moment", "_row"], kind="stable")
    out = out[[*diag.columns, "when"]].reset_index(drop=True)
    out["when"] = pd.Categorical(out["when"], categories=[w for w in labels if w in set(out["when"])], ordered=True)
    return out


def _epoch_label(epoch: int) -> str:
    return f"epoch {epoch}"


def _above_zero(data: pd.DataFrame, **kwargs) -> None:
    """The lines of a log-scale plot, which cannot draw 0 (see :func:`_zero_marks`); none in a
    facet whose every gradient was 0."""
    if (data["value"] > 0).any():
        sns.lineplot(data=data[data["value"] > 0], **kwargs)


def _zero_marks(data: pd.DataFrame, **kwargs) -> None:
    """An x on the bottom edge of the facet at each layer whose gradient norm was exactly 0."""
    layers = sorted(set(data.loc[data["value"] == 0, "layer"]))
    if layers:
        ax = plt.gca()
        ax.scatter(layers, [0.0] * len(layers), transform=ax.get_xaxis_transform(), marker="x", s=40,
                   color="crimson", clip_on=False, zorder=5, label="exactly 0")
        ax.set_xlim(data["layer"].min() - 0.25, data["layer"].max() + 0.25)  # the marks do not widen the axis


def grad_norms(diag: pd.DataFrame, levels: dict[str, list[str]], title: str, path: Path, last_epoch: int | None = None,
               at_chance: set[tuple] = frozenset()) -> Path:
    """Gradient norm per layer at a few moments of training up to ``last_epoch``, log y: vanishing
    gradients fall towards the input (left), exploding ones rise."""
    set_theme()
    data = _with_rows(snapshots(diag[diag["kind"] == "grad_norm"], last=last_epoch), levels)
    data = data[np.isfinite(data["value"]) & (data["value"] >= 0)]
    height, aspect = _facet_size(levels)
    grid = _grid(data, **facet_layout(levels), height=height, aspect=aspect, sharex=False, sharey=True,
                         margin_titles=len(levels) > 1, despine=False)
    whens = list(data["when"].cat.categories) if len(data) else []
    # a hue and a marker of its own per moment: lines of the same shape, one over another, still
    # tell which is which
    palette = dict(zip(whens, qualitative(len(whens))))
    markers = dict(zip(whens, itertools.cycle(MARKERS)))
    # geometric mean over seeds, no bands: the shape across layers is the message, and four
    # overlapping bands would hide it (the seeds' values are in diagnostics.csv)
    grid.map_dataframe(_above_zero, x="layer", y="value", hue="when", hue_order=whens, palette=palette,
                       style="when", style_order=whens, markers=markers, dashes=False, estimator=_log_mean,
                       errorbar=None, markersize=5.5, linewidth=1.5, legend=False)
    grid.map_dataframe(_zero_marks)
    grid.set(yscale="log")
    for ax in grid.axes.flat:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.yaxis.set_minor_formatter(NullFormatter())  # powers of ten only: a clean log axis
        ax.yaxis.set_major_formatter(FuncFormatter(power_of_ten))
    _mark_empty(grid, _present(data, levels))
    _facet_titles(grid, levels)
    grid.set_axis_labels("layer (0 = input side, last = output)", "‖∂loss/∂W‖₂ (log scale)")
    _chance_marks(grid, levels, at_chance, None, accuracy=False)
    if whens:
        _legend(grid, "moment of training", palette, markers)
    return _save_grid(grid, path, title)


def saturation(diag: pd.DataFrame, levels: dict[str, list[str]], title: str, path: Path, last_epoch: int | None = None,
               at_chance: set[tuple] = frozenset()) -> Path:
    """Per level and layer, over training (x: epochs up to ``last_epoch``): the share of saturated
    units (sigmoid/tanh) or of dead units (ReLU), mean over seeds."""
    set_theme()
    data = diag[diag["kind"].isin(["act_saturation", "dead_relu"])]
    data = _with_rows(data, levels).assign(value=lambda d: 100 * d["value"])
    layers = sorted(data["layer"].dropna().unique().astype(int))
    palette = dict(zip(layers, qualitative(len(layers))))
    height, aspect = _facet_size(levels)
    grid = _grid(data, **facet_layout(levels), height=height, aspect=aspect, sharex=True, sharey=True,
                         margin_titles=len(levels) > 1, despine=False)
    grid.map_dataframe(sns.lineplot, x="epoch", y="value", hue="layer", hue_order=layers, palette=palette,
                       errorbar=None, linewidth=1.3, marker="o", markersize=2.5, markeredgewidth=0, legend=False)
    kinds = data.groupby(_present_key(levels))["kind"].first().to_dict() if len(data) else {}
    for key, ax in grid.axes_dict.items():
        kind = kinds.get(key)
        if kind:
            ax.text(0.98, 0.95, "dead units (ReLU)" if kind == "dead_relu" else "saturated units",
                    transform=ax.transAxes, ha="right", va="top", fontsize=SMALL_FONT, color="0.25",
                    bbox={"boxstyle": "round,pad=0.2", "facecolor": "white", "edgecolor": "0.8", "alpha": 0.85})
    _mark_empty(grid, _present(data, levels))
    _facet_titles(grid, levels)
    top = float(data["value"].max()) if len(data) else 100.0
    grid.set(ylim=(-0.02 * max(top, 5.0), min(103.0, max(5.0, 1.25 * top))))  # room for the label
    for ax in grid.axes.flat:
        ax.yaxis.set_major_formatter(ExactPercent())  # 2.5% steps say 2.5%, never "2%"
    grid.set_axis_labels("epoch", "units saturated or dead (%)")
    _epoch_axis(grid, last_epoch or _last_epoch(data))
    _chance_marks(grid, levels, at_chance, None, accuracy=False)
    if layers:
        _legend(grid, "layer", {str(k): c for k, c in palette.items()})
    return _save_grid(grid, path, title)


def activations(diag: pd.DataFrame, levels: dict[str, list[str]], title: str, path: Path, last_epoch: int | None = None,
                at_chance: set[tuple] = frozenset()) -> Path:
    """Per level and layer, over training (x: epochs up to ``last_epoch``): the mean activation
    (line) and error bars of ± one standard deviation at five moments, on the probe batch, mean
    over seeds (Glorot & Bengio 2010, figure 2)."""
    set_theme()
    data = diag[diag["kind"].isin(["act_mean", "act_std"])]
    wide = data.pivot_table(index=["run_id", "step", "layer", *levels], values="value", columns="kind",
                            observed=True).reset_index()
    if "act_mean" not in wide:
        wide = wide.assign(act_mean=np.nan, act_std=np.nan)
    wide = wide.groupby([*levels, "layer", "step"], as_index=False).agg(
        act_mean=("act_mean", "mean"), act_std=("act_std", "mean"))
    epoch = data.groupby(["step"])["epoch"].mean()
    wide["epoch"] = wide["step"].map(epoch)
    wide = _with_rows(wide, levels)
    layers = sorted(wide["layer"].dropna().unique().astype(int))
    palette = dict(zip(layers, qualitative(len(layers))))
    height, aspect = _facet_size(levels)
    grid = _grid(wide, **facet_layout(levels), height=height, aspect=aspect, sharex=True, sharey=True,
                         margin_titles=len(levels) > 1, despine=False)

    span = float(wide["epoch"].max() - wide["epoch"].min()) if len(wide) else 1.0

    def draw(data, color=None, **kwargs):
        # G&B style: a line per layer for the mean, error bars (± std) at a few moments, each layer
        # shifted a little so the bars do not hide each other
        ax = plt.gca()
        count = data["layer"].nunique()
        for i, (layer, g) in enumerate(data.groupby("layer")):
            g = g.sort_values("epoch")
            c = palette.get(int(layer), "0.4")
            ax.plot(g["epoch"], g["act_mean"], color=c, lw=1.3)
            marks = g.iloc[np.unique(np.linspace(0, len(g) - 1, min(len(g), 5)).round().astype(int))]
            shift = (i - (count - 1) / 2) * 0.015 * span
            ax.errorbar(marks["epoch"] + shift, marks["act_mean"], yerr=marks["act_std"], fmt="o", color=c,
                        markersize=3, elinewidth=1.0, capsize=2)

    grid.map_dataframe(draw)
    _mark_empty(grid, _present(wide, levels))
    _facet_titles(grid, levels)
    grid.set_axis_labels("epoch", "activation (mean ± std)")
    _epoch_axis(grid, last_epoch or _last_epoch(wide))
    _chance_marks(grid, levels, at_chance, None, accuracy=False)
    if layers:
        _legend(grid, "layer", {str(k): c for k, c in palette.items()})
    return _save_grid(grid, path, title)


def _last_epoch(frame: pd.DataFrame) -> int:
    return max(1, math.ceil(frame["epoch"].max() - 1e-6)) if len(frame) and frame["epoch"].notna().any() else 1


class ExactPercent(PercentFormatter):
    """Percent tick labels (of values already in percent) with as few decimals as make every tick's
    label its value, the same number on all ticks of an axis, as matplotlib's plain numbers: "0%, 5%,
    10%" at steps of 5, "0.0%, 2.5%, 5.0%, 7.5%" at steps of 2.5 (``decimals=0`` wrote those "0%,
    2%, 5%, 8%"), "0.25%" at steps of 0.25."""

    def __init__(self) -> None:
        super().__init__(xmax=100, decimals=0)

    def set_locs(self, locs) -> None:  # called with the axis's ticks before their labels are made
        super().set_locs(locs)
        pct = [self.convert_to_pct(x) for x in locs if math.isfinite(x)]
        self.decimals = next((d for d in range(7) if all(abs(round(p, d) - p) <= 1e-9 * max(1.0, abs(p)) for p in pct)),
                             None)  # None: matplotlib's choice from the axis range (ticks off any grid)


_SUPERSCRIPT = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")


def power_of_ten(value: float, _pos=None) -> str:
    """10⁻⁷ as plain text (mathtext is off: names are shown as typed). A log axis's major ticks are
    powers of ten; any other value is written as it is (2×10⁻³, 0), never as the nearest power."""
    if not (value > 0 and math.isfinite(value)):
        return f"{value:g}".replace("-", "\N{MINUS SIGN}")
    exponent = round(math.log10(value))
    if not math.isclose(value, 10.0 ** exponent, rel_tol=1e-9):
        exponent = math.floor(math.log10(value))
        mantissa = value / 10.0 ** exponent
        return f"{mantissa:.6g}×10" + str(exponent).translate(_SUPERSCRIPT)
    return "10" + str(exponent).translate(_SUPERSCRIPT)


def _present_key(levels: dict[str, list[str]]):
    factors = list(levels)
    return factors[0] if len(factors) == 1 else ["_rows", factors[-1]]

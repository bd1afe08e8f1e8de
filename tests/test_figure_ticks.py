"""Every tick label of every report figure is the value at its tick: a figure goes into a paper as
it is drawn, and "0%, 2%, 5%, 8%, 10%" written under gridlines 2.5% apart is a wrong figure.

Each figure kind is drawn on small synthetic frames shaped like a report's (see ``build.py`` and
``data.py``), with known ranges: small percentages, accuracies in a narrow band, losses on a linear
and on a log axis, gradient norms over many orders of magnitude. Then every visible tick label of
every Axes is read back as drawn, parsed (%, the minus sign U+2212, 10⁻³, an offset such as
"1e−3+6.2e−1") and compared with the position of its tick. Axes of level names are categorical and
skipped.
"""

from __future__ import annotations

import itertools
import math
import re

import numpy as np
import pandas as pd
import pytest

from dlbench.report import figures, tuning_figures

import matplotlib.pyplot as plt  # noqa: E402  (after figures: it selects the Agg backend)
from matplotlib.ticker import PercentFormatter  # noqa: E402

EPOCHS = 4
SEEDS = 2
SUPERSCRIPTS = str.maketrans("⁻⁰¹²³⁴⁵⁶⁷⁸⁹", "-0123456789")
UNSIGNED = r"(?:\d+\.?\d*|\.\d+)(?:e[+-]?\d+)?"
NUMBER = r"[+-]?" + UNSIGNED


# -- reading tick labels back ----------------------------------------------------------------------


def parse_label(text: str) -> float | None:
    """The number a tick label shows (None: not a number, e.g. a level name): 0.62, −0.5, 2.5%,
    10⁻³, 2×10⁻³, 1e−4."""
    s = text.strip().replace("\u2212", "-").replace(",", "")
    if s.endswith("%"):
        s = s[:-1].strip()
    power = re.fullmatch(rf"(?:({NUMBER})\s*[×x·]\s*)?10([⁻⁰¹²³⁴⁵⁶⁷⁸⁹]+)", s)
    if power:
        mantissa = float(power.group(1)) if power.group(1) else 1.0
        return mantissa * 10.0 ** int(power.group(2).translate(SUPERSCRIPTS))
    try:
        return float(s)
    except ValueError:
        return None


def parse_offset(text: str) -> tuple[float, float]:
    """(scale, offset) of a ScalarFormatter's offset text: "1e−5+6.231e−1" -> (1e-5, 0.6231);
    a label ``v`` then stands for ``v * scale + offset``."""
    s = text.strip().replace("\u2212", "-").replace("×", "")
    if not s:
        return 1.0, 0.0
    m = re.fullmatch(rf"(1e[+-]?\d+|10[⁻⁰¹²³⁴⁵⁶⁷⁸⁹]+)?([+-]{UNSIGNED})?", s)
    assert m, f"unreadable offset text {text!r}"
    scale = 1.0 if not m.group(1) else parse_label(m.group(1))
    return scale, float(m.group(2)) if m.group(2) else 0.0


def tick_problems(ax, name: str) -> list[str]:
    """Every visible labelled tick of axis ``name`` ('x' or 'y') of ``ax`` whose label is not the
    value at the tick; [] when all are exact."""
    axis = ax.xaxis if name == "x" else ax.yaxis
    low, high = sorted(axis.get_view_interval())
    log = axis.get_scale() == "log"
    scale, offset = parse_offset(axis.get_offset_text().get_text()) if axis.get_offset_text().get_visible() else (1, 0)
    percent = axis.get_major_formatter()
    problems = []
    for major, locs, ticks in ((True, axis.get_majorticklocs(), axis.get_major_ticks()),
                               (False, axis.get_minorticklocs(), axis.get_minor_ticks())):
        shown = []
        for loc, tick in zip(locs, ticks):
            span = high - low
            if not (low - 1e-9 * span <= loc <= high + 1e-9 * span):
                continue
            label = tick.label1 if tick.label1.get_visible() else tick.label2
            if not (label.get_visible() and tick.get_visible()) or not label.get_text().strip():
                continue
            shown.append((float(loc), label.get_text()))
        if len(shown) < 1:
            continue
        positions = [math.log10(p) if log else p for p, _ in shown]
        gaps = np.diff(sorted(positions))
        step = float(gaps[gaps > 0].min()) if (gaps > 0).any() else max(abs(positions[0]), 1.0)
        for loc, text in shown:
            value = parse_label(text)
            if value is None:
                problems.append(f"{name} tick at {loc:g}: label {text!r} is not a number")
                continue
            if isinstance(percent, PercentFormatter) and major:
                expected = loc / percent.xmax * 100
            else:
                expected, value = loc, value * scale + offset
            if log:
                ok = value > 0 and abs(math.log10(value) - math.log10(expected)) <= 1e-3 * step
            else:
                ok = abs(value - expected) <= 1e-3 * step + 1e-12 * abs(expected)
            if not ok:
                problems.append(f"{name} tick at {loc:.6g}{' (minor)' if not major else ''} is labelled {text!r}")
    return problems


def assert_ticks_exact(fig, categorical: set[tuple[int, str]] = frozenset()) -> int:
    """Draw ``fig`` and check every visible tick label of every Axes but the ``categorical`` ones
    ((index in fig.axes, 'x' or 'y'): axes of level names); returns how many labels were checked."""
    fig.canvas.draw()
    problems, checked = [], 0
    for i, ax in enumerate(fig.axes):
        if not ax.get_visible():
            continue
        for name in ("x", "y"):
            if (i, name) in categorical:
                continue
            found = tick_problems(ax, name)
            checked += sum(1 for t in (ax.get_xticklabels() if name == "x" else ax.get_yticklabels())
                           if t.get_visible() and t.get_text().strip())
            problems += [f"axes {i} ({ax.get_title() or ax.get_ylabel()!r}): {p}" for p in found]
    assert not problems, "tick labels that are not the value at their tick:\n" + "\n".join(problems)
    return checked


@pytest.fixture
def drawn(monkeypatch):
    """The figures drawn while the test runs, kept open instead of saved (what is drawn is the same:
    the tick labels depend on the figure's size in inches, not on the PNG's dpi)."""
    kept = []

    def keep(fig, path):
        kept.append(fig)
        return path

    monkeypatch.setattr(figures, "save_figure", keep)
    monkeypatch.setattr(tuning_figures, "save_figure", keep)
    yield kept
    for fig in kept:
        plt.close(fig)


# -- synthetic frames shaped like a report's ------------------------------------------------------------


def cells(levels: dict[str, list[str]]) -> list[dict[str, str]]:
    return [dict(zip(levels, combo)) for combo in itertools.product(*levels.values())]


def columns(levels: dict[str, list[str]]) -> dict[str, list[str]]:
    return {f"factor.{f}": v for f, v in levels.items()}


def runs(levels: dict[str, list[str]]):
    """(run_id, level label, cell index, factor columns) per level and seed."""
    for index, cell in enumerate(cells(levels)):
        label = next(iter(cell.values())) if len(cell) == 1 else ",".join(f"{f}={v}" for f, v in cell.items())
        for seed in range(SEEDS):
            yield f"run{index}-{seed}", label, index, seed, {f"factor.{f}": v for f, v in cell.items()}


def trials_frame(levels: dict[str, list[str]], low: float, high: float) -> pd.DataFrame:
    """One row per trial (``StudyData.trials``): test accuracies spread evenly over [low, high]."""
    rows, n = [], len(cells(levels)) * SEEDS
    for k, (run_id, label, _, seed, factors) in enumerate(runs(levels)):
        acc = low + (high - low) * k / max(1, n - 1)
        train = min(1.0, acc + 0.01 + 0.02 * (k % 3))
        rows.append({"run_id": run_id, **factors, "level": label, "seed": seed, "status": "finished",
                     "test_accuracy": acc, "train_accuracy": train, "generalization_gap": train - acc})
    return pd.DataFrame(rows)


def epochs_frame(levels: dict[str, list[str]], accuracy: tuple[float, float], loss: tuple[float, float]) -> pd.DataFrame:
    """Per run, epoch and metric (``StudyData.epochs``): accuracies rising over ``accuracy``, losses
    falling geometrically from loss[1] to loss[0]."""
    rows = []
    for run_id, label, index, seed, factors in runs(levels):
        for epoch in range(EPOCHS + 1):
            t = epoch / EPOCHS
            jitter = 0.002 * (seed + index)
            for split in ("train", "val", "test"):
                acc = accuracy[0] + (accuracy[1] - accuracy[0]) * t - jitter * (split != "train")
                los = loss[1] * (loss[0] / loss[1]) ** t * (1 + jitter)
                rows += [{**factors, "level": label, "seed": seed, "run_id": run_id, "epoch": epoch,
                          "metric": f"{split}_accuracy", "value": acc},
                         {**factors, "level": label, "seed": seed, "run_id": run_id, "epoch": epoch,
                          "metric": f"{split}_loss", "value": los}]
    return pd.DataFrame(rows)


def diagnostics_frame(levels: dict[str, list[str]], dead: float, grad: tuple[float, float] = (1e-6, 3.0),
                      kind: str = "dead_relu") -> pd.DataFrame:
    """Per run, step and layer (``StudyData.diagnostics``): the share of dead (or saturated) units
    growing to ``dead`` (a fraction), gradient norms spread over ``grad``, activation means and stds."""
    rows = []
    steps = [1, *range(5, 5 * EPOCHS + 1, 5)]  # 5 steps an epoch
    for run_id, label, index, seed, factors in runs(levels):
        meta = {**factors, "level": label, "seed": seed, "run_id": run_id}
        for step in steps:
            epoch = step / 5
            for layer in range(3):
                t = epoch / EPOCHS
                share = dead * t * (layer + 1) / 3 * (1 - 0.1 * seed)
                g = grad[0] * (grad[1] / grad[0]) ** ((layer + index) / (2 + len(cells(levels))))
                rows += [{"step": step, "epoch": epoch, "kind": kind, "layer": layer, "value": share, **meta},
                         {"step": step, "epoch": epoch, "kind": "grad_norm", "layer": layer, "value": g * (1 + seed), **meta},
                         {"step": step, "epoch": epoch, "kind": "act_mean", "layer": layer,
                          "value": 0.3 * (layer - 1) * t + 0.01 * seed, **meta},
                         {"step": step, "epoch": epoch, "kind": "act_std", "layer": layer, "value": 0.2 + 0.05 * layer,
                          **meta}]
    return pd.DataFrame(rows)


def tuning_frame(levels: list[str], objective: tuple[float, float]) -> pd.DataFrame:
    """One row per tuning run (``StudyData.tuning``): two stages of trials, objectives in ``objective``,
    a log-uniform learning rate, a uniform dropout rate, an integer width on a log range."""
    rows, budget = [], 12
    for li, level in enumerate(levels):
        for trial in range(1, budget + 1):
            t = ((trial * 7 + li * 3) % budget) / (budget - 1)
            rows.append({"run_id": f"t{li}-{trial}", "study": "s", "level": level, "seed": 0,
                         "status": "pruned" if trial % 5 == 0 else "finished", "search": f"search-{level}",
                         "stage": 0 if trial <= 8 else 1, "trial": trial, "strategy": "random", "budget": budget,
                         "metric": "val_accuracy", "objective": objective[0] + (objective[1] - objective[0]) * t,
                         "epochs_run": 2, "params": {}, "space": {},
                         "param.optimizer.lr": 10 ** (-4 + 3 * t), "param.dropout": 0.5 * t,
                         "param.width": int(16 * 2 ** (4 * t))})
    return pd.DataFrame(rows)


SPACE = {"optimizer.lr": {"kind": "log_uniform", "low": 1e-4, "high": 1e-1},
         "dropout": {"kind": "uniform", "low": 0.0, "high": 0.5},
         "width": {"kind": "int", "low": 16, "high": 256, "log": True}}

ONE = {"dropout": ["off", "on"]}
THREE = {"dropout": ["off", "p=0.2", "p=0.5"]}  # three facets a row: shorter y axes than two
TWO = {"activation": ["relu", "tanh"], "depth": ["1", "2", "4"]}


# -- the figures -----------------------------------------------------------------------------------


@pytest.mark.parametrize("levels, dead", [(ONE, 0.08), (ONE, 0.10), (ONE, 0.01), (ONE, 0.6), (ONE, 0.0),
                                          (TWO, 0.09), (THREE, 0.07)],
                         ids=["0-8%", "0-10%", "0-1%", "0-60%", "none", "two factors 0-9%", "three levels 0-7%"])
def test_saturation_percent_labels_are_the_percent_at_each_tick(drawn, levels, dead, tmp_path):
    """The dropout report's "saturated or dead units" figure: up to 8-9% (7% with three facets a
    row) its gridlines are 2.5% apart, and each must say 2.5%, 5.0%, 7.5%, not 2%, 5%, 8%; so must
    the axes of 0-1% (drawn up to 5%), 0-60% and of a study without any dead unit."""
    figures.saturation(diagnostics_frame(levels, dead), columns(levels), "t", tmp_path / "s.png", last_epoch=EPOCHS)
    (fig,) = drawn
    assert assert_ticks_exact(fig) > 0


def test_saturated_sigmoid_or_tanh_units_get_exact_percent_labels_too(drawn, tmp_path):
    figures.saturation(diagnostics_frame(ONE, 0.07, kind="act_saturation"), columns(ONE), "t", tmp_path / "s.png",
                       last_epoch=EPOCHS)
    assert_ticks_exact(drawn[0])


@pytest.mark.parametrize("levels, metric, low, high", [
    (ONE, "test_accuracy", 0.62, 0.66), (TWO, "test_accuracy", 0.62, 0.66), (ONE, "test_accuracy", 0.1, 0.95),
    (ONE, "generalization_gap", 0.0, 0.0)], ids=["narrow", "two factors narrow", "wide", "gap"])
def test_final_metric_labels_are_exact_on_narrow_and_wide_ranges(drawn, levels, metric, low, high, tmp_path):
    """The y axis (accuracy, gap) is exact; the x axis names levels (categorical, skipped)."""
    figures.final_metric(trials_frame(levels, low, high), columns(levels), metric, "t", tmp_path / "f.png",
                         chance=0.1)
    assert assert_ticks_exact(drawn[0], categorical={(0, "x")}) > 0


@pytest.mark.parametrize("low, high", [(0.62, 0.66), (0.6231, 0.6233)])
def test_interaction_labels_are_exact_and_numeric_levels_sit_at_their_value(drawn, low, high, tmp_path):
    """Numeric levels of the second factor go on a numeric x axis: "0.3" at x = 0.3."""
    levels = {"activation": ["relu", "tanh"], "dropout": ["0.0", "0.1", "0.3"]}
    figures.interaction(trials_frame(levels, low, high), columns(levels), "test_accuracy", "t", tmp_path / "i.png")
    assert assert_ticks_exact(drawn[0]) > 0


def test_heatmap_colour_bar_labels_are_exact(drawn, tmp_path):
    figures.heatmap(trials_frame(TWO, 0.62, 0.66), columns(TWO), "test_accuracy", "t", tmp_path / "h.png")
    (fig,) = drawn
    assert assert_ticks_exact(fig, categorical={(0, "x"), (0, "y")}) > 0  # axes 1: the colour bar


@pytest.mark.parametrize("levels, quantity, accuracy, loss", [
    (ONE, "accuracy", (0.62, 0.66), (0.9, 1.1)),
    (TWO, "accuracy", (0.62, 0.66), (0.9, 1.1)),
    (ONE, "accuracy", (0.1, 0.98), (0.9, 1.1)),
    (ONE, "loss", (0.62, 0.66), (0.9, 1.4)),  # linear
    (TWO, "loss", (0.62, 0.66), (0.004, 2.3)),  # over 30x: log scale, powers of ten
    (ONE, "loss", (0.62, 0.66), (1e-7, 2.3)),
], ids=["accuracy narrow", "two factors accuracy narrow", "accuracy wide", "loss linear", "two factors loss log",
        "loss log 7 decades"])
def test_learning_curve_labels_are_exact_on_linear_and_log_axes(drawn, levels, quantity, accuracy, loss, tmp_path):
    figures.learning_curves(epochs_frame(levels, accuracy, loss), columns(levels), quantity, "t", tmp_path / "c.png",
                            chance=0.1)
    assert assert_ticks_exact(drawn[0]) > 0


@pytest.mark.parametrize("grad", [(1e-6, 3.0), (1e-12, 1e3), (0.02, 0.9), (0.2, 0.6)])
def test_gradient_norm_labels_are_exact_powers_of_ten(drawn, grad, tmp_path):
    figures.grad_norms(diagnostics_frame(ONE, 0.1, grad), columns(ONE), "t", tmp_path / "g.png", last_epoch=EPOCHS)
    assert assert_ticks_exact(drawn[0]) > 0


def test_activation_labels_are_exact(drawn, tmp_path):
    figures.activations(diagnostics_frame(ONE, 0.1), columns(ONE), "t", tmp_path / "a.png", last_epoch=EPOCHS)
    assert assert_ticks_exact(drawn[0]) > 0


@pytest.mark.parametrize("objective", [(0.62, 0.66), (0.05, 2.4)])
def test_tuning_figure_labels_are_exact(drawn, objective, tmp_path):
    """Tuning curves (trials spent, objective) and the objective against each tuned value, on a
    linear range, a log range of powers of ten and an integer log range."""
    levels = ["off", "on"]
    tuning = tuning_frame(levels, objective)
    tuning_figures.tuning_curves(tuning, levels, "val_accuracy", True, "t", tmp_path / "tc.png")
    chosen = {lvl: ({"optimizer.lr": 1e-3, "dropout": 0.2, "width": 64}, objective[1]) for lvl in levels}
    tuning_figures.objective_vs_params(tuning, levels, "val_accuracy", list(SPACE), {lvl: SPACE for lvl in levels},
                                       chosen, "t", tmp_path / "tv.png")
    for fig in drawn:
        assert assert_ticks_exact(fig) > 0


@pytest.mark.parametrize("text, value", [("0.62", 0.62), ("\u22120.5", -0.5), ("2.5%", 2.5), ("10⁻³", 1e-3),
                                         ("10⁰", 1.0), ("2×10⁻³", 2e-3), ("1e\u22124", 1e-4), ("off", None),
                                         ("on\n(at chance)", None)])
def test_tick_labels_are_read_as_the_reader_reads_them(text, value):
    assert parse_label(text) == (pytest.approx(value) if value is not None else None)


def test_offset_texts_are_read_as_the_reader_reads_them():
    assert parse_offset("1e\u22125+6.231e\u22121") == (pytest.approx(1e-5), pytest.approx(0.6231))
    assert parse_offset("+1e6") == (1.0, pytest.approx(1e6))
    assert parse_offset("1e\u22125") == (pytest.approx(1e-5), 0.0)
    assert parse_offset("") == (1.0, 0.0)


@pytest.mark.parametrize("value", [1e-7, 1e-3, 1.0, 10.0, 1e3, 2e-3, 5e-5, 3.16, 0.25])
def test_log_axis_labels_write_any_tick_as_its_value_not_the_nearest_power_of_ten(value):
    """Log axes label their ticks 10⁻³ (mathtext is off); a tick between powers (another locator)
    reads 2×10⁻³, not 10⁻³."""
    assert parse_label(figures.power_of_ten(value)) == pytest.approx(value, rel=1e-6)


@pytest.mark.parametrize("locs, labels", [
    ([0, 5, 10, 15], ["0%", "5%", "10%", "15%"]),  # as before the fix: whole percents stay whole
    ([0, 2.5, 5, 7.5, 10], ["0.0%", "2.5%", "5.0%", "7.5%", "10.0%"]),
    ([0, 0.25, 0.5, 0.75], ["0.00%", "0.25%", "0.50%", "0.75%"]),
    ([-2.5, 0, 2.5], ["\u22122.5%", "0.0%", "2.5%"]),
])
def test_percent_labels_have_as_many_decimals_as_the_ticks_need(locs, labels):
    fig, ax = plt.subplots()
    try:
        ax.set_ylim(min(locs), max(locs))
        formatter = figures.ExactPercent()
        ax.yaxis.set_major_formatter(formatter)
        assert formatter.format_ticks(locs) == labels
    finally:
        plt.close(fig)

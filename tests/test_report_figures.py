"""What a reader of a report's figures relies on (issue 26): the effect of a study is visible (the
value axis spans the data, every seed shows beside its mean), layers and moments of training have
colours that can be told apart, every text is readable at 100% zoom in index.html, titles wrap into
balanced lines, and the saturation caption says what the figure draws.

The figures are drawn on small synthetic frames shaped like a report's (see test_figure_ticks.py).
"""

from __future__ import annotations

import itertools
import math
import re
import textwrap

import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import PathCollection
from matplotlib.lines import Line2D
from matplotlib.text import Text

from dlbench.report import figures, tuning_figures
from dlbench.report.build import saturation_caption, write_study_report
from dlbench.report.data import study_data
from dlbench.report.document import css_width
from dlbench.report.stats import t_interval
from test_figure_ticks import (EPOCHS, ONE, SPACE, THREE, TWO, columns, diagnostics_frame, epochs_frame, trials_frame,
                               tuning_frame)
from test_report_build import synthetic_record

import matplotlib.pyplot as plt  # noqa: E402  (after figures: it selects the Agg backend)

PAGE_PX = 1100  # index.html's column: a wider figure is scaled down to it, its text with it
MIN_TEXT_PX = 12  # font size on the page: capitals about 9 px high (9 points at 96 px per inch)


@pytest.fixture
def drawn(monkeypatch):
    """The figures drawn while the test runs, saved as the report saves them (``fig.saved_as``: the
    file) and kept for reading."""
    kept = []
    save = figures.save_figure

    def keep(fig, path):
        kept.append(fig)
        fig.saved_as = path
        return save(fig, path)

    monkeypatch.setattr(figures, "save_figure", keep)
    monkeypatch.setattr(tuning_figures, "save_figure", keep)
    yield kept
    for fig in kept:
        plt.close(fig)


# -- the final metric: the effect visible, every seed visible ---------------------------------------


def dropout_like(seeds: int = 5) -> pd.DataFrame:
    """Two levels 0.025 apart around 0.65, far above chance (0.1): the dropout study."""
    rng = np.random.default_rng(1)
    rows = []
    for level, mean in (("off", 0.646), ("on", 0.671)):
        for seed in range(seeds):
            rows.append({"run_id": f"{level}{seed}", "factor.dropout": level, "level": level, "seed": seed,
                         "status": "finished", "test_accuracy": mean + 0.01 * rng.standard_normal()})
    rows.append({"run_id": "x", "factor.dropout": "on", "level": "on", "seed": 9, "status": "failed",
                 "test_accuracy": 0.1})  # not finished: not drawn, not in the range
    return pd.DataFrame(rows)


def drawn_values(frame: pd.DataFrame, metric: str) -> list[float]:
    """Every seed value, mean and interval bound (an accuracy's within [0, 1]) the figure must show."""
    finished = frame[frame["status"] == "finished"]
    values = list(finished[metric])
    for _, group in finished.groupby([c for c in frame if c.startswith("factor.")]):
        values += [*np.clip(t_interval(group[metric]), 0, 1), group[metric].mean()]
    return values


def reference_lines(ax, value: float) -> list:
    return [line for line in ax.get_lines() if list(line.get_ydata()) == [value, value]]


@pytest.mark.parametrize("frame, levels, chance, reach_chance", [
    (dropout_like(), {"dropout": ["off", "on"]}, 0.1, False),
    (trials_frame(ONE, 0.62, 0.66), ONE, 0.1, False),
    (trials_frame(TWO, 0.62, 0.66), TWO, 0.1, False),
    (trials_frame(TWO, 0.09, 0.6), TWO, 0.1, True),  # levels at chance: the chance line is among the data
    (trials_frame(ONE, 0.18, 0.3), ONE, 0.1, True),  # near the data: the axis takes it in
], ids=["dropout", "narrow", "two factors narrow", "down to chance", "near chance"])
def test_the_value_axis_spans_the_data_so_that_the_effect_shows(drawn, tmp_path, frame, levels, chance, reach_chance):
    figures.final_metric(frame, columns(levels), "test_accuracy", "t", tmp_path / "f.png", chance=chance)
    ax = drawn[0].axes[0]
    low, high = ax.get_ylim()
    values = drawn_values(frame, "test_accuracy")
    assert low < min(values) and max(values) < high  # every seed and interval inside, none on the edge
    shown = [*values, chance] if reach_chance else values
    assert (max(shown) - min(shown)) / (high - low) >= 0.6  # the data fill the axis: not a sliver
    texts = " ".join(t.get_text() for t in ax.texts)
    assert "chance (0.10)" in texts
    if reach_chance:
        assert low < chance < high and reference_lines(ax, chance)
    else:  # far from the data: said at the edge of the axis, not stretching it
        assert chance < low and not reference_lines(ax, chance) and "below this axis" in texts


def test_the_dropout_effect_takes_a_good_share_of_the_axis(drawn, tmp_path):
    """The issue's case: +0.025 between off and on was a sliver of an axis from 0.07 to 0.72."""
    frame = dropout_like()
    figures.final_metric(frame, columns({"dropout": ["off", "on"]}), "test_accuracy", "t", tmp_path / "f.png",
                         chance=0.1)
    low, high = drawn[0].axes[0].get_ylim()
    means = frame[frame["status"] == "finished"].groupby("level")["test_accuracy"].mean()
    assert (means["on"] - means["off"]) / (high - low) > 0.2


def test_the_generalization_gap_keeps_its_zero_line_only_near_the_data(drawn, tmp_path):
    near = trials_frame(ONE, 0.62, 0.66)  # gaps of 0.01-0.05: 0 within reach
    far = near.assign(generalization_gap=near["generalization_gap"] + 0.8)  # intervals of 2 seeds: ± 0.13
    for frame in (near, far):
        figures.final_metric(frame, columns(ONE), "generalization_gap", "t", tmp_path / "g.png")
    (near_ax,), (far_ax,) = drawn[0].axes, drawn[1].axes
    assert reference_lines(near_ax, 0.0) and near_ax.get_ylim()[0] < 0
    assert not reference_lines(far_ax, 0.0) and far_ax.get_ylim()[0] > 0.4


def marks(ax):
    """(seed points, mean markers) of a final-metric axes, in display pixels: [(x, y, radius)]."""
    seeds, means = [], []
    to_px = ax.figure.dpi / 72
    for collection in ax.collections:
        if isinstance(collection, PathCollection):
            size = collection.get_sizes()[0]
            for x, y in ax.transData.transform(collection.get_offsets()):
                seeds.append((x, y, math.sqrt(size) / 2 * to_px))
    for line in ax.get_lines():
        if line.get_marker() == "D" and len(line.get_xdata()) == 1:
            x, y = ax.transData.transform((line.get_xdata()[0], line.get_ydata()[0]))
            means.append((x, y, line.get_markersize() / 2 * math.sqrt(2) * to_px))  # a diamond's half diagonal
    return seeds, means


@pytest.mark.parametrize("levels, seeds", [(ONE, 5), (THREE, 10), (TWO, 5)],
                         ids=["two levels", "three levels", "two factors"])
def test_no_seed_hides_behind_a_mean_marker(drawn, tmp_path, levels, seeds, monkeypatch):
    import test_figure_ticks

    monkeypatch.setattr(test_figure_ticks, "SEEDS", seeds)
    frame = trials_frame(levels, 0.64, 0.645)  # seeds almost on their mean: the case that hid them
    figures.final_metric(frame, columns(levels), "test_accuracy", "t", tmp_path / "f.png", chance=0.1)
    ax = drawn[0].axes[0]
    drawn[0].canvas.draw()
    seed_marks, mean_marks = marks(ax)
    assert len(seed_marks) == len(frame) and len(mean_marks) == frame.groupby("level").ngroups
    for (sx, _, sr), (mx, _, mr) in itertools.product(seed_marks, mean_marks):
        assert abs(sx - mx) > sr + mr  # side by side: no seed under any mean marker or its error bar


def test_the_same_figure_is_drawn_byte_for_byte(tmp_path):
    """The jitter of the seeds comes from a seeded generator of its own: the same file every time,
    and NumPy's global generator is left alone."""
    frame = trials_frame(TWO, 0.5, 0.7)
    state = np.random.get_state()[1].copy()
    paths = [figures.final_metric(frame, columns(TWO), "test_accuracy", "t", tmp_path / f"f{i}.png", chance=0.1)
             for i in range(2)]
    assert paths[0].read_bytes() == paths[1].read_bytes()
    assert (np.random.get_state()[1] == state).all()


# -- colours that can be told apart -----------------------------------------------------------------


def lab(rgb) -> np.ndarray:
    """CIELAB (D65) of an sRGB colour with components in [0, 1]."""
    c = np.asarray(rgb, dtype=float)[:3]
    c = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    xyz = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]]) @ c
    f = [t ** (1 / 3) if t > 0.008856 else 7.787 * t + 16 / 116 for t in xyz / np.array([0.95047, 1.0, 1.08883])]
    return np.array([116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])])


def min_distance(colors) -> float:
    """The smallest colour difference (CIE76 ΔE) between any two of ``colors``."""
    return min(float(np.linalg.norm(lab(a) - lab(b))) for a, b in itertools.combinations(colors, 2))


def layered(count: int) -> pd.DataFrame:
    """Diagnostics of ``count`` layers for one factor of two levels."""
    rows = []
    for level, seed, step, layer in itertools.product(["off", "on"], range(2), [1, 5, 10, 15, 20], range(count)):
        meta = {"factor.dropout": level, "level": level, "seed": seed, "run_id": f"{level}{seed}", "step": step,
                "epoch": step / 5, "layer": layer}
        rows += [{**meta, "kind": "act_saturation", "value": 0.01 * layer},
                 {**meta, "kind": "act_mean", "value": 0.5 + 0.01 * layer},
                 {**meta, "kind": "act_std", "value": 0.1},
                 {**meta, "kind": "grad_norm", "value": 10.0 ** (layer - count)}]
    return pd.DataFrame(rows)


def legend_entries(fig) -> list[Line2D]:
    (legend,) = fig.legends
    return legend.legend_handles


@pytest.mark.parametrize("count", [2, 4, 8, 10])
@pytest.mark.parametrize("figure", [figures.saturation, figures.activations], ids=["saturation", "activations"])
def test_layers_have_colours_that_can_be_told_apart(drawn, tmp_path, figure, count):
    """8 layers in shades of one ramp ("crest", "flare") could not be told apart: ΔE 10 between
    neighbours. A qualitative palette keeps every pair of up to 10 layers more than 20 apart."""
    figure(layered(count), {"factor.dropout": ["off", "on"]}, "t", tmp_path / "l.png", last_epoch=4)
    handles = legend_entries(drawn[0])
    assert len(handles) == count
    assert min_distance([h.get_color() for h in handles]) > 20
    drawn_colors = {line.get_color() if isinstance(line.get_color(), str) else tuple(line.get_color())
                    for ax in drawn[0].axes for line in ax.get_lines()}
    assert len(drawn_colors) >= count  # the lines wear the legend's colours, one per layer


@pytest.mark.parametrize("count", [12, 16, 20, 30])
def test_more_than_ten_layers_still_get_colours_of_their_own(count):
    colors = figures.qualitative(count)
    assert len(colors) == count and len(set(map(tuple, colors))) == count
    assert min(float(np.linalg.norm(lab(a) - lab(b))) for a, b in zip(colors, colors[1:])) > 20  # neighbours differ


def test_moments_of_training_have_distinct_colours_and_markers(drawn, tmp_path):
    figures.grad_norms(diagnostics_frame(ONE, 0.1), columns(ONE), "t", tmp_path / "g.png", last_epoch=EPOCHS)
    handles = legend_entries(drawn[0])
    assert len(handles) == 4
    assert min_distance([h.get_color() for h in handles]) > 20
    assert len({h.get_marker() for h in handles}) == 4
    lines = [line for line in drawn[0].axes[0].get_lines() if len(line.get_xdata()) > 1]
    assert len({line.get_marker() for line in lines}) == 4  # the lines carry the legend's markers


# -- every text readable in index.html --------------------------------------------------------------


def every_figure(tmp_path) -> None:
    """Each kind of report figure, on one factor and on two."""
    for levels in (ONE, TWO):
        cols = columns(levels)
        trials, epochs = trials_frame(levels, 0.3, 0.66), epochs_frame(levels, (0.1, 0.66), (0.9, 2.3))
        diag = diagnostics_frame(levels, 0.3)
        figures.final_metric(trials, cols, "test_accuracy", "a rather long study name: final test accuracy per level",
                             tmp_path / "f.png", chance=0.1, at_chance={tuple(v[-1] for v in levels.values())})
        figures.final_metric(trials, cols, "generalization_gap", "gap", tmp_path / "g.png")
        for quantity in ("accuracy", "loss"):
            figures.learning_curves(epochs, cols, quantity, "curves", tmp_path / f"{quantity}.png", chance=0.1)
        figures.grad_norms(diag, cols, "gradients", tmp_path / "gn.png", last_epoch=EPOCHS)
        figures.saturation(diag, cols, "saturation", tmp_path / "s.png", last_epoch=EPOCHS)
        figures.activations(diag, cols, "activations", tmp_path / "ac.png", last_epoch=EPOCHS)
    figures.interaction(trials_frame(TWO, 0.3, 0.66), columns(TWO), "test_accuracy", "i", tmp_path / "i.png")
    figures.heatmap(trials_frame(TWO, 0.3, 0.66), columns(TWO), "test_accuracy", "h", tmp_path / "h.png")
    figures.saturation(layered(8), {"factor.dropout": ["off", "on"]}, "eight layers", tmp_path / "l.png", last_epoch=4)
    tuning = tuning_frame(["off", "on"], (0.62, 0.66))
    tuning_figures.tuning_curves(tuning, ["off", "on"], "val_accuracy", True, "t", tmp_path / "tc.png")
    chosen = {lvl: ({"optimizer.lr": 1e-3, "dropout": 0.2, "width": 64}, 0.66) for lvl in ["off", "on"]}
    tuning_figures.objective_vs_params(tuning, ["off", "on"], "val_accuracy", list(SPACE),
                                       {lvl: SPACE for lvl in ["off", "on"]}, chosen, "t", tmp_path / "tv.png")


def shown_texts(fig) -> list[Text]:
    return [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()
            and (t.axes is None or t.axes.get_visible())]


def test_every_text_is_at_least_12_px_in_the_page_as_shown(drawn, tmp_path):
    """index.html shows a figure at its size in inches (96 px each: ``css_width``), scaled down to
    the 1100 px column if wider: a text of s points is s * 96/72 px times that scale. The notes
    ("chance (0.10)", "dead units (ReLU)") were 8 points: 10.7 px of font, capitals about 7 px."""
    every_figure(tmp_path)
    assert len(drawn) == 19
    small = []
    for fig in drawn:
        path, width = fig.saved_as, css_width(fig.saved_as)
        scale = min(1.0, PAGE_PX / width)
        for text in shown_texts(fig):
            px = text.get_fontsize() * 96 / 72 * scale
            if px < MIN_TEXT_PX:
                small.append(f"{path.name} ({width} px wide): {text.get_text()!r} at {px:.1f} px")
    assert not small, "text too small on the page:\n" + "\n".join(small)


def test_figures_fit_the_page_unscaled(tmp_path):
    """The facet grids of a two-factor study of five depths: wider than 1100 px, index.html would
    shrink them and their text with them."""
    data = study_data(synthetic_record({"a": ["relu", "sigmoid"], "d": ["1", "2", "4", "6", "8"]}, seeds=2), "s",
                      None, "no file")
    for figure in (figures.grad_norms, figures.saturation, figures.activations):
        path = figure(data.diagnostics, data.columns, "a study: a title", tmp_path / "x.png", last_epoch=3)
        assert css_width(path) <= PAGE_PX


# -- titles wrapped into balanced lines ---------------------------------------------------------------


TITLES = [
    ("activation_depth: generalization gap (train − test accuracy) per level", 60),
    ("pretraining: final test accuracy per level of a study with a long name", 60),
    ("a very long study name indeed: saturated or dead units per layer over training", 70),
    ("dropout_with_a_long_name: activation mean ± std per layer over training in detail", 60),
    ("one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen x", 30),
]


@pytest.mark.parametrize("title, width", TITLES)
def test_wrapped_titles_are_balanced_with_no_word_alone(title, width):
    greedy = textwrap.wrap(title, width)
    lines = figures.wrapped_title(title, width).split("\n")
    assert len(lines) == len(greedy) >= 2  # as many lines as textwrap needs, no more
    assert " ".join(lines) == " ".join(title.split())  # the words, in order, none lost or broken
    assert all(len(line) <= width for line in lines)
    assert all(len(line.split()) > 1 for line in lines)  # no orphan
    longest_word = max(map(len, title.split()))
    assert max(map(len, lines)) - min(map(len, lines)) <= longest_word + 1  # about equally long


def test_a_title_textwrap_would_orphan_is_split_evenly():
    title = "activation_depth: saturated or dead units per layer over training"  # 66 characters
    assert textwrap.wrap(title, 60)[-1] == "training"  # textwrap: one word alone on the second line
    assert figures.wrapped_title(title, 60) == "activation_depth: saturated or\ndead units per layer over training"


@pytest.mark.parametrize("title", ["short title", "", "x" * 80, "x" * 80 + " y"])
def test_short_titles_and_long_words_are_kept_whole(title):
    wrapped = figures.wrapped_title(title, 60)
    assert wrapped.replace("\n", " ") == title


# -- the saturation caption says what is drawn --------------------------------------------------------


def depth_study(sigmoid_saturation: float) -> tuple[pd.DataFrame, dict]:
    """activation x depth: ReLU layers with dead units; sigmoid layers whose units sit near 0.5
    with a share ``sigmoid_saturation`` saturated, and gradients vanishing towards the input."""
    levels = {"factor.activation": ["relu", "sigmoid"], "factor.depth": ["2", "6"]}
    rows = []
    for (act, depth), seed, step in itertools.product(itertools.product(*levels.values()), range(2), [1, 10, 20]):
        for layer in range(int(depth)):
            meta = {"factor.activation": act, "factor.depth": depth, "run_id": f"{act}{depth}-{seed}", "seed": seed,
                    "step": step, "epoch": step / 10, "layer": layer}
            share = 0.05 * layer if act == "relu" else sigmoid_saturation
            rows += [{**meta, "kind": "dead_relu" if act == "relu" else "act_saturation", "value": share},
                     {**meta, "kind": "act_mean", "value": 0.3 if act == "relu" else 0.5 - 0.05 * layer / int(depth)},
                     {**meta, "kind": "grad_norm", "value": 10.0 ** (layer - int(depth)) if act == "sigmoid" else 0.1}]
    return pd.DataFrame(rows), levels


def test_the_caption_does_not_claim_saturation_where_none_is_drawn():
    diag, levels = depth_study(sigmoid_saturation=0.0)
    caption = saturation_caption(diag, levels, {("sigmoid", "6")})
    assert "No sigmoid/tanh layer saturates here: none of a layer's activations lie near a bound" in caption
    assert "mean activations stay between 0.46 and 0.50" in caption  # near 0.5: not near a bound
    assert "Most saturated" not in caption and "saturate early" not in caption
    assert "saturation is not why this level at chance (sigmoid, depth=6) did not learn" in caption
    assert "first layer is 5 orders of magnitude below the last layer's" in caption  # 10⁻⁶ vs 10⁻¹
    assert "Most dead ReLUs: 25% of the units of layer 5 at relu, depth=6" in caption


def test_the_caption_names_the_saturation_it_draws():
    diag, levels = depth_study(sigmoid_saturation=0.4)
    caption = saturation_caption(diag, levels, {("sigmoid", "6")})
    assert "Most saturated: layer 0 at sigmoid, depth=2, 40% of its activations near a bound" in caption
    assert "No sigmoid/tanh layer saturates" not in caption and "is not why" not in caption


def test_a_tiny_share_is_not_called_saturation_and_no_dead_unit_is_said_so():
    diag, levels = depth_study(sigmoid_saturation=0.003)
    diag.loc[diag["kind"] == "dead_relu", "value"] = 0.0
    caption = saturation_caption(diag, levels)
    assert "No sigmoid/tanh layer saturates here: at most 0.3% of a layer's activations" in caption
    assert "is not why" not in caption  # no level at chance: nothing to explain
    assert "No ReLU layer has dead units to speak of: none of a layer's units are dead" in caption


def test_the_report_writes_the_caption_from_its_data(tmp_path):
    record = synthetic_record({"s": ["off", "on"]}, seeds=2)  # dead ReLUs up to 10% in layer 1
    folder = write_study_report(study_data(record, "s", None, "no file"), tmp_path / "s")
    index = (folder / "index.md").read_text()
    assert re.search(r"Most dead ReLUs: 10% of the units of layer 1 at (off|on) ", index), index
    assert "Sigmoid/tanh" not in index  # nothing of the kind was recorded

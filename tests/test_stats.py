"""Statistics over seeds against known answers: scipy, hand-computed examples, simulated studies."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from dlbench.config import Claim
from dlbench.report.stats import comparisons, hedges_g, holm, judge_claims, t_interval, welch

ALPHA = 0.05
SIMULATIONS = 2000


def binomial_tolerance(p: float, n: int, sigmas: float = 4.0) -> float:
    """How far a rate observed over n independent trials may stray from p (4 standard errors)."""
    return sigmas * math.sqrt(p * (1 - p) / n)


def frame_of(cells: dict[tuple, list[float]], factors: list[str], metric: str = "test_accuracy",
             status: dict[tuple, list[str]] | None = None) -> pd.DataFrame:
    """One row per seed: factor.<f> columns, status, metric."""
    rows = []
    for cell, values in cells.items():
        for i, v in enumerate(values):
            st = (status or {}).get(cell, ["finished"] * len(values))[i]
            rows.append({**{f"factor.{f}": lvl for f, lvl in zip(factors, cell)}, "seed": i, "status": st, metric: v})
    return pd.DataFrame(rows)


# -- intervals, Welch, Hedges' g, Holm ------------------------------------------------------------


def test_t_interval_known_answer():
    low, high = t_interval([0.5, 0.6, 0.7])
    half = 4.302653 * 0.1 / math.sqrt(3)  # t(0.975, 2 df) * sd / sqrt(n)
    assert (low, high) == pytest.approx((0.6 - half, 0.6 + half), rel=1e-6)
    assert t_interval([0.4]) == (0.4, 0.4)
    assert all(math.isnan(v) for v in t_interval([]))


@pytest.mark.parametrize("na, nb, shift, scale", [(5, 5, 0.0, 1.0), (3, 7, 0.3, 2.0), (10, 4, -1.0, 0.5), (2, 2, 1.0, 1.0)])
def test_welch_matches_scipy(na, nb, shift, scale):
    rng = np.random.default_rng(na * 100 + nb)
    a, b = rng.normal(shift, 1.0, na), rng.normal(0.0, scale, nb)
    d = welch(a, b)
    ref = stats.ttest_ind(a, b, equal_var=False)
    assert d.t == pytest.approx(ref.statistic, rel=1e-10)
    assert d.p == pytest.approx(ref.pvalue, rel=1e-10)
    assert d.df == pytest.approx(ref.df, rel=1e-10)
    ci = ref.confidence_interval(0.95)
    assert (d.ci_low, d.ci_high) == pytest.approx((ci.low, ci.high), rel=1e-10)
    assert d.diff == pytest.approx(a.mean() - b.mean())
    assert d.n_a == na and d.n_b == nb


def test_welch_degenerate_cases():
    same = welch([0.5, 0.5, 0.5], [0.5, 0.5])
    assert same.p == 1.0 and same.diff == 0.0 and same.ci_low == same.ci_high == 0.0
    apart = welch([0.6, 0.6], [0.5, 0.5])  # no spread at all: the difference is exact
    assert apart.p == 0.0 and apart.diff == pytest.approx(0.1) and math.isinf(apart.t)
    few = welch([0.6], [0.5, 0.4, 0.45])  # one seed: nothing to test
    assert not few.testable and math.isnan(few.p) and math.isnan(few.ci_low)
    assert few.diff == pytest.approx(0.6 - 0.45)
    nan_ignored = welch([0.6, 0.7, math.nan], [0.5, 0.4])
    assert nan_ignored.n_a == 2


def test_hedges_g_known_answer():
    # pooled sd 1, d = -3, small-sample correction 1 - 3 / (4 * 6 - 9) = 0.8
    assert hedges_g([1, 2, 3], [4, 5, 6]) == pytest.approx(-2.4)
    assert math.isnan(hedges_g([1], [2, 3]))
    assert math.isnan(hedges_g([1, 1], [1, 1]))


def test_holm_hand_computed():
    # sorted: 0.005 x4 = 0.02; 0.01 x3 = 0.03; 0.03 x2 = 0.06; 0.04 x1 = 0.04 -> 0.06 (monotone)
    adjusted = holm([0.01, 0.04, 0.03, 0.005])
    assert adjusted == pytest.approx([0.03, 0.06, 0.06, 0.02])
    with_nan = holm([0.01, math.nan, 0.04])  # NaN: not tested, not counted in m
    assert with_nan[0] == pytest.approx(0.02) and math.isnan(with_nan[1]) and with_nan[2] == pytest.approx(0.04)
    assert holm([0.6, 0.7]) == pytest.approx([1.0, 1.0])  # capped at 1
    assert len(holm([])) == 0


# -- planted effects and null studies -------------------------------------------------------------


def test_planted_effect_is_found():
    rng = np.random.default_rng(7)
    off = 0.80 + 0.01 * rng.standard_normal(5)
    on = 0.85 + 0.01 * rng.standard_normal(5)
    frame = frame_of({("off",): off, ("on",): on}, ["dropout"])
    table = comparisons(frame, {"dropout": ["off", "on"]}, {"dropout": "off"}, "test_accuracy")
    (row,) = table.to_dict("records")
    assert row["level"] == "on" and row["reference"] == "off" and row["n"] == 5 and row["n_ref"] == 5
    assert row["ci95_low"] < 0.05 < row["ci95_high"] and row["ci95_low"] > 0
    assert row["p_holm"] < 0.001 and row["hedges_g"] > 2
    verdicts = judge_claims(frame, [Claim({"dropout": "on"}, {"dropout": "off"})], ALPHA)
    assert verdicts["verdict"].tolist() == ["supported"]
    assert "significant at alpha = 0.05, in the claimed direction" in verdicts["why"][0]
    assert "n = 5 vs 5" in verdicts["why"][0]


def test_identical_distributions_are_rejected_at_the_stated_rate():
    # 2000 simulated two-level studies with no effect, 5 seeds per level: Welch's test must reject
    # about alpha of them, and a one-directional claim be "supported" about alpha / 2 of the time.
    rng = np.random.default_rng(2024)
    samples = 0.8 + 0.02 * rng.standard_normal((SIMULATIONS, 2, 5))
    results = [welch(a, b) for a, b in samples]
    rejected = np.mean([d.p < ALPHA for d in results])
    assert abs(rejected - ALPHA) < binomial_tolerance(ALPHA, SIMULATIONS)
    supported = np.mean([d.p < ALPHA and d.diff > 0 for d in results])
    assert abs(supported - ALPHA / 2) < binomial_tolerance(ALPHA / 2, SIMULATIONS)
    # the 95% interval covers the true difference (0) at its nominal rate
    covered = np.mean([d.ci_low <= 0 <= d.ci_high for d in results])
    assert abs(covered - 0.95) < binomial_tolerance(0.95, SIMULATIONS)


def test_holm_keeps_the_family_wise_error_of_a_study_at_alpha():
    # four levels against one reference, no effect anywhere: uncorrected, some comparison is
    # "significant" far more often than alpha; Holm-corrected, at most alpha of the studies
    rng = np.random.default_rng(11)
    any_raw, any_holm = [], []
    for _ in range(SIMULATIONS):
        ref, *others = 0.5 + 0.05 * rng.standard_normal((5, 5))
        p = [welch(o, ref).p for o in others]
        any_raw.append(min(p) < ALPHA)
        any_holm.append(np.nanmin(holm(p)) < ALPHA)
    assert np.mean(any_raw) > 2 * ALPHA
    assert np.mean(any_holm) <= ALPHA + binomial_tolerance(ALPHA, SIMULATIONS)


# -- comparisons and claims -----------------------------------------------------------------------


def test_two_factor_comparisons_are_simple_effects_with_holm_over_all():
    rng = np.random.default_rng(3)
    levels = {"activation": ["relu", "sigmoid"], "depth": ["1", "2", "4"]}
    cells = {(a, d): 0.9 - (0.1 * int(d) if a == "sigmoid" else 0) + 0.01 * rng.standard_normal(4)
             for a in levels["activation"] for d in levels["depth"]}
    frame = frame_of(cells, list(levels))
    table = comparisons(frame, levels, {"activation": "relu", "depth": "1"}, "test_accuracy")
    # sigmoid vs relu at each depth (3), then each depth vs 1 for each activation (2 x 2)
    assert table["level"].tolist() == [
        "sigmoid, depth=1", "sigmoid, depth=2", "sigmoid, depth=4",
        "relu, depth=2", "relu, depth=4", "sigmoid, depth=2", "sigmoid, depth=4"]
    assert table["reference"].tolist()[:3] == ["relu, depth=1", "relu, depth=2", "relu, depth=4"]
    assert table["p_holm"].tolist() == pytest.approx(holm(table["p"]).tolist())
    deep = table[table["level"] == "sigmoid, depth=4"].iloc[0]
    assert deep["diff"] == pytest.approx(-0.4, abs=0.03) and deep["p_holm"] < 0.001


def test_claim_verdicts():
    rng = np.random.default_rng(5)
    noise = 0.005 * rng.standard_normal((4, 5))
    frame = frame_of({("a",): 0.70 + noise[0], ("b",): 0.80 + noise[1], ("c",): 0.70 + noise[2],
                      ("d",): [0.9]}, ["x"])
    frame["test_loss"] = 1 - frame["test_accuracy"]
    claims = [Claim({"x": "b"}, {"x": "a"}),  # true
              Claim({"x": "a"}, {"x": "b"}),  # false
              Claim({"x": "c"}, {"x": "a"}),  # no difference
              Claim({"x": "d"}, {"x": "a"}),  # one seed
              Claim({"x": "b"}, {"x": "a"}, "test_loss")]  # lower is better: b's loss is lower
    table = judge_claims(frame, claims, ALPHA)
    assert table["verdict"].tolist() == ["supported", "contradicted", "inconclusive", "inconclusive", "supported"]
    assert "opposite direction" in table["why"][1]
    assert "not significant at alpha = 0.05" in table["why"][2]
    assert table["why"][3].startswith("cannot test: 'd' has 1 and 'a' has 5 finished seed(s)")
    assert "lower test_loss is better" in table["why"][4]
    assert table["p_holm"].tolist()[:3] == pytest.approx(holm(table["p"]).tolist()[:3])
    assert (table["p_holm"].dropna() >= table["p"].dropna()).all()


def test_claims_ignore_unfinished_seeds():
    frame = frame_of({("off",): [0.5, 0.51, 0.49], ("on",): [0.9, 0.91, float("nan")]}, ["d"],
                     status={("on",): ["finished", "failed", "diverged"]})
    table = judge_claims(frame, [Claim({"d": "on"}, {"d": "off"})], ALPHA)
    assert table["verdict"][0] == "inconclusive" and table["n"][0] == 1
    assert "at least 2 per level" in table["why"][0]

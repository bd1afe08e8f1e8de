"""Two runs of the same studies compared level by level (dlbench/report/compare.py)."""
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from dlbench.report.compare import compare_claims, compare_trials, tost

RNG = np.random.default_rng(7)


def trials(levels: dict[str, list[float]], study: str = "dropout", seeds=None) -> pd.DataFrame:
    rows = []
    for level, values in levels.items():
        for seed, value in zip(seeds or range(len(values)), values):
            rows.append({"study": study, "level": level, "seed": seed, "status": "finished", "test_accuracy": value})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("shift", [0.0, 0.01, 0.03, -0.025])
def test_tost_is_the_larger_p_of_two_one_sided_welch_tests(shift):
    a, b = 0.6 + 0.01 * RNG.standard_normal(8), 0.6 + shift + 0.012 * RNG.standard_normal(6)
    p, same = tost(a, b, margin=0.02)
    lower = stats.ttest_ind(a + 0.02, b, equal_var=False, alternative="greater").pvalue  # H0: a - b <= -0.02
    upper = stats.ttest_ind(a - 0.02, b, equal_var=False, alternative="less").pvalue  # H0: a - b >= +0.02
    assert p == pytest.approx(max(lower, upper), rel=1e-9) and same == (p < 0.05)


def test_tost_says_equivalent_exactly_when_the_90_percent_interval_is_inside_the_margin():
    for _ in range(50):
        a, b = 0.6 + 0.02 * RNG.standard_normal(5), 0.6 + RNG.uniform(-0.04, 0.04) + 0.02 * RNG.standard_normal(5)
        d = a.mean() - b.mean()
        va, vb = a.var(ddof=1) / 5, b.var(ddof=1) / 5
        df = (va + vb) ** 2 / (va ** 2 / 4 + vb ** 2 / 4)
        half = stats.t.ppf(0.95, df) * math.sqrt(va + vb)
        assert tost(a, b, 0.03)[1] == (-0.03 < d - half and d + half < 0.03)


def test_no_spread_is_exact_and_too_few_seeds_is_no_verdict():
    assert tost([0.5, 0.5], [0.51, 0.51], 0.02) == (0.0, True)
    assert tost([0.5, 0.5], [0.53, 0.53], 0.02) == (1.0, False)
    p, same = tost([0.5], [0.5, 0.6], 0.02)
    assert math.isnan(p) and not same


def test_a_bit_for_bit_rerun_is_identical_and_equivalent():
    a = trials({"off": [0.64, 0.65, 0.66], "on": [0.67, 0.66, 0.69]})
    table = compare_trials(a, a.copy())
    assert list(table["level"]) == ["off", "on"]
    assert table["identical"].all() and table["equivalent"].all() and (table["diff"] == 0).all()
    assert (table["note"] == "").all()


def test_a_shift_beyond_the_margin_is_not_equivalent_and_its_interval_shows_it():
    a = trials({"on": [0.67, 0.66, 0.69, 0.68, 0.67]})
    b = trials({"on": [0.72, 0.71, 0.74, 0.73, 0.72]})
    (row,) = compare_trials(a, b).to_dict("records")
    assert row["diff"] == pytest.approx(-0.05) and row["ci95_high"] < -0.02
    assert not row["equivalent"] and not row["identical"] and row["p_tost"] > 0.5


def test_a_level_on_one_side_and_other_seeds_are_listed_not_hidden():
    a = trials({"off": [0.64, 0.65, 0.66], "on": [0.67, 0.66, 0.69]})
    b = trials({"off": [0.64, 0.65, 0.66], "wide": [0.7, 0.71]}, seeds=[0, 1, 2])
    b.loc[b["level"] == "off", "seed"] = [0, 1, 5]
    table = compare_trials(a, b).set_index("level")
    assert table.loc["on", "note"] == "only in A" and table.loc["wide", "note"] == "only in B"
    assert table.loc["off", "note"] == "seeds differ (A: 0, 1, 2; B: 0, 1, 5)"
    assert not table.loc["off", "identical"]  # equal values under other seeds are no re-run


def test_unfinished_trials_do_not_count():
    a = trials({"on": [0.67, 0.66, 0.69]})
    b = a.copy()
    b.loc[2, "status"] = "diverged"
    (row,) = compare_trials(a, b).to_dict("records")
    assert (row["n_a"], row["n_b"]) == (3, 2) and not row["identical"]


def test_claims_agree_only_with_the_same_verdict_on_both_sides():
    a = pd.DataFrame({"study": ["s", "s", "t"], "claim": ["x beats y", "y beats z", "p beats q"],
                      "verdict": ["supported", "inconclusive", "supported"]})
    b = pd.DataFrame({"study": ["s", "s"], "claim": ["x beats y", "y beats z"],
                      "verdict": ["supported", "contradicted"]})
    table = compare_claims(a, b).set_index("claim")
    assert table.loc["x beats y", "agree"] and not table.loc["y beats z", "agree"]
    assert table.loc["p beats q", "verdict_b"] == "" and not table.loc["p beats q", "agree"]

"""Two runs of the same studies compared level by level (dlbench/report/compare.py)."""
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from conftest import TINY_BASELINE, describe_result, run_cli, sqlite_uri, write_study

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
    assert row["diff"] == pytest.approx(0.05) and row["ci95_low"] > 0.02  # B - A: how the second run moved
    assert row["tost_low"] > 0.02 and not row["equivalent"] and not row["identical"] and row["p_tost"] > 0.5
    assert row["mean_a"] == pytest.approx(0.674) and row["mean_b"] == pytest.approx(0.724)
    assert row["mean_a_low"] < row["mean_a"] < row["mean_a_high"] < row["mean_b_low"] < row["mean_b"]


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


def test_the_same_seeds_are_compared_as_pairs_which_shows_equivalence_that_independent_samples_cannot():
    # a seed-to-seed spread of 0.07 (a deep ReLU net's, 3 seeds) re-run with last-digit changes
    a = trials({"relu, depth=6": [0.40, 0.47, 0.55]})
    b = trials({"relu, depth=6": [0.401, 0.468, 0.552]})
    (paired,) = compare_trials(a, b).to_dict("records")
    assert paired["test"] == "paired" and paired["equivalent"] and not paired["identical"]
    assert paired["diff"] == pytest.approx(0.001 / 3)
    other = b.assign(seed=[10, 11, 12])  # other seeds: independent samples, whose spread hides everything
    (welch,) = compare_trials(a, other).to_dict("records")
    assert welch["test"] == "Welch" and not welch["equivalent"]
    assert "too few seeds for the spread of the seeds (sd 0.0" in welch["note"] and "seeds would show it" in welch["note"]


def test_seeds_needed_is_the_least_count_whose_interval_fits_the_margin():
    from dlbench.report.compare import Shift, seeds_needed

    shift = Shift(0.0, (0, 0), (0, 0), 0.5, "Welch", 0.015)
    n = seeds_needed(shift, 0.02)
    fits = lambda k: stats.t.ppf(0.95, 2 * k - 2) * 0.015 * math.sqrt(2 / k) < 0.02  # noqa: E731
    assert fits(n) and not fits(n - 1)
    assert seeds_needed(Shift(0.03, (0, 0), (0, 0), 0.9, "Welch", 0.01), 0.02) is None  # moved beyond the margin


# -- dlbench compare, end to end ----------------------------------------------------------------

STUDY = """\
[study]
name = "compare-test"
seeds = 3

""" + TINY_BASELINE + """
[studies.dropout]
claims = [{ level = "on", beats = "off" }]

[studies.dropout.levels]
off = {}
on = { regularizers = [{ name = "dropout", p_hidden = 0.2 }] }
"""
# the same study with its "on" level broken: a learning rate that does not learn in 2 epochs
CHANGED = STUDY.replace('p_hidden = 0.2 }] }', 'p_hidden = 0.2 }], optimizer = { lr = 1e-6 } }')


@pytest.fixture(scope="module")
def ran_twice(tmp_path_factory):
    """The study run twice into one store (the second with force: a new study run, every trial
    trained again), then its changed version, as `dlbench run` runs them (in this process, one
    job): (folder, uri, [the three study run ids])."""
    import io

    from dlbench.config import read_study_file
    from dlbench.plugins import load_plugins
    from dlbench.runner import run_study
    from dlbench.settings import RunOptions
    from dlbench.study import expand

    folder = tmp_path_factory.mktemp("compare")
    uri = sqlite_uri(folder / "mlflow.db")
    plugins = load_plugins(None, autoload=False)
    ids = []
    for text, force in ((STUDY, False), (STUDY, True), (CHANGED, True)):
        sf = read_study_file(write_study(folder, text, "study.toml"))
        options = RunOptions(device="cpu", tracking_uri=uri, reports_dir=folder / f"reports{len(ids)}", jobs=1,
                             force=force, checkpoint_dir=folder / "checkpoints")
        ids.append(run_study(sf, expand(sf, plugins.registry), plugins, options, io.StringIO()).parent_run_id)
    return folder, uri, ids


def compare_cli(folder, uri, *args):
    return run_cli(["compare", *args, "--tracking-uri", uri], cwd=folder)


@pytest.mark.slow
def test_a_study_run_twice_is_bit_for_bit_the_same_and_compare_exits_0(ran_twice):
    folder, uri, (first, second, _) = ran_twice
    proc = compare_cli(folder, uri, first, second, "--out", folder / "same")
    assert proc.returncode == 0, describe_result(proc)
    assert "comparison: bit-for-bit" in proc.stdout
    assert "levels: 2 compared, 2 identical, 2 equivalent" in proc.stdout
    assert "claims: 1 of 1 verdicts agree" in proc.stdout and "PASSED" in proc.stdout
    assert "differs: nothing recorded" in proc.stdout  # same configs, data, code and machine
    for name in ("index.md", "index.html", "levels.csv", "claims.csv", "differences.csv", "differences.png"):
        assert (folder / "same" / name).is_file(), name
    levels = pd.read_csv(folder / "same" / "levels.csv")
    assert levels["identical"].all() and (levels["n_a"] == 3).all() and (levels["test"] == "paired").all()


@pytest.mark.slow
def test_a_report_folder_and_a_study_file_are_sides_too(ran_twice):
    folder, uri, (first, second, _) = ran_twice
    # the first run's report folder against the study file's latest study run (the changed one)
    proc = compare_cli(folder, uri, folder / "reports0", "study.toml", "--out", folder / "changed")
    assert proc.returncode == 1, describe_result(proc)
    assert f"A: report folder {folder / 'reports0'}" in proc.stdout
    assert "config: 3 of 6 trials resolve to another config: dropout/on seed 0" in proc.stdout
    assert "dropout/on" in proc.stdout and "NOT shown equivalent" in proc.stdout
    assert "FAILED" in proc.stdout and "dropout/off" in proc.stdout
    md = (folder / "changed" / "index.md").read_text()
    assert "**Failed**" in md and "level dropout/on: B - A = -0." in md
    # the report folder of the second run against the first run: the same
    proc = compare_cli(folder, uri, folder / "reports1", first, "--out", folder / "again")
    assert proc.returncode == 0, describe_result(proc)


@pytest.mark.slow
def test_compare_usage_errors_exit_2_with_what_would_be_right(ran_twice):
    from dlbench.errors import UserError
    from dlbench.session import compare_runs
    from dlbench.settings import CompareOptions

    folder, uri, (first, _, _) = ran_twice
    proc = compare_cli(folder, uri, "nope/", first, "--out", folder / "errors")  # as a user sees it
    assert proc.returncode == 2 and "nope/: no such report folder" in proc.stderr, describe_result(proc)
    assert "Traceback" not in proc.stderr
    cases = [  # the same errors, in this process
        (["0123456789abcdef0123456789abcdef", first], "no such run"),
        ([first, str(folder)], "not a report folder"),
        ([first, first, "--metric", "test_loss"], "give --margin"),
        ([first, first, "--metric", "test_acc"], "did you mean"),
        ([first, first, "--study", ("dropuot",)], "--study 'dropuot': neither side has trials of it"),
    ]
    for args, message in cases:
        a, b, *rest = args
        option = {"study": "only"}.get(rest[0].removeprefix("--"), rest[0].removeprefix("--")) if rest else None
        options = CompareOptions(a=a, b=b, tracking_uri=uri, out_dir=folder / "errors",
                                 **({option: rest[1]} if rest else {}))
        with pytest.raises(UserError) as err:
            compare_runs(options)
        assert message in str(err.value).lower() or message in str(err.value), str(err.value)


def test_the_margin_comes_from_the_command_line_else_the_study_file_else_the_default(tmp_path):
    from dlbench.comparison import Side, compare
    from dlbench.config import DEFAULT_MARGIN, read_study_file

    sf = read_study_file(write_study(tmp_path, """\
        [study]
        margin = 0.05
        [studies.dropout.levels]
        off = {}
        [studies.depth]
        margin = 0.01
        [studies.depth.levels]
        shallow = {}
        """))
    assert {s.name: s.margin for s in sf.studies} == {"dropout": 0.05, "depth": 0.01}
    a = pd.concat([trials({"off": [0.60, 0.61, 0.62]}), trials({"shallow": [0.60, 0.61, 0.62]}, study="depth")])
    b = a.assign(test_accuracy=a["test_accuracy"] + 0.03)  # every seed 3 points up
    claims = pd.DataFrame(columns=["study", "claim", "verdict"])
    side_a = Side("a", "a", a, claims, {s.name: s.margin for s in sf.studies})
    side_b = Side("b", "b", b, claims)
    by_file = compare(side_a, side_b).levels.set_index("study")
    assert by_file.loc["dropout", "margin"] == 0.05 and by_file.loc["dropout", "equivalent"]
    assert by_file.loc["depth", "margin"] == 0.01 and not by_file.loc["depth", "equivalent"]
    given = compare(side_a, side_b, margin=0.02).levels
    assert (given["margin"] == 0.02).all() and not given["equivalent"].any()
    assert (compare(Side("a", "a", a, claims), side_b).levels["margin"] == DEFAULT_MARGIN).all()


@pytest.mark.parametrize("value", [0, -0.1, "2%", True])
def test_a_margin_that_is_not_a_positive_number_is_refused_at_its_key(tmp_path, value):
    from dlbench.config import read_study_file
    from dlbench.errors import ConfigError

    text = f"[studies.dropout]\nmargin = {value!r}\n[studies.dropout.levels]\noff = {{}}\n".replace("True", "true")
    with pytest.raises(ConfigError) as err:
        read_study_file(write_study(tmp_path, text))
    assert "studies.dropout.margin: expected a positive number such as 0.02" in str(err.value)

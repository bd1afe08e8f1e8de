"""Levels named in a study file (reference, claims) in every form, and interaction claims: their
syntax, their errors, their statistics against a hand computation, and their row in a report.
The syntax is documented in docs/claims.md."""

from __future__ import annotations

import math
import os
import tomllib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import TINY_BASELINE, write_study
from scipy import stats

from dlbench.config import Claim, InteractionClaim, parse_study_file, read_study_file
from dlbench.errors import ConfigError
from dlbench.report import report_from_results
from dlbench.report.stats import contrast, holm, judge_claims, welch
from dlbench.study import expand
from dlbench.train import TrialResult

ALPHA = 0.05
TWO = """
[studies.t.factors.reg]
none = {}
l2 = { regularizers = [{ name = "l2", weight = 1e-3 }] }
[studies.t.factors.width]
256 = {}
1024 = {}
"""
ONE = """
[studies.d.levels]
off = {}
on = {}
"""
INTERACTION = ('{ interaction = { factor = "reg", level = "l2", beats = "none", across = { width = ["1024", "256"] } }, '
               'metric = "test_accuracy" }')


def study_of(text: str):
    (study,) = parse_study_file(tomllib.loads(text), Path("study.toml")).studies
    return study


def problems_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as err:
        study_of(text)
    return err.value.problems


# -- one level syntax: reference, level, beats --------------------------------------------------------


@pytest.mark.parametrize("written", [
    '"reg=l2,width=1024"', '"width=1024,reg=l2"', '"reg=l2, width=1024"', '" reg = l2 ,  width = 1024 "',
    '{ reg = "l2", width = "1024" }', '{ width = 1024, reg = "l2" }',
    '"l2, width=1024"',  # the label its runs are named by, copied from the MLflow UI or the report
])
def test_every_form_names_the_same_level_in_reference_and_claims(written):
    study = study_of(f"[studies.t]\nreference = {written}\n"
                     f"claims = [{{ level = {written}, beats = 'reg=none,width=256' }}]\n" + TWO)
    cell = {"reg": "l2", "width": "1024"}
    assert study.reference == cell
    assert list(study.reference) == ["reg", "width"]  # the study's factor order, whatever the written order
    (claim,) = study.claims
    assert claim.level == cell and claim.beats == {"reg": "none", "width": "256"}


@pytest.mark.parametrize("written, expected", [
    ('"reg=l2"', {"reg": "l2", "width": "256"}),  # a reference may name some factors: the others keep their first
    ('{ width = 1024 }', {"reg": "none", "width": "1024"}),
    ('"width = 1024"', {"reg": "none", "width": "1024"}),
])
def test_a_reference_may_name_some_factors(written, expected):
    assert study_of(f"[studies.t]\nreference = {written}\n" + TWO).reference == expected


@pytest.mark.parametrize("written", ['"on"', '"d=on"', '"d = on"', '{ d = "on" }'])
def test_one_factor_forms(written):
    study = study_of(f"[studies.d]\nreference = {written}\nclaims = [{{ level = {written}, beats = 'off' }}]\n" + ONE)
    assert study.reference == {"d": "on"} and study.claims[0].level == {"d": "on"}


def test_an_integer_names_a_level_in_any_place():
    text = "[studies.n]\nreference = 8\nclaims = [{ level = 8, beats = { n = 1 } }]\n[studies.n.levels]\n1 = {}\n8 = {}\n"
    study = study_of(text)
    assert study.reference == {"n": "8"} and study.claims[0].beats == {"n": "1"}


def test_a_level_name_holding_a_comma_in_the_label_form():
    text = "[studies.t]\nreference = 'width=1024, reg=a,b'\n" + TWO.replace("none = {}", 'none = {}\n"a,b" = {}')
    assert study_of(text).reference == {"reg": "a,b", "width": "1024"}


@pytest.mark.parametrize("key", ["reference", "level"])
@pytest.mark.parametrize("written, problem", [
    ('"reg=l3,width=1024"', "{path}.reg: unknown level 'l3' of factor 'reg'; choose one of: l2, none"),
    ('"reg=l2,width=1025"', "{path}.width: unknown level '1025' of factor 'width'; did you mean '1024'? "
                            "choose one of: 1024, 256"),
    ('"reg=l2,widht=1024"', "{path}.widht: unknown factor; did you mean 'width'? choose one of: reg, width"),
    ('{ reg = "nonee", width = 256 }', "{path}.reg: unknown level 'nonee' of factor 'reg'; did you mean 'none'?"),
    ('"reg=l2,reg=none"', "{path}: 'reg=l2,reg=none' names factor 'reg' more than once"),
    ('"l2"', "{path}: 'l2' names no level: in a study of several factors write its label as runs show it, "
             "\"l2, width=1024\", factor=level pairs"),
    ('"reg=l2;width=256"', "{path}.reg: unknown level 'l2;width=256' of factor 'reg'"),
    ("3.5", "{path}: expected a"),
])
def test_a_wrong_level_gets_the_key_path_and_the_nearest_names(key, written, problem):
    path = {"reference": "studies.t.reference", "level": "studies.t.claims[0].level"}[key]
    line = (f"reference = {written}" if key == "reference"
            else f"claims = [{{ level = {written}, beats = 'reg=none,width=256' }}]")
    problems = problems_of(f"[studies.t]\n{line}\n" + TWO)
    assert len(problems) == 1 and problems[0].startswith(problem.format(path=path)), problems


def test_one_factor_errors_keep_their_message():
    (problem,) = problems_of("[studies.d]\nreference = 'of'\n" + ONE)
    assert problem == "studies.d.reference: unknown level 'of' of factor 'd'; did you mean 'off'? choose one of: off, on"
    (problem,) = problems_of("[studies.d]\nclaims = [{ level = 'd=onn', beats = 'off' }]\n" + ONE)
    assert problem.startswith("studies.d.claims[0].level: unknown level 'onn' of factor 'd'; did you mean 'on'?")


def test_a_claim_must_name_every_factor_but_a_reference_need_not():
    (problem,) = problems_of("[studies.t]\nclaims = [{ level = 'reg=l2', beats = 'reg=none,width=256' }]\n" + TWO)
    assert problem == "studies.t.claims[0].level: name a level of every factor of the study (missing: width)"


# -- interaction claims: syntax -----------------------------------------------------------------------


def test_an_interaction_claim_parses_into_its_four_cells():
    study = study_of(f"[studies.t]\nclaims = [{INTERACTION}]\n" + TWO)
    (claim,) = study.claims
    assert isinstance(claim, InteractionClaim)
    assert (claim.factor, claim.across, claim.level, claim.beats, claim.at, claim.than) == \
        ("reg", "width", "l2", "none", "1024", "256")
    assert claim.level_at == {"reg": "l2", "width": "1024"} and claim.beats_at == {"reg": "none", "width": "1024"}
    assert claim.level_than == {"reg": "l2", "width": "256"} and claim.beats_than == {"reg": "none", "width": "256"}
    assert str(claim) == "reg=l2 beats reg=none on test_accuracy by more at width=1024 than at width=256"
    assert claim.higher_is_better


def test_an_interaction_claim_takes_every_level_form_and_the_factor_in_either_place():
    # the levels of `factor` and of `across` in any form of the one level syntax, integers included
    text = ('[studies.t]\nclaims = [{ interaction = { factor = "width", level = 1024, beats = "width=256", '
            'across = { reg = [{ reg = "none" }, "l2"] } }, metric = "test_loss" }]\n' + TWO)
    (claim,) = study_of(text).claims
    assert claim.level_at == {"reg": "none", "width": "1024"} and claim.beats_than == {"reg": "l2", "width": "256"}
    assert not claim.higher_is_better


@pytest.mark.parametrize("inner, problem", [
    ('{ factor = "rg", level = "l2", beats = "none", across = { width = ["1024", "256"] } }',
     "studies.t.claims[0].interaction.factor: unknown factor string 'rg'; did you mean 'reg'?"),
    ('{ factor = "reg", level = "l3", beats = "none", across = { width = ["1024", "256"] } }',
     "studies.t.claims[0].interaction.level: unknown level 'l3' of factor 'reg'; choose one of: l2, none"),
    ('{ factor = "reg", level = "l2", beats = "none", across = { width = ["1024", "265"] } }',
     "studies.t.claims[0].interaction.across.width[1]: unknown level '265' of factor 'width'; did you mean '256'?"),
    ('{ factor = "reg", level = "l2", beats = "none", across = { widht = ["1024", "256"] } }',
     "studies.t.claims[0].interaction.across.widht: not the other factor of the study; did you mean 'width'?"),
    ('{ factor = "reg", level = "l2", beats = "none", across = { reg = ["l2", "none"] } }',
     "studies.t.claims[0].interaction.across.reg: not the other factor of the study; it is the other factor, 'width'"),
    ('{ factor = "reg", level = "l2", beats = "none", across = { width = ["1024"] } }',
     "studies.t.claims[0].interaction.across.width: expected two levels of 'width'"),
    ('{ factor = "reg", level = "l2", beats = "none", across = { width = ["1024", 1024] } }',
     "studies.t.claims[0].interaction.across.width: the same level twice ('1024')"),
    ('{ factor = "reg", level = "l2", beats = "reg=l2", across = { width = ["1024", "256"] } }',
     "studies.t.claims[0].interaction: level and beats name the same level ('l2')"),
    ('{ factor = "reg", level = "l2", beats = "none" }', "studies.t.claims[0].interaction: missing across;"),
    ('{ factor = "reg", level = "l2", beats = "none", across = { width = ["1024", "256"] }, by = 1 }',
     "studies.t.claims[0].interaction.by: unknown key; choose one of: across, beats, factor, level"),
    ('"reg"', "studies.t.claims[0].interaction: expected a table"),
])
def test_interaction_claims_are_validated_with_the_key_path(inner, problem):
    problems = problems_of(f"[studies.t]\nclaims = [{{ interaction = {inner} }}]\n" + TWO)
    assert len(problems) == 1 and problems[0].startswith(problem), problems


def test_interaction_claim_keys_and_study_shape():
    (problem,) = problems_of(f"[studies.t]\nclaims = [{INTERACTION[:-2]}, level = 'l2' }}]\n" + TWO)
    assert problem == "studies.t.claims[0].level: unknown key; choose one of: interaction, metric"
    (problem,) = problems_of(f"[studies.d]\nclaims = [{INTERACTION}]\n" + ONE)
    assert problem.startswith("studies.d.claims[0].interaction: an interaction claim compares the effect of one factor")
    assert "exactly two factors (this one has 1)" in problem
    (problem,) = problems_of(f"[studies.t]\nclaims = [{INTERACTION.replace('test_accuracy', 'test_acc')}]\n" + TWO)
    assert problem.startswith("studies.t.claims[0].metric: unknown metric string 'test_acc'; did you mean 'test_accuracy'?")
    (problem,) = problems_of("[studies.t]\nclaims = [{ interactoin = {}, level = 'reg=l2,width=256', "
                             "beats = 'reg=none,width=256' }]\n" + TWO)
    assert problem == ("studies.t.claims[0].interactoin: unknown key; did you mean 'interaction'? "
                       "choose one of: beats, interaction, level, metric")


# -- interaction claims: statistics -------------------------------------------------------------------

# l2 and none at widths 1024 and 256, three seeds each: means .82, .72, .62, .60
CELLS = {("l2", "1024"): [0.80, 0.82, 0.84], ("none", "1024"): [0.70, 0.71, 0.75],
         ("l2", "256"): [0.60, 0.65, 0.61], ("none", "256"): [0.58, 0.60, 0.62]}


def frame_of(cells: dict[tuple, list[float]], factors=("reg", "width")) -> pd.DataFrame:
    return pd.DataFrame([{**{f"factor.{f}": lvl for f, lvl in zip(factors, cell)}, "seed": i, "status": "finished",
                          "test_accuracy": v} for cell, values in cells.items() for i, v in enumerate(values)])


def interaction(metric: str = "test_accuracy") -> InteractionClaim:
    return InteractionClaim("reg", "width", {"reg": "l2", "width": "1024"}, {"reg": "none", "width": "1024"},
                            {"reg": "l2", "width": "256"}, {"reg": "none", "width": "256"}, metric)


def test_the_difference_of_differences_against_a_hand_computation():
    # estimate (.82 - .72) - (.62 - .60) = .08; variances .0004, .0007, .0007, .0004 over n = 3 each:
    # se^2 = .0022 / 3; Welch-Satterthwaite df = (.0022/3)^2 / (sum (v_i/3)^2 / 2) = 2 * .0022^2 / 1.3e-6
    se = math.sqrt(0.0022 / 3)
    df = 2 * 0.0022 ** 2 / 1.3e-6
    assert df == pytest.approx(7.446154, rel=1e-6)
    t = 0.08 / se
    p = 2 * stats.t.sf(t, df)
    half = stats.t.ppf(0.975, df) * se

    c = contrast(list(CELLS.values()), (1, -1, -1, 1))
    assert (c.estimate, c.se, c.df, c.t, c.p) == pytest.approx((0.08, se, df, t, p), rel=1e-9)
    assert (c.ci_low, c.ci_high) == pytest.approx((0.08 - half, 0.08 + half), rel=1e-9)
    assert c.ns == (3, 3, 3, 3) and c.p == pytest.approx(0.0197, abs=5e-4)

    (row,) = judge_claims(frame_of(CELLS), [interaction()], ALPHA).to_dict("records")
    assert row["kind"] == "interaction" and row["verdict"] == "supported"
    assert (row["diff"], row["ci_low"], row["ci_high"], row["p"], row["p_holm"], row["df"]) == \
        pytest.approx((0.08, 0.08 - half, 0.08 + half, p, p, df), rel=1e-9)
    assert (row["mean"], row["mean_beats"], row["n"], row["n_beats"]) == pytest.approx((0.10, 0.02, 3, 3))
    assert row["level"] == "l2 − none at width=1024" and row["beats"] == "l2 − none at width=256"
    assert row["why"].startswith("significant at alpha = 0.05, in the claimed direction: the effect of l2 vs none "
                                 "on test_accuracy is larger at width=1024 than at width=256 by +0.080 (95% CI +0.017 "
                                 "to +0.143; l2 − none = +0.100 at width=1024, +0.020 at width=256; higher "
                                 "test_accuracy is better), Welch–Satterthwaite t-test of the difference of "
                                 "differences p = 0.020 (df = 7.4), Holm-corrected over 1 claim p = 0.020, "
                                 "n = 3, 3, 3, 3")


def test_two_groups_make_welch_and_a_loss_reverses_the_direction():
    a, b = [0.5, 0.6, 0.7, 0.65], [0.4, 0.42, 0.41]
    c, d = contrast([a, b], (1, -1)), welch(a, b)
    assert (c.estimate, c.ci_low, c.ci_high, c.t, c.df, c.p) == pytest.approx((d.diff, d.ci_low, d.ci_high, d.t, d.df, d.p))
    assert c.p == pytest.approx(stats.ttest_ind(a, b, equal_var=False).pvalue)
    frame = frame_of(CELLS).rename(columns={"test_accuracy": "test_loss"})
    (row,) = judge_claims(frame, [interaction("test_loss")], ALPHA).to_dict("records")
    assert row["verdict"] == "contradicted" and "lower test_loss is better" in row["why"]


def test_an_interaction_without_two_seeds_in_a_cell_is_inconclusive():
    cells = {**CELLS, ("none", "256"): [0.58]}
    (row,) = judge_claims(frame_of(cells), [interaction()], ALPHA).to_dict("records")
    assert row["verdict"] == "inconclusive" and math.isnan(row["p"]) and row["n_beats"] == 1
    assert row["why"].startswith("cannot test: the cells l2/none at width=1024, then at width=256, have n = 3, 3, 3, 1")


def test_holm_corrects_the_interaction_with_the_other_claims():
    claims = [Claim({"reg": "l2", "width": "1024"}, {"reg": "none", "width": "1024"}), interaction(),
              Claim({"reg": "l2", "width": "256"}, {"reg": "none", "width": "256"})]
    table = judge_claims(frame_of(CELLS), claims, ALPHA)
    assert table["kind"].tolist() == ["difference", "interaction", "difference"]
    p = [welch(CELLS["l2", "1024"], CELLS["none", "1024"]).p,
         contrast(list(CELLS.values()), (1, -1, -1, 1)).p,
         welch(CELLS["l2", "256"], CELLS["none", "256"]).p]
    assert table["p"].tolist() == pytest.approx(p)
    # by hand: sorted ascending, the i-th (from 0) of 3 becomes max over j <= i of (3 - j) p_(j)
    order = np.argsort(p)
    expected = np.empty(3)
    running = 0.0
    for i, k in enumerate(order):
        running = max(running, min(1.0, (3 - i) * p[k]))
        expected[k] = running
    assert table["p_holm"].tolist() == pytest.approx(expected.tolist())
    assert table["p_holm"].tolist() == pytest.approx(holm(p).tolist())
    assert "Holm-corrected over 3 claims" in table["why"][1]
    assert table["verdict"].tolist() == [("supported" if ph < ALPHA else "inconclusive") for ph in expected]


# -- interaction claims in a report -------------------------------------------------------------------


def fake_result(test_accuracy: float) -> TrialResult:
    final = {"train_loss": 1.0, "train_accuracy": 0.9, "val_loss": 1.0, "val_accuracy": 0.5, "test_loss": 1.0,
             "test_accuracy": test_accuracy, "lr": 0.0}
    return TrialResult(status="finished", epochs_run=2, final=final, history=[final])


def test_a_report_of_synthetic_results_has_the_interaction_row(tmp_path, registry):
    text = (TINY_BASELINE + "[study]\nseeds = 3\n[studies.t]\nreference = 'reg=none, width=256'\n"
            f"claims = [{INTERACTION}, {{ level = 'reg=l2,width=1024', beats = {{ reg = 'none', width = 1024 }} }}]\n"
            + TWO)
    sf = read_study_file(write_study(tmp_path, text))
    trials = expand(sf, registry)
    results = [(t, fake_result(CELLS[t.levels["reg"], t.levels["width"]][t.seed])) for t in trials]
    (folder,) = report_from_results(sf, results, tmp_path / "reports")
    claims = pd.read_csv(folder / "claims.csv")
    assert claims["kind"].tolist() == ["interaction", "difference"]
    row = claims.iloc[0]
    assert row["claim"] == "reg=l2 beats reg=none on test_accuracy by more at width=1024 than at width=256"
    assert row["diff"] == pytest.approx(0.08) and row["verdict"] in ("supported", "inconclusive")
    assert row["p_holm"] == pytest.approx(holm(claims["p"])[0])
    index = (folder / "index.md").read_text()
    assert "the effect of l2 vs none on test_accuracy is larger at width=1024 than at width=256 by +0.080" in index
    assert "an interaction claim" in index
    comparisons = pd.read_csv(folder / "comparisons.csv")
    assert set(comparisons["reference"]) >= {"none, width=256"}


@pytest.mark.slow  # a whole study, end to end: 8 trials of a tiny MLP
def test_a_two_factor_study_run_reports_its_interaction_claim(study_in_process, tmp_path):
    _, _, runs = study_in_process("""
[study]
name = "inter"
seeds = 2
[studies.t]
reference = "reg=none, width=8"
claims = [{ interaction = { factor = "reg", level = "l2", beats = "none", across = { width = [16, "8"] } } },
          { level = "reg=l2,width=16", beats = { reg = "none", width = 16 } }]
[studies.t.factors.reg]
none = {}
l2 = { regularizers = [{ name = "l2", weight = 1e-2 }] }
[studies.t.factors.width]
8 = { architecture = { width = 8 } }
16 = { architecture = { width = 16 } }
""", os.environ.get("DLBENCH_TEST_DEVICE", "cpu"))
    assert len(runs) == 8
    folder = tmp_path / "reports" / "t"
    claims = pd.read_csv(folder / "claims.csv")
    assert claims["kind"].tolist() == ["interaction", "difference"]
    row = claims.iloc[0]
    assert row["claim"] == "reg=l2 beats reg=none on test_accuracy by more at width=16 than at width=8"
    assert row["level"] == "l2 − none at width=16" and row["beats"] == "l2 − none at width=8"
    assert row["verdict"] in ("supported", "contradicted", "inconclusive") and math.isfinite(row["p"])
    assert row["diff"] == pytest.approx(row["mean"] - row["mean_beats"])
    assert row["p_holm"] == pytest.approx(holm(claims["p"])[0])
    assert "the effect of l2 vs none on test_accuracy is" in (folder / "index.md").read_text()

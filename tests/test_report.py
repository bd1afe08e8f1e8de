"""Reports built from trial results: one row per level, n = the finished seeds."""

from __future__ import annotations

import csv

import pytest
from conftest import TINY_BASELINE, write_study

from dlbench.config import read_study_file
from dlbench.report import report_from_results
from dlbench.study import expand
from dlbench.train import TrialResult


def fake_result(test_accuracy: float, status: str = "finished", lr: float = 0.0) -> TrialResult:
    final = {"train_loss": 1.0, "train_accuracy": 0.5, "val_loss": 1.0, "val_accuracy": 0.5, "test_loss": 1.0,
             "test_accuracy": test_accuracy, "lr": lr}
    return TrialResult(status=status, epochs_run=2, final=final if status != "failed" else {},
                       history=[final], error="Traceback ...\nRuntimeError: x" if status == "failed" else None)


def summary(folder):
    with open(folder / "summary.csv", newline="") as f:
        return list(csv.DictReader(f))


def report_for(tmp_path, registry, text, accuracies):
    sf = read_study_file(write_study(tmp_path, text))
    trials = expand(sf, registry)
    results = [(t, fake_result(accuracies[t.level][i])) for t in trials
               for i in [[u for u in trials if u.level == t.level].index(t)]]
    (folder,) = report_from_results(sf, results, tmp_path / "reports")
    return folder


def test_summary_statistics_per_level(tmp_path, registry):
    text = TINY_BASELINE + "[study]\nseeds = 3\n[studies.drop.levels]\noff = {}\non = { regularizers = ['dropout'] }\n"
    folder = report_for(tmp_path, registry, text, {"off": [0.5, 0.6, 0.7], "on": [0.8, 0.8, 0.8]})
    rows = {r["drop"]: r for r in summary(folder)}
    assert list(rows) == ["off", "on"]
    assert int(rows["off"]["n"]) == 3
    assert float(rows["off"]["mean"]) == pytest.approx(0.6)
    assert float(rows["off"]["std"]) == pytest.approx(0.1)
    # Student-t 95% interval with 2 degrees of freedom: mean +- 4.303 * std / sqrt(3)
    assert float(rows["off"]["ci95_high"]) == pytest.approx(0.6 + 4.302653 * 0.1 / 3 ** 0.5, rel=1e-5)
    assert float(rows["on"]["std"]) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("study", ["lr", "train_loss", "test_accuracy"])
def test_study_named_like_a_metric_keeps_its_levels(tmp_path, registry, study):
    # A learning-rate study is naturally called "lr"; its factor column must hold the level
    # names, not be overwritten by the final "lr" metric of each trial.
    text = TINY_BASELINE + f"""
[study]
seeds = 2
[studies.{study}.levels]
small = {{ optimizer = {{ lr = 0.001 }} }}
large = {{ optimizer = {{ lr = 0.1 }} }}
"""
    folder = report_for(tmp_path, registry, text, {"small": [0.2, 0.3], "large": [0.6, 0.7]})
    rows = summary(folder)
    assert [r[study] for r in rows] == ["small", "large"]
    assert [int(r["n"]) for r in rows] == [2, 2]
    assert float(rows[1]["mean"]) == pytest.approx(0.65)
    index = (folder / "index.md").read_text()
    assert "| small | 2 |" in index and "| large | 2 |" in index

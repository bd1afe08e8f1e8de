"""The numbers dlbench logs read as what they mean: a float32 (a loss, a norm, a learning rate) as
its shortest decimal, an accuracy as the exact fraction of its split; the study run's summary to 4
significant digits."""
import math

import numpy as np
import pytest
import torch

from dlbench.reproduce import compare
from dlbench.tracking.observer import shortest
from dlbench.study_progress import progress_line
from dlbench.tracking.study_run import About, level_table


def test_a_float32_is_logged_as_its_shortest_decimal_and_reads_back_the_same():
    loss = torch.nn.functional.cross_entropy(torch.tensor([[0.3, -1.2, 2.0]]), torch.tensor([1])).item()
    assert repr(loss) == "3.4016711711883545"  # float32's value in float64: noise digits
    assert repr(shortest(loss)) == "3.4016712"
    assert np.float32(shortest(loss)) == np.float32(loss)  # the same float32: nothing lost
    assert shortest(float(np.float32(0.002))) == 0.002  # a constant learning rate reads 0.002


@pytest.mark.parametrize("value", [680 / 1000, 1 / 3, 0.6053333333333333, 1e300, -0.0, math.inf])
def test_an_exact_fraction_or_a_float64_is_logged_unchanged(value):
    assert shortest(value) == value and repr(shortest(value)) == repr(value)
    assert math.isnan(shortest(math.nan))


def test_reproduce_takes_a_full_float32_and_its_shortest_decimal_for_the_same_value():
    loss = float(np.float32(0.2945295))
    ok, largest, compared, _ = compare({"train_loss": [(0, loss)]}, {"train_loss": [(0, shortest(loss))]}, 0.0)
    assert ok and largest[2] == 0.0 and compared == 1


def test_the_study_run_description_gives_each_level_to_4_significant_digits():
    table = level_table({"off": [0.605, 0.59, 0.62], "on": [0.64]})
    assert table.splitlines()[2:] == ["| off | 0.605 | 0.015 | 3 |", "| on | 0.64 | – | 1 |"]
    about = About("Two ablations.", (("dropout", "Does dropout help?"), ("depth", "")))
    text = about.description({"dropout": {"a|b": [0.6053333333, 0.6]}})
    assert text.startswith("Two ablations.\n\n**dropout**: Does dropout help?\n\n| level | test accuracy, mean |")
    assert "| a\\|b | 0.6027 | 0.003771 | 2 |" in text  # a level's "|" escaped: the table keeps its columns
    assert text.endswith("\n\n**depth**")  # no results yet: the study's name alone


def test_a_description_of_many_long_levels_fits_in_a_tag():
    long = {f"{'x' * 190}-{i}": [0.5, 0.6] for i in range(60)}
    about = About("", (("a", "?"), ("b", "?")))
    text = about.description({"a": long, "b": long})
    assert len(text) <= 8000  # MLflow refuses a longer tag value
    # with the progress line a running study puts on top of it (dlbench status, the UI) too
    progress = {"total": 120000, "done": 99999, "finished": 99999, "diverged": 0, "failed": 0, "pruned": 0,
                "running": 64, "elapsed_s": 360000.0, "eta_s": 7200.0, "updated": 1796600000.0}
    assert len(progress_line(progress)) + 2 + len(text) <= 8000
    assert text.count("\n\n50 more levels: see the study's report.") == 2  # 10 rows of each, then the rest
    assert level_table({"on": [0.5]}, 0) == "1 level: see the study's report."

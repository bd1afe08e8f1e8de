"""Tuning inside studies: search spaces as study-file errors, seeded and exact searches, stages,
pruning, resume, and Bayesian search against random search on a cheap objective."""

from __future__ import annotations

import io
import math
import re
import statistics
from pathlib import Path

import pytest
from conftest import TINY_BASELINE, cli_env, describe_result, run_cli, sqlite_uri, write_study

from dlbench import hookimpl
from dlbench.config import parse_study_file, read_study_file
from dlbench.errors import ConfigError
from dlbench.plugins import load_plugins
from dlbench.study import expand_plan
from dlbench.train import TrialResult
from dlbench.tuning.pruning import prune_rule
from dlbench.tuning.space import Param, Pruning

CPU = "cpu"


def searches_of(raw_study: dict, registry, baseline: dict | None = None, seeds: int = 2):
    raw = {"study": {"name": "t", "seeds": seeds}, "baseline": baseline or {"optimizer": {"name": "sgd", "lr": 0.1}},
           "studies": {"s": raw_study}}
    return expand_plan(parse_study_file(raw, Path("t.toml")), registry).searches


def drive(search, objective) -> list[dict]:
    """Run ``search`` on a synthetic objective (no training): every tuning trial's values, in
    ask order; the search's final trials are made at the end."""
    asked = []
    while (trials := search.ready()) and trials[0].is_tuning:
        for trial in trials:
            asked.append(trial.tuning.params)
            value = objective(trial.tuning.params)
            search.record(trial, TrialResult("finished", final={"val_accuracy": value}, history=[{"val_accuracy": value}]))
    return asked


LR_SPACE = {"optimizer.lr": {"log_uniform": [1e-4, 1.0]}}


# -- the study file: a bad search space is a study-file error -----------------------------------


@pytest.mark.parametrize("tune, expected", [
    ({"space": {"optimizer.lr": {"uniform": [0.5, 0.5]}}, "trials": 4}, "empty range [0.5, 0.5]"),
    ({"space": {"optimizer.lr": {"log_uniform": [-1.0, 1.0]}}, "trials": 4}, "a log scale needs positive bounds"),
    ({"space": {"optimizer.lr": {"uniform": [0.1]}}, "trials": 4}, "expected [low, high]"),
    ({"space": {"optimizer.lr": []}, "trials": 4}, "non-empty list"),
    ({"space": {}, "trials": 4}, "a search space is a table of config keys"),
    ({"space": LR_SPACE}, "trials: missing"),
    ({"space": LR_SPACE, "trials": 4, "metric": "test_accuracy"}, "use a validation metric"),
    ({"space": LR_SPACE, "trials": 4, "strategy": "bayes"}, "unknown strategy"),
    ({"space": LR_SPACE, "strategy": "grid"}, "needs its number of values"),
    ({"space": {"optimizer.lr": {"log_uniform": [1e-3, 1.0], "points": 3}}, "strategy": "grid", "trials": 4},
     "the grid has 3 points per level: trials = 3"),
    ({"space": LR_SPACE, "trials": 4, "prune": "sometimes"}, "unknown pruner"),
    ({"space": LR_SPACE, "stages": [{"trials": 4, "narrow": 0.5}]}, "narrow applies to later stages"),
])
def test_a_bad_tune_table_is_a_study_file_error_naming_the_key(tune, expected):
    raw = {"studies": {"s": {"levels": {"a": {}}, "tune": tune}}}
    with pytest.raises(ConfigError) as err:
        parse_study_file(raw, Path("t.toml"))
    text = str(err.value)
    assert "t.toml" in text and "studies.s.tune" in text
    assert expected in text


def test_a_key_the_config_does_not_have_or_a_bound_it_refuses_is_an_error(registry):
    with pytest.raises(ConfigError) as err:
        searches_of({"levels": {"a": {}}, "tune": {"trials": 4, "space": {"optimizer.lrr": {"uniform": [0.1, 0.2]}}}},
                    registry)
    assert "studies.s.tune.space.\"optimizer.lrr\": 'optimizer.lrr' is not a setting of level 'a'" in str(err.value)
    assert "optimizer.lr" in str(err.value)  # the suggestion
    with pytest.raises(ConfigError) as err:  # the learning rate must be positive: the low bound is not
        searches_of({"levels": {"a": {}}, "tune": {"trials": 4, "space": {"optimizer.lr": {"uniform": [-0.1, 0.2]}}}},
                    registry)
    assert "the low bound -0.1 does not fit level 'a'" in str(err.value)
    with pytest.raises(ConfigError) as err:  # an integer setting searched over floats
        searches_of({"levels": {"a": {}}, "tune": {"trials": 4, "space": {"architecture.width": {"uniform": [8, 64]}}}},
                    registry)
    assert "architecture.width" in str(err.value) and "does not fit" in str(err.value)
    with pytest.raises(ConfigError) as err:  # no validation split: nothing to tune on
        searches_of({"levels": {"a": {}}, "tune": {"trials": 4, "space": LR_SPACE}}, registry,
                    baseline={"val_fraction": 0.0})
    assert "tuning on val_accuracy needs a validation split, but level 'a' has val_fraction = 0" in str(err.value)


def test_cli_reports_a_bad_space_with_exit_2_and_no_traceback(tmp_path):
    path = write_study(tmp_path, TINY_BASELINE + """
        [studies.s.levels]
        a = {}
        [studies.s.tune]
        space = { "optimizer.lr" = { log_uniform = [0.0, 0.1] } }
        trials = 4
        """)
    proc = run_cli(["run", path, "--dry-run"], tmp_path)
    assert proc.returncode == 2, describe_result(proc)
    assert "Traceback" not in proc.stderr
    assert "studies.s.tune.space.\"optimizer.lr\".log_uniform: a log scale needs positive bounds" in proc.stderr


# -- searches -----------------------------------------------------------------------------------


def test_a_seeded_random_search_is_identical_twice_and_another_seed_differs(registry):
    def run(seed):
        (a, b) = searches_of({"levels": {"x": {}, "y": {"optimizer": {"momentum": 0.5}}},
                              "tune": {"strategy": "random", "trials": 10, "seed": seed, "space": LR_SPACE}}, registry)
        return drive(a, lambda p: -p["optimizer.lr"]), drive(b, lambda p: p["optimizer.lr"])

    first, again, other = run(3), run(3), run(4)
    assert first == again
    assert first[0] == first[1]  # each level tries the same points: a paired, fair comparison
    assert first[0] != other[0]
    assert len({p["optimizer.lr"] for p in first[0]}) == 10


def test_budgets_are_exact_and_every_level_gets_the_same(registry):
    searches = searches_of({"levels": {"x": {}, "y": {}, "z": {}},
                            "tune": {"strategy": "tpe", "batch": 3, "space": LR_SPACE,
                                     "stages": [{"trials": 7, "epochs": 1}, {"trials": 5}]}}, registry, seeds=3)
    assert [s.total for s in searches] == [7 + 5 + 3] * 3
    indices = []
    for search in searches:
        asked = drive(search, lambda p: -abs(math.log10(p["optimizer.lr"]) + 2))
        assert len(asked) == 12
        assert [t.seed for t in search.finals] == [0, 1, 2]
        assert all(t.config["optimizer"]["lr"] == search.finals[0].tuning.params["optimizer.lr"] for t in search.finals)
        indices += list(range(search.first_index, search.first_index + search.total))
    assert indices == list(range(1, 46))  # every trial of the plan numbered once
    # what a running study shows of a search: its rounds (7 in rounds of 3, then 5: 3 + 2) and
    # its best value over every stage so far
    search = searches[0]
    assert search.rounds == 5
    best_number, best_value = search.best_so_far()
    values = {n: v for _, n, _, _, v in search.records}
    assert best_value == max(values.values()) and values[best_number] == best_value


def test_tuning_trials_have_their_own_seeds_and_stage_epochs(registry):
    (search,) = searches_of({"levels": {"a": {}}, "tune": {"space": LR_SPACE, "stages": [
        {"trials": 4, "epochs": 1}, {"trials": 2}]}}, registry, baseline={"epochs": 3}, seeds=3)
    trials = search.ready()
    assert [t.seed for t in trials] == [3, 4, 5, 6]  # never one of the study's seeds 0, 1, 2
    assert {t.config["epochs"] for t in trials} == {1}
    assert [t.run_name for t in trials] == [f"a, tune={n}" for n in range(1, 5)]
    assert [t.key for t in trials] == [f"s/a/tune={n}" for n in range(1, 5)]
    for t in trials:
        search.record(t, TrialResult("finished", final={"val_accuracy": t.config["optimizer"]["lr"]}))
    second = search.ready()
    assert {t.config["epochs"] for t in second} == {3}


def test_a_later_stage_searches_a_narrowed_range_around_the_best(registry):
    (search,) = searches_of({"levels": {"a": {}}, "tune": {"strategy": "random", "space": LR_SPACE, "stages": [
        {"trials": 8}, {"trials": 6, "narrow": 0.25}]}}, registry)
    asked = drive(search, lambda p: -abs(math.log10(p["optimizer.lr"]) + 2))  # best near 0.01
    first, second = asked[:8], asked[8:]
    best = max(first, key=lambda p: -abs(math.log10(p["optimizer.lr"]) + 2))["optimizer.lr"]
    width = math.log10(1.0) - math.log10(1e-4)
    for p in second:
        assert abs(math.log10(p["optimizer.lr"]) - math.log10(best)) <= 0.25 * width + 1e-9


def test_grid_search_tries_every_point_once(registry):
    (search,) = searches_of({"levels": {"a": {}}, "tune": {"strategy": "grid", "space": {
        "optimizer.lr": {"log_uniform": [1e-3, 1e-1], "points": 3}, "optimizer.momentum": [0.0, 0.9]}}}, registry)
    assert search.spec.budget == 6
    asked = drive(search, lambda p: p["optimizer.momentum"] - p["optimizer.lr"])
    assert [(round(p["optimizer.lr"], 6), p["optimizer.momentum"]) for p in asked] == [
        (0.001, 0.0), (0.001, 0.9), (0.01, 0.0), (0.01, 0.9), (0.1, 0.0), (0.1, 0.9)]
    assert search.finals[0].config["optimizer"] == {**search.finals[0].config["optimizer"], "lr": 0.001,
                                                    "momentum": 0.9}


def test_a_level_adds_to_its_study_space_and_unequal_budgets_are_said(registry):
    from dlbench.tuning.search import describe_plan

    searches = searches_of({"levels": {"off": {}, "on": {
        "regularizers": [{"name": "dropout"}],
        "tune": {"trials": 5, "space": {"regularizers.dropout.p_hidden": {"uniform": [0.1, 0.6]}}}}},
        "tune": {"trials": 3, "space": LR_SPACE}}, registry)
    off, on = searches
    assert [p.key for p in off.spec.space] == ["optimizer.lr"]
    assert [p.key for p in on.spec.space] == ["optimizer.lr", "regularizers.dropout.p_hidden"]
    trial = on.ready()[0]
    assert trial.config["regularizers"][0]["p_hidden"] == trial.tuning.params["regularizers.dropout.p_hidden"]
    plan = describe_plan(searches)
    assert "unequal budgets across levels: off=3, on=5" in plan
    assert "regularizers.dropout.p_hidden: uniform [0.1, 0.6]" in plan


@pytest.mark.slow  # a whole study, end to end
def test_bayesian_search_beats_random_search_on_average_with_the_same_budget(registry):
    """A cheap objective with its optimum inside the space (lr = 10^-2.5, momentum = 0.35):
    over five sampler seeds, TPE and the Gaussian process find better points than random
    search does with the same 16 trials in rounds of 4."""
    def objective(p):
        return -(math.log10(p["optimizer.lr"]) + 2.5) ** 2 - 4 * (p["optimizer.momentum"] - 0.35) ** 2

    def mean_best(strategy):
        bests = []
        for seed in range(5):
            (search,) = searches_of({"levels": {"a": {}}, "tune": {
                "strategy": strategy, "trials": 16, "seed": seed, "batch": 4,
                "space": {"optimizer.lr": {"log_uniform": [1e-5, 1.0]}, "optimizer.momentum": {"uniform": [0.0, 0.99]}}}},
                registry)
            bests.append(max(objective(p) for p in drive(search, objective)))
        return statistics.mean(bests)

    random_best = mean_best("random")
    assert mean_best("tpe") > random_best
    assert mean_best("gp") > random_best


# -- pruning ------------------------------------------------------------------------------------


def test_median_rule_stops_a_trial_behind_the_earlier_ones():
    ended = [[0.1, 0.5, 0.6, 0.7], [0.1, 0.4, 0.5, 0.6], [0.1, 0.3, 0.4, 0.5]]
    rule = prune_rule(Pruning("median", {"warmup_epochs": 1, "min_trials": 3}), "val_accuracy", True, ended, 4)
    assert rule.medians == {1: 0.4, 2: 0.5, 3: 0.6}  # from the warm-up on; never the last epoch (it has ended)
    assert rule.stops(1, [{"val_accuracy": 0.1}, {"val_accuracy": 0.35}])
    assert not rule.stops(1, [{"val_accuracy": 0.1}, {"val_accuracy": 0.45}])
    too_few = prune_rule(Pruning("median", {"warmup_epochs": 1, "min_trials": 4}), "val_accuracy", True, ended, 4)
    assert not too_few.stops(1, [{"val_accuracy": 0.1}, {"val_accuracy": 0.0}])


def test_halving_rule_keeps_the_best_third_at_each_rung():
    ended = [[0.0, 0.9, 0.9], [0.0, 0.8, 0.8], [0.0, 0.2, 0.2], [0.0, 0.1, 0.1], [0.0, 0.15, 0.15]]
    rule = prune_rule(Pruning("halving", {"min_epochs": 1, "reduction": 3}), "val_loss", False, ended, 9)
    assert set(rule.rungs) == {1, 3}
    # with its own value, 6 trials reached epoch 1: the best 2 go on (lower loss is better)
    assert not rule.stops(1, [{"val_loss": 1.0}, {"val_loss": 0.05}])
    assert not rule.stops(1, [{"val_loss": 1.0}, {"val_loss": 0.12}])
    assert rule.stops(1, [{"val_loss": 1.0}, {"val_loss": 0.5}])


def test_param_edges_and_narrowing_stay_inside_the_space():
    p = Param("optimizer.lr", "log_uniform", 1e-4, 1.0)
    assert p.edge(0.95) == "high" and p.edge(1.1e-4) == "low" and p.edge(0.01) is None
    narrow = p.narrowed(0.9, 0.25)
    assert narrow.high == 1.0 and math.isclose(math.log10(narrow.low), -1.0)
    ints = Param("architecture.width", "int", 8, 512, log=True).narrowed(500, 0.5)
    assert ints.high == 512 and 8 <= ints.low < 500


# -- end to end: a tuned study run, pruned, interrupted and resumed -------------------------------


TUNED = TINY_BASELINE + """
[study]
name = "tuned"
seeds = 2

[studies.lr]
reference = "off"
baseline = { epochs = 3 }

[studies.lr.levels]
off = {}
on = { regularizers = [{ name = "dropout", p_hidden = 0.2 }] }

[studies.lr.tune]
space = { "optimizer.lr" = { log_uniform = [0.0001, 0.5] } }
strategy = "tpe"
batch = 3
stages = [{ trials = 6, epochs = 2 }, { trials = 3 }]
prune = { name = "median", warmup_epochs = 1, min_trials = 2 }
"""


class StopAtTrial:
    """Ctrl-C, as the user would press it, when tuning trial ``number`` of level ``level`` ends epoch 1."""

    def __init__(self, level: str, number: int):
        self.level, self.number = level, number

    @hookimpl
    def dlbench_epoch_end(self, trial, epoch, metrics):
        if trial.is_tuning and trial.level == self.level and trial.tuning.number == self.number and epoch == 1:
            raise KeyboardInterrupt


def run_tuned(tmp_path: Path, store: Path, stop=None):
    from dlbench.runner import run_study
    from dlbench.settings import RunOptions

    plugins = load_plugins(None, autoload=False)
    if stop is not None:
        plugins.pm.register(stop, name="test-stop")
    sf = read_study_file(write_study(tmp_path, TUNED))
    plan = expand_plan(sf, plugins.registry)
    out = io.StringIO()
    options = RunOptions(device="cpu", tracking_uri=sqlite_uri(store), reports_dir=tmp_path / "reports", jobs=1,
                         checkpoint_dir=tmp_path / "ck", checkpoint_every=0)
    run = run_study(sf, plan.trials, plugins, options, out, searches=plan.searches)
    return run, out.getvalue()


def torch_cpu():
    import torch

    return torch.device("cpu")


def tuning_runs(store: Path) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(sqlite_uri(store))
    (exp,) = [e for e in client.search_experiments() if e.name == "tuned"]
    return client.search_runs([exp.experiment_id], max_results=1000)


@pytest.mark.slow  # a whole study, end to end
def test_a_tuned_study_runs_resumes_after_ctrl_c_and_spends_only_what_is_left(tmp_path, new_store):
    # the whole study in one `dlbench run` with its default worker processes: rounds reach idle workers
    whole = tmp_path / "whole"
    whole.mkdir()
    proc = run_cli(["run", write_study(whole, TUNED), "--tracking-uri", sqlite_uri(new_store(whole)),
                    "--checkpoint-dir", whole / "ck", "--jobs", "2"], whole, env=cli_env(autoload=False))
    assert proc.returncode == 0, describe_result(proc)
    assert "22 trials (18 of them tuning 2 levels) on cpu in 2 worker processes" in proc.stdout
    assert (whole / "reports" / "lr" / "index.md").is_file()
    reference = tuning_runs(whole / "mlflow.db")

    by_role: dict[str, list] = {}
    for r in reference:
        by_role.setdefault(r.data.tags["dlbench.role"], []).append(r)
    tuning = by_role["tuning"]
    assert len(tuning) == 2 * 9 and len(by_role["trial"]) == 2 * 2  # exact budgets, then the seeds
    pruned = [r for r in tuning if r.data.tags["dlbench.status"] == "pruned"]
    assert pruned and all(r.info.status == "FINISHED" for r in pruned)  # marked as pruned, never resumed
    assert all(int(r.data.tags["dlbench.epochs_run"]) == 1 for r in pruned)  # of stage 1's 2 epochs
    for r in by_role["trial"]:  # the final runs trained the best value of their level's last stage
        search = r.data.tags["dlbench.search"]
        best = max((t for t in tuning if t.data.tags["dlbench.search"] == search
                    and t.data.tags["dlbench.tuning.stage"] == "2" and t.data.tags["dlbench.status"] == "finished"),
                   key=lambda t: (t.data.metrics["val_accuracy"], -int(t.data.tags["dlbench.tuning.trial"])))
        assert r.data.tags["dlbench.tuned"] == best.data.tags["dlbench.tuning.params"]
        assert r.data.params["optimizer.lr"] == best.data.params["optimizer.lr"]

    # a tuning run re-runs bit for bit; a pruned one cannot (its rule came from the trials before it)
    from dlbench.errors import UserError
    from dlbench.reproduce import reproduce

    plugins = load_plugins(None, autoload=False)
    finished = next(r for r in tuning if r.data.tags["dlbench.status"] == "finished")
    verdict = reproduce(finished.info.run_id, plugins, tracking_uri=sqlite_uri(whole / "mlflow.db"),
                        device=torch_cpu(), tolerance=0.0, data_dir=None, stream=io.StringIO())
    assert verdict.reproduced and verdict.compared > 0
    with pytest.raises(UserError, match="pruned after epoch 1"):
        reproduce(pruned[0].info.run_id, plugins, tracking_uri=sqlite_uri(whole / "mlflow.db"), device=torch_cpu(),
                  tolerance=0.0, data_dir=None, stream=io.StringIO())

    # the same study, interrupted in the second round of level "on", then run again
    halves = tmp_path / "halves"
    halves.mkdir()
    store = new_store(halves)
    with pytest.raises(KeyboardInterrupt):
        run_tuned(halves, store, stop=StopAtTrial("on", 5))
    before = {r.info.run_id: r.info.status for r in tuning_runs(store) if r.data.tags["dlbench.role"] != "study"}
    assert "KILLED" in before.values()
    again, output = run_tuned(halves, store)
    # a trial's title holds spaces (lr/on, tune=3): its status follows two spaces
    trained = re.findall(r"^\[\d+/22\] \S+?/.+?  (?:finished|pruned|diverged) \(", output, flags=re.M)
    resumed = tuning_runs(store)
    children = [r for r in resumed if r.data.tags["dlbench.role"] != "study"]
    assert len(children) == len(tuning) + len(by_role["trial"])  # one run per trial: nothing twice, nothing lost
    assert again.skipped == sum(s == "FINISHED" for s in before.values())
    assert len(trained) == len(children) - again.skipped  # only what was left was spent

    def points(runs):
        return sorted((r.data.tags["dlbench.level"], int(r.data.tags.get("dlbench.tuning.trial", 0)),
                       r.data.tags.get("dlbench.tuning.params") or r.data.tags["dlbench.tuned"], r.data.tags["dlbench.seed"])
                      for r in runs if r.data.tags["dlbench.role"] != "study")

    # the resumed search, in one process, asked and chose exactly what the workers' uninterrupted one did
    assert points(resumed) == points(reference)


def test_dry_run_shows_the_search_plan(tmp_path):
    path = write_study(tmp_path, TUNED)
    proc = run_cli(["run", path, "--dry-run"], tmp_path, env=cli_env(autoload=False))
    assert proc.returncode == 0, describe_result(proc)
    out = proc.stdout
    assert "study 'lr': tuned, 2 level(s), each its own search:" in out
    assert "off: tpe search, 6 trials of 2 epochs then 3 trials narrowed to 0.25 (batch 3) on val_accuracy, " \
           "pruning median; 9 tuning trials, then the best with 2 seed(s) = 11 trials" in out
    assert "optimizer.lr: log-uniform [0.0001, 0.5]" in out
    assert "18 tuning trials and 4 final trials in 2 searches (22 in all)" in out
    assert "(dry run: nothing trained)" in out


def test_every_cell_of_several_factors_gets_a_search_and_a_choice_may_be_a_whole_setting(registry):
    raw = {"factors": {"act": {"relu": {"activation": "relu"}, "tanh": {"activation": "tanh"}},
                       "depth": {"1": {"architecture": {"depth": 1}}, "2": {"architecture": {"depth": 2}}}},
           "tune": {"strategy": "grid", "space": {
               "optimizer": [{"name": "adam", "lr": 0.01}, {"name": "sgd", "lr": 0.2}],
               "architecture.width": {"int": [16, 64], "log": True, "points": 3}}}}
    searches = searches_of(raw, registry, baseline={"optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9}})
    assert [s.level for s in searches] == ["relu, depth=1", "relu, depth=2", "tanh, depth=1", "tanh, depth=2"]
    trials = searches[3].ready()
    assert [t.run_name for t in trials][:2] == ["tanh, depth=2, tune=1", "tanh, depth=2, tune=2"]
    assert [(t.config["optimizer"]["name"], t.config["architecture"]["width"]) for t in trials] == [
        ("adam", 16), ("adam", 32), ("adam", 64), ("sgd", 16), ("sgd", 32), ("sgd", 64)]
    assert trials[0].config["architecture"]["depth"] == 2 and trials[0].config["activation"]["name"] == "tanh"
    # another plugin replaces the setting (Adam's own defaults); the same plugin merges (SGD keeps momentum)
    assert "momentum" not in trials[0].config["optimizer"] and trials[3].config["optimizer"]["momentum"] == 0.9

"""Expansion of a study file into trials, config hashes, and the flat params MLflow gets."""

from __future__ import annotations

import re

import pytest
from conftest import TINY_SEEDS, TINY_STUDY, write_plugin, write_study

from dlbench.config import read_study_file
from dlbench.errors import ConfigError
from dlbench.plugins import load_plugins
from dlbench.study import config_hash, expand, flatten
from dlbench.trial import level_label

HEX64 = re.compile(r"^[0-9a-f]{64}$")


@pytest.fixture
def tiny_trials(tmp_path, registry):
    return expand(read_study_file(write_study(tmp_path, TINY_STUDY)), registry)


def trials_of(tmp_path, text, registry, name="study.toml", only=None):
    return expand(read_study_file(write_study(tmp_path, text, name)), registry, only)


# -- expansion ----------------------------------------------------------------------------------


def test_counts_levels_times_seeds_full_factorial(tiny_trials):
    by_study = {}
    for t in tiny_trials:
        by_study.setdefault(t.study, []).append(t)
    assert len(by_study["dropout"]) == 2 * TINY_SEEDS
    assert len(by_study["act_depth"]) == 2 * 2 * TINY_SEEDS
    assert len(tiny_trials) == 12


def test_order_indices_levels_and_run_names(tiny_trials):
    assert [t.index for t in tiny_trials] == list(range(1, 13))
    assert [(t.study, t.level, t.seed) for t in tiny_trials] == [
        ("dropout", "off", 0), ("dropout", "off", 1), ("dropout", "on", 0), ("dropout", "on", 1),
        ("act_depth", "relu, depth=1", 0), ("act_depth", "relu, depth=1", 1),
        ("act_depth", "relu, depth=2", 0), ("act_depth", "relu, depth=2", 1),
        ("act_depth", "tanh, depth=1", 0), ("act_depth", "tanh, depth=1", 1),
        ("act_depth", "tanh, depth=2", 0), ("act_depth", "tanh, depth=2", 1),
    ]
    assert tiny_trials[0].levels == {"dropout": "off"}
    assert tiny_trials[6].levels == {"activation": "relu", "depth": "2"}
    # the run name: the level's label and the seed (the study is a tag); the identity keeps its old spelling
    assert tiny_trials[0].run_name == "off, seed=0"
    assert tiny_trials[11].run_name == "tanh, depth=2, seed=1"
    assert tiny_trials[11].title == "act_depth/tanh, depth=2, seed=1"
    assert tiny_trials[0].key == "dropout/off/seed=0"
    assert tiny_trials[11].key == "act_depth/activation=tanh,depth=2/seed=1"


def test_a_level_name_stands_alone_only_where_it_says_its_factor():
    names = {"dropout": ["on", "off"], "batchnorm": ["on", "off"], "act": ["relu", "tanh"], "depth": ["1", "2"]}
    both = {k: names[k] for k in ("dropout", "batchnorm")}
    assert level_label({"dropout": "on", "batchnorm": "off"}, both) == "dropout=on, batchnorm=off"  # on/off twice
    assert level_label({"act": "relu", "depth": "2"}, names) == "relu, depth=2"  # a number names no factor
    assert level_label({"act": "relu", "dropout": "on"}, names) == "relu, dropout=on"
    assert level_label({"dropout": "on"}, names) == "on"  # one factor: the level's name
    assert level_label({"act": "relu", "depth": "2"}) == "act=relu, depth=2"  # no study to tell: every factor


def test_trial_configs_are_resolved(tiny_trials):
    off, _, on, _ = tiny_trials[:4]
    assert off.config["regularizers"] == []
    assert on.config["regularizers"] == [{"name": "dropout", "p_input": 0.1, "p_hidden": 0.2}]
    relu2 = tiny_trials[6]
    assert relu2.config["architecture"] == {"name": "mlp", "width": 16, "depth": 2, "bias": True}
    tanh1 = tiny_trials[8]
    assert tanh1.config["activation"] == {"name": "tanh"}
    for t in tiny_trials:
        assert t.config["seed"] == t.seed
        assert t.config["epochs"] == 2
        assert t.config["optimizer"]["lr"] == 0.01


def test_only_filters_studies_in_file_order(tmp_path, registry):
    trials = trials_of(tmp_path, TINY_STUDY, registry, only=["act_depth"])
    assert {t.study for t in trials} == {"act_depth"}
    assert len(trials) == 8
    assert [t.index for t in trials] == list(range(1, 9))  # the progress line shows i/N
    both = trials_of(tmp_path, TINY_STUDY, registry, only=["act_depth", "dropout"])
    assert [t.study for t in both][:4] == ["dropout"] * 4  # file order, not the order asked for


def test_only_unknown_study(tmp_path, registry):
    path = write_study(tmp_path, TINY_STUDY)
    with pytest.raises(ConfigError) as info:
        expand(read_study_file(path), registry, ["dropot"])
    assert str(path) in str(info.value)
    assert info.value.problems == ["--study 'dropot': no such study; did you mean 'dropout'? "
                                   "choose one of: act_depth, dropout"]


def test_only_does_not_resolve_other_studies(tmp_path, registry):
    # a broken study the user did not ask for does not block the one they did
    text = "[studies.good.levels]\na = {}\n[studies.broken.levels]\nb = { optimizer = 'adm' }\n"
    assert len(trials_of(tmp_path, text, registry, only=["good"])) == 3
    with pytest.raises(ConfigError):
        trials_of(tmp_path, text, registry)


def test_study_overrides_apply_to_every_level(tmp_path, registry):
    text = "[study]\nseeds = 1\n[studies.s.baseline]\nepochs = 7\n[studies.s.levels]\na = {}\nb = { epochs = 3 }\n"
    trials = trials_of(tmp_path, text, registry)
    assert [t.config["epochs"] for t in trials] == [7, 3]


# -- hashes -------------------------------------------------------------------------------------


SAME_STUDY_REFORMATTED = """\
# the tiny study, written differently: key order, table style, int-for-float spelling
[studies.act_depth.factors.activation]
relu = { activation = { name = "relu" } }
tanh = { activation = "tanh" }

[studies.act_depth.factors.depth]
1 = { architecture = { depth = 1 } }
2 = { architecture = { depth = 2, name = "mlp" } }

[studies.dropout.levels]
off = {}

[studies.dropout.levels.on]
regularizers = [{ p_hidden = 0.2, p_input = 0.1, name = "dropout" }]

[baseline]
batch_size = 64
epochs = 2

[baseline.optimizer]
lr = 1e-2
name = "adam"
beta1 = 0.9
eps = 0.00000001
weight_decay = 0

[baseline.architecture]
depth = 1
width = 16
name = "mlp"

[baseline.dataset]
num_samples = 600
name = "mnist1d"

[study]
seeds = [0, 1]
name = "renamed"
"""


def test_hash_stable_across_key_order_formatting_and_int_float_spelling(tmp_path, registry, tiny_trials):
    other = trials_of(tmp_path, SAME_STUDY_REFORMATTED, registry, name="other.toml")
    assert {(t.run_name, t.config_hash) for t in other} == {(t.run_name, t.config_hash) for t in tiny_trials}
    assert {(t.run_name, t.group_hash) for t in other} == {(t.run_name, t.group_hash) for t in tiny_trials}


def test_hash_is_sha256_of_the_resolved_config(tiny_trials):
    for t in tiny_trials:
        assert HEX64.match(t.config_hash) and HEX64.match(t.group_hash)
        assert t.config_hash == config_hash(t.config)
        assert t.group_hash == config_hash({k: v for k, v in t.config.items() if k != "seed"})


def test_hash_differs_across_seeds_group_hash_does_not(tiny_trials):
    by_level = {}
    for t in tiny_trials:
        by_level.setdefault((t.study, t.level), []).append(t)
    for trials in by_level.values():
        assert len({t.config_hash for t in trials}) == TINY_SEEDS
        assert len({t.group_hash for t in trials}) == 1
    dropout_groups = {t.group_hash for t in tiny_trials if t.study == "dropout"}
    act_groups = {t.group_hash for t in tiny_trials if t.study == "act_depth"}
    assert len(dropout_groups) == 2 and len(act_groups) == 4


def test_same_config_same_hash_across_studies(tiny_trials):
    # dropout/off and act_depth/activation=relu,depth=1 are the same training setup
    off = [t for t in tiny_trials if t.study == "dropout" and t.level == "off"]
    relu1 = [t for t in tiny_trials if t.level == "relu, depth=1"]
    assert [t.config_hash for t in off] == [t.config_hash for t in relu1]


def test_hash_changes_with_any_option(tmp_path, registry):
    a = trials_of(tmp_path, "[baseline]\noptimizer = { lr = 0.1 }\n[studies.s.levels]\nx = {}\n", registry, "a.toml")
    b = trials_of(tmp_path, "[baseline]\noptimizer = { lr = 0.1000001 }\n[studies.s.levels]\nx = {}\n", registry,
                  "b.toml")
    assert a[0].config_hash != b[0].config_hash


def test_default_and_explicit_default_hash_alike(tmp_path, registry):
    a = trials_of(tmp_path, "[studies.s.levels]\nx = {}\n", registry, "a.toml")
    b = trials_of(tmp_path, "[baseline]\noptimizer = { name = 'sgd', lr = 0.1, momentum = 0 }\n"
                            "[studies.s.levels]\nx = {}\n", registry, "b.toml")
    assert [t.config_hash for t in a] == [t.config_hash for t in b]


def test_hash_stable_across_int_float_spelling_inside_lists(tmp_path, registry):
    # schedule "step" takes milestones: list[float]; [0.5, 1] and [0.5, 1.0] are the same schedule
    a = trials_of(tmp_path, "[baseline]\nschedule = { name = 'step', milestones = [0.5, 1] }\n"
                            "[studies.s.levels]\nx = {}\n", registry, "a.toml")
    b = trials_of(tmp_path, "[baseline]\nschedule = { name = 'step', milestones = [0.5, 1.0] }\n"
                            "[studies.s.levels]\nx = {}\n", registry, "b.toml")
    assert a[0].config["schedule"]["milestones"] == [0.5, 1.0]
    assert [t.config_hash for t in a] == [t.config_hash for t in b]


INT_DEFAULT_PLUGIN = """
from torch import nn
from dlbench import hookimpl

def scaled_tanh(*, scale: float = 1) -> nn.Module:
    \"\"\"tanh(x) * scale, a test plugin whose float option has an int default.\"\"\"
    return nn.Tanh()

@hookimpl
def dlbench_register_activations(register):
    register("scaled_tanh", scaled_tanh)
"""


def test_plugin_default_written_as_int_hashes_like_the_float(tmp_path):
    # `scale: float = 1` is ordinary Python; leaving the option out or writing scale = 1.0 in
    # the study file is the same trial and must have the same hash
    write_plugin(tmp_path, "int_default", INT_DEFAULT_PLUGIN)
    local = load_plugins(tmp_path / "plugins", autoload=False).registry
    omitted = trials_of(tmp_path, "[baseline]\nactivation = 'scaled_tanh'\n[studies.s.levels]\nx = {}\n", local,
                        "a.toml")
    explicit = trials_of(tmp_path, "[baseline]\nactivation = { name = 'scaled_tanh', scale = 1.0 }\n"
                                   "[studies.s.levels]\nx = {}\n", local, "b.toml")
    assert type(omitted[0].config["activation"]["scale"]) is float
    assert [t.config_hash for t in omitted] == [t.config_hash for t in explicit]


# -- flatten ------------------------------------------------------------------------------------


def test_flatten_nested_tables_bools_and_lists():
    flat = flatten({"optimizer": {"name": "sgd", "lr": 0.1, "nesterov": False},
                    "architecture": {"name": "mlp", "bias": True, "depth": 2},
                    "schedule": {"name": "step", "milestones": [0.5, 0.75]},
                    "epochs": 3, "seed": 0})
    assert flat == {"optimizer.name": "sgd", "optimizer.lr": "0.1", "optimizer.nesterov": "false",
                    "architecture.name": "mlp", "architecture.bias": "true", "architecture.depth": "2",
                    "schedule.name": "step", "schedule.milestones": "[0.5, 0.75]", "epochs": "3", "seed": "0"}


def test_flatten_keys_regularizers_by_name():
    a = flatten({"regularizers": [{"name": "dropout", "p_input": 0.2, "p_hidden": 0.5},
                                  {"name": "l2", "weight": 1e-4}]})
    assert a == {"regularizers": "dropout,l2", "regularizers.dropout.p_input": "0.2",
                 "regularizers.dropout.p_hidden": "0.5", "regularizers.l2.weight": "0.0001"}
    b = flatten({"regularizers": [{"name": "l2", "weight": 1e-4},
                                  {"name": "dropout", "p_input": 0.2, "p_hidden": 0.5}]})
    assert {k: v for k, v in a.items() if k != "regularizers"} == {k: v for k, v in b.items() if k != "regularizers"}
    assert flatten({"regularizers": []}) == {"regularizers": "none"}


def test_flatten_of_a_trial_config_has_every_option(tiny_trials):
    flat = flatten(tiny_trials[2].config)  # dropout/on/seed=0
    assert flat["regularizers"] == "dropout"
    assert flat["regularizers.dropout.p_input"] == "0.1"
    assert flat["optimizer.lr"] == "0.01"
    assert flat["architecture.depth"] == "1"
    assert flat["architecture.bias"] == "true"
    assert flat["dataset.num_samples"] == "600"
    assert flat["seed"] == "0"
    assert all(isinstance(v, str) for v in flat.values())

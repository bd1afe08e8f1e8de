"""The training loop: learning, reproducibility, regularizers, initializers, lifecycle hooks."""

from __future__ import annotations

import io
import math

import pytest
import torch
from conftest import TINY_BASELINE, sqlite_uri, write_study
from torch import nn

from dlbench import hookimpl
from dlbench.config import read_study_file
from dlbench.data import to_device
from dlbench.errors import ConfigError
from dlbench.plugins import load_plugins
from dlbench.slots import Slot, slots
from dlbench.study import expand
from dlbench.train import build, evaluate, run_trial, seed_everything

CPU = torch.device("cpu")
METRICS = {"train_loss", "train_accuracy", "val_loss", "val_accuracy", "test_loss", "test_accuracy", "lr"}


def train(trial, plugins, data):
    return run_trial(trial, plugins.registry, data, CPU, plugins.hook)


def built_model(trial, registry, data):
    seed_everything(trial.seed)
    model, *_ = build(trial, registry, data, CPU)
    return model


# -- learning and reproducibility ---------------------------------------------------------------


def test_a_trial_learns_well_above_chance(plugins, tiny_data, make_trials):
    (trial,) = make_trials({"epochs": 20})
    result = train(trial, plugins, tiny_data)
    assert result.status == "finished" and result.error is None
    assert result.epochs_run == 20
    assert len(result.history) == 21  # epoch 0 is the model before any step
    assert all(METRICS <= set(h) for h in result.history)
    first, last = result.history[0], result.history[-1]
    assert result.final == last
    assert last["train_loss"] < first["train_loss"] - 0.5
    assert last["train_accuracy"] > 0.4  # 10 classes: chance is 0.1
    assert last["test_accuracy"] >= 0.2
    assert all(0.0 <= h[k] <= 1.0 for h in result.history for k in METRICS if k.endswith("accuracy"))


def test_same_seed_is_bit_identical(plugins, tiny_data, make_trials):
    trials = make_trials({"regularizers": ["dropout", "input_noise"]}, seeds=[3])
    a = train(trials[0], plugins, tiny_data)
    b = train(trials[0], plugins, tiny_data)
    assert a.history == b.history  # exact float equality, every metric of every epoch


def test_different_seeds_differ(plugins, tiny_data, make_trials):
    t0, t1 = make_trials(seeds=[0, 1])
    a, b = train(t0, plugins, tiny_data), train(t1, plugins, tiny_data)
    assert a.history[0] != b.history[0]  # different initialization
    assert a.history[-1] != b.history[-1]


def test_epoch_zero_is_the_initialized_model(plugins, tiny_data, make_trials):
    # two optimizers, same seed: same initial model, so identical epoch 0, different epoch 1
    (adam,) = make_trials({"optimizer": {"name": "adam", "lr": 0.01}})
    (sgd,) = make_trials({"optimizer": {"name": "sgd", "lr": 0.1}})
    a, s = train(adam, plugins, tiny_data), train(sgd, plugins, tiny_data)
    drop_lr = ({k: v for k, v in h.items() if k != "lr"} for h in (a.history[0], s.history[0]))
    assert next(drop_lr) == next(drop_lr)
    assert a.history[1]["train_loss"] != s.history[1]["train_loss"]


def test_schedule_is_stepped_once_per_batch(plugins, tiny_data, make_trials):
    # 432 training examples / batch 64 = 7 steps an epoch; linear decay to 1% over all 14 steps
    (trial,) = make_trials({"optimizer": {"name": "sgd", "lr": 0.1}, "schedule": {"name": "linear"}})
    result = train(trial, plugins, tiny_data)
    lrs = [h["lr"] for h in result.history]
    assert lrs[0] == pytest.approx(0.1)
    assert lrs[1] == pytest.approx(0.1 * (1 - 0.5 * 0.99))
    assert lrs[2] == pytest.approx(0.1 * 0.01)


def test_validation_split_independent_of_trial_seed(registry):
    dataset = registry.get("dataset", "digits").factory()
    a, b = to_device(dataset, 0.25, CPU), to_device(dataset, 0.25, CPU)
    assert torch.equal(a.y_val, b.y_val) and torch.equal(a.x_train, b.x_train)
    assert len(a.y_val) == round(0.25 * len(dataset.y_train))
    assert len(a.y_val) + len(a.y_train) == len(dataset.y_train)
    assert a.content_hash == dataset.content_hash()
    none = to_device(dataset, 0.0, CPU)
    assert set(none.splits()) == {"train", "test"}


def test_evaluate_reports_every_split_in_eval_mode(registry, tiny_data, make_trials):
    (trial,) = make_trials({"regularizers": [{"name": "dropout", "p_input": 0.5, "p_hidden": 0.5}]})
    model = built_model(trial, registry, tiny_data)
    model.train()
    metrics = evaluate(model, tiny_data)
    assert set(metrics) == {f"{split}_{m}" for split in ("train", "val", "test") for m in ("loss", "accuracy")}
    assert metrics == evaluate(model, tiny_data)  # dropout is off at evaluation
    assert not model.training


# -- divergence and stopping --------------------------------------------------------------------


def test_diverging_trial_stops_with_status_diverged(plugins, tiny_data, make_trials):
    (trial,) = make_trials({"optimizer": {"name": "sgd", "lr": 1e6}, "epochs": 5})
    result = train(trial, plugins, tiny_data)
    assert result.status == "diverged"
    assert result.epochs_run < 5
    assert len(result.history) == result.epochs_run + 1
    assert not math.isfinite(result.final["train_loss"])
    assert math.isfinite(result.history[0]["train_loss"])


def test_early_stopping_ends_training_early(plugins, tiny_data, make_trials):
    # min_delta so large that no epoch counts as an improvement: stop after `patience` epochs
    (trial,) = make_trials({"epochs": 10, "regularizers": [{"name": "early_stopping", "patience": 2,
                                                             "min_delta": 100.0}]})
    result = train(trial, plugins, tiny_data)
    assert result.status == "finished"
    assert result.epochs_run == 3 and len(result.history) == 4 + 1  # + the restored epoch 1, evaluated again
    assert result.final == result.history[4] and _without_lr(result.final) == _without_lr(result.history[1])


def _without_lr(metrics):
    return {k: v for k, v in metrics.items() if k != "lr"}


# -- dropout ------------------------------------------------------------------------------------


def test_dropout_fills_input_and_hidden_slots(registry, tiny_data, make_trials):
    (trial,) = make_trials({"architecture": {"depth": 2},
                            "regularizers": [{"name": "dropout", "p_input": 0.1, "p_hidden": 0.3}]})
    model = built_model(trial, registry, tiny_data)
    (inp,) = slots(model, "input")
    hidden = slots(model, "hidden")
    assert len(hidden) == 2
    assert isinstance(inp.inner, nn.Dropout) and inp.inner.p == 0.1
    for s in hidden:
        assert isinstance(s.inner, nn.Dropout) and s.inner.p == 0.3
    assert sum(isinstance(m, nn.Dropout) for m in model.modules()) == 3
    # the input slot comes first in the forward pass
    order = [m for m in model.modules() if isinstance(m, Slot)]
    assert order[0] is inp


def test_dropout_with_zero_input_probability_leaves_input_slot_empty(registry, tiny_data, make_trials):
    (trial,) = make_trials({"regularizers": [{"name": "dropout", "p_input": 0.0, "p_hidden": 0.5}]})
    model = built_model(trial, registry, tiny_data)
    assert isinstance(slots(model, "input")[0].inner, nn.Identity)
    assert isinstance(slots(model, "hidden")[0].inner, nn.Dropout)


def test_no_dropout_without_the_regularizer(registry, tiny_data, make_trials):
    (trial,) = make_trials()
    model = built_model(trial, registry, tiny_data)
    assert not any(isinstance(m, nn.Dropout) for m in model.modules())


def test_dropout_is_random_in_training_and_deterministic_in_eval(registry, tiny_data, make_trials):
    (trial,) = make_trials({"regularizers": [{"name": "dropout", "p_input": 0.2, "p_hidden": 0.5}]})
    model = built_model(trial, registry, tiny_data)
    x = tiny_data.x_test
    with torch.no_grad():
        model.train()
        assert not torch.equal(model(x), model(x))
        model.eval()
        assert torch.equal(model(x), model(x))


def test_bad_dropout_probability_fails_before_any_build(make_trials):
    with pytest.raises(ConfigError, match=r"baseline.regularizers\[0\].p_hidden: must be >= 0 and < 1, got 1.0"):
        make_trials({"regularizers": [{"name": "dropout", "p_hidden": 1.0}]})


# -- greedy layer-wise pretraining --------------------------------------------------------------


def greedy(make_trials, registry, tiny_data, seed=0, **options):
    (trial,) = make_trials({"architecture": {"depth": 2},
                            "initializer": {"name": "greedy_autoencoder", "then": "xavier", **options}}, seeds=[seed])
    return built_model(trial, registry, tiny_data)


def test_greedy_autoencoder_pretrains_hidden_layers_only(registry, tiny_data, make_trials):
    (plain,) = make_trials({"architecture": {"depth": 2}, "initializer": "xavier"})
    xavier = built_model(plain, registry, tiny_data)
    pretrained = greedy(make_trials, registry, tiny_data, epochs=2)
    for i in range(2):
        assert not torch.equal(pretrained.blocks[i][0].weight, xavier.blocks[i][0].weight), f"hidden layer {i}"
    # the output layer keeps the `then` initialization
    assert torch.equal(pretrained.head.weight, xavier.head.weight)
    assert torch.count_nonzero(pretrained.head.bias) == 0


def test_greedy_autoencoder_with_zero_epochs_is_the_then_init(registry, tiny_data, make_trials):
    (plain,) = make_trials({"architecture": {"depth": 2}, "initializer": {"name": "kaiming"}})
    kaiming = built_model(plain, registry, tiny_data)
    untrained = greedy(make_trials, registry, tiny_data, epochs=0, then="kaiming")
    for key, value in kaiming.state_dict().items():
        assert torch.equal(untrained.state_dict()[key], value), key


def test_greedy_autoencoder_is_deterministic_per_seed(registry, tiny_data, make_trials):
    a = greedy(make_trials, registry, tiny_data, seed=0, epochs=1, corruption=0.3)
    b = greedy(make_trials, registry, tiny_data, seed=0, epochs=1, corruption=0.3)
    c = greedy(make_trials, registry, tiny_data, seed=1, epochs=1, corruption=0.3)
    for key, value in a.state_dict().items():
        assert torch.equal(b.state_dict()[key], value), key
    assert not torch.equal(a.blocks[0][0].weight, c.blocks[0][0].weight)


# -- lifecycle hooks ----------------------------------------------------------------------------


class Recorder:
    """An observer plugin: records every lifecycle call."""

    def __init__(self):
        self.events = []

    @hookimpl
    def dlbench_trial_start(self, trial, model, info):
        self.events.append(("start", trial.run_name, {"dataset_hash", "device", "num_params"} <= set(info)))
        assert isinstance(model, nn.Module)

    @hookimpl
    def dlbench_epoch_end(self, trial, epoch, metrics):
        self.events.append(("epoch", trial.run_name, epoch, METRICS <= set(metrics)))

    @hookimpl
    def dlbench_trial_end(self, trial, result):
        self.events.append(("end", trial.run_name, result.status, result.epochs_run))


OBSERVED_STUDY = TINY_BASELINE + """
[study]
name = "observed"
seeds = 1

[studies.obs.levels]
ok = {}
explodes = { optimizer = { name = "sgd", lr = 1e6 } }
"""


def test_observer_plugin_sees_the_whole_lifecycle(tmp_path, new_store):
    from dlbench.runner import run_study
    from dlbench.settings import RunOptions

    plugins = load_plugins(None, autoload=False)
    recorder = Recorder()
    plugins.pm.register(recorder, name="test-recorder")
    sf = read_study_file(write_study(tmp_path, OBSERVED_STUDY))
    trials = expand(sf, plugins.registry)
    out = io.StringIO()
    # jobs=1: an observer registered in this process sees the trials trained in this process
    # (worker processes load the plugins from their sources, and observe there)
    options = RunOptions(device="cpu", tracking_uri=sqlite_uri(new_store(tmp_path)), reports_dir=tmp_path / "reports",
                         jobs=1)
    run = run_study(sf, trials, plugins, options, out)

    ok, bad = "ok, seed=0", "explodes, seed=0"
    info_keys = True  # info has (at least) the documented dataset_hash, device and num_params
    expected_ok = [("start", ok, info_keys), *[("epoch", ok, e, True) for e in range(3)], ("end", ok, "finished", 2)]
    assert recorder.events[:5] == expected_ok
    rest = recorder.events[5:]
    assert rest[0] == ("start", bad, info_keys)
    assert rest[1] == ("epoch", bad, 0, True)
    assert rest[-1][:3] == ("end", bad, "diverged")
    assert [e[2] for e in rest[1:-1]] == list(range(rest[-1][3] + 1))  # epochs 0..where it diverged
    assert [r.status for _, r in run.results] == ["finished", "diverged"]
    assert run.count("diverged") == 1
    # the progress observer wrote one line per trial
    lines = out.getvalue().splitlines()
    assert any(line.startswith(f"[1/2] obs/{ok}  finished") for line in lines)
    assert any(line.startswith(f"[2/2] obs/{bad}  diverged") for line in lines)
    # the runner's own observers (the tracker, the progress line, the diagnostics) are gone afterwards
    assert [name for name, _ in plugins.pm.list_name_plugin() if name.startswith("dlbench.")
            and not name.startswith("dlbench.builtin")] == []
    assert plugins.pm.get_plugin("test-recorder") is recorder

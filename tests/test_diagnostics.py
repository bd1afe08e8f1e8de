"""Training diagnostics: what is recorded, when, and that recording never changes training."""

from __future__ import annotations

import math

import pytest
import torch

from dlbench import hookimpl
from dlbench.diagnostics import Diagnostics, activation_layers, weight_layers
from dlbench.errors import ConfigError
from dlbench.plugins import load_plugins
from dlbench.train import build, run_trial, seed_everything

CPU = torch.device("cpu")
EPOCHS = 2
BATCH = 64


def steps_per_epoch(data) -> int:
    return math.ceil(len(data.y_train) / BATCH)


class Recorder:
    """Keeps every diagnostics emission and every after_backward call."""

    def __init__(self):
        self.emitted: list[tuple[str, int, dict]] = []
        self.backward_steps: list[int] = []
        self.grads_present: list[bool] = []

    @hookimpl
    def dlbench_diagnostics(self, trial, step, values):
        self.emitted.append((trial.level, step, dict(values)))

    @hookimpl
    def dlbench_after_backward(self, trial, model, optimizer, step, data):
        self.backward_steps.append(step)
        self.grads_present.append(all(p.grad is not None for p in model.parameters()))


@pytest.fixture
def observed():
    """A fresh plugin manager with the Diagnostics observer and a recorder."""
    plugins = load_plugins(None, autoload=False)
    recorder = Recorder()
    plugins.pm.register(recorder, name="recorder")
    plugins.pm.register(Diagnostics(plugins.hook, plugins.registry), name="diagnostics")
    return plugins, recorder


def train(plugins, trial, data):
    return run_trial(trial, plugins.registry, data, CPU, plugins.hook)


def test_recorded_at_step_1_and_every_n_steps(observed, make_trials, tiny_data):
    plugins, recorder = observed
    (trial,) = make_trials({"diagnostics_every": 5, "architecture": {"name": "mlp", "width": 16, "depth": 2}})
    train(plugins, trial, tiny_data)
    total = EPOCHS * steps_per_epoch(tiny_data)
    # the hook sees every optimizer step once, numbered across epochs, with the gradients in place
    assert recorder.backward_steps == list(range(1, total + 1))
    assert all(recorder.grads_present)
    assert [step for _, step, _ in recorder.emitted] == [1, *range(5, total + 1, 5)]
    _, step, values = recorder.emitted[-1]
    expected = {f"diag per step/{kind}.layer{k}" for kind in ("grad_norm", "weight_norm") for k in range(3)}
    expected |= {f"diag per step/{kind}.layer{k}" for kind in ("act_mean", "act_std", "dead_relu") for k in range(2)}
    expected.add("diag per step/epoch")  # no diag.lr: lr is a per-epoch headline metric, not repeated here
    assert set(values) == expected
    assert values["diag per step/epoch"] == pytest.approx(step / steps_per_epoch(tiny_data))
    for k in range(3):
        assert values[f"diag per step/grad_norm.layer{k}"] > 0 and values[f"diag per step/weight_norm.layer{k}"] > 0
    for k in range(2):
        assert 0.0 <= values[f"diag per step/dead_relu.layer{k}"] <= 1.0
        assert values[f"diag per step/act_mean.layer{k}"] >= 0.0 and values[f"diag per step/act_std.layer{k}"] >= 0.0


@pytest.mark.parametrize("activation, kind", [("sigmoid", "act_saturation"), ("tanh", "act_saturation"),
                                              ("relu", "dead_relu"), ("gelu", None)])
def test_saturation_measure_follows_the_activation(observed, make_trials, tiny_data, activation, kind):
    plugins, recorder = observed
    (trial,) = make_trials({"diagnostics_every": 100, "activation": activation})
    train(plugins, trial, tiny_data)
    _, _, values = recorder.emitted[0]
    measured = {k.split("/")[1].split(".")[0] for k in values if k.startswith(("diag per step/act_saturation", "diag per step/dead_relu"))}
    assert measured == ({kind} if kind else set())
    assert "diag per step/act_mean.layer0" in values  # mean and std for every activation


def test_diagnostics_do_not_change_training(observed, make_trials, tiny_data):
    plugins, recorder = observed
    levels = {"off": {"diagnostics_every": 0}, "every": {"diagnostics_every": 1}}
    off, on = make_trials({"regularizers": [{"name": "dropout", "p_hidden": 0.3}]}, levels)
    first = train(plugins, off, tiny_data)
    second = train(plugins, on, tiny_data)
    assert not [e for e in recorder.emitted if e[0] == "off"]
    assert len([e for e in recorder.emitted if e[0] == "every"]) == EPOCHS * steps_per_epoch(tiny_data)
    assert first.history == second.history  # bit for bit: no RNG drawn, no gradient touched


def test_dead_units_and_saturation_on_known_weights(make_trials, registry, tiny_data):
    (relu,) = make_trials({"architecture": {"name": "mlp", "width": 16, "depth": 2}})
    seed_everything(0)
    model, _, optimizer, _ = build(relu, registry, tiny_data, CPU)
    with torch.no_grad():
        model.blocks[0][0].bias.fill_(-1e3)  # every unit of layer 0 negative for every input: dead
    diag = Diagnostics(hook=None, registry=registry)
    diag.dlbench_trial_start(trial=relu, model=model, info={})
    values = diag.measure(model, optimizer, tiny_data, relu.index)
    assert values["diag per step/dead_relu.layer0"] == 1.0
    assert values["diag per step/act_mean.layer0"] == 0.0 and values["diag per step/act_std.layer0"] == 0.0
    assert math.isnan(values["diag per step/grad_norm.layer0"])  # no backward yet: no gradient to measure
    assert model.training  # the probe pass restores train mode

    (sigmoid,) = make_trials({"activation": "sigmoid"})
    model, _, optimizer, _ = build(sigmoid, registry, tiny_data, CPU)
    with torch.no_grad():
        model.blocks[0][0].weight.mul_(1e4)  # pre-activations far from 0: sigmoid pinned at 0 or 1
    diag.dlbench_trial_start(trial=sigmoid, model=model, info={})
    values = diag.measure(model, optimizer, tiny_data, sigmoid.index)
    assert values["diag per step/act_saturation.layer0"] > 0.95


def test_layers_found_in_model_order(make_trials, registry, tiny_data):
    (trial,) = make_trials({"architecture": {"name": "mlp", "width": 8, "depth": 3},
                            "regularizers": [{"name": "dropout", "p_hidden": 0.5}], "activation": "identity"})
    model, *_ = build(trial, registry, tiny_data, CPU)
    assert [m.out_features for m in weight_layers(model)] == [8, 8, 8, tiny_data.num_classes]
    # identity activations are found; the slots' own Identity/Dropout modules are not activations
    assert len(activation_layers(model, torch.nn.Identity)) == 3


def test_diagnostics_every_is_validated(make_trials):
    with pytest.raises(ConfigError) as err:
        make_trials({"diagnostics_every": -1})
    assert "baseline.diagnostics_every: must be >= 0, got -1" in str(err.value)
    with pytest.raises(ConfigError) as err:
        make_trials({"diagnostics_every": 2.5})
    assert "baseline.diagnostics_every: expected int" in str(err.value)

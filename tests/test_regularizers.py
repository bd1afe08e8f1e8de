"""The regularizers of dropouts.py, normalization.py, augmentation.py and early stopping's restore
of the best weights: each does what its formula says, in training and at evaluation, alone and
in a stack."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY_BASELINE, NoHooks, StopAfter, write_study
from torch import nn

from dlbench import hookimpl
from dlbench.builtin.augmentation import Augment1d, AugmentImage
from dlbench.builtin.dropouts import (MC_EVAL_SEED, DropConnect, DropConnectLinear, DropoutTestScaling, MCDropout,
                                      ScaledDropout)
from dlbench.builtin.normalization import BatchNorm, GroupNorm, LayerNorm
from dlbench.builtin.regularizers import EarlyStopping
from dlbench.slots import Slot, slots
from dlbench.planning import Work, plan, stack_id
from dlbench.train import Checkpoints, run_trial
from dlbench.train_stack import run_stack


def mlp(registry, depth=2, width=16, input_shape=(40,)):
    activation = lambda: nn.ReLU()  # noqa: E731
    return registry.get("architecture", "mlp").factory(input_shape, 10, activation, depth=depth, width=width)


def without_lr(metrics):
    return {k: v for k, v in metrics.items() if k != "lr"}


# -- DropConnect --------------------------------------------------------------------------------


def test_dropconnect_replaces_the_hidden_linear_layers_and_keeps_the_output_layer(registry):
    model = DropConnect(p=0.3).wrap_model(mlp(registry))
    hidden = [m for block in model.hidden_blocks for m in block.modules() if isinstance(m, nn.Linear)]
    assert len(hidden) == 2 and all(type(m) is DropConnectLinear for m in hidden)  # still nn.Linear: initializers see it
    assert type(model.head) is nn.Linear
    with pytest.raises(ValueError, match="dropconnect: Sequential has no nn.Linear layer in its hidden_blocks"):
        DropConnect().wrap_model(nn.Sequential(nn.Linear(3, 2)))


def test_dropconnect_drops_a_fraction_p_of_the_weights_scaled_by_1_over_1_minus_p():
    layer = DropConnectLinear(200, 200, bias=False, p=0.3)
    nn.init.ones_(layer.weight)
    torch.manual_seed(0)
    effective = layer(torch.eye(200)).T  # row j, column i: the weight used from input i to unit j
    assert (effective == 0).float().mean().item() == pytest.approx(0.3, abs=0.01)  # 40 000 weights
    assert torch.allclose(effective[effective != 0], torch.tensor(1 / 0.7))
    torch.manual_seed(0)
    assert torch.equal(layer(torch.eye(200)).T, effective)  # drawn from the global RNG: the seed repeats it
    layer.eval()
    x = torch.randn(5, 200)
    assert torch.equal(layer(x), F.linear(x, layer.weight))  # full weights at evaluation


# -- dropout with test-time scaling ---------------------------------------------------------------


def test_dropout_test_scaling_keeps_units_unscaled_and_scales_by_the_keep_probability_at_evaluation():
    layer = ScaledDropout(0.4)
    x = torch.full((400, 100), 2.0)
    torch.manual_seed(0)
    out = layer(x)
    assert set(out.unique().tolist()) == {0.0, 2.0}  # kept units are not rescaled
    assert (out == 0).float().mean().item() == pytest.approx(0.4, abs=0.01)
    layer.eval()
    assert torch.equal(layer(x), x * 0.6)
    # the expected training activation equals the evaluation activation, as for inverted dropout
    assert out.mean().item() == pytest.approx(layer(x).mean().item(), rel=0.02)
    inverted = nn.Dropout(0.4)
    assert inverted(x).mean().item() == pytest.approx(inverted.eval()(x).mean().item(), rel=0.02)


def test_dropout_test_scaling_fills_the_input_and_hidden_slots(registry):
    model = DropoutTestScaling(p_input=0.1, p_hidden=0.3).wrap_model(mlp(registry))
    assert [s.inner.p.item() for s in slots(model, "input")] == [pytest.approx(0.1)]
    assert [s.inner.p.item() for s in slots(model, "hidden")] == [pytest.approx(0.3)] * 2


# -- MC dropout -----------------------------------------------------------------------------------


def test_mc_dropout_evaluation_averages_the_softmax_of_its_samples_without_touching_the_global_rng(registry):
    torch.manual_seed(1)
    model = MCDropout(p_input=0.1, p_hidden=0.5, samples=7).wrap_model(mlp(registry))
    x = torch.randn(12, 40)
    model.eval()
    state = torch.get_rng_state()
    first = model(x)
    assert torch.equal(torch.get_rng_state(), state)  # the trial's stream is where it was
    assert torch.equal(model(x), first)  # deterministic: the same masks every evaluation
    assert torch.allclose(first.exp().sum(1), torch.ones(12))  # log-probabilities

    torch.manual_seed(MC_EVAL_SEED)  # the formula by hand: log((1/T) sum_t softmax(f_t(x)))
    model.model.train()
    probs = torch.stack([F.softmax(model.model(x), 1) for _ in range(7)]).mean(0)
    assert torch.allclose(first, probs.log(), atol=1e-6)
    model.eval()
    dropout_off = model.model.eval()(x)  # the plain network (no averaging) predicts otherwise
    assert not torch.allclose(first, F.log_softmax(dropout_off, 1), atol=1e-3)
    assert all(not m.training for m in model.modules())  # evaluation left every module in eval mode


def test_mc_dropout_trains_like_dropout_and_does_not_stack(registry, make_trials):
    model = MCDropout(p_input=0.0, p_hidden=0.5).wrap_model(mlp(registry))
    model.train()
    x = torch.randn(4, 40)
    torch.manual_seed(3)
    a = model(x)
    torch.manual_seed(3)
    assert torch.equal(a, model.model(x))  # one stochastic pass: the wrapped model itself
    assert len(model.hidden_blocks) == 2  # layer-wise initializers still find the blocks
    works = plan(make_trials({"regularizers": [{"name": "mc_dropout"}]}, seeds=2), registry, 8)
    assert len(works) == 2 and "mc_dropout" in works[0].alone_because


# -- normalization ---------------------------------------------------------------------------------


def slotted(features: int, spatial_dims: int) -> nn.Module:
    """A handmade model: one norm slot, as an MLP (0), a 1-D (1) or a 2-D convolution (2) has it."""
    return nn.Sequential(Slot("norm", features, spatial_dims))


SHAPES = {0: (6, 4), 1: (6, 4, 5), 2: (6, 4, 3, 5)}


@pytest.mark.parametrize("spatial_dims", [0, 1, 2])
def test_batch_norm_uses_batch_statistics_in_training_and_running_ones_at_evaluation(spatial_dims):
    model = BatchNorm(momentum=0.1).wrap_model(slotted(4, spatial_dims))
    layer = model[0].inner
    assert type(layer) is (nn.BatchNorm2d if spatial_dims == 2 else nn.BatchNorm1d)
    x = torch.randn(SHAPES[spatial_dims]) * 3 + 1
    axes = [0, *range(2, x.dim())]  # every axis but the channels'
    out = model.train()(x)
    mean, var = x.mean(axes, keepdim=True), x.var(axes, unbiased=False, keepdim=True)
    assert torch.allclose(out, (x - mean) / torch.sqrt(var + 1e-5), atol=1e-5)  # Algorithm 1, gamma 1, beta 0
    assert torch.allclose(layer.running_mean, 0.1 * mean.flatten())  # r <- 0.9 r + 0.1 mu_B, r = 0 at first
    model.eval()
    one = model(x[:1])
    assert torch.equal(one, model(x)[:1])  # an example's evaluation does not depend on its batch
    assert not torch.allclose(one, out[:1], atol=1e-3)  # running statistics, not the batch's


@pytest.mark.parametrize("spatial_dims", [0, 1, 2])
def test_layer_norm_normalizes_each_example_over_all_its_units(spatial_dims):
    model = LayerNorm().wrap_model(slotted(4, spatial_dims))
    assert type(model[0].inner) is (nn.LayerNorm if spatial_dims == 0 else nn.GroupNorm)
    x = torch.randn(SHAPES[spatial_dims]) * 3 + 1
    axes = list(range(1, x.dim()))
    expected = (x - x.mean(axes, keepdim=True)) / torch.sqrt(x.var(axes, unbiased=False, keepdim=True) + 1e-5)
    assert torch.allclose(model.train()(x), expected, atol=1e-5)
    assert torch.equal(model.eval()(x[:1]), model(x)[:1])


@pytest.mark.parametrize("spatial_dims", [0, 1, 2])
def test_group_norm_normalizes_each_group_of_channels_of_each_example(spatial_dims):
    model = GroupNorm(groups=2).wrap_model(slotted(4, spatial_dims))
    x = torch.randn(SHAPES[spatial_dims]) * 3 + 1
    groups = x.reshape(x.shape[0], 2, -1)  # channels 0-1 and 2-3, with their positions
    expected = (groups - groups.mean(2, keepdim=True)) / torch.sqrt(groups.var(2, unbiased=False, keepdim=True) + 1e-5)
    assert torch.allclose(model(x), expected.view(x.shape), atol=1e-5)
    with pytest.raises(ValueError, match=r"group_norm: groups = 3 does not divide the \[4\] features"):
        GroupNorm(groups=3).wrap_model(slotted(4, spatial_dims))


def test_norms_fill_every_norm_slot_of_the_mlp_and_need_some(registry):
    model = BatchNorm().wrap_model(mlp(registry, depth=3))
    assert [type(s.inner) for s in slots(model, "norm")] == [nn.BatchNorm1d] * 3
    with pytest.raises(ValueError, match="layer_norm: Linear exposes no norm slots"):
        LayerNorm().wrap_model(nn.Linear(2, 2))


# -- augmentation -----------------------------------------------------------------------------------


def test_augment_1d_shifts_each_signal_by_at_most_max_shift():
    x = torch.randn(64, 20)
    torch.manual_seed(0)
    out, _ = Augment1d(max_shift=3, scale=0.0, noise_std=0.0).transform_batch(x, torch.zeros(64))
    rolls = torch.stack([x.roll(s, 1) for s in range(-3, 4)], 1)  # [B, 7, L]: every allowed circular shift
    matches = (rolls == out[:, None]).all(2)
    assert matches.any(1).all()  # each example is one of its own shifts
    assert len(set(matches.float().argmax(1).tolist())) == 7  # and the shifts vary per example
    zeros, _ = Augment1d(max_shift=3, padding="zeros", scale=0.0, noise_std=0.0).transform_batch(
        torch.ones(64, 20), torch.zeros(64))
    assert set((20 - zeros.sum(1)).tolist()) == {0.0, 1.0, 2.0, 3.0}  # what is shifted in is 0


def test_augment_1d_scales_each_signal_within_1_plus_minus_s_and_adds_noise_of_std_sigma():
    x = torch.randn(256, 40)
    out, _ = Augment1d(max_shift=0, scale=0.2, noise_std=0.0).transform_batch(x, torch.zeros(256))
    ratio = out / x
    assert torch.allclose(ratio, ratio[:, :1].expand_as(ratio), atol=1e-5)  # one amplitude per example
    assert 0.8 <= ratio.min() and ratio.max() <= 1.2 and ratio[:, 0].std() > 0.05
    noisy, _ = Augment1d(max_shift=0, scale=0.0, noise_std=0.5).transform_batch(x, torch.zeros(256))
    assert (noisy - x).std().item() == pytest.approx(0.5, rel=0.03)


def test_augment_image_crops_with_padding_and_flips_per_example():
    x = torch.rand(32, 3, 6, 6)
    flipped, _ = AugmentImage(padding=0, flip_probability=1.0).transform_batch(x, torch.zeros(32))
    assert torch.equal(flipped, x.flip(-1))
    torch.manual_seed(0)
    out, _ = AugmentImage(padding=2, flip_probability=0.0).transform_batch(x, torch.zeros(32))
    padded = F.pad(x, (2, 2, 2, 2))
    windows = torch.stack([padded[..., i:i + 6, j:j + 6] for i in range(5) for j in range(5)], 1)  # [B, 25, ...]
    matches = (windows == out[:, None]).flatten(2).all(2)
    assert matches.any(1).all() and len(set(matches.float().argmax(1).tolist())) > 10
    gray, _ = AugmentImage(padding=1).transform_batch(torch.rand(4, 8, 8), torch.zeros(4))  # (H, W) images
    assert gray.shape == (4, 8, 8)


def test_augmentations_refuse_data_of_the_wrong_rank_and_the_preflight_names_the_key(tmp_path, registry):
    from dlbench.config import read_study_file
    from dlbench.preflight import PreflightError, preflight
    from dlbench.study import expand

    with pytest.raises(ValueError, match=r"examples have shape \(8, 8\); for images \(H, W\) or \(C, H, W\) use "):
        Augment1d().transform_batch(torch.zeros(4, 8, 8), torch.zeros(4))
    sf = read_study_file(write_study(tmp_path, TINY_BASELINE + """
[studies.aug]
[studies.aug.levels.image]
regularizers = [{ name = "augment_image" }]
"""))
    with pytest.raises(PreflightError) as info:
        preflight(sf, expand(sf, registry), registry)
    assert ("studies.aug.levels.image.regularizers[0] (regularizer 'augment_image' [built-in]) raised ValueError: "
            "augment_image works on images") in str(info.value)
    assert "(40,); for 1-D signals use augment_1d (in transform_batch" in str(info.value)


@pytest.mark.parametrize("cls, options, x", [
    (Augment1d, {"max_shift": 2, "scale": 0.1, "noise_std": 0.1}, torch.randn(2, 5, 12)),
    (AugmentImage, {"padding": 1, "flip_probability": 0.5}, torch.rand(2, 5, 3, 4, 4)),
])
def test_a_stacked_augmentation_is_the_alone_one_over_the_members_examples(cls, options, x):
    y = torch.zeros(x.shape[:2])
    torch.manual_seed(0)
    together, _ = cls.stacked([cls(**options), cls(**options)]).transform_batch(x, y)
    torch.manual_seed(0)
    alone, _ = cls(**options).transform_batch(x.flatten(0, 1), y.flatten())
    assert torch.equal(together, alone.view(x.shape))
    off = {k: 0 for k in options}  # member 0 with every option off leaves its examples as they are
    mixed, _ = cls.stacked([cls(**off), cls(**options)]).transform_batch(x, y)
    assert torch.equal(mixed[0], x[0]) and not torch.equal(mixed[1], x[1])


# -- early stopping restores the best weights ------------------------------------------------------


def test_early_stopping_restores_exactly_the_weights_of_the_best_epoch():
    model = nn.Linear(3, 2)
    stopper = EarlyStopping(patience=2)
    states = {}
    for epoch, val_loss in enumerate([9.0, 1.0, 0.5, 0.7, 0.6], start=0):
        with torch.no_grad():
            model.weight.add_(1.0)
        states[epoch] = {k: v.clone() for k, v in model.state_dict().items()}
        stopper.epoch_end(model, epoch, {"val_loss": val_loss})
    assert stopper.best_epoch == 2 and stopper.should_stop(4, {})
    assert stopper.end_of_training(model)
    assert all(torch.equal(v, states[2][k]) for k, v in model.state_dict().items())
    off = EarlyStopping(restore_best=False)
    off.epoch_end(model, 1, {"val_loss": 1.0})
    off.epoch_end(model, 2, {"val_loss": 2.0})
    assert not off.end_of_training(model)


class Weights:
    """Keeps the trained model's weights at every epoch end (the model comes with trial_start)."""

    def __init__(self):
        self.model, self.states = None, []

    @hookimpl
    def dlbench_trial_start(self, trial, model, info):
        self.model = model

    @hookimpl
    def dlbench_epoch_end(self, trial, epoch, metrics):
        self.states.append({k: v.clone() for k, v in self.model.state_dict().items()})

    def __getattr__(self, name):
        return lambda **kwargs: None


STOP_AT_3 = {"epochs": 8, "regularizers": [{"name": "early_stopping", "patience": 2, "min_delta": 100.0}]}


def test_a_trial_ends_with_the_best_epochs_weights_and_their_metrics(make_trials, registry, tiny_data):
    (trial,) = make_trials(STOP_AT_3)  # no later epoch beats epoch 1 by 100: it stops after epoch 3
    weights = Weights()
    result = run_trial(trial, registry, tiny_data, torch.device("cpu"), weights)
    assert result.epochs_run == 3 and len(result.history) == 5
    assert all(torch.equal(v, weights.states[1][k]) for k, v in weights.states[4].items())
    assert not all(torch.equal(v, weights.states[1][k]) for k, v in weights.states[3].items())
    assert without_lr(result.final) == without_lr(result.history[1])


def test_a_resumed_trial_keeps_the_best_weights_from_its_checkpoint(tmp_path, make_trials, registry, tiny_data):
    (trial,) = make_trials(STOP_AT_3)
    uninterrupted = run_trial(trial, registry, tiny_data, torch.device("cpu"), NoHooks())

    checkpoints = Checkpoints(tmp_path / "t.pt", every_seconds=0)
    with pytest.raises(KeyboardInterrupt):
        run_trial(trial, registry, tiny_data, torch.device("cpu"), StopAfter(2), checkpoints)
    assert torch.load(tmp_path / "t.pt", weights_only=False)["regularizers"][0]["best_state"] is not None
    resumed = run_trial(trial, registry, tiny_data, torch.device("cpu"), NoHooks(), checkpoints)
    assert resumed.history == uninterrupted.history


def test_stacked_members_restore_their_own_best_weights(make_trials, registry, tiny_data):
    trials = make_trials({"epochs": 5}, levels={
        "patient": {"regularizers": [{"name": "early_stopping", "patience": 9, "min_delta": 100.0}]},
        "impatient": {"regularizers": [{"name": "early_stopping", "patience": 1, "min_delta": 100.0}]}})
    together = stacked(trials, registry, tiny_data)
    for trial in trials:
        alone = run_trial(trial, registry, tiny_data, torch.device("cpu"), NoHooks())
        assert_agree(together[trial.index].history, alone.history)
    assert {t.level: len(together[t.index].history) for t in trials} == {"patient": 7, "impatient": 4}


# -- stacked == alone -------------------------------------------------------------------------------


def stacked(trials, registry, data):
    results = {}
    run_stack(Work(tuple(trials), stack_id(trials)), registry, data, torch.device("cpu"), NoHooks(),
              lambda trial, result: results.__setitem__(trial.index, result))
    return results


def assert_agree(a, b, epochs=None, tol=1e-4):
    assert len(a) == len(b)
    for epoch, (x, y) in list(enumerate(zip(a, b)))[:epochs]:
        for key in x:
            assert x[key] == pytest.approx(y[key], rel=tol, abs=tol), (epoch, key)


@pytest.mark.parametrize("regularizer, random", [
    ({"name": "layer_norm"}, False), ({"name": "group_norm", "groups": 4}, False),
    ({"name": "dropconnect", "p": 0.3}, True), ({"name": "dropout_test_scaling", "p_hidden": 0.3}, True),
    ({"name": "augment_1d"}, True),
])
def test_stackable_regularizers_agree_with_the_trial_alone(regularizer, random, make_trials, registry, tiny_data):
    trials = make_trials({"regularizers": [regularizer], "epochs": 2}, seeds=[0, 1])
    assert len(plan(trials, registry, 8)) == 1
    together = stacked(trials, registry, tiny_data)
    for trial in trials:
        alone = run_trial(trial, registry, tiny_data, torch.device("cpu"), NoHooks())
        # with random draws inside the step a member is another draw: the initial evaluation agrees
        assert_agree(together[trial.index].history, alone.history, epochs=1 if random else None)


def test_norms_with_other_numbers_in_their_layers_do_not_stack(make_trials, registry):
    trials = make_trials(levels={"g2": {"regularizers": [{"name": "group_norm", "groups": 2}]},
                                 "g4": {"regularizers": [{"name": "group_norm", "groups": 4}]}})
    assert len(plan(trials, registry, 8)) == 2
    assert math.isclose(LayerNorm(eps=1e-3).stack_key(), 1e-3)


@pytest.mark.parametrize("norm", [{"name": "batch_norm"}, {"name": "layer_norm"}, {"name": "group_norm", "groups": 2}])
def test_norms_in_every_registered_architecture_are_correct_in_eval_mode(norm, registry):
    from dlbench.contract import input_shapes

    for arch in [c for c in registry if c.kind == "architecture"]:
        for shape in input_shapes(arch):
            torch.manual_seed(0)
            model = arch.factory(shape, 3, nn.ReLU)
            options = {k: v for k, v in norm.items() if k != "name"}
            model = registry.get("regularizer", norm["name"]).factory(**options).wrap_model(model)
            assert slots(model, "norm") and all(not isinstance(s.inner, nn.Identity) for s in slots(model, "norm"))
            x = torch.rand(4, *shape)
            model.train()(x).sum().backward()
            model.eval()
            assert torch.allclose(model(x[:1]), model(x)[:1], atol=1e-5), (arch.name, shape)

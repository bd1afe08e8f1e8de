"""Stacked trials: which trials stack, and a stacked member agrees with the trial trained alone.

The guarantee tested here (and stated in the README): a member of a stack starts from exactly the
weights and draws exactly the batches it would alone, so its epoch-0 metrics agree to float32
rounding (1e-6) and, without random regularizers, every later epoch too (1e-4 over these short
runs: the batched kernels round differently); with dropout its masks are another draw, so means
over seeds agree, single runs do not. The same stack run twice is bit-identical.
"""

from __future__ import annotations

import math
import os
import re

import pytest
import torch

from conftest import NoHooks, StopAfter
from dlbench import hookimpl
from dlbench.execution import execute
from dlbench.plugins import load_plugins
from dlbench.planning import Work, plan, stack_id, stack_key
from dlbench.train import Checkpoints, run_trial
from dlbench.train_stack import run_stack

# DLBENCH_TEST_DEVICE=cuda runs these on a GPU (benchmarks/gpu_check.sh does)
DEVICE = torch.device(os.environ.get("DLBENCH_TEST_DEVICE", "cpu"))
FIRST_EPOCH_TOL = 1e-6
EPOCH_TOL = 1e-4


@pytest.fixture(scope="module")
def tiny_data(registry):
    """The tiny MNIST-1D of conftest, on the device these tests run on."""
    from dlbench.data import to_device
    from dlbench.determinism import set_determinism

    set_determinism(True, DEVICE)
    return to_device(registry.get("dataset", "mnist1d").factory(num_samples=600), 0.1, DEVICE)


class Recorder:
    """Records every lifecycle event by trial index."""

    def __init__(self):
        self.events = []

    def __getattr__(self, name):  # used directly as the hook relay: the other hooks do nothing
        if name.startswith("dlbench_"):
            return lambda **kwargs: None
        raise AttributeError(name)

    @hookimpl
    def dlbench_trial_start(self, trial, model, info):
        self.events.append(("start", trial.index, info))

    @hookimpl
    def dlbench_epoch_end(self, trial, epoch, metrics):
        self.events.append(("epoch", trial.index, epoch))

    @hookimpl
    def dlbench_diagnostics(self, trial, step, values):
        self.events.append(("diag", trial.index, step))

    @hookimpl
    def dlbench_trial_end(self, trial, result):
        self.events.append(("end", trial.index, result.status))


def stacked(trials, registry, data, hook=None, checkpoints=None):
    """Train ``trials`` as one stack; their results by trial index."""
    results, order = {}, []

    def finish(trial, result):
        results[trial.index] = result
        order.append(trial.index)

    run_stack(Work(tuple(trials), stack_id(trials)), registry, data, DEVICE, hook or NoHooks(), finish, checkpoints)
    assert sorted(order) == sorted(t.index for t in trials)  # every member ends exactly once
    return {i: results[i] for i in order}  # in the order they left the stack


def alone(trial, registry, data):
    return run_trial(trial, registry, data, DEVICE, NoHooks())


def assert_agree(a, b, tol_first=FIRST_EPOCH_TOL, tol=EPOCH_TOL):
    assert len(a.history) == len(b.history)
    for epoch, (x, y) in enumerate(zip(a.history, b.history)):
        assert set(x) == set(y)
        for key in x:
            limit = tol_first if epoch == 0 else tol
            assert x[key] == pytest.approx(y[key], rel=limit, abs=limit), (epoch, key, x[key], y[key])


# -- the planner --------------------------------------------------------------------------------


def test_seeds_of_a_level_stack_and_levels_differing_in_numbers_too(make_trials, registry):
    trials = make_trials({"epochs": 2}, levels={"slow": {"optimizer": {"lr": 0.001}}, "fast": {}}, seeds=3)
    works = plan(trials, registry, max_size=8)
    assert len(works) == 1 and [t.index for t in works[0].members] == [1, 2, 3, 4, 5, 6]


def test_different_shapes_or_optimizers_do_not_stack(make_trials, registry):
    trials = make_trials(levels={"narrow": {}, "wide": {"architecture": {"width": 32}},
                                 "sgd": {"optimizer": {"name": "sgd"}}}, seeds=2)
    works = plan(trials, registry, max_size=8)
    assert [[t.level for t in w.members] for w in works] == [["narrow"] * 2, ["wide"] * 2, ["sgd"] * 2]


def test_a_large_group_splits_into_near_equal_stacks(make_trials, registry):
    trials = make_trials(seeds=10)
    assert [len(w.members) for w in plan(trials, registry, max_size=8)] == [5, 5]
    assert all(not w.stacked and "off" in w.alone_because for w in plan(trials, registry, max_size=1))


def test_pretraining_counts_in_a_units_cost_and_a_mixed_stack_goes_with_its_largest_study(make_trials, registry):
    from dataclasses import replace

    from dlbench.execution import hand_out_order

    greedy = {"initializer": {"name": "greedy_autoencoder", "epochs": 5}, "activation": "sigmoid"}
    trials = make_trials({"activation": "sigmoid"}, levels={"random": {}, "pretrained": greedy}, seeds=2)
    random_init, pretrained = plan(trials[:2], registry, 8)[0], plan(trials[2:], registry, 8)[0]
    assert pretrained.cost > random_init.cost  # 5 epochs a layer, member after member
    # as in ablation.toml on a GPU: the pretraining study's stack also holds a level of the
    # 10-level activation study; it must not wait for the end behind the activation study's units
    small = [replace(t, study="pretraining") for t in trials]
    large = [replace(t, study="activation", index=10 + k)
             for k, t in enumerate(make_trials(levels={f"l{k}": {"architecture": {"width": 8 + k}} for k in range(3)}))]
    mixed = Work(tuple(small) + tuple(large[:1]), "mixed")
    order = hand_out_order([Work((t,), t.config_hash) for t in large[1:]] + [mixed])
    assert order[0] is mixed


def test_a_component_that_never_said_it_stacks_trains_alone_and_says_why(make_trials):
    class Plain:
        @hookimpl
        def dlbench_register_architectures(self, register):
            def plain_mlp(input_shape, num_classes, activation, *, width: int = 8):
                """A third party's MLP that does not declare itself stackable."""
                return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(math.prod(input_shape), num_classes))

            register("plain_mlp", plain_mlp)

    plugins = load_plugins(None, autoload=False)
    plugins.pm.register(Plain())
    from dlbench.plugins import fill_registry

    registry = fill_registry(plugins.pm, plugins.origins)
    trials = make_trials({"architecture": {"name": "plain_mlp"}}, seeds=2, reg=registry)
    key, reason = stack_key(trials[0], registry)
    assert key is None and "architecture 'plain_mlp'" in reason and "stackable" in reason
    works = plan(trials, registry, max_size=8)
    assert len(works) == 2 and all("stackable" in w.alone_because for w in works)


def test_dropout_on_and_off_do_not_share_a_model_structure(make_trials, registry):
    trials = make_trials(levels={"p3": {"regularizers": [{"name": "dropout", "p_input": 0.0, "p_hidden": 0.3}]},
                                 "p5": {"regularizers": [{"name": "dropout", "p_input": 0.0, "p_hidden": 0.5}]},
                                 "in": {"regularizers": [{"name": "dropout", "p_input": 0.1, "p_hidden": 0.5}]}})
    assert [[t.level for t in w.members] for w in plan(trials, registry, 8)] == [["p3", "p5"], ["in"]]


# -- a member agrees with the trial alone -------------------------------------------------------


@pytest.mark.parametrize("optimizer", [
    {"name": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-3},
    {"name": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": True},
    {"name": "adam", "lr": 0.01, "weight_decay": 1e-3},
    {"name": "adamw", "lr": 0.01},
    {"name": "rmsprop", "lr": 0.003, "momentum": 0.5},
    {"name": "adagrad", "lr": 0.05},
])
def test_every_stacked_optimizer_agrees_with_torch_optim(optimizer, make_trials, registry, tiny_data):
    trials = make_trials({"optimizer": optimizer, "epochs": 3}, seeds=[0, 1, 2])
    together = stacked(trials, registry, tiny_data)
    for trial in trials:
        assert_agree(together[trial.index], alone(trial, registry, tiny_data))


def test_members_with_their_own_hyperparameters_and_schedules(make_trials, registry, tiny_data):
    trials = make_trials({"optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9}, "epochs": 3},
                         levels={"a": {}, "b": {"optimizer": {"lr": 0.02, "momentum": 0.0}},
                                 "c": {"schedule": {"name": "cosine", "warmup_fraction": 0.2}},
                                 "d": {"schedule": {"name": "linear"}, "initializer": "xavier"}})
    assert len(plan(trials, registry, 8)) == 1
    together = stacked(trials, registry, tiny_data)
    for trial in trials:
        assert_agree(together[trial.index], alone(trial, registry, tiny_data))
    assert len({r.history[-1]["lr"] for r in together.values()}) == 4


@pytest.mark.parametrize("regularizer", [
    {"name": "l2", "weight": 1e-2}, {"name": "l1", "weight": 1e-3}, {"name": "max_norm", "max_norm": 0.5},
    {"name": "grad_clip", "max_norm": 0.1},
])
def test_deterministic_regularizers_agree_with_the_trial_alone(regularizer, make_trials, registry, tiny_data):
    trials = make_trials({"regularizers": [regularizer], "epochs": 2}, seeds=[0, 1])
    together = stacked(trials, registry, tiny_data)
    for trial in trials:
        assert_agree(together[trial.index], alone(trial, registry, tiny_data))


@pytest.mark.parametrize("activation", ["prelu", "step"])
def test_a_learned_slope_and_a_zero_gradient_activation_stack(activation, make_trials, registry, tiny_data):
    trials = make_trials({"activation": activation, "epochs": 2}, seeds=[0, 1])
    together = stacked(trials, registry, tiny_data)
    for trial in trials:
        assert_agree(together[trial.index], alone(trial, registry, tiny_data))


@pytest.mark.parametrize("initializer", [
    {"name": "greedy_autoencoder", "epochs": 1}, {"name": "greedy_rbm", "epochs": 1}, {"name": "lsuv"},
])
def test_data_dependent_initializers_in_a_stack_agree_with_the_trial_alone(initializer, make_trials, registry, tiny_data):
    trials = make_trials({"activation": "sigmoid", "architecture": {"depth": 2},
                          "initializer": initializer}, seeds=[0, 1])
    together = stacked(trials, registry, tiny_data)
    for trial in trials:
        assert_agree(together[trial.index], alone(trial, registry, tiny_data))


def count_stacked_calls(registry, monkeypatch, initializer: str) -> list[int]:
    """How many members each call of ``initializer``'s stacked form initialized."""
    from dlbench.stacking import STACKED

    factory = registry.get("initializer", initializer).factory
    form, calls = getattr(factory, STACKED), []

    def counted(models, *args, **options):
        calls.append(len(models))
        return form(models, *args, **options)

    monkeypatch.setattr(factory, STACKED, counted)
    return calls


@pytest.fixture
def stacked_init_calls(registry, monkeypatch):
    """How many members each call of greedy_autoencoder's stacked form initialized."""
    return count_stacked_calls(registry, monkeypatch, "greedy_autoencoder")


@pytest.mark.parametrize("greedy", [
    {"name": "greedy_autoencoder", "epochs": 2, "batch_size": 128, "corruption": 0.25},
    {"name": "greedy_rbm", "epochs": 2, "batch_size": 128, "k": 2},
    {"name": "greedy_rbm", "epochs": 2, "batch_size": 128, "visible": "bernoulli", "then": "xavier"},
], ids=["autoencoder", "rbm", "rbm-bernoulli"])
def test_members_sharing_greedy_pretraining_pretrain_at_once_as_they_would_alone(greedy, make_trials, registry,
                                                                                 tiny_data, monkeypatch):
    from dlbench.train_stack import build_members

    stacked_init_calls = count_stacked_calls(registry, monkeypatch, greedy["name"])
    trials = make_trials({"activation": "sigmoid", "architecture": {"depth": 3}}, levels={
        "random": {}, "pretrained": {"initializer": greedy},
        "shorter": {"initializer": greedy | {"epochs": 1}}}, seeds=[0, 1, 2])
    (work,) = plan(trials, registry, 16)  # initializers do not stand in the way of a stack

    def build(stacked_init):
        from dataclasses import replace

        return build_members(replace(work, stacked_init=stacked_init), registry, tiny_data, DEVICE,
                              lambda t, r: pytest.fail(r.error))

    at_once, one_by_one = build(True), build(False)
    assert sorted(stacked_init_calls) == [3, 3]  # each group of members sharing the options, at once
    for a, b in zip(at_once, one_by_one):
        assert a.trial is b.trial
        for (name, p), q in zip(a.model.named_parameters(), b.model.parameters()):
            # the same draws, the same Adam; only batched matrix products round differently (3e-8 here)
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-5, msg=lambda m: f"{a.trial.run_name} {name}: {m}")
        # its random stream is where its own pretraining leaves it: the same batches afterwards
        assert torch.equal(a.order.get_state(), b.order.get_state()), a.trial.run_name
    assert sorted(stacked_init_calls) == [3, 3]  # and none when initializing one by one


def test_dry_run_says_which_members_of_a_stack_pretrain_at_once(make_trials, registry):
    from types import SimpleNamespace

    from dlbench.dry_run import trial_table

    greedy = {"name": "greedy_autoencoder", "epochs": 1}
    trials = make_trials({"activation": "sigmoid"}, levels={"random": {}, "pre": {"initializer": greedy}},
                         seeds=[0, 1, 2])
    text = trial_table(SimpleNamespace(path="t.toml"), trials, plan(trials, registry, 16), registry)
    assert "S1(6)" in text and "S1: greedy_autoencoder, 3 of its 6 members at once" in text


def test_dry_run_says_once_why_many_trials_train_alone(make_trials, registry):
    """One line per reason, the trials' numbers as ranges; a reason of one trial names it."""
    from types import SimpleNamespace

    from dlbench.dry_run import trial_table

    trials = make_trials({}, levels={"a": {}, "b": {"architecture": {"width": 24}}}, seeds=[0, 1, 2])
    text = trial_table(SimpleNamespace(path="t.toml"), trials, plan(trials, registry, 1), registry)
    assert "6 trials alone:\n  6 trials (#1-#6): stacking is off" in text
    assert text.count("stacking is off") == 1
    gru = make_trials({"architecture": {"name": "gru"}}, levels={"only": {}}, seeds=[0])
    text = trial_table(SimpleNamespace(path="t.toml"), gru, plan(gru, registry, 8), registry)
    assert re.search(r"^  #1 \S+/only, seed=0: architecture 'gru'", text, re.M), text


def test_a_stacked_initializer_that_raises_leaves_its_members_to_initialize_one_by_one(
        make_trials, registry, tiny_data, monkeypatch):
    from dlbench.stacking import STACKED

    def broken(models, data, streams, **options):
        raise RuntimeError("no batching rule")

    monkeypatch.setattr(registry.get("initializer", "greedy_autoencoder").factory, STACKED, broken)
    trials = make_trials({"activation": "sigmoid", "initializer": {"name": "greedy_autoencoder", "epochs": 1}},
                         seeds=[0, 1])
    with pytest.warns(UserWarning, match="no batching rule.*initialized one after another"):
        together = stacked(trials, registry, tiny_data)
    for trial in trials:
        assert_agree(together[trial.index], alone(trial, registry, tiny_data))


def test_dropout_members_draw_their_own_masks_and_the_stack_repeats_exactly(make_trials, registry, tiny_data):
    trials = make_trials({"regularizers": [{"name": "dropout", "p_input": 0.1, "p_hidden": 0.3},
                                           {"name": "input_noise", "std": 0.1}], "epochs": 2}, seeds=[0, 1])
    first, second = stacked(trials, registry, tiny_data), stacked(trials, registry, tiny_data)
    assert [r.history for r in first.values()] == [r.history for r in second.values()]  # bit for bit
    solo = alone(trials[0], registry, tiny_data)
    assert_agree(type(solo)("finished", history=first[1].history[:1]), type(solo)("finished", history=solo.history[:1]))
    assert first[1].history[-1]["train_loss"] != solo.history[-1]["train_loss"]  # masks: another draw


def test_means_over_seeds_agree_with_dropout(make_trials, registry, tiny_data):
    trials = make_trials({"regularizers": [{"name": "dropout", "p_input": 0.0, "p_hidden": 0.3}], "epochs": 4},
                         seeds=list(range(8)))
    together = stacked(trials, registry, tiny_data)
    mean = lambda values: sum(values) / len(values)  # noqa: E731
    stacked_acc = mean([together[t.index].final["train_accuracy"] for t in trials])
    alone_acc = mean([alone(t, registry, tiny_data).final["train_accuracy"] for t in trials])
    assert abs(stacked_acc - alone_acc) < 0.05, (stacked_acc, alone_acc)


# -- members leave the stack ---------------------------------------------------------------------


def test_a_diverging_member_is_dropped_and_the_others_go_on(make_trials, registry, tiny_data):
    trials = make_trials({"optimizer": {"name": "sgd", "lr": 0.1}, "epochs": 4},
                         levels={"ok": {}, "boom": {"optimizer": {"lr": 1e6}}}, seeds=[0, 1])
    recorder = Recorder()
    together = stacked(trials, registry, tiny_data, hook=recorder)
    status = {t.level: together[t.index].status for t in trials}
    assert status == {"ok": "finished", "boom": "diverged"}
    for trial in trials:
        if trial.level == "ok":
            assert together[trial.index].epochs_run == 4
            assert_agree(together[trial.index], alone(trial, registry, tiny_data))
    assert [r.status for r in together.values()] == ["diverged", "diverged", "finished", "finished"]
    epochs = [e[2] for e in recorder.events if e[0] == "epoch" and trials[e[1] - 1].level == "boom"]
    assert max(epochs) < 4  # the diverged members were not trained on


def test_early_stopping_is_per_member(make_trials, registry, tiny_data):
    trials = make_trials({"epochs": 6}, levels={
        "patient": {"regularizers": [{"name": "early_stopping", "patience": 5, "min_delta": 100.0}]},
        "impatient": {"regularizers": [{"name": "early_stopping", "patience": 1, "min_delta": 100.0}]}})
    together = stacked(trials, registry, tiny_data)
    assert {t.level: together[t.index].epochs_run for t in trials} == {"patient": 6, "impatient": 2}


def test_diagnostics_per_member_at_the_diagnostics_steps(make_trials, plugins, registry, tiny_data):
    from dlbench.diagnostics import Diagnostics

    trials = make_trials({"diagnostics_every": 3, "epochs": 1}, seeds=[0, 1])
    recorder = Recorder()
    plugins.pm.register(recorder, name="test.recorder")
    plugins.pm.register(Diagnostics(plugins.hook, registry), name="test.diagnostics")
    try:
        stacked(trials, registry, tiny_data, hook=plugins.hook)
    finally:
        plugins.pm.unregister(name="test.recorder")
        plugins.pm.unregister(name="test.diagnostics")
    steps = {i: [e[2] for e in recorder.events if e[0] == "diag" and e[1] == i] for i in (1, 2)}
    assert steps[1] == steps[2] == [1, 3, 6]  # 7 steps an epoch: step 1, then every 3rd


# -- resume and failure --------------------------------------------------------------------------


def test_a_stack_resumes_from_its_checkpoint_bit_for_bit(tmp_path, make_trials, plugins, registry, tiny_data):
    trials = make_trials({"regularizers": [{"name": "dropout", "p_input": 0.0, "p_hidden": 0.3}], "epochs": 4},
                         seeds=[0, 1])
    uninterrupted = stacked(trials, registry, tiny_data)
    path = tmp_path / "stack.pt"
    stopper = StopAfter(2)
    plugins.pm.register(stopper, name="test.stopper")
    try:
        with pytest.raises(KeyboardInterrupt):
            stacked(trials, registry, tiny_data, hook=plugins.hook, checkpoints=Checkpoints(path, every_seconds=0))
    finally:
        plugins.pm.unregister(name="test.stopper")
    assert path.is_file()
    resumed = stacked(trials, registry, tiny_data, checkpoints=Checkpoints(path, every_seconds=0))
    assert [r.history for r in resumed.values()] == [r.history for r in uninterrupted.values()]
    assert not path.exists()  # done: the checkpoint is gone


def test_a_raising_stack_fails_every_member_with_the_traceback(make_trials, registry, tiny_data):
    from dlbench.datacache import DataCache

    trials = make_trials({"optimizer": {"name": "sgd", "nesterov": True, "momentum": 0.0}}, seeds=[0, 1])
    recorder = Recorder()
    results = execute(Work(tuple(trials), stack_id(trials)), registry, recorder, DataCache(None), DEVICE, None)
    assert [r.status for _, r in results] == ["failed", "failed"]
    assert "nesterov" in results[0][1].error


def test_a_member_whose_build_raises_fails_alone(make_trials, registry, tiny_data):
    trials = make_trials({"epochs": 2}, levels={
        "ok": {}, "bad": {"initializer": {"name": "greedy_autoencoder", "corruption": 0.5}}}, seeds=[0, 1])
    for trial in trials[2:]:  # past the study file's checks (and the preflight): the factory itself raises
        trial.config["initializer"]["no_such_option"] = 1
    assert len(plan(trials, registry, 8)) == 1  # initializers run per member: one stack
    together = stacked(trials, registry, tiny_data)
    assert {t.level: together[t.index].status for t in trials} == {"ok": "finished", "bad": "failed"}
    assert "no_such_option" in together[trials[2].index].error
    for trial in trials[:2]:
        assert_agree(together[trial.index], alone(trial, registry, tiny_data))


def test_members_keep_their_own_dropout_probability(make_trials, registry, tiny_data):
    trials = make_trials({"epochs": 3, "optimizer": {"name": "adam", "lr": 0.01}},
                         levels={"low": {"regularizers": [{"name": "dropout", "p_input": 0.0, "p_hidden": 0.01}]},
                                 "high": {"regularizers": [{"name": "dropout", "p_input": 0.0, "p_hidden": 0.9}]}})
    assert len(plan(trials, registry, 8)) == 1
    together = stacked(trials, registry, tiny_data)
    low, high = (together[t.index].final["train_loss"] for t in trials)
    solo_low, solo_high = (alone(t, registry, tiny_data).final["train_loss"] for t in trials)
    assert low == pytest.approx(solo_low, rel=0.05) and high == pytest.approx(solo_high, rel=0.1)
    assert high > low * 1.1  # member 1 trained with p = 0.9, not with member 0's 0.01


def test_every_built_in_component_stacks_and_plugins_list_says_so(registry):
    from click.testing import CliRunner

    from dlbench.cli import main
    from dlbench.stacking import component_stacks

    # batch norm updates its running statistics in place; MC-dropout evaluates from its own random stream;
    # vmap has no batching rule for torch's fused recurrent kernels; plateau decides on each member's
    # validation loss between epochs, which the stacked loop's per-step learning-rate table cannot know
    expected_alone = {"regularizer batch_norm", "regularizer mc_dropout", "schedule plateau",
                      "architecture rnn", "architecture gru", "architecture lstm"}
    alone = {f"{c.kind} {c.name}" for c in registry if c.origin == "built-in" and component_stacks(c) is False}
    assert alone == expected_alone
    out = CliRunner().invoke(main, ["plugins", "list", "--kind", "regularizer"]).output
    regularizers_alone = {a for a in expected_alone if a.startswith("regularizer ")}
    assert out.count("(stacks)") == len(registry.names("regularizer")) - len(regularizers_alone) >= 7


@pytest.mark.slow  # a whole study, end to end
def test_a_member_records_that_it_pretrained_at_once_and_reproduce_does_the_same(study_in_process,
                                                                                 stacked_init_calls):
    from conftest import reproduce_in_process
    from mlflow.tracking import MlflowClient

    plugins, uri, runs = study_in_process("""
[study]
name = "pre"
seeds = 2
[studies.init.levels]
pretrained = { initializer = { name = "greedy_autoencoder", epochs = 1, corruption = 0.2 } }
""", DEVICE, stack_size=8)
    assert stacked_init_calls == [2]
    assert [(r.data.tags["dlbench.stack_size"], r.data.tags["dlbench.stacked_init"]) for r in runs] == [("2", "true")] * 2
    verdict = reproduce_in_process(runs[0].info.run_id, plugins, uri, DEVICE)
    assert verdict.reproduced and verdict.largest[2] == 0 and stacked_init_calls == [2, 2]
    # a run recorded before stacked initializers existed has no tag: its stack re-runs them one by one
    client = MlflowClient(uri)
    client.delete_tag(runs[0].info.run_id, "dlbench.stacked_init")
    verdict = reproduce_in_process(runs[0].info.run_id, plugins, uri, DEVICE)
    assert stacked_init_calls == [2, 2] and client.get_run(verdict.rerun).data.tags["dlbench.stacked_init"] == "false"

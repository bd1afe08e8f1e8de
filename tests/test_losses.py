"""The loss kind (issue 25): ``loss = { name = "cross_entropy", label_smoothing = 0.1 }`` in a study
file, the default left out of the resolved config (hashes unchanged), the loss used for training and
for the reported losses, alone and stacked, and a third-party loss plugin."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import NoHooks, reproduce_in_process, write_plugin, write_study

from dlbench.config import read_study_file
from dlbench.errors import ConfigError
from dlbench.planning import Work, plan, stack_id, stack_key
from dlbench.plugins import load_plugins
from dlbench.study import expand
from dlbench.train import build, build_loss, run_trial, training_loss
from dlbench.train_stack import run_stack

CPU = torch.device("cpu")


def test_the_default_loss_is_left_out_of_the_config_and_its_hash(make_trials):
    plain, = make_trials()
    named, = make_trials({"loss": "cross_entropy"})
    explicit, = make_trials({"loss": {"name": "cross_entropy", "label_smoothing": 0}})
    assert "loss" not in plain.config
    assert plain.config_hash == named.config_hash == explicit.config_hash
    smoothed, = make_trials({"loss": {"name": "cross_entropy", "label_smoothing": 0.1}})
    assert smoothed.config["loss"] == {"name": "cross_entropy", "label_smoothing": 0.1}
    assert smoothed.config_hash != plain.config_hash


def test_the_built_in_is_torchs_cross_entropy_per_example(registry):
    logits, y = torch.randn(16, 5, generator=torch.Generator().manual_seed(0)), torch.arange(16) % 5
    smoothed = build_loss({"loss": {"name": "cross_entropy", "label_smoothing": 0.1}}, registry, 5)
    assert smoothed(logits, y).shape == (16,)
    torch.testing.assert_close(smoothed(logits, y).mean(), F.cross_entropy(logits, y, label_smoothing=0.1))
    # the formula of docs/studies.md: target (1 - eps) one-hot + eps / C
    target = 0.9 * F.one_hot(y, 5) + 0.1 / 5
    torch.testing.assert_close(smoothed(logits, y), -(target * logits.log_softmax(1)).sum(1))
    torch.testing.assert_close(build_loss({}, registry, 5)(logits, y), F.cross_entropy(logits, y, reduction="none"))


def test_label_smoothing_is_the_trials_training_and_reported_loss(make_trials, registry, tiny_data):
    trial, = make_trials({"loss": {"name": "cross_entropy", "label_smoothing": 0.1}, "epochs": 1})
    result = run_trial(trial, registry, tiny_data, CPU, NoHooks())
    torch.manual_seed(trial.seed)
    from dlbench.build import seed_everything

    seed_everything(trial.seed)
    model, regularizers, _, _ = build(trial, registry, tiny_data, CPU)
    model.eval()
    with torch.no_grad():
        logits = model(tiny_data.x_train)
        expected = F.cross_entropy(logits, tiny_data.y_train, label_smoothing=0.1).item()
        plain = F.cross_entropy(logits, tiny_data.y_train).item()
        objective = training_loss(model, regularizers, tiny_data.x_train, tiny_data.y_train,
                                  build_loss(trial.config, registry, tiny_data.num_classes)).item()
    assert result.history[0]["train_loss"] == pytest.approx(expected, rel=1e-5)
    assert objective == pytest.approx(expected, rel=1e-5) and abs(expected - plain) > 1e-4  # near-uniform logits at epoch 0


def test_two_loss_levels_train_alike_stacked_and_alone(make_trials, registry, tiny_data):
    trials = make_trials(levels={"plain": {}, "smooth": {"loss": {"name": "cross_entropy", "label_smoothing": 0.2}}},
                         seeds=2)
    works = plan(trials, registry, max_size=8)
    assert [[t.level for t in w.members] for w in works] == [["plain"] * 2, ["smooth"] * 2]  # one loss a stack
    assert stack_key(trials[0], registry)[0] != stack_key(trials[2], registry)[0]
    for work in works:
        results = {}
        run_stack(Work(work.members, stack_id(work.members)), registry, tiny_data, CPU, NoHooks(),
                  lambda t, r: results.__setitem__(t.index, r))
        for trial in work.members:
            solo = run_trial(trial, registry, tiny_data, CPU, NoHooks())
            for a, b in zip(results[trial.index].history, solo.history):
                for key in a:
                    assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-4), (trial.level, key)


def test_an_unknown_loss_or_a_bad_option_is_a_study_file_error_at_its_key(tmp_path, registry):
    path = write_study(tmp_path, """
        [baseline]
        loss = "cross_entropi"
        [studies.s.levels]
        a = {}
        b = { loss = { name = "cross_entropy", label_smoothing = 1.5 } }
        c = { loss = { name = "cross_entropy", smoothing = 0.1 } }
    """)
    with pytest.raises(ConfigError) as info:
        expand(read_study_file(path), registry)
    text = str(info.value)
    assert "baseline.loss: unknown loss 'cross_entropi'" in text and "cross_entropy" in text
    assert "studies.s.levels.b.loss.label_smoothing: must be >= 0 and < 1, got 1.5" in text
    assert "studies.s.levels.c.loss.smoothing: loss 'cross_entropy' has no option 'smoothing'" in text


HINGE = '''
import torch.nn.functional as F
from dlbench import hookimpl, stackable


@stackable
def hinge(num_classes, *, margin: float = 1.0):
    """Multi-class hinge loss."""
    def loss(logits, y):
        true = logits.gather(1, y[:, None])
        return F.relu(margin + logits - true).scatter(1, y[:, None], 0.0).sum(1)
    return loss


@hookimpl
def dlbench_register_losses(register):
    register("hinge", hinge)
'''


def test_a_loss_plugin_file_trains_and_passes_the_contract(tmp_path, tiny_data, make_trials):
    from dlbench.contract import FAIL, check

    plugins = load_plugins(write_plugin(tmp_path / "plugins", "hinge", HINGE).parent, autoload=False)
    component = plugins.registry.get("loss", "hinge")
    assert not [o for o in check(component, plugins.registry) if o.status == FAIL]
    trial, = make_trials({"loss": {"name": "hinge", "margin": 0.5}, "epochs": 1}, reg=plugins.registry)
    assert trial.config["loss"] == {"name": "hinge", "margin": 0.5}
    result = run_trial(trial, plugins.registry, tiny_data, CPU, NoHooks())
    assert result.status == "finished" and result.history[1]["train_loss"] < result.history[0]["train_loss"]


def test_the_contract_fails_a_loss_that_is_not_per_example(tmp_path):
    from dlbench.contract import FAIL, check

    code = HINGE.replace(".sum(1)", ".sum(1).mean().expand(len(y))")
    plugins = load_plugins(write_plugin(tmp_path / "plugins", "hinge", code).parent, autoload=False)
    failed = [o for o in check(plugins.registry.get("loss", "hinge"), plugins.registry) if o.status == FAIL]
    assert [o.check for o in failed] == ["gives each example its loss alone, whatever the rest of the batch"]


def test_a_digits_study_with_label_smoothing_records_and_reproduces(study_in_process):
    plugins, uri, runs = study_in_process("""
[studies.loss]
seeds = 1
baseline = { dataset = "digits", epochs = 1 }
[studies.loss.levels]
plain = {}
smooth = { loss = { name = "cross_entropy", label_smoothing = 0.1 } }
""", CPU)
    by_level = {r.data.tags["dlbench.level"]: r for r in runs}
    assert by_level["smooth"].data.params["loss.label_smoothing"] == "0.1"
    assert by_level["smooth"].data.params["loss.name"] == "cross_entropy"
    assert not [k for k in by_level["plain"].data.params if k.startswith("loss.")]
    verdict = reproduce_in_process(by_level["smooth"].info.run_id, plugins, uri, CPU)
    assert verdict.reproduced

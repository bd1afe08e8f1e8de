"""Learning-rate schedules that follow the training (plateau) and the core warm-up setting."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from conftest import NoHooks, StopAfter, the_preflight_problem
from dlbench.builtin.schedules import cosine, plateau
from dlbench.errors import ConfigError
from dlbench.planning import Work, plan, stack_id
from dlbench.train import Checkpoints, build, run_trial
from dlbench.train_stack import run_stack
from dlbench.warmup import Warmup

CPU = torch.device("cpu")
# the config hash of the conftest tiny baseline (make_trials()), recorded before warm-up existed
TINY_BASELINE_HASH = "f2f74e06da249011d800f2aeeb6df96d65bcbe86173fde62117c00bb2e40a38d"


def sgd(lr: float = 0.1) -> torch.optim.SGD:
    return torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=lr)


def rate(optimizer) -> float:
    return optimizer.param_groups[0]["lr"]


# -- plateau ----------------------------------------------------------------------------------------


def test_plateau_lowers_the_rate_after_patience_epochs_without_improvement_and_not_before():
    optimizer = sgd()
    schedule = plateau(optimizer, 100, factor=0.5, patience=2)
    rates = []
    for epoch, loss in enumerate([1.0, 0.9, 0.9, 0.9, 0.9, 0.95, 0.9, 0.9, 0.8], start=1):
        optimizer.step()
        schedule.step()  # steps leave the rate alone
        schedule.epoch_end(epoch, {"val_loss": loss})
        rates.append(rate(optimizer))
    # epochs 3 and 4 are the 1st and 2nd without improvement; the 3rd (epoch 5) halves the rate
    assert rates == [0.1, 0.1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.025, 0.025]


def test_plateau_follows_torchs_reduce_on_plateau_with_threshold_cooldown_and_floor():
    options = {"factor": 0.3, "patience": 1, "threshold": 0.01, "cooldown": 2}
    ours, theirs = sgd(), sgd()
    schedule = plateau(ours, 100, min_fraction=0.05, **options)
    reference = torch.optim.lr_scheduler.ReduceLROnPlateau(theirs, min_lr=0.1 * 0.05, **options)
    losses = [1.0, 0.995, 0.99, 0.98, 0.97, 0.96, 0.96, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5]
    mine, torchs = [], []
    for epoch, loss in enumerate(losses, start=1):
        schedule.epoch_end(epoch, {"val_loss": loss})
        reference.step(loss)
        mine.append(rate(ours))
        torchs.append(rate(theirs))
    assert mine == pytest.approx(torchs, rel=1e-12)
    assert len(set(mine)) == 4 and min(mine) == pytest.approx(0.005)  # three reductions, the last to the floor


PLATEAU = {"schedule": {"name": "plateau", "factor": 0.5, "patience": 0, "threshold": 0.5}, "epochs": 4}


def test_plateau_in_a_trial_records_its_rate_and_a_resumed_trial_ends_the_same(tmp_path, make_trials, registry,
                                                                                 tiny_data):
    (trial,) = make_trials(PLATEAU)  # no epoch after the first improves the loss by half: halved each time
    uninterrupted = run_trial(trial, registry, tiny_data, CPU, NoHooks())
    assert [row["lr"] for row in uninterrupted.history] == [0.01, 0.01, 0.005, 0.0025, 0.00125]

    checkpoints = Checkpoints(tmp_path / "t.pt", every_seconds=0)
    with pytest.raises(KeyboardInterrupt):
        run_trial(trial, registry, tiny_data, CPU, StopAfter(3), checkpoints)
    saved = torch.load(tmp_path / "t.pt", weights_only=False)
    assert saved["epoch"] == 2 and saved["schedule"]["scale"] == 0.5  # the plateau's state is in it
    resumed = run_trial(trial, registry, tiny_data, CPU, NoHooks(), checkpoints)
    assert resumed.history == uninterrupted.history


def test_plateau_without_a_validation_split_is_reported_at_the_schedule_key(tmp_path, make_trials, registry):
    problem = the_preflight_problem(make_trials({"schedule": "plateau", "val_fraction": 0.0}), registry, tmp_path)
    assert problem.startswith("baseline.schedule (schedule 'plateau' [built-in]) raised ValueError: plateau "
                              "follows the validation loss"), problem
    assert "set val_fraction > 0" in problem and "in epoch_end" in problem


# -- warm-up --------------------------------------------------------------------------------------


def test_warmup_ramps_the_schedules_rate_linearly_then_hands_over(make_trials, registry, tiny_data):
    (trial,) = make_trials({"schedule": "cosine", "warmup_fraction": 0.25})
    _, _, optimizer, schedule = build(trial, registry, tiny_data, CPU)
    total = 2 * math.ceil(len(tiny_data.y_train) / 64)  # 2 epochs of 8 steps
    bare_optimizer = sgd(0.01)
    bare = cosine(bare_optimizer, total)
    warmed, own = [], []
    for _ in range(total):
        warmed.append(rate(optimizer))
        own.append(rate(bare_optimizer))
        for o, s in ((optimizer, schedule), (bare_optimizer, bare)):
            o.step()  # no gradients: the weights stay
            s.step()
    warm = round(0.25 * total)  # 4 steps: 1/4, 2/4, 3/4 of the cosine's rate, then the cosine's own
    assert warmed[:warm] == pytest.approx([(k + 1) / warm * own[k] for k in range(warm)], rel=1e-12)
    assert warmed[0] == pytest.approx(0.0025) and warmed[warm - 1] == pytest.approx(own[warm - 1])
    assert warmed[warm:] == pytest.approx(own[warm:], rel=1e-12)


def test_warmup_in_front_of_a_chainable_schedule_and_a_plateau():
    optimizer = sgd()
    schedule = Warmup(torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=0.5), optimizer, 4)
    rates = [rate(optimizer)]
    for _ in range(5):
        optimizer.step()
        schedule.step()
        rates.append(rate(optimizer))
    # the exponential decay reads its own last rate, not the ramped one
    assert rates == pytest.approx([0.1 * 0.5**k * min(1, (k + 1) / 4) for k in range(6)], rel=1e-12)

    optimizer = sgd()
    schedule = Warmup(plateau(optimizer, 100, factor=0.5, patience=0), optimizer, 4)
    optimizer.step()
    schedule.step()  # step 1 of 4: the ramp is at 2/4
    schedule.epoch_end(1, {"val_loss": 1.0})
    schedule.epoch_end(2, {"val_loss": 2.0})  # no improvement, patience 0: halved
    assert rate(optimizer) == pytest.approx(0.1 * 0.5 * 2 / 4)
    state = schedule.state_dict()
    again_optimizer = sgd()
    again = Warmup(plateau(again_optimizer, 100, factor=0.5, patience=0), again_optimizer, 4)
    again.load_state_dict(state)
    for o, s in ((optimizer, schedule), (again_optimizer, again)):
        o.step()
        s.step()
    assert rate(again_optimizer) == rate(optimizer) == pytest.approx(0.1 * 0.5 * 3 / 4)


def test_warmup_is_left_out_of_the_config_at_zero_and_checked(make_trials):
    (trial,) = make_trials()
    assert "warmup_fraction" not in trial.config
    assert trial.config_hash == TINY_BASELINE_HASH  # existing stores resume, `reproduce` matches
    (zero,) = make_trials({"warmup_fraction": 0})
    assert zero.config_hash == TINY_BASELINE_HASH
    (warm,) = make_trials({"warmup_fraction": 0.1})
    assert warm.config["warmup_fraction"] == 0.1 and warm.config_hash != TINY_BASELINE_HASH
    with pytest.raises(ConfigError) as err:
        make_trials({"warmup_fraction": 1.5})
    assert "baseline.warmup_fraction: " in str(err.value) and "< 1" in str(err.value)


def test_members_with_and_without_warmup_stack_and_agree_with_the_trials_alone(make_trials, registry, tiny_data):
    trials = make_trials({"optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9}, "epochs": 3},
                         levels={"none": {}, "cosine": {"schedule": "cosine", "warmup_fraction": 0.2},
                                 "step": {"schedule": "step", "warmup_fraction": 0.75}})
    (work,) = plan(trials, registry, 8)
    assert work.stacked
    results = {}
    run_stack(Work(tuple(trials), stack_id(trials)), registry, tiny_data, CPU, NoHooks(),
              lambda trial, result: results.__setitem__(trial.index, result))
    for trial in trials:
        alone = run_trial(trial, registry, tiny_data, CPU, NoHooks())
        assert [row["lr"] for row in results[trial.index].history] == pytest.approx(
            [row["lr"] for row in alone.history], rel=1e-12)
        for together_row, alone_row in zip(results[trial.index].history, alone.history):
            assert together_row == pytest.approx(alone_row, rel=1e-4, abs=1e-4)
    first_epoch_lrs = {t.level: results[t.index].history[1]["lr"] for t in trials}
    assert first_epoch_lrs["none"] == 0.1 and first_epoch_lrs["step"] < first_epoch_lrs["cosine"] < 0.1

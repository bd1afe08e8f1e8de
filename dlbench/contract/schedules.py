"""The schedule's own check: the learning rate stays finite and >= 0, and the schedule resumes
from its ``state_dict``."""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from dlbench.contract.outcome import passed
from dlbench.contract.subject import TOTAL_STEPS, Subject


def _epoch_end(schedule, k: int) -> None:
    """The loop's call after each epoch (see hookspecs.py), here after step k: a validation loss
    that never improves."""
    if hasattr(schedule, "epoch_end"):
        schedule.epoch_end(k + 1, {"val_loss": 1.0, "val_accuracy": 0.5, "train_loss": 1.0, "train_accuracy": 0.5})


def schedule_rates(s: Subject) -> str | None:
    """keeps the learning rate finite and >= 0, and resumes from its state_dict

    A schedule with ``epoch_end`` is told a validation loss that never improves after every step
    (one step per epoch), over three times as many steps, so that a plateau schedule acts."""
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    schedule = s.make(optimizer, TOTAL_STEPS)
    steps = 3 * TOTAL_STEPS if hasattr(schedule, "epoch_end") else TOTAL_STEPS
    rates, resumed_at = [], steps // 2
    saved = None
    for k in range(steps):
        optimizer.step()
        schedule.step()
        _epoch_end(schedule, k)
        rates.append(optimizer.param_groups[0]["lr"])
        if k + 1 == resumed_at:
            saved = copy.deepcopy(schedule.state_dict()), copy.deepcopy(optimizer.state_dict())
    bad = [(k + 1, lr) for k, lr in enumerate(rates) if not (math.isfinite(lr) and lr >= 0)]
    if bad:
        return f"the learning rate after step {bad[0][0]} is {bad[0][1]!r} (expected a finite number >= 0)"
    twin = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    again = s.make(twin, TOTAL_STEPS)
    twin.load_state_dict(saved[1])
    again.load_state_dict(saved[0])
    rest = []
    for k in range(resumed_at, steps):
        twin.step()
        again.step()
        _epoch_end(again, k)
        rest.append(twin.param_groups[0]["lr"])
    if rest != rates[resumed_at:]:
        return f"resumed from its state_dict after step {resumed_at}, the rates are {rest} instead of {rates[resumed_at:]}"
    return passed(f"from {rates[0]:.3g} to {rates[-1]:.3g} over {steps} steps of base lr 0.1")

"""The optimizer's own checks: a ``torch.optim.Optimizer`` over the given parameters that resumes
from its ``state_dict`` exactly."""

from __future__ import annotations

import copy

import torch

from dlbench.contract.subject import ONE_D, Subject, first_difference, train_step


def optimizer_resumes(s: Subject) -> str | None:
    """resumes from its state_dict exactly"""
    model, _, optimizer, _, batch = s.parts(0)
    for _ in range(2):
        train_step(model, [], optimizer, None, batch)
    twin = copy.deepcopy(model)
    resumed = s.make(twin.parameters())
    resumed.load_state_dict(copy.deepcopy(optimizer.state_dict()))
    train_step(model, [], optimizer, None, batch)
    train_step(twin, [], resumed, None, batch)
    return first_difference(dict(model.named_parameters()), dict(twin.named_parameters()),
                             "one step after a state_dict round trip, parameter")


def optimizer_type(s: Subject) -> str | None:
    """is a torch.optim.Optimizer over the given parameters"""
    model = s.architecture(ONE_D)
    optimizer = s.make(model.parameters())
    if not isinstance(optimizer, torch.optim.Optimizer):
        return f"expected a torch.optim.Optimizer, got {type(optimizer).__name__}"
    mine = {id(p) for group in optimizer.param_groups for p in group["params"]}
    if mine != {id(p) for p in model.parameters()}:
        return "its parameter groups do not hold exactly the parameters it was given"
    return None

"""Built-in learning-rate schedules, stepped once per optimizer step.

Each is a multiplier of the base learning rate eps_0 as a function of the step k (LambdaLR), so
the formula is the code.
"""

from __future__ import annotations

import math
from typing import Annotated

from torch.optim.lr_scheduler import LambdaLR

from dlbench import Range, hookimpl
from dlbench.stacking import stackable

Fraction = Annotated[float, Range(ge=0, le=1)]  # of the base learning rate, or of training


@hookimpl
def dlbench_register_schedules(register):
    for name, factory in [("constant", constant), ("linear", linear), ("step", step),
                          ("inverse_time", inverse_time), ("cosine", cosine)]:
        register(name, stackable(factory))  # each a function of the step alone: they stack


def constant(optimizer, total_steps) -> LambdaLR:
    """Constant learning rate eps_k = eps_0."""
    return LambdaLR(optimizer, lambda k: 1.0)


def linear(optimizer, total_steps, *, final_fraction: Fraction = 0.01, decay_fraction: Fraction = 1.0) -> LambdaLR:
    """Linear decay to eps_tau (Goodfellow et al. 2016, sec. 8.3.1), then constant.

    eps_k = (1 - a) eps_0 + a eps_tau with a = k / tau, tau = decay_fraction * total steps and
    eps_tau = final_fraction * eps_0 (the book suggests about 1% of eps_0).
    """
    tau = max(1, round(decay_fraction * total_steps))
    return LambdaLR(optimizer, lambda k: (1 - min(k / tau, 1.0)) + min(k / tau, 1.0) * final_fraction)


def step(optimizer, total_steps, *, milestones: list[Fraction] = [0.5, 0.75],  # noqa: B006
         gamma: Annotated[float, Range(gt=0, le=1)] = 0.1) -> LambdaLR:
    """Step decay: multiply eps by gamma at each milestone (fractions of training)."""
    at = sorted(round(m * total_steps) for m in milestones)
    return LambdaLR(optimizer, lambda k: gamma ** sum(k >= s for s in at))


def inverse_time(optimizer, total_steps, *, decay: Annotated[float, Range(ge=0)] = 1.0) -> LambdaLR:
    """1/t decay: eps_k = eps_0 / (1 + decay * k / steps_per_unit), with k in fractions of training.

    ``decay`` = 1 halves the learning rate by the end of training; 9 divides it by ten.
    """
    return LambdaLR(optimizer, lambda k: 1.0 / (1.0 + decay * k / max(1, total_steps)))


def cosine(optimizer, total_steps, *, final_fraction: Fraction = 0.0,
           warmup_fraction: Annotated[float, Range(ge=0, lt=1)] = 0.0) -> LambdaLR:
    """Cosine annealing (Loshchilov & Hutter 2017) after an optional linear warm-up (Goyal et al. 2017)."""
    warm = round(warmup_fraction * total_steps)

    def factor(k: int) -> float:
        if k < warm:
            return (k + 1) / warm
        t = min(1.0, (k - warm) / max(1, total_steps - warm))
        return final_fraction + (1 - final_fraction) * 0.5 * (1 + math.cos(math.pi * t))

    return LambdaLR(optimizer, factor)


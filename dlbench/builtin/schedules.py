"""Built-in learning-rate schedules, stepped once per optimizer step.

Each is a multiplier of the base learning rate eps_0 as a function of the step k (LambdaLR), so
the formula is the code.
"""

from __future__ import annotations

import math

from torch.optim.lr_scheduler import LambdaLR

from dlbench import hookimpl
from dlbench.stacking import stackable


@hookimpl
def dlbench_register_schedules(register):
    for name, factory in [("constant", constant), ("linear", linear), ("step", step),
                          ("inverse_time", inverse_time), ("cosine", cosine)]:
        register(name, stackable(factory))  # each a function of the step alone: they stack


def _check_fraction(name: str, key: str, value: float, upper_open: bool = False) -> None:
    if not 0.0 <= value <= 1.0 or (upper_open and value == 1.0):
        raise ValueError(f"{name}: {key} must be in [0, 1{')' if upper_open else ']'}, got {value}")


def constant(optimizer, total_steps) -> LambdaLR:
    """Constant learning rate eps_k = eps_0."""
    return LambdaLR(optimizer, lambda k: 1.0)


def linear(optimizer, total_steps, *, final_fraction: float = 0.01, decay_fraction: float = 1.0) -> LambdaLR:
    """Linear decay to eps_tau (Goodfellow et al. 2016, sec. 8.3.1), then constant.

    eps_k = (1 - a) eps_0 + a eps_tau with a = k / tau, tau = decay_fraction * total steps and
    eps_tau = final_fraction * eps_0 (the book suggests about 1% of eps_0).
    """
    _check_fraction("linear", "final_fraction", final_fraction)
    _check_fraction("linear", "decay_fraction", decay_fraction)
    tau = max(1, round(decay_fraction * total_steps))
    return LambdaLR(optimizer, lambda k: (1 - min(k / tau, 1.0)) + min(k / tau, 1.0) * final_fraction)


def step(optimizer, total_steps, *, milestones: list[float] = [0.5, 0.75], gamma: float = 0.1) -> LambdaLR:  # noqa: B006
    """Step decay: multiply eps by gamma at each milestone (fractions of training)."""
    for m in milestones:
        _check_fraction("step", "milestones", m)
    at = sorted(round(m * total_steps) for m in milestones)
    return LambdaLR(optimizer, lambda k: gamma ** sum(k >= s for s in at))


def inverse_time(optimizer, total_steps, *, decay: float = 1.0) -> LambdaLR:
    """1/t decay: eps_k = eps_0 / (1 + decay * k / steps_per_unit), with k in fractions of training.

    ``decay`` = 1 halves the learning rate by the end of training; 9 divides it by ten.
    """
    if decay < 0:
        raise ValueError(f"inverse_time: decay must be >= 0, got {decay}")
    return LambdaLR(optimizer, lambda k: 1.0 / (1.0 + decay * k / max(1, total_steps)))


def cosine(optimizer, total_steps, *, final_fraction: float = 0.0, warmup_fraction: float = 0.0) -> LambdaLR:
    """Cosine annealing (Loshchilov & Hutter 2017) after an optional linear warm-up (Goyal et al. 2017)."""
    _check_fraction("cosine", "final_fraction", final_fraction)
    _check_fraction("cosine", "warmup_fraction", warmup_fraction, upper_open=True)
    warm = round(warmup_fraction * total_steps)

    def factor(k: int) -> float:
        if k < warm:
            return (k + 1) / warm
        t = min(1.0, (k - warm) / max(1, total_steps - warm))
        return final_fraction + (1 - final_fraction) * 0.5 * (1 + math.cos(math.pi * t))

    return LambdaLR(optimizer, factor)


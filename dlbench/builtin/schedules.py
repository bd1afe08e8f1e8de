"""Built-in learning-rate schedules, stepped once per optimizer step.

Each but ``plateau`` is a multiplier of the base learning rate eps_0 as a function of the step k
(LambdaLR), so the formula is the code. ``plateau`` follows the validation loss, told it by the
loop at each epoch end (``epoch_end``, see ``dlbench_register_schedules``).
"""

from __future__ import annotations

import math
from typing import Annotated

from torch.optim.lr_scheduler import LambdaLR, LRScheduler

from dlbench import Range, hookimpl
from dlbench.stacking import stackable

Fraction = Annotated[float, Range(ge=0, le=1)]  # of the base learning rate, or of training


@hookimpl
def dlbench_register_schedules(register):
    for name, factory in [("constant", constant), ("linear", linear), ("step", step),
                          ("inverse_time", inverse_time), ("cosine", cosine)]:
        register(name, stackable(factory))  # each a function of the step alone: they stack
    register("plateau", plateau)  # follows the validation loss: trains alone


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



def plateau(optimizer, total_steps, *, factor: Annotated[float, Range(gt=0, lt=1)] = 0.1,
            patience: Annotated[int, Range(ge=0)] = 10, threshold: Annotated[float, Range(ge=0, lt=1)] = 1e-4,
            cooldown: Annotated[int, Range(ge=0)] = 0, min_fraction: Fraction = 0.0) -> Plateau:
    """Decay on plateau: multiply eps by ``factor`` when the validation loss stops improving (torch's ReduceLROnPlateau).

    After each epoch the validation loss L improves when L < best * (1 - threshold) (relative
    threshold; then best = L). After more than ``patience`` epochs in a row without improvement,
    eps <- max(factor * eps, min_fraction * eps_0) and the count restarts; for the next
    ``cooldown`` epochs no epoch counts as bad. Defaults are torch's (factor 0.1, patience 10,
    threshold 1e-4 relative, cooldown 0, min_lr 0). Needs a validation split (``val_fraction`` > 0).
    """
    return Plateau(optimizer, factor=factor, patience=patience, threshold=threshold, cooldown=cooldown,
                   min_fraction=min_fraction)


class Plateau(LRScheduler):
    """eps_k = eps_0 * scale, where ``scale`` only changes at epoch ends (``epoch_end``). Its state
    (scale, best loss, bad epochs, cooldown left) is in ``state_dict``, so a resumed trial goes on
    as if never stopped."""

    def __init__(self, optimizer, *, factor: float, patience: int, threshold: float, cooldown: int,
                 min_fraction: float):
        self.factor, self.patience, self.threshold = factor, patience, threshold
        self.cooldown, self.min_fraction = cooldown, min_fraction
        self.scale, self.best, self.bad_epochs, self.cooldown_left = 1.0, math.inf, 0, 0
        super().__init__(optimizer)

    def get_lr(self) -> list[float]:
        return [base * self.scale for base in self.base_lrs]

    def epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        if "val_loss" not in metrics:
            raise ValueError("plateau follows the validation loss, and this trial has no validation split: "
                             "set val_fraction > 0 (e.g. 0.1)")
        loss = metrics["val_loss"]
        if loss < self.best * (1 - self.threshold):
            self.best, self.bad_epochs = loss, 0
        else:
            self.bad_epochs += 1
        if self.cooldown_left > 0:
            self.cooldown_left -= 1
            self.bad_epochs = 0
        if self.bad_epochs > self.patience:
            self.scale = max(self.scale * self.factor, self.min_fraction)
            self.cooldown_left, self.bad_epochs = self.cooldown, 0
        for group, lr in zip(self.optimizer.param_groups, self.get_lr()):  # from the next step on
            group["lr"] = lr
        self._last_lr = self.get_lr()

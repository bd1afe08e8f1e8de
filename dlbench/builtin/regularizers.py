"""Built-in regularizers, one per point of training the Regularizer interface covers."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from dlbench import hookimpl
from dlbench.regularizer import Regularizer, weights
from dlbench.slots import slots


@hookimpl
def dlbench_register_regularizers(register):
    for name, factory in [("dropout", Dropout), ("l2", L2), ("l1", L1), ("max_norm", MaxNorm),
                          ("grad_clip", GradClip), ("input_noise", InputNoise), ("early_stopping", EarlyStopping)]:
        register(name, factory)


def _probability(name: str, key: str, p: float) -> None:
    if not 0.0 <= p < 1.0:
        raise ValueError(f"{name}: {key} must be in [0, 1), got {p}")


class Dropout(Regularizer):
    """Inverted dropout (Srivastava et al. 2014): zero units with probability p, scale by 1/(1-p).

    Scaling at training time (not test time) keeps the expected activation equal in both, so
    evaluation uses the full network unchanged. ``p_input`` acts on the input slot, ``p_hidden``
    on every hidden slot of the architecture.
    """

    def __init__(self, *, p_input: float = 0.2, p_hidden: float = 0.5):
        _probability("dropout", "p_input", p_input)
        _probability("dropout", "p_hidden", p_hidden)
        self.p_input, self.p_hidden = p_input, p_hidden

    def wrap_model(self, model: nn.Module) -> nn.Module:
        hidden, inputs = slots(model, "hidden"), slots(model, "input")
        if not hidden and not inputs:
            raise ValueError(f"dropout: {type(model).__name__} exposes no slots (dlbench.slots.Slot) to put dropout in")
        for s in inputs:
            if self.p_input:
                s.fill(nn.Dropout(self.p_input))
        for s in hidden:
            if self.p_hidden:
                s.fill(nn.Dropout(self.p_hidden))
        return model


class L2(Regularizer):
    """L2 penalty (weight decay in the loss): adds (lambda / 2) * sum(w^2) over weights, not biases."""

    def __init__(self, *, weight: float = 1e-4):
        if weight < 0:
            raise ValueError(f"l2: weight must be >= 0, got {weight}")
        self.weight = weight

    def penalty(self, model: nn.Module) -> torch.Tensor:
        return 0.5 * self.weight * sum(w.pow(2).sum() for w in weights(model))


class L1(Regularizer):
    """L1 penalty: adds lambda * sum(|w|) over weights, which drives weights to exact zeros."""

    def __init__(self, *, weight: float = 1e-5):
        if weight < 0:
            raise ValueError(f"l1: weight must be >= 0, got {weight}")
        self.weight = weight

    def penalty(self, model: nn.Module) -> torch.Tensor:
        return self.weight * sum(w.abs().sum() for w in weights(model))


class MaxNorm(Regularizer):
    """Max-norm constraint (Srebro & Shraibman 2005; used with dropout by Srivastava et al. 2014).

    After every step, each unit's incoming weight vector w is rescaled to norm c when ||w|| > c.
    """

    def __init__(self, *, max_norm: float = 3.0):
        if max_norm <= 0:
            raise ValueError(f"max_norm: max_norm must be > 0, got {max_norm}")
        self.max_norm = max_norm

    @torch.no_grad()
    def after_step(self, model: nn.Module) -> None:
        for w in weights(model):
            norms = w.flatten(1).norm(dim=1).clamp(min=1e-12)
            scale = (self.max_norm / norms).clamp(max=1.0)
            w.mul_(scale.view(-1, *([1] * (w.dim() - 1))))


class GradClip(Regularizer):
    """Gradient clipping by global norm (Pascanu et al. 2013), against exploding gradients."""

    def __init__(self, *, max_norm: float = 1.0):
        if max_norm <= 0:
            raise ValueError(f"grad_clip: max_norm must be > 0, got {max_norm}")
        self.max_norm = max_norm

    def before_step(self, model: nn.Module) -> None:
        nn.utils.clip_grad_norm_(model.parameters(), self.max_norm)


class InputNoise(Regularizer):
    """Gaussian input noise (Bishop 1995: equivalent to Tikhonov regularization for small noise)."""

    def __init__(self, *, std: float = 0.1):
        if std < 0:
            raise ValueError(f"input_noise: std must be >= 0, got {std}")
        self.std = std

    def transform_batch(self, x, y):
        return x + self.std * torch.randn_like(x), y


class EarlyStopping(Regularizer):
    """Early stopping (Goodfellow et al. 2016, sec. 7.8): stop when the monitored metric has not
    improved by more than ``min_delta`` for ``patience`` epochs."""

    def __init__(self, *, patience: int = 5, metric: Literal["val_loss", "val_accuracy"] = "val_loss",
                 min_delta: float = 0.0):
        if patience < 1:
            raise ValueError(f"early_stopping: patience must be >= 1, got {patience}")
        self.patience, self.metric, self.min_delta = patience, metric, min_delta
        self.best: float | None = None
        self.bad_epochs = 0

    def should_stop(self, epoch: int, metrics: dict[str, float]) -> bool:
        if self.metric not in metrics:
            raise ValueError(f"early_stopping: metric {self.metric!r} is not computed (is val_fraction 0?)")
        value = metrics[self.metric] * (1 if self.metric.endswith("loss") else -1)
        if self.best is None or value < self.best - self.min_delta:
            self.best, self.bad_epochs = value, 0
        else:
            self.bad_epochs += 1
        return self.bad_epochs >= self.patience

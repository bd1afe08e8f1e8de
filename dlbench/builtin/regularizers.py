"""Built-in regularizers, one per point of training the Regularizer interface covers."""

from __future__ import annotations

from typing import Annotated, Literal

import torch
from torch import nn

from dlbench import Range, hookimpl
from dlbench.regularizer import Regularizer, StackedRegularizer, per_member, stacked_weights, weights
from dlbench.slots import slots


@hookimpl
def dlbench_register_regularizers(register):
    for name, factory in [("dropout", Dropout), ("l2", L2), ("l1", L1), ("max_norm", MaxNorm),
                          ("grad_clip", GradClip), ("input_noise", InputNoise), ("early_stopping", EarlyStopping)]:
        register(name, factory)


Probability = Annotated[float, Range(ge=0, lt=1)]  # of dropping a unit: 1 would drop them all
Weight = Annotated[float, Range(ge=0)]
Positive = Annotated[float, Range(gt=0)]


class InvertedDropout(nn.Module):
    """``nn.Dropout`` for a stack: ``p`` held as a buffer, so members may differ in p. In
    training, keep each unit when u >= p (u uniform in [0, 1)) and scale by 1/(1-p)."""

    def __init__(self, p: float):
        super().__init__()
        self.register_buffer("p", torch.tensor(float(p)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        return x * (torch.rand_like(x) >= self.p) / (1.0 - self.p)

    def extra_repr(self) -> str:
        return f"p={self.p.item():g}" if self.p.device.type != "meta" else "p=?"


class Dropout(Regularizer):
    """Inverted dropout (Srivastava et al. 2014): zero units with probability p, scale by 1/(1-p).

    Scaling at training time (not test time) keeps the expected activation equal in both, so
    evaluation uses the full network unchanged. ``p_input`` acts on the input slot, ``p_hidden``
    on every hidden slot of the architecture. Stacks: each member draws its own masks.
    """

    def __init__(self, *, p_input: Probability = 0.2, p_hidden: Probability = 0.5):
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

    def stack_model(self, model: nn.Module) -> nn.Module:
        device = next(model.parameters()).device
        for parent in list(model.modules()):  # every nn.Dropout, wherever a slot put it
            for name, child in list(parent.named_children()):
                if type(child) is nn.Dropout:
                    setattr(parent, name, InvertedDropout(child.p).to(device))
        return model

    def stack_key(self) -> object:
        return (self.p_input > 0, self.p_hidden > 0)  # which slots hold a dropout layer

    @classmethod
    def stacked(cls, members):
        return StackedRegularizer(members)  # the layers are in the model, p a buffer per member


class L2(Regularizer):
    """L2 penalty (weight decay in the loss): adds (lambda / 2) * sum(w^2) over weights, not biases."""

    def __init__(self, *, weight: Weight = 1e-4):
        self.weight = weight

    def penalty(self, model: nn.Module) -> torch.Tensor:
        return 0.5 * self.weight * sum(w.pow(2).sum() for w in weights(model))

    @classmethod
    def stacked(cls, members):
        return StackedPenalty(members, lambda w: w.pow(2), scale=0.5)


class L1(Regularizer):
    """L1 penalty: adds lambda * sum(|w|) over weights, which drives weights to exact zeros."""

    def __init__(self, *, weight: Weight = 1e-5):
        self.weight = weight

    def penalty(self, model: nn.Module) -> torch.Tensor:
        return self.weight * sum(w.abs().sum() for w in weights(model))

    @classmethod
    def stacked(cls, members):
        return StackedPenalty(members, torch.abs, scale=1.0)


class StackedPenalty(StackedRegularizer):
    """scale * weight_i * sum over member i's weights of f(w): one value per member."""
    graph_safe = True

    def __init__(self, members, f, scale: float):
        super().__init__(members)
        self.f, self.scale = f, scale

    def select(self, keep):
        self.members = [self.members[i] for i in keep]

    def penalty(self, params):
        ws = stacked_weights(params)
        total = sum(self.f(w).flatten(1).sum(1) for w in ws)
        return self.scale * self.values("weight", ws[0]) * total


class MaxNorm(Regularizer):
    """Max-norm constraint (Srebro & Shraibman 2005; used with dropout by Srivastava et al. 2014).

    After every step, each unit's incoming weight vector w is rescaled to norm c when ||w|| > c.
    """

    def __init__(self, *, max_norm: Positive = 3.0):
        self.max_norm = max_norm

    @torch.no_grad()
    def after_step(self, model: nn.Module) -> None:
        for w in weights(model):
            norms = w.flatten(1).norm(dim=1).clamp(min=1e-12)
            scale = (self.max_norm / norms).clamp(max=1.0)
            w.mul_(scale.view(-1, *([1] * (w.dim() - 1))))

    @classmethod
    def stacked(cls, members):
        return StackedMaxNorm(members)


class StackedMaxNorm(StackedRegularizer):
    graph_safe = True

    @torch.no_grad()
    def after_step(self, params):
        for w in stacked_weights(params):
            c = self.values("max_norm", w).view(-1, 1)
            norms = w.flatten(2).norm(dim=2).clamp(min=1e-12)  # [N, units]
            scale = (c / norms).clamp(max=1.0)
            w.mul_(scale.view(*scale.shape, *([1] * (w.dim() - 2))))


class GradClip(Regularizer):
    """Gradient clipping by global norm (Pascanu et al. 2013), against exploding gradients."""

    def __init__(self, *, max_norm: Positive = 1.0):
        self.max_norm = max_norm

    def before_step(self, model: nn.Module) -> None:
        nn.utils.clip_grad_norm_(model.parameters(), self.max_norm)

    @classmethod
    def stacked(cls, members):
        return StackedGradClip(members)


class StackedGradClip(StackedRegularizer):
    """``clip_grad_norm_`` per member: each member's global gradient norm, its own max_norm."""
    graph_safe = True

    @torch.no_grad()
    def before_step(self, params):
        grads = [p.grad for p in params.values() if p.grad is not None]
        total = torch.stack([g.flatten(1).pow(2).sum(1) for g in grads]).sum(0).sqrt()  # [N]
        coef = (self.values("max_norm", total) / (total + 1e-6)).clamp(max=1.0)
        for g in grads:
            g.mul_(per_member(coef, g))


class InputNoise(Regularizer):
    """Gaussian input noise (Bishop 1995: equivalent to Tikhonov regularization for small noise)."""

    def __init__(self, *, std: Annotated[float, Range(ge=0)] = 0.1):
        self.std = std

    def transform_batch(self, x, y):
        return x + self.std * torch.randn_like(x), y

    @classmethod
    def stacked(cls, members):
        return StackedInputNoise(members)


class StackedInputNoise(StackedRegularizer):
    graph_safe = True

    def transform_batch(self, x, y):
        return x + per_member(self.values("std", x), x) * torch.randn_like(x), y


class EarlyStopping(Regularizer):
    """Early stopping (Goodfellow et al. 2016, sec. 7.8, Algorithm 7.1; the course material:
    "tracking loss/error on validation set"): stop when the monitored metric has not improved by
    more than ``min_delta`` for ``patience`` epochs, then return the best parameters.

    An epoch (from epoch 1) improves when its ``metric`` (``val_loss``, lower is better, or
    ``val_accuracy``, higher is better) beats the best so far by more than ``min_delta``. With
    ``restore_best`` (default true) the weights of the last improving epoch are kept (a copy of
    the model's state, saved in checkpoints) and, when training ends (stopped or after the last
    epoch), put back: the trial's history then ends with one more evaluation, of the restored
    weights, recorded after the last trained epoch, and that evaluation is its final metrics
    (``epochs_run`` stays the number of epochs trained). Nothing is restored when the last epoch
    was the best, or when the trial diverged. Options: ``patience`` (default 5), ``metric``
    (default "val_loss"), ``min_delta`` (default 0), ``restore_best`` (default true).
    """

    def __init__(self, *, patience: Annotated[int, Range(ge=1)] = 5,
                 metric: Literal["val_loss", "val_accuracy"] = "val_loss",
                 min_delta: Annotated[float, Range(ge=0)] = 0.0, restore_best: bool = True):
        self.patience, self.metric, self.min_delta, self.restore_best = patience, metric, min_delta, restore_best
        self.best: float | None = None
        self.bad_epochs = 0
        self.best_epoch: int | None = None
        self.best_state: dict[str, torch.Tensor] | None = None  # the best epoch's model.state_dict()

    def epoch_end(self, model: nn.Module, epoch: int, metrics: dict[str, float]) -> None:
        if epoch == 0:  # the initialized model: patience counts from the first trained epoch
            return
        if self.metric not in metrics:
            raise ValueError(f"early_stopping: metric {self.metric!r} is not computed (is val_fraction 0?)")
        value = metrics[self.metric] * (1 if self.metric.endswith("loss") else -1)
        if self.best is None or value < self.best - self.min_delta:
            self.best, self.bad_epochs, self.best_epoch = value, 0, epoch
            if self.restore_best:
                self.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            self.bad_epochs += 1

    def should_stop(self, epoch: int, metrics: dict[str, float]) -> bool:
        return self.bad_epochs >= self.patience

    def end_of_training(self, model: nn.Module) -> bool:
        if not self.restore_best or self.best_state is None or self.bad_epochs == 0:
            return False  # off, never evaluated, or the last epoch is the best
        model.load_state_dict(self.best_state)
        return True

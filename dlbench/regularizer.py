"""The one interface every regularizer implements: override the points of training it acts on.

The training loop calls every method of every regularizer of a trial, in the order they are
listed in the study file; the defaults do nothing. So dropout overrides ``wrap_model``, an L2
penalty ``penalty``, gradient clipping ``before_step``, max-norm ``after_step``, input noise
``transform_batch`` and early stopping ``should_stop``.
"""

from __future__ import annotations

import torch
from torch import nn


class Regularizer:
    """Base class: a no-op at every point of training."""

    def wrap_model(self, model: nn.Module) -> nn.Module:
        """Change the model before it is initialized and trained (fill slots, add layers)."""
        return model

    def transform_batch(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Change a training batch (noise, augmentation). Not applied at evaluation."""
        return x, y

    def penalty(self, model: nn.Module) -> torch.Tensor | float:
        """A term added to the training loss (L1, L2)."""
        return 0.0

    def before_step(self, model: nn.Module) -> None:
        """Act on the gradients after backward, before the optimizer step (clipping)."""

    def after_step(self, model: nn.Module) -> None:
        """Act on the parameters after the optimizer step (max-norm constraints)."""

    def should_stop(self, epoch: int, metrics: dict[str, float]) -> bool:
        """Whether to stop training after this epoch (early stopping)."""
        return False

    def state_dict(self) -> dict:
        """What a checkpoint must keep to resume (by default: the plain attributes)."""
        return dict(vars(self))

    def load_state_dict(self, state: dict) -> None:
        vars(self).update(state)


def weights(model: nn.Module) -> list[nn.Parameter]:
    """The weight matrices/kernels of a model (not biases or norm scales): what penalties act on."""
    return [p for n, p in model.named_parameters() if p.dim() > 1]

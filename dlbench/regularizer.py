"""The one interface every regularizer implements: override the points of training it acts on.

The training loop calls every method of every regularizer of a trial, in the order they are
listed in the study file; the defaults do nothing. So dropout overrides ``wrap_model``, an L2
penalty ``penalty``, gradient clipping ``before_step``, max-norm ``after_step``, input noise
``transform_batch`` and early stopping ``epoch_end``, ``should_stop`` and ``end_of_training``
(it keeps the best epoch's weights and restores them when training is over).

To train in a stack (see ``dlbench/stacking.py``), a regularizer that acts during the step says
how it acts on N members at once: ``stacked(members)`` returns a :class:`StackedRegularizer`
built from the members' instances (one per trial, possibly with different option values).
One that acts only between epochs (``epoch_end``, ``should_stop``, ``end_of_training``) stacks as
it is: each member's own instance sees the member's own model.
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

    def epoch_end(self, model: nn.Module, epoch: int, metrics: dict[str, float]) -> None:
        """See the model and its metrics after each evaluated epoch (epoch 0: the initialized
        model), before ``should_stop`` is asked; not called for an epoch whose loss diverged.
        Whatever it keeps (the best weights) belongs in ``state_dict`` so that a resumed trial has it."""

    def should_stop(self, epoch: int, metrics: dict[str, float]) -> bool:
        """Whether to stop training after this epoch (early stopping)."""
        return False

    def end_of_training(self, model: nn.Module) -> bool:
        """Training is over (the last epoch, or a stop; not a divergence): change the final
        weights in place (early stopping restores the best epoch's). Returns whether it changed
        them: the loop then evaluates the model again, records that evaluation as one more row
        of the history and makes it the trial's final metrics."""
        return False

    @classmethod
    def stacked(cls, members: list[Regularizer]) -> StackedRegularizer:
        """The same regularizer acting on a stack of N members (``members[i]`` is member i's
        instance). Override it to let trials using this regularizer train stacked."""
        if cls.acts_only_on_stopping():
            return StackedRegularizer(members)  # each member's own instance acts between epochs
        raise NotImplementedError(f"{cls.__name__} has no stacked form")

    @classmethod
    def can_stack(cls) -> bool:
        """Whether trials using it may train stacked: it overrides ``stacked``, or acts only
        between epochs (the stopping decision, the final weights)."""
        return cls.stacked.__func__ is not Regularizer.stacked.__func__ or cls.acts_only_on_stopping()

    @classmethod
    def acts_only_on_stopping(cls) -> bool:
        return not overrides(cls, Regularizer, "wrap_model", "transform_batch", "penalty", "before_step", "after_step")

    def stack_model(self, model: nn.Module) -> nn.Module:
        """Adapt a member's model (already wrapped and initialized) before it joins a stack:
        modules holding a per-member value as a Python number (``nn.Dropout(p)``) must hold it
        as a buffer, which stacks. By default the model is left as it is."""
        return model

    def stack_key(self) -> object:
        """What must be equal between the members of a stack besides the non-numeric options
        (for instance whether dropout is on at all, which changes the model's modules)."""
        return ()

    def state_dict(self) -> dict:
        """What a checkpoint must keep to resume (by default: the plain attributes)."""
        return dict(vars(self))

    def load_state_dict(self, state: dict) -> None:
        vars(self).update(state)


def overrides(cls: type, base: type, *methods: str) -> bool:
    """Whether ``cls`` replaces any of ``methods`` of ``base`` (else base's default runs, which for
    a regularizer does nothing)."""
    return any(getattr(cls, m) is not getattr(base, m) for m in methods)


def weights(model: nn.Module) -> list[nn.Parameter]:
    """The weight matrices/kernels of a model (not biases or norm scales): what penalties act on."""
    return [p for n, p in model.named_parameters() if p.dim() > 1]


class StackedRegularizer:
    """A regularizer over a stack of N members: stacked parameters have the member axis first
    (``params`` maps each parameter's name to its [N, ...] tensor), batches are [N, B, ...],
    penalties are [N] (one per member). The defaults do nothing.

    ``graph_safe = True`` promises that ``transform_batch``, ``penalty``, ``before_step`` and
    ``after_step`` are tensor work alone (random draws from torch's default generator allowed):
    no Python state that changes from step to step, no read of a tensor's value on the host, so
    a CUDA graph may capture them once and replay them (``dlbench run --cuda-graphs``).
    """

    graph_safe = False

    def __init__(self, members: list[Regularizer]):
        self.members = members

    def values(self, attribute: str, like: torch.Tensor) -> torch.Tensor:
        """The members' ``attribute`` as an [N] float tensor on ``like``'s device (made once per
        attribute and device, so a step copies nothing from the host)."""
        cache = self.__dict__.setdefault("_values", {})
        members, values = cache.get((attribute, like.device), (None, None))
        if members is not self.members:  # first use, or members left the stack (select)
            values = torch.tensor([float(getattr(m, attribute)) for m in self.members], device=like.device)
            cache[(attribute, like.device)] = (self.members, values)
        return values

    def transform_batch(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x, y

    def penalty(self, params: dict[str, torch.Tensor]) -> torch.Tensor | float:
        return 0.0

    def before_step(self, params: dict[str, torch.Tensor]) -> None:
        pass

    def after_step(self, params: dict[str, torch.Tensor]) -> None:
        pass

    def select(self, keep: list[int]) -> None:
        """Keep only the members at ``keep``: rebuilt from their instances by default."""
        self.__init__([self.members[i] for i in keep])


def stacked_weights(params: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """The stacked weight matrices/kernels (what ``weights`` gives for one model, per member)."""
    return [p for p in params.values() if p.dim() > 2]


def per_member(value: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """An [N] tensor shaped to broadcast against a stacked tensor [N, ...]."""
    return value.view(-1, *([1] * (like.dim() - 1)))

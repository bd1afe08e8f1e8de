"""Batch, layer and group normalization, in the architectures' norm slots (between each hidden
layer's linear map or convolution and its activation; see ``dlbench/slots.py``).

Each normalizes x^ = (x - mu) / sqrt(sigma^2 + eps) over a set of values and then scales and
shifts per feature (channel), y = gamma x^ + beta, gamma = 1 and beta = 0 at the start; they
differ in the set mu and sigma^2 are taken over (the course material: "sigma_i, mu_i depend on
method").
"""

from __future__ import annotations

from typing import Annotated

from torch import nn

from dlbench import Range, hookimpl
from dlbench.regularizer import Regularizer, StackedRegularizer
from dlbench.slots import Slot, slots

Eps = Annotated[float, Range(gt=0)]


@hookimpl
def dlbench_register_regularizers(register):
    register("batch_norm", BatchNorm)
    register("layer_norm", LayerNorm)
    register("group_norm", GroupNorm)


def norm_slots(name: str, model: nn.Module) -> list[Slot]:
    """The model's norm slots, each knowing its feature count; a clear error otherwise."""
    found = slots(model, "norm")
    if not found:
        raise ValueError(f"{name}: {type(model).__name__} exposes no norm slots (dlbench.slots.Slot('norm', "
                         "features=...)) to put a normalization layer in")
    for s in found:
        if not s.features or s.spatial_dims not in (0, 1, 2):
            raise ValueError(f"{name}: a norm slot of {type(model).__name__} says features={s.features}, "
                             f"spatial_dims={s.spatial_dims}; a normalization layer needs features >= 1 and "
                             "spatial_dims 0, 1 or 2")
    return found


class BatchNorm(Regularizer):
    """Batch normalization (Ioffe & Szegedy 2015; the course material's Algorithm 1).

    Training: per feature (channel), mu_B and sigma_B^2 are the mean and the biased variance over
    the mini-batch (and, for convolutions, every position), x^ = (x - mu_B) / sqrt(sigma_B^2 +
    eps), y = gamma x^ + beta. Running estimates are updated at every training forward pass,
    r <- (1 - momentum) r + momentum * stat (the variance unbiased, m/(m-1)); evaluation
    normalizes with them instead of the batch's ("test-time: ... mean & variance on entire training
    sample"), so an example's prediction does not depend on the rest of its batch. Layers:
    ``BatchNorm1d`` for [B, F] and [B, C, L], ``BatchNorm2d`` for [B, C, H, W]. Options: ``eps``
    (default 1e-5), ``momentum`` (default 0.1). Does not stack (the running statistics are
    in-place buffer updates).
    """

    def __init__(self, *, eps: Eps = 1e-5, momentum: Annotated[float, Range(gt=0, le=1)] = 0.1):
        self.eps, self.momentum = eps, momentum

    def wrap_model(self, model: nn.Module) -> nn.Module:
        for s in norm_slots("batch_norm", model):
            layer = nn.BatchNorm2d if s.spatial_dims == 2 else nn.BatchNorm1d
            s.fill(layer(s.features, eps=self.eps, momentum=self.momentum))
        return model


class LayerNorm(Regularizer):
    """Layer normalization (Ba et al. 2016; the course material: "for recurrent neural networks").

    mu and sigma^2 are taken over every hidden unit of the layer for each example on its own:
    for [B, F] over the F features (``nn.LayerNorm(F)``); for a convolution's [B, C, ...] over
    the channels and positions together (``nn.GroupNorm(1, C)``: one group, as Ba et al. define it
    for all the summed inputs of a layer, with gamma and beta per channel). The same computation
    in training and evaluation, independent of the batch. Option: ``eps`` (default 1e-5). Stacks:
    parameters only.
    """

    def __init__(self, *, eps: Eps = 1e-5):
        self.eps = eps

    def wrap_model(self, model: nn.Module) -> nn.Module:
        for s in norm_slots("layer_norm", model):
            s.fill(nn.LayerNorm(s.features, eps=self.eps) if s.spatial_dims == 0
                   else nn.GroupNorm(1, s.features, eps=self.eps))
        return model

    def stack_key(self) -> object:
        return self.eps  # a Python number in the layer: the members of a stack share it

    @classmethod
    def stacked(cls, members):
        return StackedRegularizer(members)  # the layers are in the model: their parameters stack


class GroupNorm(Regularizer):
    """Group normalization (Wu & He 2018, "Group Normalization").

    The C features (channels) are split into ``groups`` groups of C/groups consecutive ones; mu and
    sigma^2 are taken for each example over each group (and, for convolutions, every position),
    gamma and beta per channel (``nn.GroupNorm(groups, C)``). groups = 1 is layer normalization,
    groups = C instance normalization. The same in training and evaluation, independent of the
    batch. Options: ``groups`` (default 32, the paper's; must divide every norm slot's
    features), ``eps`` (default 1e-5). Stacks: parameters only.
    """

    def __init__(self, *, groups: Annotated[int, Range(ge=1)] = 32, eps: Eps = 1e-5):
        self.groups, self.eps = groups, eps

    def wrap_model(self, model: nn.Module) -> nn.Module:
        found = norm_slots("group_norm", model)
        bad = sorted({s.features for s in found if s.features % self.groups})
        if bad:
            raise ValueError(f"group_norm: groups = {self.groups} does not divide the {bad} features (channels) of "
                             f"{type(model).__name__}'s norm slots; choose a number of groups that divides "
                             f"every layer's width")
        for s in found:
            s.fill(nn.GroupNorm(self.groups, s.features, eps=self.eps))
        return model

    def stack_key(self) -> object:
        return (self.groups, self.eps)  # Python numbers in the layers: the members share them

    @classmethod
    def stacked(cls, members):
        return StackedRegularizer(members)

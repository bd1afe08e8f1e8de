"""Built-in parameter initializers (data-free). Each sets every Linear/Conv weight, biases to 0.

Formulas follow the course notes (seeds: "Random Parameter Initializations") and the papers named
in each docstring; ``default`` keeps PyTorch's own init as the control.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Annotated, Literal

import torch
from torch import nn

from dlbench import Range, hookimpl

Positive = Annotated[float, Range(gt=0)]


@hookimpl
def dlbench_register_initializers(register):
    for name, factory in [
        ("default", default), ("xavier", xavier), ("kaiming", kaiming), ("lecun", lecun),
        ("normal", normal), ("uniform", uniform), ("orthogonal", orthogonal),
    ]:
        register(name, factory)


def _layers(model: nn.Module) -> Iterator[nn.Module]:
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            yield m


@torch.no_grad()
def _apply(model: nn.Module, init_weight: Callable[[torch.Tensor], None]) -> None:
    for layer in _layers(model):
        init_weight(layer.weight)
        if layer.bias is not None:
            layer.bias.zero_()


def default(model, data) -> None:
    """PyTorch's default init (Kaiming-uniform with a=sqrt(5), fan-in bias): left as built."""


def xavier(model, data, *, distribution: Literal["uniform", "normal"] = "uniform", gain: Positive = 1.0) -> None:
    """Xavier/Glorot (Glorot & Bengio 2010): Var(W) = 2 / (fan_in + fan_out), times gain^2.

    Uniform: W ~ U(-a, a) with a = gain * sqrt(6 / (fan_in + fan_out)).
    """
    fn = nn.init.xavier_uniform_ if distribution == "uniform" else nn.init.xavier_normal_
    _apply(model, lambda w: fn(w, gain=gain))


def kaiming(
    model, data, *,
    distribution: Literal["uniform", "normal"] = "normal",
    mode: Literal["fan_in", "fan_out"] = "fan_in",
    nonlinearity: Literal["relu", "leaky_relu", "linear", "tanh", "sigmoid"] = "relu",
) -> None:
    """Kaiming/He (He et al. 2015): Var(W) = gain^2 / fan, gain = sqrt(2) for ReLU."""
    fn = nn.init.kaiming_uniform_ if distribution == "uniform" else nn.init.kaiming_normal_
    _apply(model, lambda w: fn(w, mode=mode, nonlinearity=nonlinearity))


def lecun(model, data, *, distribution: Literal["uniform", "normal"] = "normal") -> None:
    """LeCun (LeCun et al. 1998, "Efficient BackProp"): Var(W) = 1 / fan_in."""
    fn = nn.init.kaiming_uniform_ if distribution == "uniform" else nn.init.kaiming_normal_
    _apply(model, lambda w: fn(w, mode="fan_in", nonlinearity="linear"))


def normal(model, data, *, std: Positive = 0.01) -> None:
    """Small Gaussian: W ~ N(0, std^2), the classical scheme of the course notes."""
    _apply(model, lambda w: nn.init.normal_(w, 0.0, std))


def uniform(model, data, *, a: Positive = 0.05) -> None:
    """Small uniform: W ~ U(-a, a), the classical scheme of the course notes."""
    _apply(model, lambda w: nn.init.uniform_(w, -a, a))


def orthogonal(model, data, *, gain: Positive = 1.0) -> None:
    """Orthogonal (Saxe et al. 2014): W from the QR/SVD of a Gaussian matrix, scaled by gain."""
    _apply(model, lambda w: nn.init.orthogonal_(w, gain=gain))


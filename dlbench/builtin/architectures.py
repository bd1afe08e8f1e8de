"""Built-in architectures of fully connected layers: the MLP and its residual and highway variants.

Convolutional networks are in ``convnets.py``, recurrent ones in ``recurrent.py``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Annotated

import torch
from torch import nn

from dlbench import Range, hookimpl
from dlbench.stacking import stackable
from dlbench.slots import Slot


@hookimpl
def dlbench_register_architectures(register):
    register("mlp", mlp)
    register("residual_mlp", residual_mlp)
    register("highway_mlp", highway_mlp)


class MLP(nn.Module):
    """Flatten -> [Linear -> norm slot -> activation -> hidden slot] x depth -> Linear to the logits."""

    def __init__(self, in_features: int, num_classes: int, activation: Callable[[], nn.Module],
                 depth: int, width: int, bias: bool):
        super().__init__()
        self.input_slot = Slot("input")
        self.blocks = nn.ModuleList()
        fan_in = in_features
        for _ in range(depth):
            self.blocks.append(nn.Sequential(nn.Linear(fan_in, width, bias=bias), Slot("norm", width), activation(),
                                             Slot("hidden", width)))
            fan_in = width
        self.head = nn.Linear(fan_in, num_classes, bias=bias)

    @property
    def hidden_blocks(self) -> list[nn.Module]:
        """Linear, normalization and activation of each hidden layer, for layer-wise initializers
        (without the dropout slot); the first flattens the input batch."""
        return [nn.Sequential(*([nn.Flatten()] if i == 0 else []), *block[:3]) for i, block in enumerate(self.blocks)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.input_slot(x.flatten(1))
        for block in self.blocks:
            x = block(x)
        return self.head(x)


@stackable  # Linear layers and elementwise activations: vmap batches them
def mlp(input_shape, num_classes, activation, *, depth: Annotated[int, Range(ge=0)] = 2,
        width: Annotated[int, Range(ge=1)] = 256, bias: bool = True) -> nn.Module:
    """Multilayer perceptron with ``depth`` hidden layers of ``width`` units (depth 0: linear).

    Exposes an input slot and a slot after every hidden activation (for dropout), and its hidden
    blocks (for greedy layer-wise pretraining).
    """
    return MLP(math.prod(input_shape), num_classes, activation, depth, width, bias)


Depth = Annotated[int, Range(ge=0)]
Width = Annotated[int, Range(ge=1)]


def hidden_layer(fan_in: int, width: int, activation: Callable[[], nn.Module], bias: bool) -> nn.Sequential:
    """Linear -> norm slot -> activation -> hidden slot: one hidden layer, as the MLP has them."""
    return nn.Sequential(nn.Linear(fan_in, width, bias=bias), Slot("norm", width), activation(), Slot("hidden", width))


class SkipMLP(nn.Module):
    """Flatten -> a first hidden layer projecting to ``width`` -> ``blocks`` (each width -> width,
    with its own skip connection) -> Linear to the logits."""

    def __init__(self, in_features: int, num_classes: int, activation: Callable[[], nn.Module], width: int,
                 bias: bool, blocks: list[nn.Module]):
        super().__init__()
        self.input_slot = Slot("input")
        self.stem = hidden_layer(in_features, width, activation, bias)
        self.blocks = nn.ModuleList(blocks)
        self.head = nn.Linear(width, num_classes, bias=bias)

    @property
    def hidden_blocks(self) -> list[nn.Module]:
        """The first projection (flattening the input batch, without its dropout slot), then
        every skip block whole."""
        return [nn.Sequential(nn.Flatten(), *self.stem[:3]), *self.blocks]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(self.input_slot(x.flatten(1)))
        for block in self.blocks:
            x = block(x)
        return self.head(x)


class ResidualBlock(nn.Module):
    """x + F(x), F(x) = W2 · hidden(act(norm(W1 x + b1))) + b2: an identity skip around two layers."""

    def __init__(self, width: int, activation: Callable[[], nn.Module], bias: bool):
        super().__init__()
        self.branch = nn.Sequential(*hidden_layer(width, width, activation, bias), nn.Linear(width, width, bias=bias))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.branch(x)


@stackable  # Linear layers, elementwise activations and additions: vmap batches them
def residual_mlp(input_shape, num_classes, activation, *, depth: Depth = 2, width: Width = 256,
                 bias: bool = True) -> nn.Module:
    """Residual MLP: identity skip connections (He et al. 2016, "Identity Mappings in Deep Residual Networks").

    A first hidden layer projects the flattened input to ``width`` units (Linear -> norm slot ->
    activation -> dropout slot), then ``depth`` residual blocks x_{l+1} = x_l + F(x_l) with
    F(x) = W2 · drop(act(norm(W1 x + b1))) + b2 (two ``width`` x ``width`` layers, a norm and a
    dropout slot each), then a linear layer to the logits. Nothing acts on the sum, so
    x_L = x_l + sum of the F between: the gradient reaches every block through the identity path
    ("skip connections improve gradient flow", course notes) whatever the depth.

    Options: ``depth`` residual blocks (default 2; 0: one hidden layer), ``width`` units (256),
    ``bias`` (true). Hidden blocks: the projection, then each residual block.
    """
    blocks = [ResidualBlock(width, activation, bias) for _ in range(depth)]
    return SkipMLP(math.prod(input_shape), num_classes, activation, width, bias, blocks)


class HighwayLayer(nn.Module):
    """y = H(x) · T(x) + x · (1 - T(x)), H(x) = drop(act(norm(W_H x + b_H))), T(x) = sigmoid(W_T x + b_T).

    ``b_T`` is its own parameter (``gate_bias``), not the bias of the gate's Linear, so the
    initializers that zero Linear biases keep it negative.
    """

    def __init__(self, width: int, activation: Callable[[], nn.Module], bias: bool, gate_bias: float):
        super().__init__()
        self.transform = hidden_layer(width, width, activation, bias)
        self.gate = nn.Linear(width, width, bias=False)
        self.gate_bias = nn.Parameter(torch.full((width,), float(gate_bias)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = torch.sigmoid(self.gate(x) + self.gate_bias)
        return self.transform(x) * t + x * (1 - t)


@stackable  # Linear layers, sigmoid gates and elementwise products: vmap batches them
def highway_mlp(input_shape, num_classes, activation, *, depth: Depth = 2, width: Width = 256, bias: bool = True,
                gate_bias: Annotated[float, Range(ge=-20, le=20)] = -1.0) -> nn.Module:
    """Highway MLP: gated skip connections (Srivastava et al. 2015, "Training Very Deep Networks").

    A first hidden layer projects the flattened input to ``width`` units, then ``depth`` highway
    layers y = H(x) · T(x) + x · (1 - T(x)) with the transform H(x) = act(W_H x + b_H) (norm slot
    before the activation, dropout slot after) and the transform gate T(x) = sigmoid(W_T x + b_T):
    how much of the input is transformed and how much carried through (course notes: "how much
    of input passes through, how much is transformed"), then a linear layer to the logits.

    Options: ``depth`` highway layers (default 2), ``width`` units (256), ``bias`` of the
    transform and output layers (true), ``gate_bias`` b_T at initialization (-1.0: negative, so
    every layer starts by mostly carrying its input; the paper uses -1 to -3 for deep networks).
    """
    blocks = [HighwayLayer(width, activation, bias, gate_bias) for _ in range(depth)]
    return SkipMLP(math.prod(input_shape), num_classes, activation, width, bias, blocks)

"""Built-in architectures."""

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
        (without the dropout slot)."""
        return [nn.Sequential(*block[:3]) for block in self.blocks]

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

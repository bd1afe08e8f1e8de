"""docs/plugins.md's example plugin swish.py as it stood before the reshape (commit 8934433),
verbatim: it imports from the module paths of that time."""
from typing import Annotated

import torch
from torch import nn

from dlbench import Range, hookimpl, stackable


class Swish(nn.Module):
    def __init__(self, beta: float):
        super().__init__()
        self.beta = beta

    def forward(self, x):
        return x * torch.sigmoid(self.beta * x)


@stackable  # elementwise, no state: vmap batches it
def swish(*, beta: Annotated[float, Range(gt=0)] = 1.0) -> nn.Module:
    """Swish x * sigmoid(beta x) (Ramachandran et al. 2017, "Searching for Activation Functions").

    beta (> 0, default 1.0): 1 is SiLU; large beta approaches ReLU.
    """
    return Swish(beta)


@hookimpl
def dlbench_register_activations(register):
    register("swish", swish)

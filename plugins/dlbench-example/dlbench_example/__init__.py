"""An example third-party dlbench plugin: the swish activation, with a tunable beta.

dlbench finds this module through the ``dlbench`` entry-point group declared in
``pyproject.toml`` and calls its hook implementations; nothing else is needed.
"""

from __future__ import annotations

import torch
from torch import nn

from dlbench import hookimpl

__version__ = "0.1.0"


class Swish(nn.Module):
    """x * sigmoid(beta * x)."""

    def __init__(self, beta: float = 1.0):
        super().__init__()
        self.beta = beta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.beta * x)

    def extra_repr(self) -> str:
        return f"beta={self.beta}"


def example_swish(*, beta: float = 1.0) -> nn.Module:
    """Swish x * sigmoid(beta * x) (Ramachandran et al. 2017, "Searching for Activation Functions").

    beta = 1 is SiLU; beta -> infinity approaches ReLU; beta = 0 is the linear x / 2.
    """
    return Swish(beta)


@hookimpl
def dlbench_register_activations(register):
    register("example_swish", example_swish)

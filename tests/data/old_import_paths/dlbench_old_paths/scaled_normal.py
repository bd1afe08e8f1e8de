"""docs/plugins.md's example plugin scaled_normal.py as it stood before the reshape (commit 8934433),
verbatim: it imports from the module paths of that time."""
from typing import Annotated

import torch
from torch import nn

from dlbench import Range, hookimpl


@torch.no_grad()
def scaled_normal(model, data, *, gain: Annotated[float, Range(gt=0)] = 1.0) -> None:
    """LeCun normal with a gain (LeCun et al. 1998): W ~ N(0, gain^2 / fan_in), biases 0.

    gain (> 0, default 1.0): 1 keeps the variance of a linear layer's output equal to its input's.
    """
    for layer in model.modules():
        if isinstance(layer, (nn.Linear, nn.Conv1d, nn.Conv2d)):
            fan_in = layer.weight[0].numel()
            layer.weight.normal_(0.0, gain / fan_in ** 0.5)
            if layer.bias is not None:
                layer.bias.zero_()


@hookimpl
def dlbench_register_initializers(register):
    register("scaled_normal", scaled_normal)

"""docs/plugins.md's example plugin wide_and_shallow.py as it stood before the reshape (commit 8934433),
verbatim: it imports from the module paths of that time."""
import math
from typing import Annotated

from torch import nn

from dlbench import Range, hookimpl, stackable
from dlbench.shapes import accepts
from dlbench.slots import Slot


class WideAndShallow(nn.Module):
    def __init__(self, in_features, num_classes, activation, width):
        super().__init__()
        self.input_slot = Slot("input")
        self.hidden = nn.Sequential(nn.Linear(in_features, width), Slot("norm", width), activation(),
                                    Slot("hidden", width))
        self.head = nn.Linear(width, num_classes)

    @property
    def hidden_blocks(self):
        return [nn.Sequential(nn.Flatten(), *self.hidden[:3])]  # without the dropout slot

    def forward(self, x):
        return self.head(self.hidden(self.input_slot(x.flatten(1))))


@stackable  # Linear layers and the activation: a pure function of parameters and input
@accepts(ranks=(1, 2))
def wide_and_shallow(input_shape, num_classes, activation, *,
                     width: Annotated[int, Range(ge=1)] = 1024) -> nn.Module:
    """One wide hidden layer (Cybenko 1989: a universal approximator, given the width).

    width (>= 1, default 1024): units of the hidden layer. Reads 1-D signals and grayscale images.
    """
    return WideAndShallow(math.prod(input_shape), num_classes, activation, width)


@hookimpl
def dlbench_register_architectures(register):
    register("wide_and_shallow", wide_and_shallow)

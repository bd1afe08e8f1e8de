"""Slots: named places in an architecture where a regularizer may insert a module.

An architecture puts ``Slot("input")`` before its first layer, ``Slot("norm", features=...)``
between each hidden layer's linear map (or convolution) and its activation, and
``Slot("hidden", features=...)`` after each hidden activation. A slot is the identity until a
regularizer fills it (dropout the input and hidden slots, batch/layer/group normalization the
norm slots), so the architecture never needs to know which regularizers exist.

``features`` is the size of the feature (or channel) axis at the slot and ``spatial_dims`` the
number of axes after it (0 for an MLP's [B, F], 1 for a 1-D convolution's [B, C, L], 2 for
[B, C, H, W]): what a normalization layer needs to be built. A recurrent network's per-step
slots see [B, F] (``spatial_dims`` 0).
"""

from __future__ import annotations

import torch
from torch import nn

ROLES = ("input", "norm", "hidden")


class Slot(nn.Module):
    """An identity placeholder of a given ``role``, fillable by regularizers (filled twice, the
    modules run in the order they were given)."""

    def __init__(self, role: str, features: int | None = None, spatial_dims: int = 0):
        super().__init__()
        if role not in ROLES:
            raise ValueError(f"unknown slot role {role!r}: one of {', '.join(ROLES)}")
        self.role, self.features, self.spatial_dims = role, features, spatial_dims
        self.inner: nn.Module = nn.Identity()

    def fill(self, module: nn.Module) -> None:
        self.inner = module if isinstance(self.inner, nn.Identity) else nn.Sequential(self.inner, module)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x)

    def extra_repr(self) -> str:
        shape = f", features={self.features}, spatial_dims={self.spatial_dims}" if self.features else ""
        return f"role={self.role!r}{shape}"


def slots(model: nn.Module, role: str) -> list[Slot]:
    """Every slot of ``role`` in ``model``, in forward order."""
    return [m for m in model.modules() if isinstance(m, Slot) and m.role == role]

"""Slots: named places in an architecture where a regularizer may insert a module.

An architecture puts ``Slot("input")`` before its first layer and ``Slot("hidden")`` after each
hidden activation. A slot is the identity until a regularizer (dropout, noise, normalization)
fills it, so the architecture never needs to know which regularizers exist.
"""

from __future__ import annotations

import torch
from torch import nn


class Slot(nn.Module):
    """An identity placeholder of a given ``role`` ("input", "hidden"), fillable once per role."""

    def __init__(self, role: str):
        super().__init__()
        self.role = role
        self.inner: nn.Module = nn.Identity()

    def fill(self, module: nn.Module) -> None:
        self.inner = module if isinstance(self.inner, nn.Identity) else nn.Sequential(self.inner, module)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x)

    def extra_repr(self) -> str:
        return f"role={self.role!r}"


def slots(model: nn.Module, role: str) -> list[Slot]:
    """Every slot of ``role`` in ``model``, in forward order."""
    return [m for m in model.modules() if isinstance(m, Slot) and m.role == role]
